"""Opening a file to read it without ever waiting on something that is no
file: a path listed as a regular file may be a FIFO by the time it is
opened, and opening a FIFO to read waits for a writer for ever."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: nothing for a regular file


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
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), str(path)) from None
        return os.open(path, flags & ~os.O_NONBLOCK, dir_fd=dir_fd)


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
        while chunk := os.read(fd, 1 << 20 if limit is None else limit + 1 - total):
            parts.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise too_big
        return b"".join(parts)
    finally:
        os.close(fd)
