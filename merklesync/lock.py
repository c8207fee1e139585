"""An exclusive lock on a replica, so two processes never write one index."""

from __future__ import annotations

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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise ReadOnlyReplica(
                    f"replica {self.path.parent.parent} is on a read-only file system"
                ) from exc
            raise LocalIOError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise ReplicaLocked(
                        f"replica {self.path.parent.parent} is in use by another merklesync "
                        f"process{holder}; try again when it has finished"
                    ) from None
                time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # not a regular file (a FIFO put there, say)
            os.close(fd)
            raise LocalIOError(f"cannot use lock file {self.path}: {exc.strerror}") from exc
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
