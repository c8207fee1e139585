"""An exclusive lock on a replica, so two processes never write one index."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

from merklesync.errors import LocalIOError, ReadOnlyReplica, ReplicaLocked

DEFAULT_WAIT = float(os.environ.get("MERKLESYNC_LOCK_WAIT", "5"))


class ReplicaLock:
    def __init__(self, path: Path, wait: float = DEFAULT_WAIT) -> None:
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            # Held by the object from the start: see __del__.
            self._fd = fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise ReadOnlyReplica(
                    f"replica {self.path.parent.parent} is on a read-only file system"
                ) from exc
            raise LocalIOError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        try:
            self._take(fd)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _take(self, fd: int) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ReplicaLocked(
                        f"replica {self.path.parent.parent} is in use by another merklesync "
                        f"process{_read_holder(fd)}; try again when it has finished"
                    ) from None
                time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # not a regular file (a FIFO put there, say)
            raise LocalIOError(f"cannot use lock file {self.path}: {exc.strerror}") from exc

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        # One never released (a Ctrl-C between taking it and the code that
        # lets it go) goes with its object, in a process that goes on (a
        # script, a test). Closed, not unlocked: a forked child's copy of
        # the descriptor keeps nothing of the parent's lock.
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
