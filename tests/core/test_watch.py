"""`merklesync watch`: a real watchdog observer on a real tree. A scan that
asks the watcher looks only where something changed, and must find exactly
what a full scan would."""

from __future__ import annotations

import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from merklesync import journal
from merklesync.journal import Changes, parse_question, question_name
from merklesync.model import ScanReport
from merklesync.replica import Replica
from merklesync.sources.directory import RELIST
from merklesync.watcher import ChangeJournal, Watcher
from tests.clirun import ms
from tests.treegen import assert_same_tree, make_tree, mutate


class Running:
    """A Watcher on a thread, stopped (and joined) by ``stop``."""

    def __init__(self, root: Path, **kw: object) -> None:
        self.watcher = Watcher(root, **kw)  # type: ignore[arg-type]
        ready = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.watcher.run(ready=ready.set)
            except BaseException as exc:  # reported by stop()
                self.error = exc
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10), "the watcher did not start"

    def stop(self) -> None:
        self.watcher.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    make_tree(root, files=80, dirs=10, seed=5, max_size=2048)
    assert ms("init", root).code == 0
    return root


@pytest.fixture
def watched(tree: Path) -> Iterator[Running]:
    running = Running(tree)
    yield running
    running.stop()


def scan(root: Path, *, checksum: bool = False) -> ScanReport:
    with Replica.open(root) as replica:
        return replica.scan(checksum=checksum)


def changed(report: ScanReport) -> tuple[list[str], list[str], list[str]]:
    return sorted(report.added), sorted(report.modified), sorted(report.deleted)


def assert_full_scan_agrees(root: Path) -> None:
    """A full scan that re-hashes everything finds nothing the partial ones missed."""
    assert changed(scan(root, checksum=True)) == ([], [], [])


def listing_size(directory: Path) -> int:
    return sum(1 for e in os.scandir(directory) if not e.name.startswith(".merklesync"))


# -- the journal on its own ---------------------------------------------------


def test_journal_answers_what_changed_since_a_token() -> None:
    j = ChangeJournal("abc")
    first = j.since("none")
    assert first.everything
    j.touched("a")
    j.touched("b/c", deep=True)
    later = j.since(first.token)
    assert not later.everything
    assert later.shallow == ("a",) and later.deep == ("b/c",)
    assert j.since(later.token) == Changes(later.token, everything=False)
    assert j.since("other.1").everything  # another watcher's token
    assert j.since("abc.99").everything  # from the future: not ours
    j.lost_track()
    assert j.since(later.token).everything


def test_journal_starts_over_when_it_grows_too_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("merklesync.watcher.MAX_TRACKED", 3)
    j = ChangeJournal("x")
    token = j.token
    for d in "abcd":
        j.touched(d)
    assert j.since(token).everything
    assert j.since(j.token) == Changes(j.token, everything=False)


def test_questions_and_answers_parse_strictly() -> None:
    assert parse_question(question_name("00ff", "abc.3")) == ("00ff", "abc.3")
    assert parse_question("q-../x-1") is None
    assert parse_question("a-00ff") is None
    assert parse_question("q-00ff") is None
    good = Changes("t.1", False, ("a",), ("b",))
    assert Changes.from_bytes(good.to_bytes()) == good
    hostile_answers = (
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        b"\x94\xa1t\xc2\x91\x01\x90",
        b"\x94\xa1t\xc2\x05\x90",  # a number where the paths go
        b"\x94\xa1t\xc2\xa2ab\x90",  # a string: not the list ["a", "b"]
    )
    for hostile in hostile_answers:
        assert Changes.from_bytes(hostile) is None


def test_no_watcher_means_a_full_scan(tree: Path) -> None:
    assert journal.ask(tree, None) is None
    assert scan(tree).scanned == 90  # 80 files, 10 directories


# -- a real watcher -------------------------------------------------------------


def test_nothing_changed_scans_nothing(watched: Running, tree: Path) -> None:
    assert scan(watched.watcher.root).scanned == 90  # first question: everything
    assert scan(tree).scanned == 0
    assert scan(tree).scanned == 0
    assert watched.watcher.answered == 3


