"""Throwaway directories in the temporary directory, and the sweep of the
ones a killed run left there.

A run keeps some state in a directory of its own under the temporary
directory: the copy of a read-only replica's index, a dry run's index, the
spool of large files a sync writes back. Each holds a lock file that its
run keeps locked (flock) while it lives, and it is removed when the run
ends. A run killed before it could clean up (SIGKILL, the OOM killer, a
crash) leaves its directory behind, maybe large; the next run that makes
one removes every such directory of this user whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

PREFIX = "merklesync-"
LOCK_FILE = "lock"  # held by the run that made the directory (a replica's lock, in a replica's)
SETTLE_S = 60.0  # a directory younger than this may not hold its lock yet: left alone
UNLOCKED_S = 86_400.0  # one without a lock file (a merge's) is left that long


def sweep() -> list[Path]:
    """Remove what killed runs left in the temporary directory: this user's
    directories named ``merklesync-*`` whose lock file nobody holds (or,
    without one, a day old). Returns them. Never fails: a sweep is a
    courtesy, not the run's work."""
    removed: list[Path] = []
    now = time.time()
    me = os.geteuid()
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as listing:
        for entry in listing:
            if not entry.name.startswith(PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not entry.is_dir(follow_symlinks=False) or st.st_uid != me:
                continue
            if now - st.st_mtime < SETTLE_S or not _abandoned(entry.path, now - st.st_mtime):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _abandoned(path: str, age: float) -> bool:
    """Whether the run that made the directory at ``path`` is gone: nobody
    holds its lock file (none there: it is more than a day old)."""
    try:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return exc.errno == errno.ENOENT and age > UNLOCKED_S
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its run is alive
    finally:
        os.close(fd)
    return True


class Scratch:
    """A directory of this run's own in the temporary directory, locked
    while it lives, removed by ``cleanup`` (or by a later run's sweep)."""

    def __init__(self, kind: str) -> None:
        sweep()
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-"))
        try:
            self._fd: int | None = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
