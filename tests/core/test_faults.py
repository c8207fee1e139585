"""Bad input and failures: one clear line, the documented exit code, no loss."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from merklesync import reading
from merklesync.lock import ReplicaLock
from merklesync.model import Entry, Unreadable
from merklesync.replica import Replica
from merklesync.sources import directory, directory_write, file_write, no_replace, placer
from tests.clirun import Result, ms, run_python
from tests.treegen import assert_same_tree, make_tree, mutate


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".merklesync" not in p.parts)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".merklesync-tmp-")]


def _wait_for_group_end(pgid: int, timeout: float = 30) -> None:
    """Until no process of the group is left running (a loaded machine may
    take a while to end the run's children after the run itself; a zombie
    nobody reaps, where PID 1 does not, counts as ended)."""
    deadline = time.monotonic() + timeout
    while _running_in_group(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} still running after {timeout} s")
        time.sleep(0.02)


def _running_in_group(pgid: int) -> bool:
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=40, dirs=5, seed=2)
    ms("init", src)
    return src, dst


def _placing(mode: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not mode:
        yield mode
        return
    monkeypatch.setattr(placer, "MIN_FILES", 1)
    monkeypatch.setattr(placer, "can_fork", lambda: mode == "fork")
    started: list[object] = []
    real = placer.spawn_child
    monkeypatch.setattr(placer, "spawn_child", lambda *a: started.append(a) or real(*a))
    yield mode
    assert bool(started) == (mode == "spawn")


@pytest.fixture(
    params=["", "fork", "spawn"], ids=["placed-here", "placing-process", "placing-spawned"]
)
def placing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test as written, then with every new file placed by the
    placing process (sources/placer.py), which a run starts only for many
    files: forked (as without other threads; pytest's workers have some),
    then a fresh interpreter (as with them: a pull over SSH)."""
    yield from _placing(request.param, monkeypatch)


