"""Listing sums: a directory whose names and stats sum to what they summed to
when the index last agreed with all of them is scanned without reading its
rows. Whatever changes a row of it, on disk or in the index, must undo that."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from merklesync.index import Index
from merklesync.model import ScanReport
from merklesync.replica import Replica
from merklesync.sources import prelist
from tests.clirun import ms
from tests.treegen import make_tree

DIRS = 6


@pytest.fixture(autouse=True, params=["walked", "prelisted"])
def listed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: directories listed as the walk reaches them, and
    listed ahead on two processes (prelist.py), however few they are."""
    if request.param == "prelisted":
        monkeypatch.setattr(prelist, "MIN_DIRS", 1)
        monkeypatch.setattr(prelist, "can_fork", lambda: True)
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    make_tree(root, files=60, dirs=DIRS, seed=3, min_size=0, max_size=256)
    assert ms("init", root).code == 0
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The directories whose rows a scan read from the index."""
    seen: list[str] = []
    original = Index.stat_cache

    def counting(self: Index, parent: str) -> dict[str, bytes | None]:
        seen.append(parent)
        return original(self, parent)

    monkeypatch.setattr(Index, "stat_cache", counting)
    yield seen


def scan(root: Path, **kw: bool) -> ScanReport:
    with Replica.open(root) as replica:
        return replica.scan(**kw)


def changes(report: ScanReport) -> tuple[list[str], list[str], list[str]]:
    return sorted(report.added), sorted(report.modified), sorted(report.deleted)


def live(root: Path) -> set[str]:
    with Replica.open(root) as replica:
        return {e.path for e in replica.index.iter_entries(live_only=True)}


# The index as merklesync wrote it before listing sums.
NO_LISTINGS = "DROP TABLE listings;"

# The layout that kept the sums with triggers: correct, but twice as slow to write.
TRIGGERS = "".join(
    f"CREATE TRIGGER listings_{event.lower()} AFTER {event} ON entries "
    f"BEGIN DELETE FROM listings WHERE parent = {row}.parent; END;"
    for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))
)


def on_index(root: Path, sql: str, *args: str) -> None:
    """Change a replica's index behind merklesync's back: one statement
    with its arguments, or a script."""
    conn = sqlite3.connect(root / ".merklesync" / "index.db")
    try:
        if args:
            conn.execute(sql, args)
            conn.commit()
        else:
            conn.executescript(sql)
    finally:
        conn.close()


def record_prelist(
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[list[str], dict[str, prelist.Prelisted]]]:
    """Each listing ahead: the directories asked for, and what came back."""
    calls: list[tuple[list[str], dict[str, prelist.Prelisted]]] = []
    real = prelist.prelist

    def recording(root: str, directories: Any) -> dict[str, prelist.Prelisted]:
        found = real(root, directories)
        calls.append((list(directories), dict(found)))  # the walk pops from it
        return found

    monkeypatch.setattr(prelist, "prelist", recording)
    return calls


def a_subdir(root: Path) -> Path:
    return next(p for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith("d"))


def test_an_unchanged_tree_reads_no_rows(tree: Path, reads: list[str]) -> None:
    scan(tree)  # init left every directory clean: sums kept
    assert reads == []
    report = scan(tree)
    assert reads == [] and report.scanned == 60 + DIRS


def test_a_changed_directory_alone_is_read_again(tree: Path, reads: list[str]) -> None:
    victim = next(p for p in sorted(tree.rglob("f*")) if p.parent != tree)
    victim.write_bytes(b"changed")
    os.utime(victim, (1_600_000_000, 1_600_000_000))
    rel = victim.relative_to(tree).as_posix()
    assert changes(scan(tree)) == ([], [rel], [])
    parent = victim.parent.relative_to(tree).as_posix()
    assert reads == [parent, parent]  # read, and read again once written: agreed, kept
    reads.clear()
    assert changes(scan(tree)) == ([], [], [])
    assert reads == []


def test_a_racy_file_keeps_its_directory_read(tree: Path, reads: list[str]) -> None:
    """Written just now, a file's stat is not trusted (git's racy rule):
    its directory is read on every scan until it is."""
    victim = next(p for p in sorted(tree.rglob("f*")) if p.parent != tree)
    victim.write_bytes(b"changed just now")
    parent = victim.parent.relative_to(tree).as_posix()
    scan(tree)
    reads.clear()
    assert scan(tree).hashed == 1
    assert reads[0] == parent


def test_a_row_changed_in_the_index_alone_undoes_the_sum(tree: Path, reads: list[str]) -> None:
    """A write into the replica (a push, a resolution) changes rows through
    the index, which drops the sum of their directory."""
    sub = a_subdir(tree)
    rel = next(p for p in sorted(sub.iterdir()) if p.is_file()).relative_to(tree).as_posix()
    with Replica.open(tree) as replica:
        cached = replica.index.get(rel)
        assert cached is not None
        replica.index.put(cached.entry, None, cached.entry)  # stat None: as if racy
    report = scan(tree)
    assert set(reads) == {sub.name}
    assert report.hashed == 1  # re-read, as a racy entry must be


def test_a_deleted_row_undoes_the_sum(tree: Path, reads: list[str]) -> None:
    sub = a_subdir(tree)
    rel = next(p for p in sorted(sub.iterdir()) if p.is_file()).relative_to(tree).as_posix()
    with Replica.open(tree) as replica:
        cached = replica.index.get(rel)
        assert cached is not None
        replica.index.forget(cached.entry)
    assert changes(scan(tree)) == ([rel], [], [])  # found again, not skipped


def test_a_sum_set_after_a_write_stands_and_one_before_it_falls(tree: Path) -> None:
    """Within one transaction: a row written, then the sum set (a scan) keeps
    the sum; a sum set, then a row written drops it again."""
    sub = a_subdir(tree)
    rel = next(p for p in sorted(sub.iterdir()) if p.is_file()).relative_to(tree).as_posix()
    with Replica.open(tree) as replica:
        index = replica.index
        cached = index.get(rel)
        assert cached is not None
        index.put(cached.entry, cached.stat, cached.entry)
        assert index.dir_sum(sub.name) is None
        index.set_dir_sum(sub.name, b"s" * 32, b"k")
        index.put(cached.entry, cached.stat, cached.entry)  # the same directory, again
        assert index.dir_sum(sub.name) is None
        index.set_dir_sum(sub.name, b"s" * 32, b"k")
        index.commit()
        assert index.dir_sum(sub.name) == (b"s" * 32, b"k")
        index.put(cached.entry, cached.stat, cached.entry)  # a new transaction
        assert index.dir_sum(sub.name) is None


def test_an_ignore_file_above_is_obeyed_below(tree: Path, reads: list[str]) -> None:
    sub = a_subdir(tree)
    inside = {p.relative_to(tree).as_posix() for p in sub.iterdir() if p.is_file()}
    assert inside and inside <= live(tree)
    (tree / ".merklesyncignore").write_text(f"/{sub.name}/f*\n")
    scan(tree)
    assert not inside & live(tree)  # left out, though nothing in sub changed
    (tree / ".merklesyncignore").write_text(f"/{sub.name}/nothing-like-it\n")
    scan(tree)
    assert inside <= live(tree)


def test_checksum_and_exclude_look_at_every_row(tree: Path, reads: list[str]) -> None:
    assert scan(tree, checksum=True).hashed == 60
    assert len(reads) == DIRS + 1
    reads.clear()
    with Replica.open(tree, excludes=["*.bin"]) as replica:
        replica.scan()
    assert len(reads) == DIRS + 1


def test_an_older_index_gets_the_sums(tree: Path, reads: list[str]) -> None:
    on_index(tree, NO_LISTINGS)
    assert changes(scan(tree)) == ([], [], [])
    assert len(reads) == DIRS + 1  # no sums yet: every directory read, sums kept
    reads.clear()
    assert changes(scan(tree)) == ([], [], [])
    assert reads == []


def test_a_directory_that_cannot_be_read_keeps_its_rows(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while listing (EIO, ESTALE...) is a warning: the directory's
    rows stay, and it is listed again next time."""
    sub = a_subdir(tree)
    inside = {p for p in live(tree) if p.startswith(sub.name + "/")}
    real = os.scandir

    def failing(path: Any) -> Any:
        if isinstance(path, int) and os.readlink(f"/proc/self/fd/{path}") == str(sub):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(path)

    monkeypatch.setattr(os, "scandir", failing)
    report = scan(tree)
    assert report.warnings == [f"{sub.name}: cannot list: {os.strerror(errno.EIO)}"]
    assert changes(report) == ([], [], [])
    monkeypatch.undo()
    assert inside <= live(tree)
    assert changes(scan(tree)) == ([], [], [])