def test_a_change_relists_its_directory_only(watched: Running, tree: Path) -> None:
    scan(tree)
    victim = next(p for p in sorted(tree.rglob("f*")) if p.parent != tree)
    victim.write_bytes(b"new content")
    report = scan(tree)
    rel = victim.relative_to(tree).as_posix()
    assert changed(report) == ([], [rel], [])
    assert report.scanned == listing_size(victim.parent)
    assert_full_scan_agrees(tree)


def test_new_nested_directories_moves_and_deletes(watched: Running, tree: Path) -> None:
    scan(tree)
    (tree / "n1" / "n2" / "n3").mkdir(parents=True)
    (tree / "n1" / "n2" / "n3" / "deep.txt").write_text("deep")
    (tree / "n1" / "top.txt").write_text("top")
    subdirs = sorted(p for p in tree.iterdir() if p.is_dir() and p.name.startswith("d"))
    moved = tree / "moved-here"
    os.rename(subdirs[0], moved)
    shutil.rmtree(subdirs[1])
    report = scan(tree)
    added, _, deleted = changed(report)
    assert "n1/n2/n3/deep.txt" in added and "n1/top.txt" in added
    assert any(p.startswith("moved-here/") for p in added)
    assert any(p.startswith(subdirs[0].name + "/") for p in deleted)
    assert any(p.startswith(subdirs[1].name + "/") for p in deleted)
    assert_full_scan_agrees(tree)


def test_ignore_file_changes_are_seen(watched: Running, tree: Path) -> None:
    scan(tree)
    sub = next(p for p in sorted(tree.iterdir()) if p.is_dir() and p.name.startswith("d"))
    inside = sorted(p.relative_to(tree).as_posix() for p in sub.rglob("*") if p.is_file())
    assert inside and set(inside) <= live(tree)
    (tree / ".merklesyncignore").write_text(f"/{sub.name}/\n")
    scan(tree)
    assert not set(inside) & live(tree)  # left out now: forgotten, as a full scan does
    (tree / ".merklesyncignore").unlink()
    assert set(inside) <= set(scan(tree).added)
    assert_full_scan_agrees(tree)


