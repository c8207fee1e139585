"""Room in a pipe between two processes of a run.

A pipe holds 64 KiB by default on Linux: a process that writes a stream of
file contents then waits whenever its reader is a moment late (on a machine
with fewer cores than busy processes, often). Where the system lets it, the
pipes a run streams through hold 1 MiB. Anything else (not a pipe, another
system, a limit set lower by the administrator) leaves the pipe as it was.
"""

from __future__ import annotations

import contextlib
import fcntl

PIPE_SIZE = 1 << 20


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Give the pipe at ``fd`` room for ``size`` bytes, where it can have it."""
    with contextlib.suppress(OSError, AttributeError):  # F_SETPIPE_SZ: Linux only
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
