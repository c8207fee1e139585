"""Throwaway directories: what a killed run left is swept by the next run
that makes one; nothing a live run uses, nor anyone else's, is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from merklesync import scratch
from tests.clirun import ms


def _killed_run(kind: str) -> Path:
    """The directory of a run that was killed (SIGKILL) while it held it."""
    script = (
        "import os, sys\n"
        "from merklesync.scratch import Scratch\n"
        f"s = Scratch({kind!r})\n"
        "(s.path / 'big.data').write_bytes(b'x' * 1000)\n"
        "print(s.path, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return path


def test_a_killed_runs_directory_is_swept_a_live_ones_is_not(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = _killed_run("spool")
    assert left.parent == private_tmp and (left / "big.data").exists()
    live = scratch.Scratch("spool")
    assert scratch.sweep() == []  # too young to tell: its lock may not be held yet
    monkeypatch.setattr(scratch, "SETTLE_S", 0.0)
    assert scratch.sweep() == [left]
    assert not left.exists() and live.path.exists()
    live.cleanup()
    assert list(private_tmp.iterdir()) == []


def test_what_no_run_of_merklesync_made_stays(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a directory made by scratch.make (marked) whose lock nobody
    holds is swept: never a directory of the user's that happens to bear
    the name, with a lock file or a replica in it, however old."""
    monkeypatch.setattr(scratch, "SETTLE_S", 0.0)
    (private_tmp / "merklesync-a-file").write_text("not a directory")
    (private_tmp / "other-dir").mkdir()
    users = private_tmp / "merklesync-notes"  # the user's own, with a replica's state in it
    (users / ".merklesync").mkdir(parents=True)
    (users / "lock").write_text("")
    (users / "notes.txt").write_text("keep me")
    merge = private_tmp / "merklesync-merge-x"  # a merge's: no mark
    merge.mkdir()
    target = private_tmp / "target"
    target.mkdir()
    (target / "lock").write_text("")
    (target / scratch.MARK).write_text("")
    (private_tmp / "merklesync-link").symlink_to(target)
    fake = private_tmp / "merklesync-fake"  # the mark a directory, not a file
    (fake / scratch.MARK).mkdir(parents=True)
    (fake / "lock").write_text("")
    for path in (users, merge, fake):
        os.utime(path, (0, 0))  # long ago
    assert scratch.sweep() == []
    assert (users / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in private_tmp.iterdir()) == [
        "merklesync-a-file",
        "merklesync-fake",
        "merklesync-link",
        "merklesync-merge-x",
        "merklesync-notes",
        "other-dir",
        "target",
    ]


def test_a_dry_run_sweeps_what_a_killed_one_left(private_tmp: Path, tmp_path: Path) -> None:
    """A replica's throwaway copy (a dry run's, a snapshot's) is one too."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("f")
    left = _killed_run("dry-run")
    os.utime(left, (0, 0))  # long ago
    assert ms("init", "-n", root).code == 0
    assert list(private_tmp.iterdir()) == []
