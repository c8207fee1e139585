"""A replica on a read-only file system (a snapshot, a read-only mount): it
can be compared and copied from, never written, and nothing is left behind.

Each scenario runs in a mount namespace of its own (``unshare``), where the
replica is bind-mounted read-only: the mount ends with the scenario."""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from merklesync.errors import EXIT_IO
from tests.treegen import assert_same_tree, make_tree

RSH = Path(__file__).resolve().parents[1] / "remote" / "rsh.py"
MS = shlex.join([sys.executable, "-m", "merklesync"])


@functools.cache
def _unshare() -> list[str]:
    """How to get a mount namespace here: as root, or mapped to root."""
    for argv in (["unshare", "-m"], ["unshare", "-rm"]):
        try:
            if subprocess.run([*argv, "true"], capture_output=True).returncode == 0:
                return argv
        except OSError:
            break
    return []


def in_namespace(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) where ``$RO`` is ``tmp_path/a`` mounted read-only
    (``$A`` is the same replica, writable, outside the namespace only:
    a scenario does not write there). Temp files go to ``$TMPDIR``, to be
    checked empty after."""
    argv = _unshare()
    if not argv:
        pytest.skip("no mount namespace to be had here (unshare -m), so no read-only mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(temp),
        "MERKLESYNC_RSH": shlex.join([sys.executable, str(RSH)]),
    }
    body = (
        f"set -u\nmount --bind {shlex.quote(str(tmp_path / 'a'))} {shlex.quote(str(ro))} "
        f"&& mount -o remount,bind,ro {shlex.quote(str(ro))} || exit 99\n"
        f'RO={shlex.quote(str(ro))}\nms() {{ {MS} "$@"; }}\n{script}'
    )
    done = subprocess.run(
        [*argv, "sh", "-c", body], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode != 99, done.stderr
    assert not list(temp.iterdir()), "left behind in TMPDIR"
    return done


def state_of(root: Path) -> dict[str, str]:
    """Every file under ``root`` (its .merklesync/ too) by content digest."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def replica(tmp_path: Path) -> Path:
    a = tmp_path / "a"
    make_tree(a, files=60, dirs=6, seed=3)
    subprocess.run([*shlex.split(MS), "init", "-q", str(a)], check=True)
    return a


def test_compared_and_copied_from_nothing_written(tmp_path: Path, replica: Path) -> None:
    before = state_of(replica)
    done = in_namespace(
        tmp_path,
        'ms status -q "$RO" >/dev/null; echo status=$?\n'
        'ms push -q "$RO" b; echo push=$?\n'
        'ms diff "$RO" b; echo diff=$?\n'
        'echo new > b/d0000/added; ms diff --json "$RO" b >/dev/null; echo differ=$?\n'
        'ms conflicts -q "$RO"; echo conflicts=$?\n',
    )
    expected = ["status=0", "push=0", "diff=0", "differ=1", "conflicts=0"]
    assert done.stdout.split() == expected, done.stderr
    assert done.stderr == ""
    assert state_of(replica) == before
    (tmp_path / "b" / "d0000" / "added").unlink()
    assert_same_tree(replica, tmp_path / "b")


def test_a_write_there_is_refused_in_one_line(tmp_path: Path, replica: Path) -> None:
    """Into it (local and through the agent), or a two-way sync with it:
    exit 5, one line, nothing changed there."""
    before = state_of(replica)
    done = in_namespace(
        tmp_path,
        "mkdir b && echo new > b/new && ms init -q b\n"
        'ms push -q b "$RO"; echo push=$?\n'
        'ms push -q b "x:$RO"; echo remote=$?\n'
        'ms sync -q b "$RO"; echo sync=$?\n'
        'ms sync -q -n b "$RO"; echo dry=$?\n'
        'ms gc -q "$RO"; echo gc=$?\n'
        'ms repair -q b "$RO"; echo repair=$?\n',
    )
    codes = done.stdout.split()
    expected = ("push", "remote", "sync", "dry", "gc", "repair")
    assert codes == [f"{c}={EXIT_IO}" for c in expected], done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 6, lines
    assert all("read-only file system" in line for line in lines), lines
    assert "Traceback" not in done.stderr
    assert state_of(replica) == before
    # Refused before anything was written: the other side holds only its own.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".merklesync", "new"]


