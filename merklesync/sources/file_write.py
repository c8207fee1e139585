"""How one file's content is written into a replica: to a temp file beside
it, verified against its blake3 digest, given its mode and mtime, and only
then renamed into place, so a reader never sees half a file and a failure
leaves nothing behind.

Shared by the writes a replica makes itself (sources/directory_write.py) and those
its placing process makes for it (sources/placer.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable

import blake3

from merklesync.errors import MerklesyncError
from merklesync.ignore import TEMP_PREFIX
from merklesync.model import synced_mode
from merklesync.sources.no_replace import rename_noreplace

IN_THE_WAY = "an unscanned file is in the way on the destination"
NOT_AS_SENT = "content does not match its digest (changed during transfer)"


class Refused(MerklesyncError):
    """The write was refused for this entry; the run goes on."""


def write_file(
    dir_fd: int,
    name: str,
    mode: int,
    mtime_ns: int,
    digest: bytes,
    data: Iterable[bytes],
    place: Callable[[str], None],
    owner: tuple[int, int] | None = None,
) -> os.stat_result:
    """Write ``data`` to a temp file in the directory open as ``dir_fd``,
    check it against ``digest``, give it ``mode`` and ``mtime_ns`` (and
    ``owner``, uid and gid, where this process may: the owner of the file
    it replaces), then let ``place`` rename the temp name to ``name``.
    Returns the file's stat as placed (a rename changes its ctime), not
    whatever may replace it later. On any failure the temp file is removed."""
    tmp = temp_name(name)
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
    except BaseException:  # a Ctrl-C raised as the call returns: made, not yet ours
        unlink_quietly(tmp, dir_fd)
        raise
    try:
        try:
            hasher = blake3.blake3()
            for chunk in data:
                hasher.update(chunk)
                write_all(fd, chunk)
            if hasher.digest() != digest:
                raise Refused(NOT_AS_SENT)
            if owner is not None:
                with contextlib.suppress(OSError):  # not ours to give (an id not mapped here)
                    os.fchown(fd, *owner)
            os.fchmod(fd, synced_mode(mode))  # never setuid or setgid from a peer
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            place(tmp)
            return os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(tmp, dir_fd)
        raise


def place_new(tmp: str, name: str, dir_fd: int) -> None:
    """Rename a temp file to where nothing was: refused if something is
    there now (an unscanned file, or one made during the transfer)."""
    try:
        if rename_noreplace(tmp, name, dir_fd):
            return
    except FileExistsError:
        raise Refused(IN_THE_WAY) from None
    try:  # no atomic way here: look, then rename
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    raise Refused(IN_THE_WAY)


def temp_name(name: str) -> str:
    """A temp name beside ``name``; the writer's pid in it tells a later
    scan whether it was abandoned (listing.abandoned). Of ``name``, 80 bytes
    at most: 80 characters of a script of three bytes each, and the prefix,
    would be over the 255 a name may hold."""
    short = name if len(name) <= 20 else name.encode()[:80].decode(errors="ignore")
    return f"{TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{short}"


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_quietly(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
