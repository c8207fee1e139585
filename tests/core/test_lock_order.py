"""Two runs that each hold one replica of a pair and wait for the other
(`sync A host:B` here while `sync B host:A` runs there, from the same cron
minute): the one that finds its second replica locked lets go of its first
and tries again, so that one of them goes on instead of both failing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from merklesync.errors import EXIT_LOCKED
from tests.clirun import ms

# The other run: holds B, waits for A (as long as it takes), then does its
# work for a moment and lets go of both.
OTHER_RUN = textwrap.dedent(
    """
    import fcntl, os, sys, time
    a_lock, b_lock, ready = sys.argv[1:]
    b = os.open(b_lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(b, fcntl.LOCK_EX)
    open(ready, "w").close()
    a = os.open(a_lock, os.O_RDWR | os.O_CREAT)
    deadline = time.monotonic() + 60

    def try_a():
        try:
            fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.005)
            return False

    while try_a():  # until the run under test holds A
        fcntl.flock(a, fcntl.LOCK_UN)
    while not try_a():  # until it lets go of it
        pass
    time.sleep(0.2)
    """
)


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "f.txt").write_text("one\n")
    assert ms("init", a).code == 0
    assert ms("push", a, b).code == 0
    (a / "f.txt").write_text("two\n")
    return a, b


def _run_against_the_other(tmp_path: Path, a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    ready = tmp_path / "ready"
    lock = ".merklesync/lock"
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_RUN, str(a / lock), str(b / lock), str(ready)]
    )
    try:
        while not ready.exists():
            assert other.poll() is None
        run = _sync(a, b, lock_wait=0.5)
    finally:
        assert other.wait(60) == 0
    return run


def _sync(a: Path, b: Path, lock_wait: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "merklesync", "sync", "-q", str(a), str(b)],
        env={**os.environ, "MERKLESYNC_LOCK_WAIT": str(lock_wait)},
        capture_output=True,
        text=True,
    )


def test_a_pair_locked_the_other_way_round_goes_on(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    run = _run_against_the_other(tmp_path, a, b)
    assert run.returncode == 0, run.stderr
    assert (b / "f.txt").read_text() == "two\n"


def test_a_second_replica_locked_all_along_still_fails(tmp_path: Path) -> None:
    """Locked by a run that does not give way: a clear failure, exit 4."""
    import fcntl

    a, b = _pair(tmp_path)
    fd = os.open(b / ".merklesync" / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        run = _sync(a, b, lock_wait=0.2)
    finally:
        os.close(fd)
    assert run.returncode == EXIT_LOCKED
    assert run.stderr.count("\n") == 1 and "in use by another merklesync process" in run.stderr


def test_a_lock_never_released_goes_with_its_object(tmp_path: Path) -> None:
    """A run cut between taking a replica's lock and the code that lets it
    go leaves the lock object behind: freed, it lets go, so a process that
    goes on (a script, a test) can open the replica again."""
    from merklesync.errors import ReplicaLocked
    from merklesync.lock import ReplicaLock

    path = tmp_path / "lock"
    held = ReplicaLock(path, wait=0)
    held.acquire()
    other = ReplicaLock(path, wait=0)
    with pytest.raises(ReplicaLocked):
        other.acquire()
    del held
    other.acquire()
    other.release()
