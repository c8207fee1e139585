"""Rename a file into place only where nothing is: ``renameat2`` with
``RENAME_NOREPLACE`` (Linux 3.15+, glibc 2.28+), one atomic step instead of
looking first and renaming after.

Where the system or the file system cannot do it, :func:`rename_noreplace`
says so and the caller looks, then renames, as before.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from collections.abc import Callable

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1

_Renameat2 = Callable[[int, bytes, int, bytes, int], int]


@functools.cache
def _renameat2() -> _Renameat2 | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such symbol: an older libc, or not glibc
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    func.restype = ctypes.c_int
    result: _Renameat2 = func
    return result


def rename_noreplace(src: str, dst: str, dir_fd: int = _AT_FDCWD) -> bool:
    """Rename ``src`` to ``dst`` (both in the directory open as ``dir_fd``,
    or relative to the working directory) if nothing is at ``dst``; raise
    :class:`FileExistsError` if something is. False: this system or file
    system cannot tell atomically, nothing was done."""
    func = _renameat2()
    if func is None:
        return False
    if func(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the flag is not supported here
    raise OSError(code, os.strerror(code), dst)
