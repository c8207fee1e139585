"""A local replica paired with a remote one scans while the remote one is
reached (LocalPeer.scan_ahead, opened_pair): the same scan, only sooner."""

from __future__ import annotations

import errno
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from merklesync.peer import open as peer_open
from merklesync.peer.local import LocalPeer
from merklesync.replica import Replica
from tests.clirun import ms, run_python
from tests.treegen import make_tree

RSH = f"{sys.executable} {Path(__file__).resolve().parents[1] / 'remote' / 'rsh.py'}"
REMOTE_CMD = f"{sys.executable} -m merklesync"


@pytest.fixture
def replica(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    make_tree(root, files=30, dirs=3, seed=5, min_size=0, max_size=64)
    assert ms("init", root).code == 0
    (root / "new.txt").write_text("new")
    return root


@pytest.fixture
def a_thread() -> Iterator[None]:
    """Another thread running in this process (a connection's reader, say)."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def live(root: Path) -> set[str]:
    with Replica.open(root) as r:
        return {e.path for e in r.index.iter_entries(live_only=True)}


def test_the_scan_ahead_is_the_refresh(replica: Path) -> None:
    peer = LocalPeer.open(replica)
    try:
        peer.scan_ahead()
        assert peer._ahead is not None  # a child process scans
        report = peer.refresh()
        assert report.added == ["new.txt"] and report.scanned == 31 + 3
        assert peer.stats.files_scanned == report.scanned
        (replica / "later.txt").write_text("after")
        assert peer.refresh().added == ["later.txt"]  # the next refresh scans again
    finally:
        peer.close()


def test_another_kind_of_scan_replaces_the_one_ahead(replica: Path) -> None:
    """What the scan ahead did before it was stopped is kept, or done again."""
    peer = LocalPeer.open(replica)
    try:
        peer.scan_ahead(checksum=False)
        report = peer.refresh(checksum=True)
        assert report.hashed == 31
        assert peer.replica.index.get("new.txt") is not None
    finally:
        peer.close()


@pytest.mark.parametrize("started_by", ["scan_ahead", "start_refresh"])
def test_closing_stops_the_scan_ahead(
    replica: Path, monkeypatch: pytest.MonkeyPatch, started_by: str
) -> None:
    """The run failed before it waited for the scan (the remote replica
    could not be reached, say; for those refresh_all starts, the first
    replica's scan failed): the scan is stopped, not waited for, and gone
    before the lock is released; the next one does its work."""
    from merklesync.sources.directory import DirectorySource

    def slow(*args: object, **kw: object) -> None:
        time.sleep(30)  # the child's scan: stopped long before

    monkeypatch.setattr(DirectorySource, "scan", slow)
    peer = LocalPeer.open(replica)
    getattr(peer, started_by)()
    assert peer._ahead is not None
    child = peer._ahead[1].proc
    peer.close()
    assert child.exitcode == -signal.SIGTERM
    monkeypatch.undo()
    with Replica.open(replica) as r:  # not locked, and whole
        r.scan()
        r.index.check()
    assert "new.txt" in live(replica)


def test_a_scan_child_is_forked_with_the_ending_signals_held(
    replica: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C or SIGTERM reaching the child between fork and its try
    would unwind this process's stack there, and that cleanup release the
    lock both share: such signals wait, held, until it is inside."""
    import multiprocessing.context

    held: list[set[signal.Signals]] = []
    start = multiprocessing.context.ForkProcess.start

    def started(self: multiprocessing.context.ForkProcess) -> None:
        held.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        start(self)

    monkeypatch.setattr(multiprocessing.context.ForkProcess, "start", started)
    with Replica.open(replica) as r:
        assert "new.txt" in r.start_scan().wait().added
    assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= held[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_no_scan_ahead_beside_another_thread(replica: Path, a_thread: None) -> None:
    """fork does not mix with threads: the refresh scans, as it would have."""
    peer = LocalPeer.open(replica)
    try:
        peer.scan_ahead()
        assert peer._ahead is None
        assert peer.refresh().added == ["new.txt"]
    finally:
        peer.close()


@pytest.mark.parametrize("command", ["push", "pull", "diff"])
def test_the_local_replica_scans_before_the_remote_one_is_reached(
    replica: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    other = tmp_path / "other"
    assert ms("init", other).code == 0
    if command == "pull":
        assert ms("push", replica, other).code == 0
        (other / "from-other.txt").write_text("pulled")
    started: list[bool] = []
    real = peer_open.connect

    def connect(*args: object, **kw: object) -> object:
        started.append(any(p._ahead for p in opened))  # type: ignore[attr-defined]
        return real(*args, **kw)  # type: ignore[arg-type]

    opened: list[LocalPeer] = []
    real_open = LocalPeer.open.__func__  # type: ignore[attr-defined]

    def open_local(cls: type[LocalPeer], *args: object, **kw: object) -> LocalPeer:
        peer = real_open(cls, *args, **kw)
        opened.append(peer)
        return peer  # type: ignore[no-any-return]

    monkeypatch.setattr(peer_open, "connect", connect)
    monkeypatch.setattr(LocalPeer, "open", classmethod(open_local))
    remote = f"pipehost:{other}"
    a, b = (remote, replica) if command == "pull" else (replica, remote)
    result = ms(command, a, b, "--rsh", RSH, "--remote-cmd", REMOTE_CMD)
    assert started == [True]
    if command == "diff":
        assert result.code == 1 and "new.txt" in result.out
    else:
        assert result.code == 0, result.err
        here, there = (replica, other) if command == "push" else (other, replica)
        assert live(there) == live(here)
        assert "new.txt" in live(there)


def test_closing_after_the_scan_ahead_wrote(replica: Path) -> None:
    """The child committed while this process held its last read: the
    close still writes (no "database is locked")."""
    peer = LocalPeer.open(replica)
    peer.scan_ahead()
    assert peer._ahead is not None
    peer._ahead[1].proc.join()  # done, and committed
    peer.close()
    assert "new.txt" in live(replica)


def test_a_cancelled_scan_ahead_keeps_the_clock_it_moved(replica: Path) -> None:
    """The clock never goes back: what a finished child stored is taken in
    before the replica is closed (which stores this process's clock)."""

    def stored_clock() -> int:
        conn = sqlite3.connect(replica / ".merklesync" / "index.db")
        try:
            return int(conn.execute("SELECT value FROM meta WHERE key = 'hlc'").fetchone()[0])
        finally:
            conn.close()

    peer = LocalPeer.open(replica)
    before = peer.replica.clock.last
    peer.scan_ahead()
    assert peer._ahead is not None
    peer._ahead[1].proc.join()  # finished: new.txt got a stamp, the clock moved
    moved = stored_clock()
    assert moved > before
    peer.close()
    assert stored_clock() >= moved


def test_no_process_to_be_had_leaves_the_scan_to_the_refresh(
    replica: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(self: Replica, **kw: object) -> None:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(Replica, "start_scan", no_process)
    peer = LocalPeer.open(replica)
    try:
        peer.scan_ahead()
        assert peer._ahead is None
        assert peer.start_refresh()(None).added == ["new.txt"]  # scanned here, in turn
    finally:
        peer.close()


class _Sender:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, obj: object) -> None:
        self.sent.append(obj)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/r/x"), "/r/x: Permission denied"),
        (KeyboardInterrupt(), None),
    ],
)
def test_what_ends_a_child_scan_is_one_line_or_quiet(
    replica: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException, expected: str | None
) -> None:
    from merklesync import replica as replica_mod
    from merklesync.errors import LocalIOError
    from merklesync.sources.directory import DirectorySource

    def failing(*args: object, **kw: object) -> None:
        raise raised

    monkeypatch.setattr(DirectorySource, "scan", failing)
    monkeypatch.setattr(replica_mod, "die_with_parent", lambda parent: None)  # not a child here
    sender = _Sender()
    with Replica.open(replica) as r:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # as it is: not a child here
        child = functools.partial(
            replica_mod._scan_child, os.getppid(), mask, r.source, r.index.path, False, False, 0
        )
        if expected is None:
            with pytest.raises(SystemExit) as exited:
                child(None, sender)
            assert exited.value.code == 130 and sender.sent == []
        else:
            child(None, sender)
            assert len(sender.sent) == 1 and isinstance(sender.sent[0], LocalIOError)
            assert sender.sent[0].message == expected


ORPHAN = """
import os, sys, time
from pathlib import Path
from merklesync.replica import Replica
from merklesync.sources.directory import DirectorySource

def slow(*args, **kw):
    time.sleep(30)  # bounded: the test stops waiting long before

DirectorySource.scan = slow
r = Replica.open(Path(sys.argv[1]))
child = r.start_scan()
print(child.proc.pid, flush=True)
time.sleep(30)
"""


def test_a_scan_child_goes_with_its_killed_parent(replica: Path, tmp_path: Path) -> None:
    """Killed (SIGKILL: no cleanup), the parent leaves no scan running on,
    holding the replica's lock."""
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(replica)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    with Replica.open(replica):  # not locked
        pass


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_no_scan_ahead_where_a_watcher_says_where_to_look(replica: Path) -> None:
    """With a watcher running, the scan looks only where it says: cheaper
    than a process. --checksum reads everything: then it goes ahead."""
    import fcntl

    lock = replica / ".merklesync" / "watch.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running watcher holds it
        peer = LocalPeer.open(replica)
        try:
            peer.scan_ahead()
            assert peer._ahead is None
            peer.scan_ahead(checksum=True)
            assert peer._ahead is not None
            assert peer.refresh(checksum=True).hashed == 31
        finally:
            peer.close()


WAIT_INTERRUPTED = """
import sys
from pathlib import Path
from merklesync.model import ScanReport
from merklesync.replica import Replica
from merklesync.sources.directory import DirectorySource

def big(*args, progress=None, **kw):
    progress(1)  # the parent hears of it while it waits
    return ScanReport(added=[f"f{i:07d}" for i in range(300_000)])  # more than a pipe holds

DirectorySource.scan = big
with Replica.open(Path(sys.argv[1])) as r:
    child = r.start_scan()
    def interrupted(n):
        raise KeyboardInterrupt  # as a Ctrl-C to this process alone
    try:
        child.wait(interrupted)
    except KeyboardInterrupt:
        print("alive" if child.proc.is_alive() else "stopped")
"""


def test_a_wait_interrupted_stops_the_scan_instead_of_hanging(replica: Path) -> None:
    """A Ctrl-C (or SIGTERM) to this process alone while a forked scan sends
    a large report: the scan is stopped, not waited for (it was blocked on
    a pipe nobody would read, and the run hung with its locks held)."""
    done = run_python(WAIT_INTERRUPTED, replica)
    assert done.stdout.strip() == "stopped", done.stderr


def test_a_scan_ahead_of_another_kind_is_stopped_not_waited_for(
    replica: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent starts a plain scan ahead; the client asks for --checksum:
    the plain one is stopped (waiting for it said nothing for as long as it
    ran, and a client gave up), and the checksum scan does the work."""
    from merklesync.sources.directory import DirectorySource

    plain_scan = DirectorySource.scan

    def slow_unless_checksum(self: DirectorySource, *args: object, **kw: object) -> object:
        if not kw.get("checksum"):
            time.sleep(30)
        return plain_scan(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(DirectorySource, "scan", slow_unless_checksum)
    peer = LocalPeer.open(replica)
    try:
        peer.scan_ahead()
        assert peer._ahead is not None
        child = peer._ahead[1].proc
        report = peer.refresh(checksum=True)
        assert child.exitcode == -signal.SIGTERM
        assert report.added == ["new.txt"]
    finally:
        peer.close()
