"""Hashing files on a second core, ahead of a scan that reads them all.

A first scan of a tree (or one with --checksum) reads every file, and the
reading and hashing are about a third of its time. Once such a scan has
hashed MIN_FILES files itself, a forked child takes the directories the walk
has still to visit and walks them in the walk's own order, hashing their
files ahead of it; this process goes on listing and recording, and takes
each digest from the child when its turn comes. (git's preload-index and
rsync's sender split work between cores for the same reason; Python threads
would take turns.)

A digest from the child is used only for a file whose stat as this scan
listed it is the one the child saw before and after reading it (size, mtime,
ctime, inode and mode: what the stat cache trusts). Anything else is hashed
here, as without the child: a file changed since, one it skipped or could
not read, a directory it did not reach (a walk that went another way), or
all that is left when it stopped.

From the child, msgpack ``[directory, [name, digest, stat_key, ...], last]``
per group of files, ``last`` once per directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat as st_mod
from collections.abc import Callable, Sequence

import msgpack

from merklesync.ignore import IgnoreRules
from merklesync.orphans import can_fork, fork_child
from merklesync.pipe_room import widen_pipe
from merklesync.sources.dir_fds import DIR_FLAGS
from merklesync.sources.file_write import write_all
from merklesync.sources.listing import Listing, refused_name, stat_key

MIN_FILES = 256  # hashed by the scan itself before a child is worth forking
GROUP = 64  # files per message
MAX_HELD = 20_000  # digests held for directories not reached: past it, the child stops
MAX_SIZE = 8 << 20  # larger files are left to the scan, which hashes them on several threads

Identity = tuple[int, int]  # (device, inode)
HashFile = Callable[[str, int], tuple[bytes, os.stat_result]]  # (path, its directory's fd)


class Prehasher:
    """The scan's end: digests by directory and name, as the child sends them."""

    def __init__(self, pid: int, fd: int) -> None:
        self._pid = pid
        self._fd = fd
        self._unpacker = msgpack.Unpacker(use_list=True, unicode_errors="surrogateescape")
        self._got: dict[str, dict[str, tuple[bytes, bytes]]] = {}  # dir -> name -> (digest, key)
        self._held = 0
        self._done: set[str] = set()  # directories the child has finished
        self._passed: set[str] = set()  # directories the scan has finished
        self._ended = False  # nothing more will come
        self._closed = False
        self.used = 0  # digests taken from the child

    @classmethod
    def start(
        cls,
        root: str,
        ignore: IgnoreRules,
        pending: Sequence[tuple[str, Identity | None]],
        hash_file: HashFile,
    ) -> Prehasher | None:
        """Fork a child to walk ``pending`` (the walk's stack: the last one
        is visited first) under ``root``; None when that cannot be done
        safely, or fails (the scan then hashes everything itself)."""
        if not can_fork():
            return None
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return None

        def child(out: int) -> None:
            _walk(root, ignore, list(pending), hash_file, out)

        pid = fork_child(child, write_fd)
        os.close(write_fd)
        if pid is None:
            os.close(read_fd)
            return None
        widen_pipe(read_fd)  # fewer, larger reads
        return cls(pid, read_fd)

    def digest(self, directory: str, name: str, key: bytes) -> bytes | None:
        """The child's digest of ``directory``/``name``, when the child read
        it with the stat packed as ``key`` (stat_key); None: hash it here.
        Waits while the child has not yet reached the file."""
        while True:
            got = self._got.get(directory)
            found = got.pop(name, None) if got is not None else None
            if found is not None:
                self._held -= 1
                digest, seen = found
                if seen != key:
                    return None
                self.used += 1
                return digest
            if directory in self._done or self._ended:
                return None
            self._read()

    def finished(self, directory: str) -> None:
        """The scan is done with ``directory``: what is left of it, or comes
        later, is dropped."""
        self._passed.add(directory)
        self._done.discard(directory)
        got = self._got.pop(directory, None)
        if got is not None:
            self._held -= len(got)

    def close(self) -> None:
        """Stop the child (it only reads, nothing is left half done) and reap
        it; once only (the scan closes it too when it stopped the child)."""
        if self._closed:
            return
        self._closed = True
        # Before the end of its stream the child holds the pipe open: it has
        # not exited, so its pid is still its own (SIGCHLD ignored or not).
        running = not self._ended
        self._ended = True
        os.close(self._fd)
        if running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._pid, 0)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 1 << 16)
        except OSError:
            self.close()  # the stream is not at its end: the child may run on
            return
        if not data:
            self._ended = True  # the child has closed its end: it is exiting
            return
        self._unpacker.feed(data)
        try:
            for directory, flat, last in self._unpacker:
                if directory in self._passed:
                    continue
                got = self._got.setdefault(directory, {})
                for i in range(0, len(flat), 3):
                    got[flat[i]] = (flat[i + 1], flat[i + 2])
                self._held += len(flat) // 3
                if last:
                    self._done.add(directory)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException):
            self.close()  # not what this module's child sends: hash here
        if self._held > MAX_HELD:  # the walks went different ways: hash here from now on
            self._got.clear()
            self._held = 0
            self.close()


def _walk(
    root: str,
    ignore: IgnoreRules,
    stack: list[tuple[str, Identity | None]],
    hash_file: HashFile,
    out: int,
) -> None:
    """The child: the scan's walk (directories reached without following a
    link, each the one its parent listed; ignore rules as the scan has
    them), hashing every regular file not ignored."""
    while stack:
        directory, identity = stack.pop()
        try:
            fd = os.open(f"{root}/{directory}" if directory else root, DIR_FLAGS)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if identity is not None and (st.st_dev, st.st_ino) != identity:
                continue
            listing = Listing.read(fd, tidy=False)
            ignored = ignore.for_directory(directory, has_file=listing.has_ignore_file)
            stack.extend(_hash_listed(directory, listing, ignored, hash_file, fd, out))
        finally:
            os.close(fd)


def _hash_listed(
    directory: str,
    listing: Listing,
    ignored: Callable[[str, bool], bool] | None,
    hash_file: HashFile,
    fd: int,
    out: int,
) -> list[tuple[str, Identity | None]]:
    """Hash the files of one listed directory, sending the digests in
    groups; returns its subdirectories, in the order the scan has them."""
    prefix = f"{directory}/" if directory else ""
    subdirs: list[tuple[str, Identity | None]] = []
    group: list[object] = []
    for name, st in zip(listing.names, listing.stats, strict=True):
        rel = prefix + name
        if isinstance(st, OSError) or refused_name(name, rel) is not None:
            continue  # as the scan: it neither reads nor walks these
        kind = st_mod.S_IFMT(st.st_mode)
        if kind == st_mod.S_IFDIR:
            if ignored is None or not ignored(rel, True):
                subdirs.append((rel, (st.st_dev, st.st_ino)))
        elif kind == st_mod.S_IFREG and st.st_size <= MAX_SIZE:
            if ignored is not None and ignored(rel, False):
                continue
            try:
                digest, after = hash_file(rel, fd)
            except Exception:  # whatever it is, the scan finds out itself
                continue
            group += (name, digest, stat_key(after))
            if len(group) >= 3 * GROUP:
                write_all(out, _pack([directory, group, False]))
                group = []
    write_all(out, _pack([directory, group, True]))
    return subdirs


def _pack(message: list[object]) -> bytes:
    return msgpack.packb(message, unicode_errors="surrogateescape")
