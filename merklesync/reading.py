"""Opening a file to read it without ever waiting on something that is no
file: a path listed as a regular file may be a FIFO by the time it is
opened, and opening a FIFO to read waits for a writer for ever."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20  # read at a time
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: nothing for a regular file
# Linux: a descriptor that holds a file without opening it for reading (no
# lease broken, no FIFO waited on), to open it again through /proc.
_O_PATH = getattr(os, "O_PATH", 0) if os.path.isdir("/proc/self/fd") else 0


def open_to_read(path: str | Path, *, dir_fd: int | None = None, follow: bool = False) -> int:
    """A descriptor to read ``path`` (``follow``: through a symlink; else
    a link is ELOOP). The caller checks with fstat that it is a regular
    file. A file another process holds a lease on (Samba, an NFS server)
    refuses a non-blocking open: it is opened again, waiting, when it is
    a regular file."""
    flags = _FLAGS if follow else _FLAGS | os.O_NOFOLLOW
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except BlockingIOError:
        pass
    not_a_file = OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), str(path))
    if not _O_PATH:  # no way to hold the file itself: by its name, looked at first
        if not stat.S_ISREG(os.stat(path, dir_fd=dir_fd, follow_symlinks=follow).st_mode):
            raise not_a_file
        return os.open(path, flags & ~os.O_NONBLOCK, dir_fd=dir_fd)
    # The very file that was looked at, opened again through its descriptor
    # (its name may be a FIFO by then).
    held = os.open(path, _O_PATH | (flags & (os.O_NOFOLLOW | os.O_CLOEXEC)), dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(held).st_mode):
            raise not_a_file
        return os.open(f"/proc/self/fd/{held}", flags & ~(os.O_NONBLOCK | os.O_NOFOLLOW))
    finally:
        os.close(held)


def read_file(path: str | Path, *, follow: bool = False, limit: int | None = None) -> bytes:
    """A regular file's bytes, opened as open_to_read does; OSError when it
    is no regular file, or holds over ``limit`` bytes."""
    fd = open_to_read(path, follow=follow)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        too_big = OSError(errno.EFBIG, f"over {limit} bytes", str(path))
        if limit is not None and st.st_size > limit:
            raise too_big
        parts = []
        total = 0
        while chunk := os.read(fd, CHUNK if limit is None else limit + 1 - total):
            parts.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise too_big
        return b"".join(parts)
    finally:
        os.close(fd)


def read_chunks(fd: int, size: int) -> Iterator[bytes]:
    """A file's bytes in chunks of at most CHUNK, read from where ``fd``
    is. ``size`` is what fstat said: a short read that ends there is taken
    as the end, so a small file costs one read, not two. A file that grew
    meanwhile is read on (whoever checks its digest or stat finds out)."""
    want = min(size + 1, CHUNK)
    total = 0
    while chunk := os.read(fd, want):
        yield chunk
        total += len(chunk)
        if total == size and len(chunk) < want:
            return
        want = CHUNK


class OpenFile:
    """The chunks of a file opened to be read (read_chunks), as an iterator
    that closes the descriptor at the end, on an error, by ``close``, or
    when it is dropped, read or not (a generator never started would keep
    it open)."""

    __slots__ = ("_chunks", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._chunks: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._chunks is None:
            if self.fd < 0:
                raise StopIteration
            self._chunks = read_chunks(self.fd, self.size)
        try:
            return next(self._chunks)
        except BaseException:  # the end, or an error reading
            self.close()
            raise

    def detach(self) -> int | None:
        """Give up the descriptor, unread, to whoever reads it instead (it
        is theirs to close); None once reading has begun, or it is closed."""
        if self._chunks is not None or self.fd < 0:
            return None
        fd, self.fd = self.fd, -1
        return fd

    def close(self) -> None:
        fd, self.fd, self._chunks = self.fd, -1, None  # no read after: the number may be reused
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at exit, even os may be gone
            self.close()