def test_a_directory_with_ignored_names_is_summed_without_them(
    tree: Path, reads: list[str]
) -> None:
    sub = a_subdir(tree)
    (sub / "scratch.tmp").write_text("left out")
    (sub / "cache").mkdir()
    (sub / "cache" / "blob").write_text("left out too")
    (tree / ".merklesyncignore").write_text("*.tmp\ncache/\n")
    ignore = tree / ".merklesyncignore"
    for path in (sub / "scratch.tmp", sub / "cache" / "blob", sub / "cache", sub, ignore, tree):
        os.utime(path, (1_600_000_000, 1_600_000_000))
    scan(tree)
    reads.clear()
    report = scan(tree)
    assert reads == []  # summed, ignored names and all
    assert report.scanned == 60 + DIRS + 1  # the ignore file counts; what it leaves out does not
    assert not {p for p in live(tree) if "scratch" in p or "cache" in p}
    (sub / "cache" / "blob").write_text("changed, and still left out")
    assert changes(scan(tree)) == ([], [], [])


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(
            NO_LISTINGS
            + "CREATE TABLE dirsums (parent TEXT PRIMARY KEY, sum BLOB NOT NULL) WITHOUT ROWID; "
            "CREATE TRIGGER dirsums_insert AFTER INSERT ON entries "
            "BEGIN DELETE FROM dirsums WHERE parent = NEW.parent; END;",
            id="dirsums",
        ),
        pytest.param(TRIGGERS, id="triggers"),
    ],
)
def test_an_earlier_layout_of_the_sums_is_replaced(
    tree: Path, reads: list[str], layout: str
) -> None:
    on_index(tree, layout)
    assert changes(scan(tree)) == ([], [], [])
    conn = sqlite3.connect(tree / ".merklesync" / "index.db")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    triggers = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()
    conn.close()
    assert "dirsums" not in names and "listings" in names
    assert triggers == (0,)
    reads.clear()
    scan(tree)
    assert reads == []