@pytest.mark.parametrize("watching", [True, False])
def test_a_directory_turned_symlink_is_not_followed(
    tree: Path, tmp_path: Path, watching: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    make_tree(elsewhere, files=5, dirs=1, seed=9, min_size=0, max_size=64)
    running = Running(tree) if watching else None
    try:
        scan(tree)
        sub = next(p for p in sorted(tree.iterdir()) if p.is_dir() and p.name.startswith("d"))
        deep = next(p for p in sorted(sub.rglob("*")) if p.is_dir())  # a directory in it
        before = {p for p in live(tree) if p.startswith(sub.name + "/")}
        shutil.rmtree(deep)
        os.symlink(elsewhere, deep)
        shutil.rmtree(sub)
        os.symlink(elsewhere, sub)
        scan(tree)
        now = live(tree)
        assert sub.name in now  # the link itself
        assert not {p for p in now if p.startswith(sub.name + "/")}  # nothing through it
        assert before
        assert_full_scan_agrees(tree)
    finally:
        if running is not None:
            running.stop()


def test_a_stale_answer_never_lists_through_a_symlink(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher names a directory that is a symlink by now (its parent's
    event not in yet): the scan must not index what the link points to."""
    elsewhere = tmp_path / "elsewhere"
    make_tree(elsewhere, files=5, dirs=0, seed=9, min_size=0, max_size=64)
    scan(tree)
    sub = next(p for p in sorted(tree.iterdir()) if p.is_dir() and p.name.startswith("d"))
    shutil.rmtree(sub)
    os.symlink(elsewhere, sub)
    only_sub = Changes("t.1", everything=False, shallow=(sub.name,))
    monkeypatch.setattr(journal, "ask", lambda root, token: only_sub)
    scan(tree)
    assert not {p for p in live(tree) if p.startswith(sub.name + "/")}
    monkeypatch.undo()
    assert changed(scan(tree)) == ([], [sub.name], [])  # a full scan: now a link
    assert not {p for p in live(tree) if p.startswith(sub.name + "/")}


@pytest.mark.parametrize("how", ["shallow", "deep"])
def test_a_stale_answer_never_lists_below_a_parent_turned_symlink(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The watcher names a directory whose parent is a symlink by now: the
    scan must not index what is below the link's target either."""
    elsewhere = tmp_path / "elsewhere"
    child = next(p for p in sorted(tree.rglob("*")) if p.is_dir() and p.parent != tree)
    parent = child.parent
    (elsewhere / child.name).mkdir(parents=True)
    (elsewhere / child.name / "secret.txt").write_text("outside the replica")
    scan(tree)
    shutil.rmtree(parent)
    os.symlink(elsewhere, parent)
    rel = child.relative_to(tree).as_posix()
    answer = Changes("t.1", everything=False, **{how: (rel,)})  # type: ignore[arg-type]
    monkeypatch.setattr(journal, "ask", lambda root, token: answer)
    scan(tree)
    assert f"{rel}/secret.txt" not in live(tree)
    monkeypatch.undo()
    scan(tree)
    assert not {p for p in live(tree) if p.startswith(parent.relative_to(tree).as_posix() + "/")}


def live(root: Path) -> set[str]:
    with Replica.open(root) as replica:
        return {e.path for e in replica.index.iter_entries(live_only=True)}


@pytest.mark.parametrize("stored", [b"\xc1", b"\x01", b"\x91\x01", "text"])
def test_a_damaged_relist_makes_the_scan_walk_everything(
    watched: Running, tree: Path, stored: object
) -> None:
    scan(tree)
    with Replica.open(tree) as replica:
        replica.index.set_meta(RELIST, stored)
        replica.index.commit()
    assert scan(tree).scanned == 90  # no traceback: a full walk instead
    assert scan(tree).scanned == 0  # and the walk stored a good one


def test_lost_events_make_the_next_scan_walk_everything(watched: Running, tree: Path) -> None:
    scan(tree)
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    assert scan(tree).scanned == 90


def test_a_new_watcher_does_not_trust_an_old_token(tree: Path) -> None:
    first = Running(tree)
    scan(tree)
    assert scan(tree).scanned == 0
    first.stop()
    (tree / "unwatched.txt").write_text("made while nobody watched")
    second = Running(tree)
    try:
        report = scan(tree)
        assert report.scanned == 91 and report.added == ["unwatched.txt"]
    finally:
        second.stop()


def test_one_watcher_per_replica(watched: Running, tree: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "merklesync", "watch", str(tree)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 4
    assert "already watched" in r.stderr and "Traceback" not in r.stderr


def test_exclude_and_checksum_ignore_the_journal(watched: Running, tree: Path) -> None:
    scan(tree)
    assert scan(tree, checksum=True).scanned == 90
    with Replica.open(tree, excludes=["nothing-matches"]) as replica:
        assert replica.scan().scanned == 90


OPS = hs.lists(
    hs.tuples(
        hs.sampled_from(["modify", "add", "delete", "mkdir", "rmdir", "move", "chmod"]),
        hs.integers(0, 10_000),
    ),
    min_size=1,
    max_size=12,
)


def apply_op(root: Path, op: str, n: int) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".merklesync" not in p.parts)
    dirs = sorted(p for p in root.rglob("*") if p.is_dir() and ".merklesync" not in p.parts)
    pick_dir = dirs[n % len(dirs)] if dirs else root
    if op == "modify" and files:
        files[n % len(files)].write_bytes(os.urandom(n % 300))
    elif op == "add":
        (pick_dir / f"new{n}").write_bytes(b"x" * (n % 50))
    elif op == "delete" and files:
        files[n % len(files)].unlink()
    elif op == "mkdir":
        (pick_dir / f"dir{n}" / "sub").mkdir(parents=True, exist_ok=True)
        (pick_dir / f"dir{n}" / "sub" / "leaf").write_text(str(n))
    elif op == "rmdir" and dirs:
        shutil.rmtree(pick_dir)
    elif op == "move" and len(dirs) > 1:
        target = root / f"moved{n}"
        if not target.exists() and not str(target).startswith(str(pick_dir)):
            os.rename(pick_dir, target)
    elif op == "chmod" and files:
        files[n % len(files)].chmod(0o600 if n % 2 else 0o644)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=hs.lists(OPS, min_size=1, max_size=3))
def test_partial_scans_find_what_a_full_scan_finds(
    tmp_path_factory: pytest.TempPathFactory, rounds: list[list[tuple[str, int]]]
) -> None:
    root = tmp_path_factory.mktemp("prop") / "r"
    make_tree(root, files=30, dirs=6, seed=len(rounds), min_size=0, max_size=512)
    ms("init", root)
    running = Running(root)
    try:
        scan(root)
        for ops in rounds:
            for op, n in ops:
                apply_op(root, op, n)
            scan(root)
        assert running.watcher.answered == 1 + len(rounds)  # every scan asked, and was answered
        assert_full_scan_agrees(root)
    finally:
        running.stop()


# -- the command ----------------------------------------------------------------


def wait_for(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_watch_run_keeps_a_copy_in_step(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    cmd = f"{sys.executable} -m merklesync push --quiet {tree} {dst}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "watch", str(tree), "--run", cmd, "--settle", "0.2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: (dst / ".merklesync").exists() and ms("diff", tree, dst).code == 0)
        mutate(tree, modify=3, add=2, delete=1, seed=4)
        assert wait_for(lambda: ms("diff", tree, dst).code == 0)
        assert_same_tree(tree, dst)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "watching" in err and "Traceback" not in err


def test_watch_run_failing_is_an_error_under_quiet_too(tree: Path, tmp_path: Path) -> None:
    """From cron with --quiet, a --run command that fails must still be
    heard of: an error on stderr each time, and exit 1 when the last one
    failed."""
    code, err = _stopped_once_run(
        tree, tmp_path, "raise SystemExit(3)", group=False, said="exited with status 3"
    )
    assert code == 1, err
    assert "merklesync: error: " in err and "exited with status 3" in err, err


def test_watch_run_that_found_a_replica_locked_runs_again(tree: Path, tmp_path: Path) -> None:
    """A --run sync that found the other replica locked (exit 4: a cron run
    held it) runs again a little later, though nothing changed since."""
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) "
        "if p.exists() else 0; p.write_text('x' * (n + 1)); sys.exit(4 if n == 0 else 0)"
    )
    cmd = shlex.join([sys.executable, "-c", script, str(runs)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "watch", str(tree), "--run", cmd, "--settle", "0.2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: runs.exists() and runs.read_text() == "xx", timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # the last run went well
    assert "exited with status 4" in err and "running it again in 10 s" in err


def test_watch_stops_when_the_replica_state_is_removed(tree: Path) -> None:
    """`rm -rf .merklesync` under a running watch: it says so and stops
    (exit 5), rather than go on answering for a replica that is gone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "watch", str(tree)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: journal.watcher_running(tree / ".merklesync"))
        shutil.rmtree(tree / ".merklesync")
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 5, err
    assert "was removed: " in err and "is no replica now" in err


# -- what events do not say -----------------------------------------------------


def test_a_write_through_a_hard_link_outside_is_seen(watched: Running, tree: Path) -> None:
    victim = next(p for p in sorted(tree.rglob("f*")) if p.parent != tree)
    outside = tree.parent / "outside-link"
    os.link(victim, outside)
    scan(tree)  # sees the link count: its directory is re-listed from now on
    with open(outside, "r+b") as f:  # raises no event inside the tree
        f.write(b"changed through the other name")
    rel = victim.relative_to(tree).as_posix()
    assert changed(scan(tree)) == ([], [rel], [])
    assert_full_scan_agrees(tree)


def test_an_unreadable_file_is_looked_at_again(
    watched: Running, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from merklesync.sources.directory import DirectorySource

    scan(tree)
    victim = next(p for p in sorted(tree.rglob("f*")) if p.parent != tree)
    rel = victim.relative_to(tree).as_posix()
    victim.write_bytes(b"new")
    real = DirectorySource.hash_file

    def failing(
        self: DirectorySource, path: str, dir_fd: int | None = None
    ) -> tuple[bytes, os.stat_result]:
        if path == rel:
            raise OSError(5, "Input/output error")
        return real(self, path, dir_fd)

    monkeypatch.setattr(DirectorySource, "hash_file", failing)
    report = scan(tree)
    assert any("cannot read" in w for w in report.warnings)
    assert rel not in report.modified
    monkeypatch.undo()
    assert changed(scan(tree)) == ([], [rel], [])  # no new event: re-listed anyway


def _drop_watch(directory: Path) -> None:
    """Remove this process's inotify watch on ``directory`` behind
    watchdog's back, as if it could never be added (the kernel's limit)."""
    import ctypes
    import re

    libc = ctypes.CDLL(None, use_errno=True)
    ino = directory.stat().st_ino
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for wd, hex_ino in re.findall(r"wd:(\d+) ino:([0-9a-f]+)", text):
            if int(hex_ino, 16) == ino:
                assert libc.inotify_rm_watch(int(fd), int(wd)) == 0
                return
    raise AssertionError(f"no watch on {directory}")


def test_an_unwatched_directory_is_walked_every_time(tree: Path) -> None:
    warnings: list[str] = []
    running = Running(tree, warn=warnings.append)
    try:
        sub = next(p for p in sorted(tree.iterdir()) if p.is_dir() and p.name.startswith("d"))
        _drop_watch(sub)
        scan(tree)  # the first answer checks every directory
        assert warnings and "not watched" in warnings[0]
        victim = next(p for p in sorted(sub.iterdir()) if p.is_file())
        victim.write_bytes(b"no event for this")
        rel = victim.relative_to(tree).as_posix()
        assert rel in scan(tree).modified
        assert_full_scan_agrees(tree)
    finally:
        running.stop()


def test_the_periodic_rescan_checks_again_which_directories_are_watched(tree: Path) -> None:
    # A directory that lost its watch without an event (the way a file
    # system mounted there loses it) is found at the next periodic rescan,
    # and walked by every scan from then on, not by that one alone.
    running = Running(tree, rescan_every=1.0)
    try:
        scan(tree)
        scan(tree)
        sub = next(p for p in sorted(tree.iterdir()) if p.is_dir() and p.name.startswith("d"))
        _drop_watch(sub)
        time.sleep(1.5)  # past the rescan
        scan(tree)
        for n in range(2):
            victim = sorted(p for p in sub.iterdir() if p.is_file())[n]
            victim.write_bytes(f"no event for this {n}".encode())
            assert victim.relative_to(tree).as_posix() in scan(tree).modified
    finally:
        running.stop()


def test_a_file_system_mounted_inside_while_watched_is_walked_every_time(tree: Path) -> None:
    mnt = tree / "mnt"
    mnt.mkdir()
    running = Running(tree)
    try:
        scan(tree)
        scan(tree)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "merklesync-test", str(mnt)], capture_output=True, check=False
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
        try:
            time.sleep(0.5)  # the watcher sees the mount table change
            for name in ("one.txt", "two.txt"):
                (mnt / name).write_text(name)
                assert f"mnt/{name}" in scan(tree).added
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        running.stop()


@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_an_ignore_file_edited_through_another_name_is_seen(
    tree: Path, tmp_path: Path, how: str
) -> None:
    # Edited through its target, or another of its links, outside the tree:
    # no event in the tree, yet the rules below it changed.
    rules = tmp_path / "shared-rules"
    rules.write_text("*.log\n")
    sub = next(p for p in sorted(tree.iterdir()) if p.is_dir() and p.name.startswith("d"))
    (sub / "deeper").mkdir()
    (sub / "deeper" / "build.log").write_text("log")
    if how == "symlink":
        os.symlink(rules, sub / ".merklesyncignore")
    else:
        os.link(rules, sub / ".merklesyncignore")
    scan(tree)
    running = Running(tree)
    try:
        scan(tree)
        scan(tree)
        rules.write_text("# nothing left out\n")
        assert f"{sub.name}/deeper/build.log" in scan(tree).added
        rules.write_text("*.log\n")
        scan(tree)
        with Replica.open(tree) as replica:  # left out again: no longer indexed
            assert replica.index.get(f"{sub.name}/deeper/build.log") is None
        assert_full_scan_agrees(tree)
    finally:
        running.stop()


def test_new_directories_to_check_stay_bounded(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tree that keeps making directories (build caches) while no scan asks.
    monkeypatch.setattr("merklesync.watcher.MAX_TRACKED", 1000)
    watcher = Watcher(tree)
    for i in range(5000):
        watcher.event("created", True, f"{tree}/tmp-{i}", "")
    assert len(watcher._to_check) <= 1000
    assert watcher._check_all  # the next answer checks every directory instead


def test_an_answer_nobody_waits_for_any_more_is_not_left_behind(tree: Path) -> None:
    watcher = Watcher(tree)
    watcher.folder.mkdir(parents=True, exist_ok=True)
    watcher._answer(question_name("0123456789abcdef", "none"))  # its asker gave up
    assert not [p for p in watcher.folder.iterdir() if "0123456789abcdef" in p.name]


def test_network_file_systems_are_not_watched(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from merklesync.errors import UsageError
    from merklesync.watch_coverage import remote_file_system

    mounts = (
        "/dev/vda / ext4 rw 0 0\n"
        "server:/export /mnt/data nfs4 rw 0 0\n"
        "sshfs#me@host: /mnt/my\\040box fuse.sshfs rw 0 0\n"
    )
    assert remote_file_system(Path("/mnt/data/photos"), mounts) == "nfs4"
    assert remote_file_system(Path("/mnt/data"), mounts) == "nfs4"
    assert remote_file_system(Path("/mnt/my box/x"), mounts) == "fuse.sshfs"
    assert remote_file_system(Path("/mnt/database"), mounts) is None
    assert remote_file_system(Path("/home/me"), mounts) is None
    monkeypatch.setattr("merklesync.watch_coverage.remote_file_system", lambda root: "nfs4")
    with pytest.raises(UsageError, match="nfs4 file system"):
        Watcher(tree).run()


def test_a_watcher_stops_when_its_root_moves(tree: Path) -> None:
    running = Running(tree)
    os.rename(tree, tree.parent / "elsewhere")
    running.thread.join(10)
    assert not running.thread.is_alive()
    assert running.error is not None and "moved or removed" in str(running.error)


def test_watchdog_replacing_a_watch_it_holds_says_nothing() -> None:
    """A directory removed and made again may come back with the same
    watch number: watchdog replaces the watch and warns; `watch` keeps that
    warning off its terminal and log (as a user's process would show it,
    not under pytest's own filters). Other warnings still show."""
    code = """
import warnings
import merklesync.watcher
for text in (
    "Callback with id '1' already exists for watch <Watch>. It will be Overwritten.",
    "something else",
):
    warnings.warn_explicit(
        text, RuntimeWarning, "inotify.py", 365, module="watchdog.observers.inotify"
    )
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "something else" in r.stderr and "Callback with id" not in r.stderr


def test_watch_stopped_while_its_command_runs_is_no_failure(tree: Path, tmp_path: Path) -> None:
    """A stop (SIGTERM to the process group, as a service manager sends,
    or Ctrl-C) cuts the running command short: that is no failed run."""
    code, err = _stopped_once_run(tree, tmp_path, "import time; time.sleep(30)", group=True)
    assert code == 0 and "error" not in err, err


def test_watch_stopped_alone_stops_its_command_too(tree: Path, tmp_path: Path) -> None:
    """SIGTERM to watch alone (kill PID), while its command runs: the
    command is passed the stop (it would run on for a minute), and that
    is no failure either."""
    code, err = _stopped_once_run(tree, tmp_path, "import time; time.sleep(60)", group=False)
    assert code == 0 and "error" not in err, err


def _stopped_once_run(
    tree: Path, tmp_path: Path, then: str, *, group: bool, said: str = ""
) -> tuple[int, str]:
    """`watch -q --run` of a Python command that marks its start, then does
    ``then``; stopped (SIGTERM: to watch, or to its whole process group)
    once it started, and once watch said ``said`` on stderr, if given.
    Watch's exit status and standard error."""
    marker = tmp_path / "started"
    cmd = f"{sys.executable} -c \"open({str(marker)!r}, 'w'); {then}\""
    proc = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "watch", "-q", str(tree), "--run", cmd],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
    )
    heard = ""
    try:
        assert wait_for(marker.exists)
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while said and said not in heard and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1)[0]:
                heard += proc.stderr.readline()
    finally:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    return proc.returncode, heard + err
