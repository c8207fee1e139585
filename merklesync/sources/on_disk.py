"""What a path on disk is (its kind, a link's digest, a file's blake3), and
how long after its last change a file's stat may not tell the next change."""

from __future__ import annotations

import os
import stat as st_mod

import blake3

from merklesync.model import EntryKind
from merklesync.orphans import cores
from merklesync.reading import read_chunks

RACY_NS = 2_000_000_000  # an mtime this close to the scan may hide a same-tick edit
THREADED_HASH = 8 << 20  # a file this large is hashed on several threads

KINDS = {
    st_mod.S_IFREG: EntryKind.FILE,
    st_mod.S_IFDIR: EntryKind.DIR,
    st_mod.S_IFLNK: EntryKind.LINK,
}


def kind_of(mode: int) -> EntryKind | None:
    return KINDS.get(st_mod.S_IFMT(mode))


def link_digest(target: str) -> bytes:
    return blake3.blake3(os.fsencode(target)).digest()


class FileChanged(Exception):
    """The file changed while it was read."""


# A large file is hashed on several threads, on a pool of its own: blake3's
# shared pool (AUTO), once started in a process, has no threads in the
# process's forked children (a placing, listing, hashing or scanning child),
# where it would wait for ever.
_CORES = cores()


def hash_open_file(fd: int, size_hint: int) -> tuple[bytes, os.stat_result]:
    threads = _CORES if size_hint > THREADED_HASH else 1
    hasher = blake3.blake3(max_threads=threads)
    for chunk in read_chunks(fd, size_hint):
        hasher.update(chunk)
    return hasher.digest(), os.fstat(fd)