def test_a_parent_swapped_for_a_symlink_mid_scan_leads_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    """A/B listed as a directory; before B's turn, A becomes a symlink to a
    place that also has a B. Opening "A/B" would list that other B: the
    scan must see it is not the B that A listed, and leave it alone."""
    root = tmp_path / "r"
    (root / "A" / "B").mkdir(parents=True)
    (root / "A" / "B" / "mine.txt").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "B").mkdir(parents=True)
    (elsewhere / "B" / "secret.txt").write_text("not the replica's")
    assert ms("init", root).code == 0
    (root / "A" / "B" / "new.txt").write_text("new")  # so B is listed in full again
    real_open = os.open
    target = str(root / "A" / "B")

    def swapping_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if path == target and not (root / "A.real").exists():
            os.rename(root / "A", root / "A.real")
            os.symlink(elsewhere, root / "A")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", swapping_open)
    report = scan(root)
    monkeypatch.undo()
    if listed == "walked":
        assert any("A/B: replaced during the scan" in w for w in report.warnings)
    # else A/B was opened (and A swapped) while listing ahead: the walk then
    # finds A a symlink, and never goes below it.
    assert not {p for p in live(root) if "secret" in p}


def test_a_directory_replaced_after_it_was_listed_ahead_is_listed_again(
    tree: Path, monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    """Its listing ahead sums as before (same names and stats): taken for
    the new directory there now, it would hide the new one's files."""
    sub = a_subdir(tree)
    real = prelist.prelist

    def then_replaced(root: str, directories: Any) -> dict[str, prelist.Prelisted]:
        found = real(root, directories)
        os.rename(sub, tree / "moved-away")
        sub.mkdir()
        (sub / "new.txt").write_text("in the new one")
        return found

    monkeypatch.setattr(prelist, "prelist", then_replaced)
    report = scan(tree)
    assert f"{sub.name}/new.txt" in report.added
    assert f"{sub.name}/new.txt" in live(tree)


def test_a_failed_listing_ahead_leaves_its_half_to_the_walk(
    tree: Path, monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    """The child dies before it answers: the walk lists its directories."""
    for victim in [p for p in sorted(tree.rglob("f*")) if p.parent != tree][:3]:
        victim.write_bytes(b"changed")
        os.utime(victim, (1_600_000_000, 1_600_000_000))
    monkeypatch.setattr(prelist, "_to_wire", lambda *a: 1 / 0)  # in the child only
    listed_ahead = record_prelist(monkeypatch)
    report = scan(tree)
    assert len(report.modified) == 3 and report.scanned == 60 + DIRS
    if listed == "prelisted":  # the parent's half, not the child's
        known = listed_ahead[0][0]
        assert sorted(listed_ahead[0][1]) == known[1::2]
    assert changes(scan(tree)) == ([], [], [])


def test_listed_ahead_as_the_walk_would_list(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from merklesync.sources.dir_fds import DIR_FLAGS
    from merklesync.sources.listing import Listing

    monkeypatch.setattr(prelist, "MIN_DIRS", 1)
    monkeypatch.setattr(prelist, "can_fork", lambda: True)
    os.mkdir(os.fsencode(a_subdir(tree)) + b"/not-utf8-\xff")  # a name msgpack takes as bytes
    dirs = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_dir())
    dirs.remove(".merklesync")
    found = prelist.prelist(str(tree), [*dirs, "no-such-dir"])
    assert sorted(found) == dirs  # both halves; what cannot be opened left out
    for d in dirs:
        fd = os.open(tree / d, DIR_FLAGS)
        try:
            listing = Listing.read(fd)
        finally:
            os.close(fd)
        st = os.stat(tree / d)
        assert found[d] == prelist.Prelisted(
            (st.st_dev, st.st_ino),
            listing.digest(),
            listing.has_ignore_file,
            listing.has_temp_files,
            listing.subdirs(),
        )
    monkeypatch.setattr(prelist, "MIN_DIRS", len(dirs) + 1)
    assert prelist.prelist(str(tree), dirs) == {}  # too few to be worth a fork


def test_listing_ahead_follows_no_link_and_removes_nothing(tmp_path: Path, listed: str) -> None:
    """A directory the index knows (here a/s), whose parent became a link
    to elsewhere: neither listing ahead nor the walk goes through the link,
    and a temp-file-like name there is not "tidied" away."""
    root = tmp_path / "r"
    (root / "a" / "s").mkdir(parents=True)
    (root / "a" / "s" / "f").write_text("mine")
    for path in (root / "a" / "s" / "f", root / "a" / "s", root / "a"):
        os.utime(path, (1_600_000_000, 1_600_000_000))  # not racy: sums are kept
    assert ms("init", root).code == 0
    with Replica.open(root) as replica:
        assert replica.index.listed_dirs() == ["a", "a/s"]
    outside = tmp_path / "outside"
    (outside / "s").mkdir(parents=True)
    victim = outside / "s" / ".merklesync-tmp-999999-1-victim"
    victim.write_text("not the replica's")
    (root / "a").rename(tmp_path / "a-moved")
    (root / "a").symlink_to(outside)
    report = scan(root)
    assert victim.exists()
    assert "a/s/f" in report.deleted and "a" in report.modified
    assert not {p for p in live(root) if p.startswith("a/")}


def test_an_ignore_file_made_after_the_listing_ahead_is_obeyed(
    tree: Path, monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    """Listed ahead without an ignore file, listed again (it changed) with
    one: the rules read are those of the listing the walk goes by."""
    sub = a_subdir(tree)
    (sub / "secret.txt").write_text("left out")
    real = prelist.prelist

    def then_ignored(root: str, directories: Any) -> dict[str, prelist.Prelisted]:
        found = real(root, directories)
        (sub / ".merklesyncignore").write_text("secret.txt\n")
        return found

    monkeypatch.setattr(prelist, "prelist", then_ignored)
    scan(tree)
    assert f"{sub.name}/.merklesyncignore" in live(tree)
    assert f"{sub.name}/secret.txt" not in live(tree)


def test_no_child_to_wait_for_costs_only_time(
    tree: Path, monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    """SIGCHLD ignored (as a parent may leave it across exec): the child's
    exit status cannot be had, its half is listed by the walk."""
    import signal

    for victim in [p for p in sorted(tree.rglob("f*")) if p.parent != tree][:2]:
        victim.write_bytes(b"changed")
        os.utime(victim, (1_600_000_000, 1_600_000_000))
    listed_ahead = record_prelist(monkeypatch)
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        report = scan(tree)
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert len(report.modified) == 2 and not report.warnings
    if listed == "prelisted":  # the parent's half, not the child's
        known = listed_ahead[0][0]
        assert sorted(listed_ahead[0][1]) == known[1::2]


def test_no_process_to_fork_costs_only_time(
    tree: Path, monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    report = scan(tree)
    assert report.scanned == 60 + DIRS and not report.warnings


def test_a_temp_file_left_by_an_interrupted_run_goes_at_the_next_scan(
    tree: Path, listed: str
) -> None:
    """Temp names are not in a listing's sum, so an unchanged directory is
    not read again; listed ahead (which removes nothing), it still goes to
    the walk, which removes what an interrupted run left."""
    sub = a_subdir(tree)
    scan(tree)
    left = sub / ".merklesync-tmp-999999-1-half-copied"
    left.write_bytes(b"x" * 1000)
    assert changes(scan(tree)) == ([], [], [])
    assert not left.exists()
