"""Throwaway directories in the temporary directory, and the sweep of the
ones a killed run left there.

A run keeps some state in a directory of its own under the temporary
directory: the copy of a read-only replica's index, a dry run's index, the
spool of large files a sync writes back. Each is made by ``make``, which
marks it as one (MARK, before anything else is put there), and holds a
lock file that its run keeps locked (flock) while it lives; it is removed
when the run ends. A run killed before it could clean up (SIGKILL, the OOM
killer, a crash) leaves its directory behind, maybe large; the next run
that makes one removes every such directory of this user, marked, whose
lock nobody holds. Nothing else is ever removed: a directory of the user's
that happens to be named ``merklesync-*`` has no mark.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from merklesync.lock import ReplicaLock

PREFIX = "merklesync-"
MARK = ".merklesync-scratch"  # the empty file that says a directory is one of these
LOCK_FILE = "lock"  # held by the run that made the directory (a replica's lock, in a replica's)
SETTLE_S = 60.0  # a directory younger than this may not hold its lock yet: left alone


def make(kind: str) -> Path:
    """A new directory ``merklesync-KIND-*`` in the temporary directory,
    marked as one of these (its run then takes its lock: LOCK_FILE). What
    killed runs left is swept first."""
    sweep()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-"))
    try:
        (path / MARK).touch(exist_ok=False)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def sweep() -> list[Path]:
    """Remove what killed runs left in the temporary directory: this user's
    directories named ``merklesync-*``, marked as made by ``make``, whose
    lock file nobody holds. Returns them. Never fails: a sweep is a
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
            if now - st.st_mtime < SETTLE_S or not _abandoned(entry.path):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _abandoned(path: str) -> bool:
    """Whether the directory at ``path`` was made by ``make`` (it has the
    mark) and the run that made it is gone (nobody holds its lock file)."""
    try:
        mark = os.lstat(os.path.join(path, MARK))
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # no mark, no lock file: not one of these, or not yet
    if not stat.S_ISREG(mark.st_mode):
        os.close(fd)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its run is alive
    finally:
        os.close(fd)
    return True


class Scratch:
    """A directory of this run's own in the temporary directory, locked
    while it lives (as a replica's is: ReplicaLock), removed by ``cleanup``
    (or by a later run's sweep)."""

    def __init__(self, kind: str) -> None:
        self.path = make(kind)
        self._lock = ReplicaLock(self.path / LOCK_FILE)
        try:
            self._lock.acquire()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()