def test_forced_pull_from_it_through_the_agent(tmp_path: Path, replica: Path) -> None:
    """A restore from a snapshot: the version there overwrites a newer one
    (--force); the snapshot cannot record that it did (it is read-only), and
    the run does not fail for that."""
    before = state_of(replica)
    first = next(
        p for p in sorted(replica.rglob("*")) if p.is_file() and ".merklesync" not in p.parts
    )
    rel = first.relative_to(replica)
    done = in_namespace(
        tmp_path,
        f'ms push -q "$RO" b && echo changed > b/{shlex.quote(str(rel))}\n'
        "ms status -q b >/dev/null\n"
        'ms pull -q "x:$RO" b; echo pull=$?\n'
        'ms pull -q --force "x:$RO" b; echo forced=$?\n'
        'ms diff "x:$RO" b; echo diff=$?\n',
    )
    assert done.stdout.split() == ["pull=1", "forced=0", "diff=0"], done.stderr
    assert state_of(replica) == before
    assert_same_tree(replica, tmp_path / "b")


def test_a_snapshot_taken_mid_run_is_read_with_its_log(tmp_path: Path, replica: Path) -> None:
    """The index's write-ahead log, as a snapshot may hold it: read with the index."""
    import sqlite3

    index = replica / ".merklesync" / "index.db"
    # A reader from before the last run: what that run wrote stays in the log.
    keep = sqlite3.connect(index, isolation_level=None)
    keep.execute("BEGIN")
    keep.execute("SELECT count(*) FROM meta").fetchone()
    (replica / "late").write_text("after the snapshot's last checkpoint\n")
    subprocess.run(
        [*shlex.split(MS), "status", "-q", str(replica)], check=True, capture_output=True
    )
    try:
        assert index.with_name("index.db-wal").stat().st_size > 0
        done = in_namespace(tmp_path, 'ms status --json "$RO"; echo status=$?\n')
    finally:
        keep.close()
    out, code = done.stdout.rsplit("status=", 1)
    assert code.strip() == "0", done.stderr
    assert "late" not in out  # already in the index, from its log: no change to report


def test_a_snapshot_of_a_replica_compared_with_it(tmp_path: Path) -> None:
    """A snapshot shares its replica's id: `diff` compares the two (locally
    and through the agent); a copy from it into the replica is refused, with
    what to do instead, and neither is written."""
    live = tmp_path / "live"
    make_tree(live, files=40, dirs=4, seed=5)
    subprocess.run([*shlex.split(MS), "init", "-q", str(live)], check=True)
    subprocess.run(["cp", "-a", str(live), str(tmp_path / "a")], check=True)  # the snapshot
    target = next(
        p for p in sorted(live.rglob("*")) if p.is_file() and ".merklesync" not in p.parts
    )
    target.write_text("edited after the snapshot\n")
    rel = target.relative_to(live)
    before = state_of(tmp_path / "a")
    done = in_namespace(
        tmp_path,
        'ms diff "$RO" live; echo diff=$?\n'
        'ms diff live "x:$RO"; echo remote=$?\n'
        'ms pull -q --force "$RO" live; echo pull=$?\n',
    )
    expected = [f"M {rel}", "diff=1", f"M {rel}", "remote=1", "pull=3"]
    assert done.stdout.splitlines() == expected, done.stderr
    (line,) = done.stderr.splitlines()
    assert "read-only file system and has the replica id of" in line
    assert target.read_text() == "edited after the snapshot\n"
    assert state_of(tmp_path / "a") == before