@pytest.fixture(params=["", "fork"], ids=["placed-here", "placing-process"])
def placing_patched(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """As ``placing``, for a test that patches what the placing process
    runs: a forked one has the patches, a fresh interpreter would not."""
    yield from _placing(request.param, monkeypatch)


@pytest.fixture
def tiny_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 2 MiB file system (tmpfs) where we may mount one; elsewhere the
    writes into it fail with ENOSPC past 2 MiB, as they would."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        written = {"n": 0}
        real = file_write.write_all

        def limited(fd: int, data: bytes) -> None:
            written["n"] += len(data)
            if written["n"] > 2 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd, data)

        monkeypatch.setattr(file_write, "write_all", limited)
    yield mnt
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_removes_temp_file_and_keeps_destination(
    tmp_path: Path, tiny_disk: Path, placing: str
) -> None:
    if placing == "spawn" and not os.path.ismount(tiny_disk):
        pytest.skip("the full disk is simulated in this process: a spawned one has a real disk")
    src, dst = tmp_path / "src", tiny_disk / "dst"
    (src / "d").mkdir(parents=True)
    (src / "small").write_bytes(b"s" * 1000)
    (src / "d/big").write_bytes(os.urandom(3 << 20))
    ms("init", src)
    r = ms("push", src, dst)
    assert r.code == 5, r.err
    assert r.err.startswith("merklesync: error: ") and "No space left" in r.err
    assert "Traceback" not in r.err
    assert _temp_files(dst) == []
    assert not (dst / "d/big").exists()
    (src / "d/big").write_bytes(b"now it fits")
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_source_changed_during_transfer_is_skipped_and_reported(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, placing: str
) -> None:
    src, dst = pair
    victim = _files(src)[0]
    real_read = directory.DirectorySource.read

    def read_then_change(self: directory.DirectorySource, entry):  # type: ignore[no-untyped-def]
        if entry.path == victim.relative_to(src).as_posix():
            victim.write_bytes(b"x" * entry.size)  # same size, new bytes
        return real_read(self, entry)

    monkeypatch.setattr(directory.DirectorySource, "read", read_then_change)
    r = ms("push", src, dst)
    monkeypatch.undo()
    assert r.code == 1
    assert "changed during transfer" in r.err
    assert not (dst / victim.relative_to(src)).exists()
    assert _temp_files(dst) == []
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_destination_changed_after_scan_is_not_overwritten(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = pair
    ms("push", src, dst)
    victim = _files(src)[0]
    rel = victim.relative_to(src)
    victim.write_text("new on the source")
    real = directory_write.DirectoryWriter._recheck

    def edit_first(self: directory_write.DirectoryWriter, spot, on_disk):  # type: ignore[no-untyped-def]
        if spot.rel == rel.as_posix():
            (dst / rel).write_text("a user edit that must survive")
        return real(self, spot, on_disk)

    monkeypatch.setattr(directory_write.DirectoryWriter, "_recheck", edit_first)
    r = ms("push", src, dst)
    monkeypatch.undo()
    assert r.code == 1
    assert "changed on the destination during the transfer" in r.err
    assert (dst / rel).read_text() == "a user edit that must survive"
    assert _temp_files(dst) == []


def _one_old_file_pushed(tmp_path: Path) -> tuple[Path, Path]:
    """Replicas a and b holding the same file f, of an old mtime."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "f").write_text("same bytes")
    os.utime(a / "f", (1_000_000_000, 1_000_000_000))
    assert ms("init", a).code == 0 and ms("push", a, b).code == 0
    return a, b


@pytest.mark.parametrize("touched", [False, True], ids=["its-mode", "its-mode-and-mtime"])
def test_a_file_edited_on_the_destination_while_its_mode_is_set_is_not_taken_for_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, touched: bool
) -> None:
    """The same bytes on both sides, a new mode (and mtime) to set: the
    user edits the destination's file just after it was verified. The
    edit keeps its bytes and its mtime, and the next scan finds it."""
    a, b = _one_old_file_pushed(tmp_path)
    (a / "f").chmod(0o600)
    if touched:
        os.utime(a / "f", (1_100_000_000, 1_100_000_000))
    real = directory_write.DirectoryWriter._verify_unchanged

    def verify_then_edit(self, spot, cached, entry):  # type: ignore[no-untyped-def]
        on_disk = real(self, spot, cached, entry)
        if spot.rel == "f" and self.root == b.resolve():
            (b / "f").write_text("USER EDIT!")  # the same size
        return on_disk

    monkeypatch.setattr(directory_write.DirectoryWriter, "_verify_unchanged", verify_then_edit)
    r = ms("push", a, b)
    monkeypatch.undo()
    assert (b / "f").read_text() == "USER EDIT!"
    assert (b / "f").stat().st_mtime_ns > 1_100_000_000 * 10**9
    status = ms("status", b, "--json").json()
    assert status["modified"] == ["f"], status
    assert r.code == 1 and "f: changed on the destination during the transfer" in r.err, r.err


def test_a_file_whose_mtime_was_set_is_read_again_by_the_next_scan(tmp_path: Path) -> None:
    """Setting a file's mtime would hide a write made just before: its
    stat is not cached, the next scan reads it. A change of mode alone
    leaves the mtime, which a write would have moved: it is cached."""
    a, b = _one_old_file_pushed(tmp_path)
    (a / "f").chmod(0o600)
    assert ms("push", a, b).code == 0
    assert ms("status", b, "--json").json()["hashed"] == 0
    (a / "f").chmod(0o640)
    os.utime(a / "f", (1_100_000_000, 1_100_000_000))
    assert ms("push", a, b).code == 0
    assert (b / "f").stat().st_mtime_ns == 1_100_000_000 * 10**9
    assert (b / "f").stat().st_mode & 0o777 == 0o640
    status = ms("status", b, "--json").json()
    assert status["hashed"] == 1 and status["modified"] == [], status


@pytest.mark.parametrize("mode", [0o750, 0o755], ids=["its-mode-changed", "its-version-only"])
def test_a_directory_chmodded_on_the_destination_since_the_scan_is_left_alone(
    tmp_path: Path, mode: int
) -> None:
    """Compare-and-swap holds for a directory's mode as for a file's: a
    write of a new mode finds the mode the user gave it since the scan and
    is refused. A new version only (the same mode) touches nothing on disk
    and is recorded; either way the user's mode stays, and the next scan
    finds that change as the user's, made after the version recorded."""
    import dataclasses

    from merklesync.clock import Order
    from merklesync.model import WriteItem, leaf_of
    from merklesync.peer.local import LocalPeer

    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    (root / "d").chmod(0o755)
    peer = LocalPeer.open(root, create=True)
    try:
        peer.refresh()
        cached = peer.replica.index.get("d")
        assert cached is not None and cached.entry.mode == 0o755
        old = cached.entry
        (root / "d").chmod(0o700)  # the user, after the scan
        newer = dataclasses.replace(old.with_version(old.vv.bump("peer"), old.stamp + 1), mode=mode)
        [outcome] = peer.write([WriteItem(newer, leaf_of(old))])
    finally:
        peer.close()
    if mode == old.mode:
        assert outcome.ok, outcome
    else:
        assert not outcome.ok and outcome.reason == "changed on the destination since the scan"
    assert (root / "d").stat().st_mode & 0o777 == 0o700
    r = ms("status", root, "--json")
    assert r.json()["modified"] == ["d"], r.out
    peer = LocalPeer.open(root)
    try:
        now = peer.replica.index.get("d")
        assert now is not None and now.entry.mode == 0o700
        assert now.entry.vv.compare(newer.vv if outcome.ok else old.vv) is Order.AFTER
    finally:
        peer.close()


def test_unreadable_file_is_skipped_and_the_rest_finishes(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = pair
    victim = _files(src)[0]
    victim.write_text("fresh")
    real_open = os.open

    def deny(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        relative = kwargs.get("dir_fd") is not None and os.fspath(path) == victim.name
        if os.fspath(path) == os.fspath(victim) or relative:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    r = ms("push", src, dst)
    d = ms("diff", src, dst, "--json")
    sy = ms("sync", src, dst)
    monkeypatch.undo()
    assert r.code == 1, r.err  # finished the rest, but not a success
    assert f"{victim.relative_to(src)}: cannot read: Permission denied" in r.err
    assert len(_files(dst)) == len(_files(src)) - 1
    assert d.code == 1 and not d.json()["identical"], d.out
    assert any("Permission denied" in w for w in d.json()["warnings"])
    assert sy.code == 1, sy.err


def test_special_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    os.mkfifo(root / "pipe")
    (root / "f").write_text("x")
    r = ms("init", root)
    assert r.code == 1  # finished, a file skipped: each named
    assert "pipe: not a file, directory or link; skipped" in r.err


def test_second_process_gets_a_clear_lock_error(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = pair
    monkeypatch.setattr("merklesync.lock.DEFAULT_WAIT", 0.2)
    held = ReplicaLock(src / ".merklesync" / "lock")
    held.acquire()
    try:
        from merklesync import replica

        monkeypatch.setattr(replica, "ReplicaLock", lambda path: ReplicaLock(path, wait=0.2))
        r = ms("status", src)
    finally:
        held.release()
    assert r.code == 4
    assert "in use by another merklesync process" in r.err


def test_corrupt_index_is_reported_and_rebuilt(pair: tuple[Path, Path]) -> None:
    src, dst = pair
    db = src / ".merklesync" / "index.db"
    for side in ("index.db-wal", "index.db-shm"):
        (src / ".merklesync" / side).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    r = ms("status", src)
    assert r.code == 3
    assert "merklesync init --rebuild" in r.err and "Traceback" not in r.err
    assert f"the replica index {db} is unreadable" in r.err, r.err
    r = ms("init", "--rebuild", src)
    assert r.code == 0, r.err
    assert "kept as" in r.err
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


@pytest.mark.parametrize(
    ("sql", "detail"),
    [
        ("UPDATE meta SET value = 'abc' WHERE key = 'hlc'", "bad clock"),
        ("DELETE FROM meta WHERE key = 'replica_id'", "no replica id"),
        ("UPDATE meta SET value = 99 WHERE key = 'depth'", "bad tree depth"),
    ],
)
def test_damaged_facts_are_a_corrupt_index(pair: tuple[Path, Path], sql: str, detail: str) -> None:
    src, dst = pair
    assert ms("push", src, dst).code == 0
    conn = sqlite3.connect(src / ".merklesync" / "index.db")
    conn.execute(sql)
    conn.commit()
    conn.close()
    for args in (("status", src), ("push", src, dst), ("push", dst, src)):
        r = ms(*args)
        assert r.code == 3, (args, r.err)
        assert detail in r.err and "merklesync init --rebuild" in r.err, r.err
        assert "Traceback" not in r.err and len(r.err.splitlines()) == 1


def test_init_again_is_a_scan_and_rebuild_spares_a_readable_index(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    first = ms("init", root, "--json").json()
    again = ms("init", root, "--json")
    assert again.code == 0 and again.json()["replica_id"] == first["replica_id"]
    assert "already in" in ms("init", root).out
    r = ms("init", "--rebuild", root)
    assert r.code == 2 and "is readable" in r.err and "nothing done" in r.err
    assert ms("init", root, "--json").json()["replica_id"] == first["replica_id"]
    # A damaged row: every command says to rebuild, and rebuild does.
    conn = sqlite3.connect(root / ".merklesync" / "index.db")
    conn.execute("UPDATE entries SET vv = x'c1c1c1' WHERE path = 'f'")
    conn.commit()
    conn.close()
    (root / "f").write_text("changed")
    assert "init --rebuild" in ms("status", root).err
    r = ms("init", "--rebuild", root)
    assert r.code == 0, r.err
    assert ms("status", root).code == 0


@pytest.mark.parametrize("column", ["leaf", "key"])
def test_a_row_whose_stored_hash_is_not_its_own_is_damaged(tmp_path: Path, column: str) -> None:
    """Reads trust the stored leaf hash (the tree is made of them): a row
    whose leaf or key is not what its fields give makes the index one to
    rebuild."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    assert ms("init", root).code == 0
    assert ms("init", "--rebuild", root).code == 2  # readable: spared
    conn = sqlite3.connect(root / ".merklesync" / "index.db")
    size = 32 if column == "leaf" else 8
    conn.execute(f"UPDATE entries SET {column} = zeroblob({size}) WHERE path = 'f'")
    conn.commit()
    conn.close()
    r = ms("init", "--rebuild", root)
    assert r.code == 0, r.err
    assert ms("status", root).code == 0
    assert ms("init", "--rebuild", root).code == 2  # rebuilt: readable again


def test_rebuild_sets_aside_whatever_is_where_the_index_should_be(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    assert ms("init", root).code == 0
    index = root / ".merklesync" / "index.db"
    index.unlink()
    index.mkdir()  # no index at all: a directory
    (index / "junk").write_text("j")
    assert ms("status", root).code != 0
    r = ms("init", "--rebuild", root)
    assert r.code == 0, r.err
    assert ms("status", root).code == 0


def test_rebuild_twice_in_a_second_keeps_both_indexes_set_aside(tmp_path: Path) -> None:
    """The user's broken index, then what a rebuild stopped half way left:
    the second rebuild sets that aside under a name of its own, never over
    the first (the names tell the second only)."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    assert ms("init", root).code == 0
    state = root / ".merklesync"
    (state / "index.db").write_bytes(b"the user's broken index")
    assert ms("init", "--rebuild", root).code == 0
    (state / "index.db").write_bytes(b"half made")
    (state / "index.db-wal").write_bytes(b"its log")
    assert ms("init", "--rebuild", root).code == 0
    aside = {p.name: p.read_bytes() for p in state.glob("index.db.broken-*")}
    assert {b"half made", b"its log", b"the user's broken index"} <= set(aside.values())
    assert ms("status", root).code == 0


def test_index_from_a_newer_format_is_refused(pair: tuple[Path, Path]) -> None:
    src, _ = pair
    conn = sqlite3.connect(src / ".merklesync" / "index.db")
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'format'")
    conn.commit()
    conn.close()
    r = ms("status", src)
    assert r.code == 3
    assert "format 99" in r.err


def _interrupt_writes_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """A Ctrl-C as the run's ``n``-th write (of any batch) is about to be made."""
    real = directory.DirectorySource.write_items
    calls = {"n": 0}

    def crash_midway(self, items, index, clock):  # type: ignore[no-untyped-def]
        def counted():  # type: ignore[no-untyped-def]
            for item in items:
                calls["n"] += 1
                if calls["n"] == n:
                    raise KeyboardInterrupt
                yield item

        return real(self, counted(), index, clock)

    monkeypatch.setattr(directory.DirectorySource, "write_items", crash_midway)


def test_interrupted_push_resumes(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, placing: str
) -> None:
    src, dst = pair
    _interrupt_writes_at(monkeypatch, 20)
    r = ms("push", src, dst)
    monkeypatch.undo()
    assert r.code == 130
    assert _temp_files(dst) == []
    r = ms("push", src, dst, "--json")
    assert r.code == 0
    assert 0 < len(r.json()["changes"]) < 45
    assert_same_tree(src, dst)


def _stopped_midway(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> Result:
    """Run a command whose 30th write meets a Ctrl-C, in batches of 8 (so
    some batches finish first); check it says it was interrupted."""
    from merklesync import transfer

    monkeypatch.setattr(transfer, "BATCH_FILES", 8)
    _interrupt_writes_at(monkeypatch, 30)
    r = ms(*args)
    monkeypatch.undo()
    assert r.code == 130 and r.err.endswith("merklesync: interrupted\n"), r.err
    return r


def test_an_interrupted_push_still_lists_under_v_what_it_did(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """-v lists the changes at the end; a run stopped midway (Ctrl-C,
    SIGTERM) lists those its finished batches made, each on disk, before
    it says it was interrupted."""
    src, dst = pair
    listed = _stopped_midway(monkeypatch, "push", "-v", src, dst).lines()
    assert 8 <= len(listed) < 30, listed
    assert listed == sorted(listed) and all(line.startswith("A ") for line in listed)
    assert all((dst / line[2:]).exists() for line in listed)
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_an_interrupted_sync_still_lists_under_v_the_copies_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As push: a sync stopped midway lists under -v the copies its
    finished batches made (each on disk there), then says it was
    interrupted; the next sync completes."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=40, dirs=5, seed=2)
    make_tree(b, files=10, dirs=2, seed=9)
    assert ms("init", a).code == 0 and ms("init", b).code == 0
    listed = _stopped_midway(monkeypatch, "sync", "-v", a, b).lines()
    assert 8 <= len(listed) < 30, listed
    assert listed == sorted(listed, key=lambda line: line.split(" ", 2)[2]), listed
    for line in listed:
        arrow, kind, path = line.split(" ", 2)
        assert kind == "A" and arrow in ("a->b", "b->a"), line
        assert (b / path if arrow == "a->b" else a / path).exists(), line
    assert ms("sync", a, b).code == 0
    assert_same_tree(a, b)


def test_an_interrupted_repair_lists_under_v_the_copies_of_the_pair_it_stopped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, a, b = tmp_path / "hub", tmp_path / "a", tmp_path / "b"
    make_tree(hub, files=5, dirs=1, seed=3)
    make_tree(a, files=40, dirs=5, seed=2)
    b.mkdir()
    for root in (hub, a, b):
        assert ms("init", root).code == 0
    r = _stopped_midway(monkeypatch, "repair", "-v", hub, a, b)
    arrow = f"{a.resolve()} -> {hub.resolve()}"
    copied = [line for line in r.lines() if line.startswith(arrow + " ")]
    assert 8 <= len(copied) < 30, r.out
    assert all(line.split(" ")[3] == "A" for line in copied), copied
    assert all((hub / line.split(" ", 4)[4]).exists() for line in copied), copied
    assert ms("repair", hub, a, b).code == 0
    assert_same_tree(hub, a)
    assert_same_tree(hub, b)


def test_ctrl_c_in_a_terminal_during_a_first_copy_leaves_no_temp_file(tmp_path: Path) -> None:
    # Ctrl-C reaches the whole process group: the process placing files as
    # well as the run. The run ends it (the file being placed is finished
    # or removed); it used to die of its parent's end mid-file, now and
    # then, and leave the file's temp name in the replica.
    src = tmp_path / "src"
    make_tree(src, files=3000, dirs=30, seed=4, max_size=1500)
    assert ms("init", src).code == 0
    codes = []
    for at in (100, 900):  # files placed at the Ctrl-C: by the run itself, by its placer
        dst = tmp_path / f"dst-{at}"
        run = subprocess.Popen(
            [sys.executable, "-m", "merklesync", "push", "-q", str(src), str(dst)],
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while run.poll() is None and time.monotonic() < deadline:
            if dst.exists() and sum(1 for _ in dst.rglob("f*")) >= at:
                os.killpg(run.pid, signal.SIGINT)
                break
            time.sleep(0.01)
        codes.append(run.wait(60))
        _wait_for_group_end(run.pid)  # anything left behind by a process still ending
        assert _temp_files(dst) == []
        assert ms("push", str(src), str(dst)).code == 0
        assert_same_tree(src, dst)
    assert set(codes) <= {0, 130} and 130 in codes  # interrupted, at least once


def _first_copy_signalled(
    tmp_path: Path,
    signum: int,
    *,
    group: bool,
    sighup: str,
    quiet: bool = False,
    first: str = "**/f0*",
) -> tuple[Path, Path, int, str, bool]:
    """A first copy of a 3,000-file tree by a push in a process of its own,
    started with SIGHUP's disposition ``sighup`` (SIG_DFL, SIG_IGN as under
    nohup: whatever this process inherited) and sent ``signum`` (``group``:
    to its whole process group) once what ``first`` matches under the
    destination is there (its first file; the note made before its first
    directory). Its source, destination, exit status, standard error, and
    whether it was sent."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=3000, dirs=30, seed=5, max_size=1500)
    assert ms("init", src).code == 0
    started = (
        f"import signal; signal.signal(signal.SIGHUP, signal.{sighup}); "
        "from merklesync.cli import main; main()"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", started, "push", *(["-q"] if quiet else []), str(src), str(dst)],
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent = False
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline:
        if dst.exists() and next(dst.glob(first), None) is not None:
            (os.killpg if group else os.kill)(run.pid, signum)
            sent = True
            break
        time.sleep(0.01)
    _, err = run.communicate(timeout=60)
    _wait_for_group_end(run.pid)  # anything left behind by a process still ending
    return src, dst, run.returncode, err, sent


@pytest.mark.parametrize(
    "first", [".merklesync/final-modes", "**/f0*"], ids=["making-directories", "placing-files"]
)
@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGHUP, True)],
    ids=["sigterm-the-run", "sigterm-its-group", "sighup-its-group"],
)
def test_sigterm_during_a_first_copy_ends_it_as_ctrl_c_does(
    tmp_path: Path, signum: int, group: bool, first: str
) -> None:
    """systemd, timeout and kill send SIGTERM: to the run, or (systemd) to
    every process of it; a terminal or SSH session that goes sends SIGHUP
    to all of its processes. One line, no temp file left, then it dies of
    the signal (as git and rsync do); while it makes the directories (a
    signal arriving in a mkdir is raised as it returns) or places the
    files. The next push finishes the copy: nothing left is taken for a
    change made there."""
    src, dst, code, err, _sent = _first_copy_signalled(
        tmp_path, signum, group=group, sighup="SIG_DFL", first=first
    )
    assert code == -signum, err  # dies of it once clean (a shell: 143, 129)
    assert err.strip() == "merklesync: terminated"
    assert _temp_files(dst) == []
    assert ms("push", str(src), str(dst)).code == 0
    assert_same_tree(src, dst)


# A SIGTERM or Ctrl-C that lands while a finalizer runs (here the first
# OpenFile's): Python drops what a __del__ raises, with a traceback.
_SIGNALLED_IN_A_FINALIZER = """
import os, signal, sys
from merklesync import reading
signum = getattr(signal, sys.argv.pop(1))
real_del = reading.OpenFile.__del__
sent = []
def finalized(self):
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), signum)  # its handler runs here, in the finalizer
    real_del(self)
reading.OpenFile.__del__ = finalized
from merklesync.cli import main
main()
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_that_lands_in_a_finalizer_still_ends_the_run(
    pair: tuple[Path, Path], signame: str
) -> None:
    """It is raised again as the finalizer returns: the run ends as for any
    other (one line, no traceback), instead of going on as if never told."""
    src, dst = pair
    mutate(src, modify=20, add=20, delete=0, seed=8)
    done = run_python(_SIGNALLED_IN_A_FINALIZER, signame, "push", src, dst)
    if signame == "SIGTERM":
        assert (done.returncode, done.stderr) == (-signal.SIGTERM, "merklesync: terminated\n")
    else:
        assert (done.returncode, done.stderr) == (130, "merklesync: interrupted\n")
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_a_run_under_nohup_outlives_the_hangup(tmp_path: Path) -> None:
    """SIGHUP ignored when the run starts (nohup) stays ignored: the
    session that goes does not end the copy."""
    src, dst, code, err, hung_up = _first_copy_signalled(
        tmp_path, signal.SIGHUP, group=True, sighup="SIG_IGN", quiet=True
    )
    assert hung_up and code == 0, err
    assert_same_tree(src, dst)


def test_same_second_edit_is_not_missed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    f = root / "f"
    f.write_text("aaaa")
    ms("init", root)
    st = f.stat()
    f.write_text("bbbb")  # same size, likely the same mtime tick
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = ms("status", root, "--json").json()
    assert r["modified"] == ["f"]


def test_checksum_rehashes_everything(pair: tuple[Path, Path]) -> None:
    src, _ = pair
    old = time.time() - 3600
    for f in _files(src):
        os.utime(f, (old, old))
    ms("status", src)
    assert ms("status", src, "--json").json()["hashed"] == 0
    assert ms("status", src, "--checksum", "--json").json()["hashed"] == len(_files(src))


def test_names_a_peer_would_refuse_are_skipped_with_a_warning(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    (src / "bad\nname").write_text("newline in the name")
    (src / "esc\x1b[31m").write_text("terminal escape")
    (src / os.fsdecode(b"latin1-\xe9")).write_text("not UTF-8")
    r = ms("init", src)
    assert r.code == 1  # finished, files skipped: each named
    assert r.err.count("skipped") == 3 and "Traceback" not in r.err
    assert "control character in path: 'bad\\nname'" in r.err
    r = ms("push", src, dst)
    assert r.code == 1, r.err  # the skipped names did not travel
    assert sorted(p.name for p in dst.iterdir()) == [".merklesync", "ok.txt"]


def test_unexpected_os_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from merklesync import replica

    root = tmp_path / "r"
    root.mkdir()
    ms("init", root)
    (root / ".merklesync" / "index.db").write_bytes(b"not a database" * 100)

    def broken(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(root / ".merklesync"))

    monkeypatch.setattr(replica.os, "replace", broken)
    r = ms("init", "--rebuild", root)
    assert r.code == 5
    assert r.err == f"merklesync: error: {root / '.merklesync'}: Permission denied\n"


def test_bad_rsh_is_a_usage_error(tmp_path: Path) -> None:
    ms("init", tmp_path)
    r = ms("diff", tmp_path, "host:/x", "--rsh", "ssh 'unbalanced")
    assert r.code == 2
    assert "bad --rsh command" in r.err and "Traceback" not in r.err


def test_never_writes_through_a_symlink_made_earlier_in_the_same_batch(
    tmp_path: Path, placing: str
) -> None:
    import blake3

    from merklesync.clock import VersionVector
    from merklesync.model import Entry, EntryKind, WriteItem
    from merklesync.peer.local import LocalPeer
    from merklesync.sources.on_disk import link_digest

    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "r"
    root.mkdir()
    vv = VersionVector.of({"peer": 1})
    directory = Entry("a", EntryKind.DIR, vv, mode=0o755)
    link = Entry(
        "a", EntryKind.LINK, vv.bump("peer"), digest=link_digest(str(outside)), target=str(outside)
    )
    data = b"payload"
    file = Entry(
        "a/x", EntryKind.FILE, vv, digest=blake3.blake3(data).digest(), size=len(data), mode=0o644
    )
    peer = LocalPeer.open(root, create=True)
    try:
        outcomes = peer.write(
            [
                WriteItem(directory, None),
                WriteItem(
                    Entry(
                        "a/y", EntryKind.FILE, vv, digest=file.digest, size=len(data), mode=0o644
                    ),
                    None,
                    [data],
                ),
                WriteItem(
                    Entry("a/y", EntryKind.FILE, vv.bump("peer"), deleted=True),
                    Entry(
                        "a/y", EntryKind.FILE, vv, digest=file.digest, size=len(data), mode=0o644
                    ).leaf_hash(),
                ),
                WriteItem(link, directory.leaf_hash()),
                WriteItem(file, None, [data]),
            ]
        )
    finally:
        peer.close()
    assert [o.ok for o in outcomes][:4] == [True, True, True, True]
    assert not outcomes[4].ok and "not a directory" in outcomes[4].reason
    assert list(outside.iterdir()) == []


def test_a_damaged_row_is_a_corrupt_index_not_a_traceback(pair: tuple[Path, Path]) -> None:
    src, _ = pair
    conn = sqlite3.connect(src / ".merklesync" / "index.db")
    conn.execute(
        "UPDATE entries SET vv = x'c1c1' WHERE rowid IN (SELECT rowid FROM entries LIMIT 1)"
    )
    conn.commit()
    conn.close()
    (src.parent / "elsewhere").mkdir()
    ms("init", src.parent / "elsewhere")
    r = ms("push", src, src.parent / "elsewhere")
    assert r.code == 3, r.err
    assert "merklesync init --rebuild" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("atomic", [True, False], ids=["renameat2", "look-then-rename"])
def test_a_file_made_on_the_destination_during_the_transfer_is_not_overwritten(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, atomic: bool, placing_patched: str
) -> None:
    src, dst = pair
    ms("push", src, dst)
    (src / "brand-new.txt").write_text("from the source")
    if atomic and sys.platform.startswith("linux"):
        assert no_replace._renameat2() is not None  # glibc 2.28+: the atomic way is tested
    real = file_write.rename_noreplace

    def intruder(tmp: str, name: str, dir_fd: int) -> bool:
        if name == "brand-new.txt":
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            os.write(fd, b"made here meanwhile")
            os.close(fd)
        return real(tmp, name, dir_fd) if atomic else False  # False: where renameat2 is missing

    monkeypatch.setattr(file_write, "rename_noreplace", intruder)
    r = ms("push", src, dst)
    monkeypatch.undo()
    assert r.code == 1
    assert "an unscanned file is in the way on the destination" in r.err
    assert (dst / "brand-new.txt").read_text() == "made here meanwhile"
    assert _temp_files(dst) == []


def test_rename_noreplace_never_replaces(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_text("a")
    b.write_text("b")
    placed = no_replace.rename_noreplace(str(a), str(c))
    assert placed == (no_replace._renameat2() is not None)
    if placed:
        assert c.read_text() == "a" and not a.exists()
        with pytest.raises(FileExistsError):
            no_replace.rename_noreplace(str(c), str(b))
        assert b.read_text() == "b" and c.read_text() == "a"


@pytest.mark.parametrize(
    ("content", "told", "chunk"),
    [
        (b"", 0, 8),
        (b"exactly", 7, 8),
        (b"exactly8", 8, 8),  # a full first read: one more read finds the end
        (b"more than one chunk here", 24, 5),
        (b"grew after the stat", 4, 8),  # read on to the real end
        (b"short", 9, 8),  # shrank: what there is
    ],
)
def test_read_chunks_reads_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, told: int, chunk: int
) -> None:
    monkeypatch.setattr(reading, "CHUNK", chunk)
    f = tmp_path / "f"
    f.write_bytes(content)
    fd = os.open(f, os.O_RDONLY)
    try:
        chunks = list(reading.read_chunks(fd, told))
    finally:
        os.close(fd)
    assert b"".join(chunks) == content
    assert all(0 < len(c) <= chunk for c in chunks)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_source_file_is_closed_when_its_content_is_dropped_unread(tmp_path: Path) -> None:
    """A write refused before its content is read (ignored on the
    destination, changed there since the comparison) drops the content:
    the file it was to be read from is closed then, not when the run ends."""
    (tmp_path / "f").write_bytes(b"content")
    with Replica.open(tmp_path, create=True) as replica:
        replica.scan()
        cached = replica.index.get("f")
        assert cached is not None
        content = replica.source.read(cached.entry)
        assert isinstance(content, reading.OpenFile)
        fd = content.fd
        assert _is_open(fd)
        del content
        assert not _is_open(fd)

        content = replica.source.read(cached.entry)
        assert isinstance(content, reading.OpenFile)
        fd = content.fd
        assert b"".join(content) == b"content"
        assert not _is_open(fd)  # read to its end


def test_a_link_whose_target_is_not_utf8_is_skipped_with_a_warning(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "f").write_text("1")
    assert ms("init", a).code == 0
    os.symlink(b"tgt\xff", os.fsencode(a / "badtarget"))
    r = ms("status", a)
    assert r.code == 1 and "badtarget: link target is not UTF-8" in r.err, r.err
    r = ms("push", a, b)
    assert r.code == 1 and "badtarget: link target is not UTF-8" in r.err, r.err
    assert (b / "f").read_text() == "1" and not os.path.lexists(b / "badtarget")


def test_ctrl_c_before_a_command_runs_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from merklesync import cli
    from merklesync.cli import app

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(app.LazyGroup, "get_command", interrupted)
    monkeypatch.setattr(sys, "argv", ["merklesync", "status"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_parent_swapped_for_a_symlink_mid_push_leads_no_write_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent is checked, then swapped for a symlink just before the
    file is created in it: every write goes where the check looked."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    for i in range(5):
        (src / "d").mkdir(parents=True, exist_ok=True)
        (src / "d" / f"f{i}").write_text(f"file {i}")
    ms("init", src)
    ms("init", dst)
    (dst / "d").mkdir()
    outside.mkdir()
    real = file_write.temp_name
    swapped: list[str] = []

    def swap_first(name: str) -> str:
        if not swapped:
            os.rename(dst / "d", dst / "d-moved")
            os.symlink(outside, dst / "d")
            swapped.append(name)
        return real(name)

    monkeypatch.setattr(file_write, "temp_name", swap_first)
    ms("push", src, dst)
    monkeypatch.undo()
    assert swapped and list(outside.iterdir()) == []
    # Where it was checked: in the directory opened before the swap (the
    # writes of the same batch too, through the same descriptor; later
    # batches find the link, and refuse).
    written = {p.name for p in (dst / "d-moved").iterdir()}
    assert swapped[0] in written and written <= {f"f{i}" for i in range(5)}


def test_a_directory_swapped_for_a_symlink_after_the_scan_is_never_read_through(
    tmp_path: Path,
) -> None:
    """A directory swapped for a link to one outside the replica after the
    scan: its files are gone for the reader (as a file changed since the
    scan is), never read from outside, and the others are read as before."""
    from merklesync.peer.local import LocalPeer

    root, outside = tmp_path / "r", tmp_path / "outside"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"inside")
    (root / "d" / "e" / "g").write_bytes(b"inside too")
    (root / "h").write_bytes(b"here")
    (outside / "e").mkdir(parents=True)
    (outside / "f").write_bytes(b"SECRET")  # the same sizes, other bytes
    (outside / "e" / "g").write_bytes(b"SECRET TOO")
    peer = LocalPeer.open(root, create=True)
    try:
        peer.refresh()
        entries = [peer.replica.index.get(p) for p in ("d/e/g", "d/f", "h")]
        os.rename(root / "d", tmp_path / "d-moved")
        os.symlink(outside, root / "d")
        got = {
            e.path: None if isinstance(chunks, Unreadable) else b"".join(chunks)
            for e, chunks in peer.read([c.entry for c in entries if c is not None])
        }
    finally:
        peer.close()
    assert got == {"d/e/g": None, "d/f": None, "h": b"here"}


# A command killed (SIGKILL) at a point of the destination's run: "finish",
# where what was written is recorded and read-only directories are still
# writable; "record", just before the directory "ro" is recorded.
_KILLED_AT = """
import os, signal, sys
from merklesync.index import Index
from merklesync.sources import directory
point, dst = sys.argv[1], os.path.realpath(sys.argv[2])
del sys.argv[1:3]
real_finish = directory.DirectorySource.finish
def finish(self):
    if point == "finish" and str(self.root) == dst:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_finish(self)
directory.DirectorySource.finish = finish
real_put = Index.put
def put(self, entry, stat, old):
    if point == "record" and entry.path == "ro" and str(self.path).startswith(dst + "/"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_put(self, entry, stat, old)
Index.put = put
from merklesync.cli import main
sys.argv = ["merklesync", *sys.argv[1:]]
main()
"""


def _run_killed_at(point: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """A command in a process of its own (killed at ``point``: see
    _KILLED_AT; "none": not), with a user's rights: as root, without the
    rights to write where the mode says no (so a read-only directory is
    one, as for everyone else)."""
    as_a_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run without root's rights")
        as_a_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    dst = args[-1]
    return subprocess.run(
        [*as_a_user, sys.executable, "-c", _KILLED_AT, point, str(dst), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _writable_again(*roots: Path) -> None:
    for root in roots:
        for d in [root, *root.rglob("*")]:
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o755)


@pytest.mark.parametrize("point", ["finish", "record"])
def test_a_push_killed_before_its_end_leaves_no_read_only_directory_writable(
    tmp_path: Path, point: str
) -> None:
    """Read-only directories are writable to their owner until the end of
    the run: one killed before then leaves nothing that the next scan, or
    a sync, takes for a change of mode made on the destination."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "ro/inner").mkdir(parents=True)
    (a / "ro/inner/file").write_text("x")
    (a / "ro/inner").chmod(0o555)
    (a / "ro").chmod(0o500)
    try:
        assert ms("init", a).code == 0
        r = _run_killed_at(point, "push", a, b)
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert (b / "ro").is_dir()
        status = ms("status", b, "--json").json()
        assert "ro" not in status["modified"], status
        assert (b / "ro").stat().st_mode & 0o777 == 0o500
        r = _run_killed_at("none", "sync", a, b)
        assert r.returncode == 0, r.stderr
        assert_same_tree(a, b)
        for root in (a, b):
            assert (root / "ro").stat().st_mode & 0o777 == 0o500
            assert (root / "ro/inner").stat().st_mode & 0o777 == 0o555
        assert ms("sync", a, b, "--json").json()["events"] == []
        assert not (b / ".merklesync" / "final-modes").exists()
    finally:
        _writable_again(a, b)


def test_the_note_of_directories_left_writable_is_read_with_care(tmp_path: Path) -> None:
    """What the note names outside the replica, and what does not parse
    (a record cut short), is left alone; the rest is done, then the note
    is gone."""
    import msgpack

    root, outside = tmp_path / "r", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    for d in (root / "d", outside):
        d.chmod(0o755)
    assert ms("init", root).code == 0
    note = root / ".merklesync" / "final-modes"
    records = [["../outside", 0o555, True], ["/abs", 0o555, True], ["d", 0o555, True]]
    note.write_bytes(
        b"".join(msgpack.packb(r) for r in records) + msgpack.packb(["d", 0o700, True])[:-1]
    )
    ms("status", root)
    assert (root / "d").stat().st_mode & 0o777 == 0o555
    assert outside.stat().st_mode & 0o777 == 0o755
    assert not note.exists()
    (root / "d").chmod(0o755)


@pytest.mark.parametrize("point", ["none", "finish"])
def test_a_file_goes_into_a_directory_read_only_on_the_destination(
    tmp_path: Path, point: str
) -> None:
    """Its owner may write in it for the run, and it has its mode again
    after (or, when the run is killed before its end, when the replica is
    next opened: no change of mode made there for the next scan to find)."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "ro").mkdir(parents=True)
    (a / "ro/f").write_text("f")
    (a / "ro").chmod(0o555)
    try:
        assert ms("init", a).code == 0 and ms("push", a, b).code == 0
        (a / "ro").chmod(0o755)
        (a / "ro/g").write_text("g")
        (a / "ro").chmod(0o555)
        r = _run_killed_at(point, "push", a, b)
        assert r.returncode == (0 if point == "none" else -signal.SIGKILL), r.stderr
        assert (b / "ro/g").read_text() == "g"
        status = ms("status", b, "--json").json()
        assert status["modified"] == status["added"] == [], status
        assert (b / "ro").stat().st_mode & 0o777 == 0o555
        assert ms("diff", a, b).code == 0
    finally:
        _writable_again(a, b)


# -- the placing process (sources/placer.py) ----------------------------------


def test_files_placed_by_the_placing_process_are_recorded_as_placed(
    pair: tuple[Path, Path], placing: str
) -> None:
    src, dst = pair
    r = ms("push", src, dst, "--json")
    assert r.code == 0, r.err
    assert_same_tree(src, dst)
    # The index holds each file's stat as placed: nothing is read again.
    status = ms("status", dst, "--json").json()
    assert status["hashed"] == 0 and status["modified"] == status["added"] == []
    again = ms("push", src, dst, "--json")
    assert again.code == 0 and again.json()["changes"] == []
    assert _temp_files(dst) == []


def _victim(src: Path) -> Path:
    return next(p for p in _files(src) if p.stat().st_size > 0)


def _read_fails_midway(monkeypatch: pytest.MonkeyPatch, victim: str) -> Any:
    """Reading ``victim`` on the source fails after its first chunk (EIO);
    returns the real read, to put back."""
    real = directory.DirectorySource.read

    def read(self: directory.DirectorySource, entry: Entry) -> Iterator[bytes] | Unreadable:
        chunks = real(self, entry)
        if entry.path != victim or isinstance(chunks, Unreadable):
            return chunks

        def failing() -> Iterator[bytes]:
            yield next(iter(chunks))
            raise OSError(errno.EIO, "Input/output error")

        return failing()

    monkeypatch.setattr(directory.DirectorySource, "read", read)
    return real


def test_content_unreadable_on_the_way_is_refused_and_the_rest_goes_on(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, placing: str
) -> None:
    """The source fails mid-file (changed content is the test above): no
    trace of the file on the destination, the rest copied."""
    src, dst = pair
    victim = _victim(src).relative_to(src).as_posix()
    real = _read_fails_midway(monkeypatch, victim)
    r = ms("push", src, dst, "--json")
    assert r.code == 1, r.err
    assert f"{victim}: Input/output error" in r.err, r.err
    assert not (dst / victim).exists() and _temp_files(dst) == []
    monkeypatch.setattr(directory.DirectorySource, "read", real)
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_a_source_file_goes_to_the_placing_process_as_its_descriptor(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, placing: str
) -> None:
    """A local source's files are not read by the run: the descriptor it
    opened each with goes to the child, which reads the content itself."""
    src, dst = pair
    given: list[int] = []
    real = reading.OpenFile.detach

    def detach(self: reading.OpenFile) -> int | None:
        fd = real(self)
        given.append(fd if fd is not None else -1)
        return fd

    monkeypatch.setattr(reading.OpenFile, "detach", detach)
    r = ms("push", src, dst, "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_transferred"] == len(_files(src))
    assert len(given) == (len(_files(src)) if placing else 0) and -1 not in given
    assert_same_tree(src, dst)
    assert _temp_files(dst) == []


def test_few_descriptors_on_their_way_at_once(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for few descriptors on their way (a low open-file limit),
    the run waits for answers before it passes more; nothing stalls."""
    src, dst = pair
    monkeypatch.setattr(placer, "MIN_FILES", 1)
    monkeypatch.setattr(placer, "can_fork", lambda: True)
    limit = placer.ANSWER_EVERY
    monkeypatch.setattr(placer, "_max_passed", lambda: limit)
    waiting: list[int] = []
    real = placer.Placer._take

    def take(self: placer.Placer, *, block: bool) -> None:
        waiting.append(self._passed_waiting)
        real(self, block=block)

    monkeypatch.setattr(placer.Placer, "_take", take)
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert len(_files(src)) > limit and max(waiting) == limit
    assert_same_tree(src, dst)


def test_no_descriptor_is_passed_under_a_low_open_file_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (8 * placer.ANSWER_EVERY, hard))
        assert placer._max_passed() == placer.ANSWER_EVERY  # an eighth of the limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (8 * placer.ANSWER_EVERY - 1, hard))
        assert placer._max_passed() == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_source_file_failing_as_the_placing_process_reads_it(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a passed descriptor fails midway in the child (EIO): that
    file is reported, with no trace on the destination; the rest is copied."""
    src, dst = pair
    monkeypatch.setattr(placer, "MIN_FILES", 1)
    monkeypatch.setattr(placer, "can_fork", lambda: True)
    victim = _victim(src)
    real = placer.read_chunks

    def failing(fd: int, size: int) -> Iterator[bytes]:  # runs in the child
        chunks = real(fd, size)
        if os.fstat(fd).st_ino == victim.stat().st_ino:
            yield next(chunks)
            raise OSError(errno.EIO, "Input/output error")
        yield from chunks

    monkeypatch.setattr(placer, "read_chunks", failing)
    r = ms("push", src, dst)
    rel = victim.relative_to(src).as_posix()
    assert r.code == 1, r.err
    assert f"{rel}: Input/output error" in r.err, r.err
    assert not (dst / rel).exists() and _temp_files(dst) == []
    monkeypatch.setattr(placer, "read_chunks", real)
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_a_placing_process_that_dies_fails_the_run_and_the_next_one_completes(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = pair
    monkeypatch.setattr(placer, "MIN_FILES", 1)
    monkeypatch.setattr(placer, "can_fork", lambda: True)
    real = placer._place
    placed = {"n": 0}

    def dying(*args: Any) -> list[object]:  # runs in the child
        placed["n"] += 1
        if placed["n"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)

    monkeypatch.setattr(placer, "_place", dying)
    r = ms("push", src, dst)
    assert r.code == 5, r.err
    assert r.err.strip() == (
        "merklesync: error: the process placing new files stopped before it was done"
    ), r.err
    monkeypatch.setattr(placer, "_place", real)
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert_same_tree(src, dst)
    assert _temp_files(dst) == []


def _spawning(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every run with new files spawns a placing process (as a pull over
    SSH does); returns the list of those started."""
    monkeypatch.setattr(placer, "MIN_FILES", 1)
    monkeypatch.setattr(placer, "can_fork", lambda: False)
    started: list[object] = []
    real = placer.spawn_child
    monkeypatch.setattr(placer, "spawn_child", lambda *a: started.append(a) or real(*a))
    return started


def test_a_spawned_placing_process_that_cannot_start_leaves_the_files_to_the_run(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter that cannot run merklesync (a frozen build, another
    Python) ends without saying it runs: the run places its files itself."""
    src, dst = pair
    started = _spawning(monkeypatch)
    monkeypatch.setattr(placer, "_SPAWNED", "import os; os._exit(3)")
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert started and len(r.err.splitlines()) == 1 and r.err.startswith("copied ")  # quiet child
    assert_same_tree(src, dst)
    assert _temp_files(dst) == []


def test_a_spawned_placing_process_imports_nothing_from_the_current_directory(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A pull runs in the destination, among files a peer sent: a module
    there named as one the placing process imports is never run."""
    src, dst = pair
    started = _spawning(monkeypatch)
    here = tmp_path / "here"
    here.mkdir()
    marker = tmp_path / "imported"
    for name in ("msgpack", "blake3", "struct"):
        (here / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    monkeypatch.chdir(here)
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert started and not marker.exists()
    assert_same_tree(src, dst)


_FORCED_PLACER = """
import sys
from merklesync.sources import placer
placer.MIN_FILES = 1
placer.can_fork = lambda: True
from merklesync.cli import main
sys.argv = ["merklesync", *sys.argv[1:]]
main()
"""


# The placing process's first pipe gets descriptor 0, as when merklesync
# runs with stdin closed.
_PIPE_ON_STDIN = """
import contextlib, os
from merklesync.sources import placer
real_start = placer.Placer.start.__func__
def start(cls, root, *args):
    with contextlib.suppress(OSError):
        os.close(0)
    return real_start(cls, root, *args)
placer.Placer.start = classmethod(start)
"""


def _run_with_placer(*args: str | Path, setup: str = "") -> subprocess.CompletedProcess[str]:
    """A command with every new file placed by the placing process, in a
    process of its own: a hang between the two fails the test, after a
    while, instead of stopping the suite."""
    return subprocess.run(
        [sys.executable, "-c", setup + _FORCED_PLACER, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_placing_process_keeps_its_pipe_when_it_is_descriptor_0(
    pair: tuple[Path, Path],
) -> None:
    """The child replaces stdin with /dev/null: a pipe of its own that was
    descriptor 0 must be moved first, not replaced."""
    src, dst = pair
    r = _run_with_placer("push", src, dst, setup=_PIPE_ON_STDIN)
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, dst)


def test_long_paths_and_a_large_file_do_not_stall_the_placing_process(tmp_path: Path) -> None:
    """Answers carry paths: hundreds of long ones fill the pipe back while
    a large file fills the pipe there; each side must keep reading."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    deep = src / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    for i in range(400):
        (deep / f"{'f' * 200}{i:04d}").write_bytes(b"x" * (i % 7))
    (deep / "zz-large").write_bytes(os.urandom(4 << 20))
    assert ms("init", src).code == 0
    r = _run_with_placer("push", src, dst)
    assert r.returncode == 0, r.stderr
    assert_same_tree(src, dst)


def test_two_replicas_written_by_one_process_each_with_a_placing_process(tmp_path: Path) -> None:
    """A sync writes new files into both replicas: each has its own child,
    and neither child may hold the other's pipes open (it would never see
    the end of its work)."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=30, dirs=3, seed=5)
    make_tree(b / "other", files=30, dirs=3, seed=6)
    assert ms("init", a).code == 0 and ms("init", b).code == 0
    r = _run_with_placer("sync", a, b)
    assert r.returncode == 0, r.stderr
    assert_same_tree(a, b)


def test_content_failing_after_the_placing_process_refused_the_file(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child refuses a file before its content arrives, then the
    content fails here: one refusal each, and the run goes on."""
    from merklesync.sources.dir_fds import DirFds, NotADirectory

    src, dst = pair
    monkeypatch.setattr(placer, "MIN_FILES", 1)
    monkeypatch.setattr(placer, "can_fork", lambda: True)
    victim = _victim(src).relative_to(src)
    parent = victim.parent.as_posix()
    real_get = DirFds.get

    def get(self: DirFds, directory: str, *, create: bool = False) -> int:
        # As if it were no directory on the destination (the source reads
        # through DirFds too).
        if directory == parent and self.root == str(dst.resolve()):
            raise NotADirectory(f"parent {parent} is not a directory")
        return real_get(self, directory, create=create)

    _read_fails_midway(monkeypatch, victim.as_posix())
    monkeypatch.setattr(DirFds, "get", get)
    r = ms("push", src, dst)
    assert r.code == 1, r.err
    assert f"{victim.as_posix()}: Input/output error" in r.err, r.err
    assert "is not a directory" in r.err
    assert _temp_files(dst) == []


def test_outcomes_come_back_in_the_order_of_the_items(tmp_path: Path, placing: str) -> None:
    """Even when new files are answered later than the writes made here,
    and when one item is given twice."""
    import blake3

    from merklesync.clock import VersionVector
    from merklesync.model import EntryKind, WriteItem
    from merklesync.peer.local import LocalPeer

    vv = VersionVector.of({"peer": 1})
    items = []
    for i in range(6):
        data = f"file {i}".encode()
        digest = blake3.blake3(data).digest()
        entry = Entry(f"f{i}", EntryKind.FILE, vv, digest=digest, size=len(data), mode=0o644)
        items.append(WriteItem(entry, None, [data]))
        items.append(WriteItem(Entry(f"d{i}", EntryKind.DIR, vv, mode=0o755), None))
    given = [*items, items[0]]  # the same object again (its content is a list)
    peer = LocalPeer.open(tmp_path / "r", create=True)
    try:
        outcomes = peer.write(given)
    finally:
        peer.close()
    assert [o.path for o in outcomes] == [i.entry.path for i in given]
    assert [o.ok for o in outcomes] == [True] * len(items) + [False]
    assert "changed on the destination since the comparison" in outcomes[-1].reason


def test_rows_read_ahead_are_those_the_writes_before_them_left(
    tmp_path: Path, placing: str
) -> None:
    """The writer reads the index rows of many items in one query, ahead of
    their turn. A row so read is what the writes before it left: a file
    still with the placing process, or a path given twice, is looked up at
    its own turn (else each new version below would be refused, its
    expected leaf missing from a row read too early)."""
    import blake3

    from merklesync.clock import VersionVector
    from merklesync.model import EntryKind, WriteItem, leaf_of
    from merklesync.peer.local import LocalPeer

    vv = VersionVector.of({"peer": 1})
    newer = VersionVector.of({"peer": 2})
    peer = LocalPeer.open(tmp_path / "r", create=True)
    try:
        old_dir = Entry("kept", EntryKind.DIR, vv, mode=0o755)
        assert [o.ok for o in peer.write([WriteItem(old_dir, None)])] == [True]
        data = b"content"
        file = Entry(
            "f",
            EntryKind.FILE,
            vv,
            digest=blake3.blake3(data).digest(),
            size=len(data),
            mode=0o644,
            mtime_ns=1_600_000_000 * 10**9,
        )
        twice = Entry("d", EntryKind.DIR, vv, mode=0o755)
        items = [
            WriteItem(file, None, [data]),  # placed by the child, recorded later
            WriteItem(Entry("e", EntryKind.DIR, vv, mode=0o755), None),
            WriteItem(file.with_version(newer, 2), leaf_of(file)),
            WriteItem(twice, None),
            WriteItem(twice.with_version(newer, 2), leaf_of(twice)),
            WriteItem(old_dir.with_version(newer, 2), leaf_of(old_dir)),  # read ahead
        ]
        outcomes = peer.write(items)
        rows = {p: peer.replica.index.get(p) for p in ("f", "d", "kept")}
    finally:
        peer.close()
    assert [(o.path, o.ok, o.reason) for o in outcomes] == [(i.entry.path, True, "") for i in items]
    assert all(row is not None and row.entry.vv == newer for row in rows.values()), rows


# The first file the push reads is swapped for a FIFO just before (no
# writer ever opens it: opening it to read would wait for ever).
_SWAPPED_FOR_A_FIFO = """
import os
from merklesync.sources import directory
real_read = directory.DirectorySource.read
swapped = []
def read(self, entry):
    if not swapped:
        path = self.abs(entry.path)
        os.unlink(path)
        os.mkfifo(path)
        swapped.append(entry.path)
    return real_read(self, entry)
directory.DirectorySource.read = read
"""


def test_a_file_swapped_for_a_fifo_before_it_is_read_is_reported_not_waited_for(
    pair: tuple[Path, Path],
) -> None:
    src, dst = pair
    r = _run_with_placer("push", src, dst, setup=_SWAPPED_FOR_A_FIFO)
    assert r.returncode == 1, r.stderr
    assert "changed or gone on the source since the scan" in r.stderr
    fifo = next(p for p in src.rglob("*") if p.is_fifo())
    assert not (dst / fifo.relative_to(src)).exists()
    fifo.unlink()
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


# The first file a scan hashes is swapped for a FIFO just before.
_SWAPPED_WHILE_SCANNED = """
import os
from merklesync.sources import directory
real_hash = directory.DirectorySource.hash_file
swapped = []
def hash_file(self, rel, dir_fd=None):
    if not swapped:
        os.unlink(self.abs(rel))
        os.mkfifo(self.abs(rel))
        swapped.append(rel)
    return real_hash(self, rel, dir_fd)
directory.DirectorySource.hash_file = hash_file
"""


def test_a_file_swapped_for_a_fifo_while_scanned_is_skipped_not_waited_for(
    tmp_path: Path,
) -> None:
    root = tmp_path / "r"
    make_tree(root, files=10, dirs=2, seed=6)
    r = _run_with_placer("init", root, setup=_SWAPPED_WHILE_SCANNED)
    assert r.returncode == 1, r.stderr  # skipped, named
    assert "kept changing while it was read" in r.stderr
    fifo = next(p for p in root.rglob("*") if p.is_fifo())
    r = ms("status", root, "--json")
    assert fifo.relative_to(root).as_posix() not in r.json()["added"]


def test_an_ignore_file_that_is_no_plain_file_is_not_read(tmp_path: Path) -> None:
    """A .merklesyncignore that is a FIFO (reading it would never end), a
    link to /dev/zero (nor would that) or over 1 MiB holds no rules, and
    the scan goes on; one linked to a plain file elsewhere holds its rules."""
    root = tmp_path / "r"
    for name in ("fifo", "link", "zero", "huge", "plain"):
        (root / name).mkdir(parents=True)
        (root / name / "secret.txt").write_text("s")
    outside = tmp_path / "rules"
    outside.write_text("secret.txt\n")
    os.mkfifo(root / "fifo" / ".merklesyncignore")
    (root / "link" / ".merklesyncignore").symlink_to(outside)
    (root / "zero" / ".merklesyncignore").symlink_to("/dev/zero")
    (root / "huge" / ".merklesyncignore").write_text("secret.txt\n" + "#\n" * (1 << 20))
    (root / "plain" / ".merklesyncignore").write_text("secret.txt\n")
    r = subprocess.run(
        [sys.executable, "-m", "merklesync", "init", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr  # skipped, named
    with Replica.open(root) as replica:
        live = {e.path for e in replica.index.iter_entries(live_only=True)}
    for name in ("fifo", "zero", "huge"):
        assert f"{name}/secret.txt" in live
    assert "plain/secret.txt" not in live and "link/secret.txt" not in live


def test_a_file_under_a_lease_is_opened_waiting_when_it_is_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-blocking open of a file another process holds a lease on fails
    with EAGAIN (Samba, an NFS server): a regular file is opened again,
    waiting; anything else is not."""
    (tmp_path / "f").write_bytes(b"leased")
    os.mkfifo(tmp_path / "p")
    real_open = os.open

    def leased(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_NONBLOCK:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", leased)
    fd = reading.open_to_read(tmp_path / "f")
    try:
        assert os.read(fd, 100) == b"leased"
    finally:
        os.close(fd)
    with pytest.raises(OSError) as raised:
        reading.open_to_read(tmp_path / "p")  # a FIFO: never opened waiting
    assert raised.value.errno == errno.EAGAIN


def test_a_leased_file_swapped_for_a_fifo_before_it_is_opened_again_is_still_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the look at a leased file and its opening again (waiting),
    its name becomes a FIFO: what is opened is the file that was looked at,
    never the FIFO (whose opening would wait for a writer for ever; one
    comes here after a while, so that a wrong open ends, with the FIFO's
    bytes)."""
    import threading

    name = tmp_path / "f"
    name.write_bytes(b"the file")
    real_open, real_stat = os.open, os.stat

    def swap() -> None:
        if not stat.S_ISFIFO(real_stat(name, follow_symlinks=False).st_mode):
            os.rename(name, tmp_path / "moved")
            os.mkfifo(name)

    def leased(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_NONBLOCK:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        fd = real_open(path, flags, *args, **kw)
        if str(path) == str(name) and flags & getattr(os, "O_PATH", 0):
            swap()  # looked at: now swapped
        return fd

    def looked_at(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        found = real_stat(path, *args, **kw)
        if str(path) == str(name):
            swap()
        return found

    def writer() -> None:
        time.sleep(1)
        with contextlib.suppress(OSError):
            fd = real_open(name, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"the fifo")
            os.close(fd)

    monkeypatch.setattr(os, "open", leased)
    monkeypatch.setattr(os, "stat", looked_at)
    threading.Thread(target=writer, daemon=True).start()
    fd = reading.open_to_read(name)
    try:
        assert os.read(fd, 100) == b"the file"
    finally:
        os.close(fd)


# -- writes made, not yet recorded (sources/write_intents.py) -----------------

# Killed (SIGKILL) as a write is about to be recorded in the index (the
# N-th, or the one of a path): what was written before it, by this process
# or by its placing process, is on the disk and in no committed row.
_KILLED_AT_RECORD = """
import os, signal
from merklesync.sources import directory_write
_real, _seen = directory_write.DirectoryWriter._record, [0]
def _record(entry, *args, **kwargs):
    _seen[0] += 1
    if _seen[0] >= {n} or entry.path == {path!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(entry, *args, **kwargs)
directory_write.DirectoryWriter._record = staticmethod(_record)
"""


def _killed_at_record(*args: str | Path, n: int = 1 << 30, path: str | None = None) -> None:
    r = _run_with_placer(*args, setup=_KILLED_AT_RECORD.format(n=n, path=path))
    assert r.returncode == -signal.SIGKILL, r.stderr


def _pushed(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A replica holding ``files`` (path -> text), pushed to a new one."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    ms("init", src)
    assert ms("push", src, dst).code == 0
    return src, dst


def _unrecorded(root: Path) -> list[str]:
    """Files on the disk of ``root`` that its index has no live row for."""
    with Replica.open(root) as replica:
        rows = {e.path for e in replica.index.iter_entries(live_only=True)}
    return [
        p.relative_to(root).as_posix()
        for p in _files(root)
        if p.relative_to(root).as_posix() not in rows
    ]


def test_a_file_placed_by_a_killed_push_is_the_source_s_version_not_a_new_one(
    pair: tuple[Path, Path],
) -> None:
    """Files the placing process placed before the push was killed, and
    that no row records: the next scan takes each for the write it was
    (the source's version), not for a file made on the destination; so a
    deletion of one on the source then goes through, and does not come
    back from the destination as a modification that wins."""
    src, dst = pair
    dirs = sum(1 for p in src.rglob("*") if p.is_dir() and ".merklesync" not in p.parts)
    _killed_at_record("push", src, dst, n=dirs + 3)  # directories come first
    victim = _unrecorded(dst)[0]
    assert (dst / victim).read_bytes() == (src / victim).read_bytes()
    (src / victim).unlink()
    r = ms("sync", src, dst)
    assert r.code == 0 and "modif" not in r.out + r.err, r.out + r.err
    assert not (src / victim).exists() and not (dst / victim).exists()
    assert_same_tree(src, dst)
    assert not (dst / ".merklesync" / "intents").exists()


def test_a_file_replaced_by_a_killed_push_is_no_conflict_at_the_next_one(
    tmp_path: Path,
) -> None:
    """A file replaced (by this process: one file), and the push killed
    before the row: the source's next edit is a fast-forward, no conflict."""
    src, dst = _pushed(tmp_path, {"d/f": "v1"})
    (src / "d/f").write_text("v2, longer")
    _killed_at_record("push", src, dst, n=1)
    assert (dst / "d/f").read_text() == "v2, longer"
    (src / "d/f").write_text("v3, longer still")
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert (dst / "d/f").read_text() == "v3, longer still"


def test_a_file_removed_by_a_killed_push_is_the_source_s_deletion(tmp_path: Path) -> None:
    """A deletion made on the destination, and the push killed before its
    tombstone: the scan records the source's tombstone, so the file made
    again on the source is a fast-forward, no modify-delete conflict."""
    src, dst = _pushed(tmp_path, {"f": "v1", "g": "g"})
    (src / "f").unlink()
    _killed_at_record("push", src, dst, n=1)
    assert not (dst / "f").exists()
    (src / "f").write_text("again")
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert (dst / "f").read_text() == "again"


def test_a_write_noted_but_not_what_the_scan_finds_is_a_change_made_here(
    tmp_path: Path,
) -> None:
    """An interrupted write's note counts only for the state it describes:
    a file the user changed since is this replica's own new version (a
    conflict with the source's next one, as any concurrent edit)."""
    src, dst = _pushed(tmp_path, {"f": "v1"})
    (src / "f").write_text("v2, longer")
    _killed_at_record("push", src, dst, n=1)
    (dst / "f").write_text("edited on the destination")
    (src / "f").write_text("v3, longer still")
    r = ms("push", src, dst)
    assert r.code == 1 and "conflict" in r.err, r.err
    assert (dst / "f").read_text() == "edited on the destination"


# Killed (SIGKILL) at the start of the N-th batch of writes to one side.
_KILLED_AT_APPLY = """
import os, signal
from merklesync import sync, transfer
_real, _seen = transfer.apply_ops, [0]
def apply_ops(target, ops, *args, **kwargs):
    if ops:
        _seen[0] += 1
        if _seen[0] >= {n}:
            os.kill(os.getpid(), signal.SIGKILL)
    return _real(target, ops, *args, **kwargs)
transfer.apply_ops = sync.apply_ops = apply_ops
"""


@pytest.mark.parametrize("batches", [2, 3])
def test_keep_both_stopped_after_its_copies_makes_no_second_copy(
    tmp_path: Path, batches: int
) -> None:
    """A keep-both sync killed once the conflict copy was written on A
    (2: before B's) or on both (3: before the winner): the next sync uses
    that copy, on both sides, and makes no second one."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "f.txt").write_text("base")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    (a / "f.txt").write_text("edit on a")
    (b / "f.txt").write_text("edit on b, later")
    r = _run_with_placer("sync", a, b, setup=_KILLED_AT_APPLY.format(n=batches))
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert ms("sync", a, b).code == 0
    for root in (a, b):
        texts = sorted(p.read_text() for p in root.iterdir() if p.is_file())
        assert texts == ["edit on a", "edit on b, later"], (root, list(root.iterdir()))
    assert_same_tree(a, b)


@pytest.mark.parametrize("becomes", ["file", "link"])
def test_a_directory_replaced_in_a_killed_push_leaves_no_row_under_it(
    tmp_path: Path, becomes: str
) -> None:
    """The directory's entries removed and a file or link put in its place,
    none of it recorded: the next scan takes all of it for the source's
    writes, and keeps no live row under what is no directory now."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "sub" / "x").write_text("x")
    (src / "d" / "y").write_text("y")
    (src / "target").mkdir()
    ms("init", src)
    assert ms("push", src, dst).code == 0
    shutil.rmtree(src / "d")
    if becomes == "file":
        (src / "d").write_text("a file now")
    else:
        (src / "d").symlink_to("target")
    _killed_at_record("push", src, dst, path="d")
    assert (dst / "d").is_symlink() == (becomes == "link")
    assert ms("status", dst).code == 0
    with Replica.open(dst) as replica:
        live = sorted(e.path for e in replica.index.iter_entries(live_only=True))
    assert live == ["d", "target"]
    assert ms("diff", src, dst).code == 0
    r = ms("sync", src, dst)
    assert r.code == 0 and "0 copied" in r.err, r.err
    assert_same_tree(src, dst)


def test_a_run_with_exclude_keeps_the_notes_of_an_interrupted_one(tmp_path: Path) -> None:
    """A scan with --exclude may not look at every noted path: it keeps the
    notes, and so do the writes of that run (they drop their own only); the
    next full run takes the interrupted write for what it was."""
    src, dst = _pushed(tmp_path, {"f.txt": "v1", "g.txt": "g1"})
    (src / "f.txt").write_text("v2, longer")
    _killed_at_record("push", src, dst, n=1)
    (src / "g.txt").write_text("g2, longer")
    assert ms("push", src, dst, "--exclude", "f.txt").code == 0
    assert (dst / ".merklesync" / "intents").exists()
    (src / "f.txt").write_text("v3, longer still")
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert (dst / "f.txt").read_text() == "v3, longer still"
    assert not (dst / ".merklesync" / "intents").exists()


_YEAR_NS = 365 * 86_400 * 10**9


def _holding(when: int, *places: Path) -> Path | None:
    """The first of ``places`` whose file system holds a file time ``when``."""
    for place in places:
        probe = place / "probe"
        try:
            probe.write_text("")
            os.utime(probe, ns=(when, when))
            held = os.stat(probe).st_mtime_ns == when
        except OSError:
            held = False
        finally:
            probe.unlink(missing_ok=True)
        if held:
            return place
    return None


# 1570; 2150, past the stamps' range; 2300, past 64 bits of ns
@pytest.mark.parametrize("years", [-400, 180, 330])
def test_a_file_dated_far_away_is_copied_and_breaks_nothing(tmp_path: Path, years: int) -> None:
    """A file's time may lie far in the future, or beyond what 64 bits of
    nanoseconds hold: its version's stamp is no later than this machine's
    clock (the write happened by now), its time is carried as the nearest
    one the index and the wire hold, and every command goes on."""
    when = time.time_ns() + years * _YEAR_NS
    shm = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path
    try:
        place = _holding(when, tmp_path, shm)
        if place is None:
            pytest.skip("no file system here holds such a time")
        _far_away(place, when)
    finally:
        if shm != tmp_path:
            shutil.rmtree(shm)


def _far_away(place: Path, when: int) -> None:
    src, dst = place / "src", place / "dst"
    src.mkdir()
    (src / "ok").write_text("ok")
    (src / "far").write_text("far")
    os.utime(src / "far", ns=(when, when))
    assert ms("init", src).code == 0
    assert ms("status", src).code == 0
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert (dst / "far").read_text() == "far"
    if abs(when) < 1 << 63:
        assert os.stat(dst / "far").st_mtime_ns == when
    with Replica.open(src) as replica:
        [far] = [e for e in replica.index.iter_entries() if e.path == "far"]
        assert far.stamp <= time.time_ns() and replica.clock.last <= time.time_ns()
    r = _run_pipe("push", src, place / "remote")
    assert r.returncode == 0, r.stderr
    (src / "far").unlink()
    assert ms("push", src, dst).code == 0
    assert _run_pipe("push", src, place / "remote").returncode == 0


def _run_pipe(command: str, src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    """A command with ``dst`` reached through an agent over a pipe."""
    from tests.remote.conftest import PIPE_HOST, REMOTE_CMD, RSH

    return subprocess.run(
        [
            *(sys.executable, "-m", "merklesync", command, str(src), f"{PIPE_HOST}:{dst}"),
            *("--rsh", RSH, "--remote-cmd", REMOTE_CMD),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


class _FullAtCommit:
    """A connection whose disk fills at the first COMMIT once armed: SQLite
    rolls the transaction back and says so, as it does on SQLITE_FULL."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)


def test_a_disk_full_at_commit_is_a_disk_full_not_a_corrupt_index(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index is fine once there is room again: no advice to rebuild it
    (a rebuild would forget the replica's id and its tombstones)."""
    src, dst = pair
    assert ms("push", src, dst).code == 0
    for f in list(src.rglob("*.bin"))[:5]:
        f.write_bytes(b"new content")
    from merklesync.peer.local import LocalPeer

    real_write = LocalPeer.write

    def write_on_a_full_disk(self: LocalPeer, *args: Any, **kwargs: Any) -> Any:
        index = self.replica.index
        if self.replica.root == dst.resolve():
            index.conn = _FullAtCommit(index.conn)  # type: ignore[assignment]
            index.conn.armed = True  # type: ignore[attr-defined]
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(LocalPeer, "write", write_on_a_full_disk)
    monkeypatch.setattr("merklesync.peer.local.COMMIT_EVERY", 2)  # full at a commit midway
    r = ms("push", src, dst)
    assert r.code == 5, r.err
    assert "database or disk is full" in r.err and "rebuild" not in r.err
    monkeypatch.undo()
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)
    assert ms("diff", src, dst).code == 0


def test_a_directory_whose_mode_cannot_be_set_is_not_left_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left at the mode it is made with (0o700), the next scan would take it
    for an edit made on the destination: a conflict at every push after."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "w1").mkdir(parents=True)
    (src / "w1" / "f").write_text("x")
    os.chmod(src / "w1", 0o755)
    assert ms("init", src).code == 0
    real = directory_write._chmod

    def no_descriptor_left(spot: Any, mode: int) -> None:
        if spot.rel == "w1":
            raise OSError(errno.EMFILE, "Too many open files")
        real(spot, mode)

    monkeypatch.setattr(directory_write, "_chmod", no_descriptor_left)
    r = ms("push", src, dst)
    assert r.code == 1 and "w1: Too many open files" in r.err
    assert not (dst / "w1").exists() or (dst / "w1").stat().st_mode & 0o777 != 0o700
    monkeypatch.undo()
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)
    assert ms("diff", src, dst).code == 0


def test_a_low_open_files_limit(tmp_path: Path) -> None:
    """Directories kept open are a share of the limit (ulimit -n 32)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    deep = src.joinpath(*(f"d{i}" for i in range(60)))
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep")
    for w in range(40):
        (src / f"w{w}").mkdir()
        for f in range(3):
            (src / f"w{w}" / f"f{f}").write_text(f"{w}{f}")
    assert ms("init", src).code == 0

    def limited() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))

    proc = subprocess.run(
        [sys.executable, "-m", "merklesync", "push", str(src), str(dst)],
        preexec_fn=limited,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert_same_tree(src, dst)


def test_a_new_replica_that_cannot_be_made_whole_is_not_left_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while its index is made: the next run makes it afresh
    (it found an index without its tables, and said to rebuild it)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=5, dirs=1, seed=3)
    assert ms("init", src).code == 0
    from merklesync import index

    real_fill, real_connect = index.Index._fill.__func__, index.Index._connect  # type: ignore[attr-defined]

    def fill_then_full(cls: Any, *args: Any) -> Any:
        real_fill(cls, *args)
        raise sqlite3.OperationalError("database or disk is full")

    def connect_then_full(path: Path) -> Any:
        real_connect(path)
        raise sqlite3.OperationalError("database or disk is full")

    for step, full in (
        ("_fill", classmethod(fill_then_full)),
        ("_connect", staticmethod(connect_then_full)),
    ):
        monkeypatch.setattr(index.Index, step, full)
        r = ms("init", dst)
        assert r.code == 5, (step, r.err)
        assert not (dst / ".merklesync" / "index.db").exists(), step
        monkeypatch.undo()
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_a_file_that_cannot_be_read_when_sent_is_named_with_why(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "changed or gone": the reason (an I/O error, no descriptor left,
    permission denied) is what the admin needs; the rest is copied."""
    src, dst = pair
    victim = sorted(_files(src))[0].relative_to(src).as_posix()
    real = directory.open_to_read

    def failing(name: str, dir_fd: int | None = None) -> int:
        if victim.endswith("/" + name) or victim == name:
            raise OSError(errno.EIO, "Input/output error")
        return real(name, dir_fd=dir_fd)

    monkeypatch.setattr(directory, "open_to_read", failing)
    r = ms("push", src, dst)
    assert r.code == 1, r.err
    assert f"left alone: {victim}: cannot read it: Input/output error" in r.err
    monkeypatch.undo()
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_a_scan_cut_between_a_row_and_its_leaf_leaves_the_tree_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C lands after a row is written and before the tree hears of
    it: the run ends without committing (as if killed), so the tree and the
    rows still agree, and the next scan does the work."""
    from merklesync import merkle

    root = tmp_path / "r"
    make_tree(root, files=200, dirs=4, seed=2, min_size=0, max_size=32)
    assert ms("init", root).code == 0
    mutate(root, modify=80, add=0, delete=0, seed=3)  # the depth stays: no rebuild
    change = merkle.Accumulator.change
    calls = [0]

    def cut(self: merkle.Accumulator, *args: object) -> None:
        calls[0] += 1
        if calls[0] == 60:
            raise KeyboardInterrupt  # the row is in the table already
        change(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(merkle.Accumulator, "change", cut)
    with pytest.raises(KeyboardInterrupt), Replica.open(root) as r:
        r.scan(spread=False)
    monkeypatch.undo()

    def whole(r: Replica) -> bool:
        rows = r.index.conn.execute("SELECT key, leaf FROM entries")
        return r.index.root()[0] == merkle.root_of(rows)

    with Replica.open(root) as r:
        assert whole(r)
        assert len(r.scan().modified) == 80  # the work the cut run did not keep
        assert whole(r)


def test_a_write_cut_between_a_row_and_its_leaf_leaves_the_tree_whole(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same cut in a push's writes (a SIGTERM, a Ctrl-C, a failure of
    the index): what the batch wrote since its last commit is not
    committed with the tree missing a leaf; the files written are found
    again as the run's writes, and the next push finishes the copy."""
    from merklesync import merkle

    src, dst = pair
    mutate(src, modify=30, add=10, delete=0, seed=9)  # the depth stays: no rebuild
    change, record = merkle.Accumulator.change, directory_write.DirectoryWriter._record
    writes = [0]

    def counted(*args: Any) -> Any:
        writes[0] += 1
        return record(*args)

    def cut(self: merkle.Accumulator, *args: object) -> None:
        if writes[0] == 25:
            raise KeyboardInterrupt  # the row is in the table already
        change(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(directory_write.DirectoryWriter, "_record", staticmethod(counted))
    monkeypatch.setattr(merkle.Accumulator, "change", cut)
    assert ms("push", src, dst).code == 130
    monkeypatch.undo()
    with Replica.open(dst) as r:
        assert r.index.tree_matches()
    again = ms("push", src, dst)
    assert again.code == 0, again.err
    assert_same_tree(src, dst)
    with Replica.open(dst) as r:
        assert r.index.tree_matches()


@pytest.mark.parametrize("was", ["file", "directory"])
def test_a_kind_change_cut_between_removing_and_making_is_no_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, was: str
) -> None:
    """A file replaced by a directory (or the reverse) is removed before
    its successor is made; a push stopped in between leaves neither. That
    is no deletion made on the destination: under last-write-wins it
    deleted the source's new entry on both sides."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "keep.txt").write_text("k\n")
    if was == "file":
        (src / "p").write_text("a file\n")
    else:
        (src / "p").mkdir()
    assert ms("init", src).code == 0
    assert ms("push", src, dst).code == 0
    if was == "file":
        (src / "p").unlink()
        (src / "p").mkdir()
        (src / "p" / "inside.txt").write_text("inside\n")
    else:
        (src / "p").rmdir()
        (src / "p").write_text("the new file\n")
    remove = directory_write.DirectoryWriter._remove

    def cut(self: directory_write.DirectoryWriter, spot: Any, on_disk: Any) -> None:
        remove(self, spot, on_disk)
        if spot.rel == "p":
            raise KeyboardInterrupt  # the old entry is gone, the new one not made

    monkeypatch.setattr(directory_write.DirectoryWriter, "_remove", cut)
    assert ms("push", src, dst).code == 130
    monkeypatch.undo()
    assert not (dst / "p").exists()
    done = ms("sync", "--on-conflict", "lww", src, dst, "--json")
    assert done.code == 0, done.err
    assert {e["what"] for e in done.json()["events"]} == {"a->b"}  # no conflict
    assert_same_tree(src, dst)
    assert (src / "p").exists()


def test_a_deletion_made_during_the_run_where_a_directory_replaces_a_file_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not every empty path a kind change leaves is one the write emptied:
    a file deleted on the destination after its scan, before the write that
    would replace it with a directory, is that replica's deletion, which
    meets the source's change as a conflict."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "p").write_text("a file\n")
    assert ms("init", src).code == 0
    assert ms("push", src, dst).code == 0
    (src / "p").unlink()
    (src / "p").mkdir()
    verify = directory_write.DirectoryWriter._verify_unchanged

    def deleted_first(self: directory_write.DirectoryWriter, spot: Any, *args: Any) -> Any:
        if spot.rel == "p":
            (dst / "p").unlink()  # by the user, as the run goes
        return verify(self, spot, *args)

    monkeypatch.setattr(directory_write.DirectoryWriter, "_verify_unchanged", deleted_first)
    assert ms("push", src, dst).code == 1
    monkeypatch.undo()
    done = ms("sync", src, dst, "--json")
    assert "modify-delete" in {e["what"] for e in done.json()["events"]}, done.out


@pytest.mark.parametrize("command", ["sync", "repair"])
def test_a_run_stopped_as_it_takes_back_an_ignored_file_keeps_its_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """A file ignored for a while is kept aside with its version; edited
    meanwhile and no longer ignored, the next scan takes it back as a new
    version of that one. A run stopped in between keeps it aside (repair
    committed the half-done scan: the file came back with a first
    version, which the other replica's older one dominated, and the next
    repair copied that over the edit)."""
    from merklesync.index import Index

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "f.txt").write_text("v1\n")
    assert ms("init", a).code == 0
    assert ms(command, a, b).code == 0
    (b / "f.txt").write_text("v2 from b\n")
    assert ms(command, a, b).code == 0
    (a / ".merklesyncignore").write_text("f.txt\n")
    assert ms("status", a).code == 0  # kept aside
    (a / "f.txt").write_text("edited on a while ignored\n")
    (a / ".merklesyncignore").unlink()
    forgotten = Index.forgotten

    def cut(self: Index, path: str) -> Entry | None:
        if forgotten(self, path) is not None:
            raise KeyboardInterrupt  # taken out, its successor not yet stored
        return None

    monkeypatch.setattr(Index, "forgotten", cut)
    assert ms(command, a, b).code == 130
    monkeypatch.undo()
    assert ms(command, a, b).code == 0
    assert (a / "f.txt").read_text() == (b / "f.txt").read_text() == "edited on a while ignored\n"


_KILLED_AT_CHMOD = """
import os, signal, sys
from merklesync.sources import directory_write
how = sys.argv.pop(1)
real = directory_write._chmod
def cut(spot, mode):
    if spot.rel != "d":
        return real(spot, mode)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "failure":
        raise PermissionError(1, "Operation not permitted")
    raise KeyboardInterrupt
directory_write._chmod = cut
from merklesync.cli import main
main()
"""


@pytest.mark.parametrize("was", ["nothing", "a file"])
@pytest.mark.parametrize("how", ["kill", "interrupt", "failure"])
def test_a_directory_made_and_not_yet_given_its_mode_is_no_edit(
    tmp_path: Path, how: str, was: str
) -> None:
    """A directory is made at 0700 (whatever the umask), then given its
    mode; a run stopped in between (Ctrl-C: it is removed; killed: the
    next open gives it its mode), or whose chmod fails (it is removed),
    leaves no 0700 directory that the next scan takes for an edit made here
    (a conflict nobody made, which a sync settled by spreading 0700); nor,
    where it replaced a file, an empty path taken for a deletion."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "keep.txt").write_text("k\n")
    if was == "a file":
        (src / "d").write_text("a file\n")
        assert ms("init", src).code == 0
        assert ms("push", src, dst).code == 0
        (src / "d").unlink()
    (src / "d").mkdir()  # empty: nothing written in it makes it again
    (src / "d").chmod(0o755)
    if was == "nothing":
        assert ms("init", src).code == 0
    stopped = run_python(_KILLED_AT_CHMOD, how, "push", src, dst)
    code = {"kill": -signal.SIGKILL, "interrupt": 130, "failure": 1}[how]
    assert stopped.returncode == code, stopped.stderr
    done = ms("sync", "--on-conflict", "lww", src, dst, "--json")
    assert done.code == 0, done.err
    assert {e["what"] for e in done.json()["events"]} <= {"a->b"}  # no conflict
    assert stat.S_IMODE((src / "d").stat().st_mode) == 0o755
    assert_same_tree(src, dst)


def test_an_index_change_cut_in_two_is_never_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Index: a put cut between its row and its leaf leaves the transaction
    torn; a commit then rolls it back (ChangeCut), as a close does, and the
    index goes on from its last commit, its tree whole."""
    from merklesync import merkle
    from merklesync.errors import ChangeCut
    from merklesync.index import Index
    from tests.protocol.strategies import file_entry

    index = Index.create(tmp_path / "index.db", "r1")
    index.put(file_entry("kept"), None, None)
    index.commit()
    change = merkle.Accumulator.change

    def cut(self: merkle.Accumulator, *args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(merkle.Accumulator, "change", cut)
    with pytest.raises(KeyboardInterrupt):
        index.put(file_entry("cut"), None, None)
    monkeypatch.setattr(merkle.Accumulator, "change", change)
    with pytest.raises(ChangeCut):
        index.commit()
    assert [e.path for e in index.iter_entries()] == ["kept"] and index.tree_matches()
    index.put(file_entry("later"), None, None)
    index.commit()
    monkeypatch.setattr(merkle.Accumulator, "change", cut)
    with pytest.raises(KeyboardInterrupt):
        index.put(file_entry("cut"), None, None)
    with pytest.raises(ChangeCut):
        index.close()
    again = Index.open(tmp_path / "index.db")
    assert sorted(e.path for e in again.iter_entries()) == ["kept", "later"]
    assert again.tree_matches()
    again.close()


def test_rebuild_makes_a_wrong_tree_again_and_keeps_the_versions(tmp_path: Path) -> None:
    """An index whose rows read well but whose tree does not match them (an
    earlier release could commit one when a run was cut): `init --rebuild`
    makes the tree again from the rows, keeping the id and every version,
    instead of refusing a readable index."""
    from merklesync import merkle

    root = tmp_path / "r"
    make_tree(root, files=40, dirs=2, seed=4)
    assert ms("init", root).code == 0
    with Replica.open(root) as r:
        replica_id = r.replica_id
        versions = {e.path: e.vv for e in r.index.iter_entries()}
        r.index.conn.execute("UPDATE nodes SET count = count + 1 WHERE level = 0")
        assert not r.index.tree_matches()
    done = ms("init", "--rebuild", root, "--json")
    assert done.code == 0, done.err
    assert done.json()["tree_rebuilt"] is True and done.json()["replica_id"] == replica_id
    with Replica.open(root) as r:
        assert r.index.tree_matches()
        assert {e.path: e.vv for e in r.index.iter_entries()} == versions
        rows = r.index.conn.execute("SELECT key, leaf FROM entries")
        assert r.index.root()[0] == merkle.root_of(rows)
    refused = ms("init", "--rebuild", root)  # a whole index: nothing to do, as before
    assert refused.code == 2 and "is readable" in refused.err


def test_a_long_first_scan_cut_short_keeps_what_it_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long walk commits as it goes (every SCAN_COMMIT_EVERY seconds, at
    a directory's end): a first scan cut short keeps the directories it
    finished, with the tree their rows make; the next scan walks everything
    and reads only the files the cut one did not keep."""
    from merklesync import merkle
    from merklesync.sources.directory import WATCH_TOKEN

    root = tmp_path / "r"
    make_tree(root, files=300, dirs=30, seed=5, min_size=0, max_size=64)
    monkeypatch.setattr(directory, "SCAN_COMMIT_EVERY", 0.0)
    scan_directory = directory.DirectorySource._scan_directory
    done = [0]

    def cut(self: directory.DirectorySource, *args: Any, **kwargs: Any) -> Any:
        done[0] += 1
        if done[0] == 12:
            raise KeyboardInterrupt
        return scan_directory(self, *args, **kwargs)

    monkeypatch.setattr(directory.DirectorySource, "_scan_directory", cut)
    with pytest.raises(KeyboardInterrupt), Replica.open(root, create=True) as r:
        r.scan(spread=False)
    monkeypatch.undo()

    with Replica.open(root) as r:
        kept = {e.path for e in r.index.iter_entries()}
        rows = r.index.conn.execute("SELECT key, leaf FROM entries")
        assert r.index.root()[0] == merkle.root_of(rows)  # the tree of what was kept
        assert r.index.meta(WATCH_TOKEN) is None
        kept_files = {p for p in kept if (root / p).is_file()}
        assert 0 < len(kept_files) < 300
        report = r.scan(spread=False)
        assert report.hashed == 300 - len(kept_files)  # the kept ones are not read again
        assert {e.path for e in r.index.iter_entries()} >= kept
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh, ignore=shutil.ignore_patterns(".merklesync"))
    assert ms("init", fresh).code == 0
    assert ms("diff", root, fresh).code == 0


def test_a_directory_swapped_for_a_link_before_its_mode_is_set_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between its check and its chmod, the destination's directory is
    moved away and a link put in its place: the write is refused as a
    change made during the transfer (Linux cannot chmod a link, and says so
    with ValueError, not OSError), nothing is done through the link, and
    the run goes on."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "d").mkdir(parents=True)
    (a / "d" / "f").write_text("x")
    (a / "g").write_text("g")
    assert ms("init", a).code == 0 and ms("push", a, b).code == 0
    (a / "d").chmod(0o700)  # a new mode to give b/d
    (a / "g").write_text("g2")
    moved = tmp_path / "moved"
    real = directory_write.DirectoryWriter._verify_unchanged

    def verify_then_swap(self, spot, cached, entry):  # type: ignore[no-untyped-def]
        st = real(self, spot, cached, entry)
        if spot.rel == "d" and self.root == b.resolve():
            os.rename(b / "d", moved)
            os.symlink(moved, b / "d")
        return st

    monkeypatch.setattr(directory_write.DirectoryWriter, "_verify_unchanged", verify_then_swap)
    r = ms("push", a, b)
    assert r.code == 1, r.err
    assert "left alone: d: changed on the destination during the transfer" in r.err
    assert (b / "g").read_text() == "g2"
    assert (b / "d").is_symlink() and moved.stat().st_mode & 0o777 == 0o755
