"""The stat cache a scan reads per directory: served by one covering index,
migrated from the older layout, and exact about tombstones."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from merklesync import index as index_mod
from merklesync.clock import Order
from merklesync.replica import Replica
from tests.clirun import ms


def write_old(path: Path, text: str) -> None:
    """Written well before the scan, so its stat is cached (not racy)."""
    path.write_text(text)
    os.utime(path, (1_600_000_000, 1_600_000_000))


def plan(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN SELECT path, stat, deleted FROM entries WHERE parent = ?", ("",)
        ).fetchall()
        return " ".join(str(r[-1]) for r in rows)
    finally:
        conn.close()


def test_an_old_index_gets_the_covering_directory_index(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    write_old(root / "a.txt", "a")
    assert ms("init", root).code == 0
    db = root / ".merklesync" / "index.db"
    conn = sqlite3.connect(db)
    conn.executescript("DROP INDEX entries_dir; CREATE INDEX entries_parent ON entries (parent);")
    conn.close()
    assert "COVERING INDEX" not in plan(db)
    r = ms("status", root, "--json")
    assert r.code == 0, r.err
    assert r.json()["hashed"] == 0  # the stat cache survived the migration
    assert "COVERING INDEX entries_dir" in plan(db)


def test_a_file_deleted_and_made_again_supersedes_its_tombstone(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    write_old(root / "a.txt", "one")
    assert ms("init", root).code == 0
    (root / "a.txt").unlink()
    assert ms("status", root, "--json").json()["deleted"] == ["a.txt"]
    with Replica.open(root) as replica:
        cached = replica.index.get("a.txt")
        assert cached is not None and cached.entry.deleted
        tombstone = cached.entry
    write_old(root / "a.txt", "two")
    assert ms("status", root, "--json").json()["added"] == ["a.txt"]
    with Replica.open(root) as replica:
        cached = replica.index.get("a.txt")
        assert cached is not None and not cached.entry.deleted
        assert cached.entry.vv.compare(tombstone.vv) is Order.AFTER
    assert ms("status", root, "--json").json()["hashed"] == 0


def test_opening_an_index_reads_it_ahead_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comparison reads rows scattered over the file: the kernel is asked
    to read all of it (and the WAL) ahead, in chunks it does not cut short;
    a refusal is only a lost hint."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    assert ms("init", root).code == 0
    db = root / ".merklesync" / "index.db"
    chunk = index_mod.PREFETCH_CHUNK
    with db.open("ab") as f:
        f.truncate(chunk * 2 + 1)  # SQLite ignores what follows its pages
    asked: list[tuple[str, int, int, int]] = []
    refuse = True

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        asked.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice))
        if refuse:
            raise OSError(errno.EINVAL, "a file system that takes no hints")

    monkeypatch.setattr(os, "posix_fadvise", advise)
    with Replica.open(root) as r:
        assert [e.path for e in r.index.iter_entries()] == ["f"]
    assert asked[0] == (str(db), 0, chunk, os.POSIX_FADV_WILLNEED)
    assert [a for a in asked if a[0] == str(db)] == [asked[0]]  # refused: no more asked
    asked.clear()
    refuse = False
    with Replica.open(root):
        pass
    assert [(offset, length) for name, offset, length, _ in asked if name == str(db)] == [
        (0, chunk),
        (chunk, chunk),
        (2 * chunk, chunk),
    ]


def test_an_index_filled_from_empty_answers_from_memory_and_from_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica being filled (a first copy) is asked for every path it
    writes: what it stored itself it finds, what another connection stored
    (a scan in a child process) it finds once it has reloaded; a path the
    filter only may hold is looked up in SQLite."""
    from merklesync.clock import VersionVector
    from merklesync.model import Entry, EntryKind

    root = tmp_path / "r"
    root.mkdir()
    assert ms("init", root).code == 0

    def entry(path: str) -> Entry:
        return Entry(path, EntryKind.DIR, VersionVector.of({"r": 1}), mode=0o755)

    db = root / ".merklesync" / "index.db"
    index = index_mod.Index.open(db)
    try:
        assert index.get("a") is None  # empty: from now on, stored paths are remembered
        index.put(entry("a"), None, None)
        assert index.get("a") is not None and index.get("b") is None
        index.commit()
        other = index_mod.Index.open(db)  # another connection
        other.put(entry("b"), None, None)
        other.close()
        assert index.get("b") is None  # not reloaded: this connection's view
        index.reload()
        assert index.get("b") is not None
        for name in "cdefg":
            index.put(entry(name), None, None)
        assert all(index.get(name) is not None for name in "abcdefg")
        full = index_mod.PathFilter()
        full._bits[:] = b"\xff" * len(full._bits)  # says "maybe" to every path
        monkeypatch.setattr(index, "_stored_since_empty", full)
        assert index.get("never-stored") is None and index.get("c") is not None
    finally:
        index.close()


def test_the_filter_of_paths_stored_forgets_none_and_stays_small() -> None:
    """No path added is ever said to be absent (a first copy would write it
    as new over what is there); of paths never added, few are said to be
    maybe there; and its size does not grow with the paths."""
    paths = index_mod.PathFilter()
    added = [f"d{i % 997}/f{i}.txt" for i in range(300_000)]
    for path in added:
        paths.add(path)
    assert all(path in paths for path in added)
    maybe = sum(f"other/{i}" in paths for i in range(20_000))
    assert maybe < 20_000 * 0.05, maybe
    assert len(paths._bits) == index_mod.PathFilter.BITS // 8


def test_a_new_version_with_the_same_stat_is_stored_without_touching_the_stat_cache(
    tmp_path: Path,
) -> None:
    """A row whose stat and deleted flag stay (a version-only write) is
    updated by a statement that leaves the directory index alone, yet
    every field is stored; a changed stat or a deletion updates the stat
    cache as well."""
    from merklesync.clock import VersionVector
    from merklesync.model import Entry, EntryKind

    root = tmp_path / "r"
    root.mkdir()
    assert ms("init", root).code == 0
    db = root / ".merklesync" / "index.db"
    index = index_mod.Index.open(db)
    statements: list[str] = []
    index.conn.set_trace_callback(statements.append)

    def stored(path: str) -> tuple[Entry, bytes | None]:
        cached = index.get(path)
        assert cached is not None
        return cached.entry, cached.stat

    try:
        first = Entry("d/f", EntryKind.FILE, VersionVector.of({"a": 1}), b"1" * 32, 3, 0o644, 5)
        index.put(first, b"stat-1", None)
        vv = VersionVector.of({"a": 1, "b": 2})
        second = Entry("d/f", EntryKind.FILE, vv, b"2" * 32, 4, 0o600, 6, stamp=9, origin="b")
        statements.clear()
        index.put(second, b"stat-1", first)
        assert [s.split()[0:3] for s in statements] == [["UPDATE", "entries", "SET"]]
        assert " stat IS " in statements[0] and " stat = " not in statements[0]
        assert stored("d/f") == (second, b"stat-1")
        assert index.stat_cache("d") == {"d/f": b"stat-1"}

        index.put(second, b"stat-2", second)  # the same version, a new stat
        assert stored("d/f") == (second, b"stat-2")
        assert index.stat_cache("d") == {"d/f": b"stat-2"}
        index.put(second, None, second)  # racy: to be read again
        assert index.stat_cache("d") == {"d/f": None}

        gone = second.tombstone(VersionVector.of({"a": 1, "b": 3}), 10)
        index.put(gone, None, second)
        assert stored("d/f")[0].deleted
        assert index.stat_cache("d") == {"d/f": index_mod.TOMBSTONE}
        index.commit()
        assert index.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        index.close()


def test_a_first_push_between_copies_made_apart_reads_and_rewrites_rows_in_bulk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every entry of two replicas made apart from the same files takes a
    merged version on both sides (their files untouched): each row is
    updated in place, the stat cache's index left alone, and the rows the
    writes check are read many to a query, not one query each."""
    import shutil
    from collections import Counter

    from tests.treegen import make_tree

    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=1200, dirs=10, seed=5)
    shutil.copytree(a, b, symlinks=True)
    assert ms("init", a).code == 0 and ms("init", b).code == 0
    seen: Counter[str] = Counter()

    def kind(sql: str) -> str:
        if sql.startswith("UPDATE entries"):
            return "in place" if " stat IS " in sql else "whole row"
        if sql.startswith("SELECT") and "FROM entries WHERE path IN" in sql:
            return "many paths"
        if sql.startswith("SELECT") and "FROM entries WHERE path = " in sql:
            return "one path"
        return "other"

    connect = index_mod.Index._connect

    def traced(path: Path) -> sqlite3.Connection:
        conn = connect(path)
        conn.set_trace_callback(lambda sql: seen.update([kind(sql)]))
        return conn

    monkeypatch.setattr(index_mod.Index, "_connect", staticmethod(traced))
    r = ms("push", a, b, "--json")
    assert r.code == 0, r.err
    with Replica.open(a) as replica:
        entries = replica.index.count()
    assert entries == 1210 and len(r.json()["changes"]) == entries
    assert seen["in place"] == 2 * entries and seen["whole row"] == 0
    assert seen["one path"] == 0 and 0 < seen["many paths"] <= 2 * entries // 100


def _indexes(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    finally:
        conn.close()


def _traced_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the indexes opened from now on run."""
    seen: list[str] = []
    connect = index_mod.Index._connect

    def traced(path: Path) -> sqlite3.Connection:
        conn = connect(path)
        conn.set_trace_callback(seen.append)
        return conn

    monkeypatch.setattr(index_mod.Index, "_connect", staticmethod(traced))
    return seen


@pytest.mark.parametrize("command", ["push", "init"])
def test_an_index_filled_from_empty_makes_its_directory_index_after_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """A first copy (or a first scan) drops the stat cache's index once
    enough rows are in, and makes it in one pass at the end: it is there
    afterwards, and the stat cache it serves is whole and exact."""
    from tests.treegen import make_tree

    monkeypatch.setattr(index_mod, "_DIR_INDEX_LATER", 8)
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=60, dirs=4, seed=3, mtime=1_600_000_000)
    if command == "push":
        assert ms("init", src).code == 0
    seen = _traced_statements(monkeypatch)
    r = ms(command, *((src, dst) if command == "push" else (src,)))
    assert r.code == 0, r.err
    made = [s.strip() for s in seen if "INDEX" in s and "entries_dir" in s]
    drop = "DROP INDEX IF EXISTS entries_dir"
    assert drop in made and made[made.index(drop) :] == [drop, index_mod._DIR_INDEX], made
    filled = dst if command == "push" else src
    db = filled / ".merklesync" / "index.db"
    assert "entries_dir" in _indexes(db) and "COVERING INDEX entries_dir" in plan(db)
    status = ms("status", filled, "--json").json()
    assert status["hashed"] == 0 and status["modified"] == []  # every file's stat cached
    victim = sorted(p for p in filled.rglob("f*") if p.is_file() and ".merklesync" not in p.parts)[
        0
    ]
    victim.write_bytes(b"changed")
    status = ms("status", filled, "--json").json()
    assert status["modified"] == [victim.relative_to(filled).as_posix()]


def test_a_run_stopped_as_its_index_filled_gets_the_directory_index_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after a commit without the stat cache's index (the rows were
    still coming): the next open makes it again."""
    from merklesync.clock import VersionVector
    from merklesync.model import Entry, EntryKind

    monkeypatch.setattr(index_mod, "_DIR_INDEX_LATER", 2)
    root = tmp_path / "r"
    root.mkdir()
    assert ms("init", root).code == 0
    db = root / ".merklesync" / "index.db"
    index = index_mod.Index.open(db)
    for name in ("d", "d/a", "d/b", "e"):
        index.put(Entry(name, EntryKind.DIR, VersionVector.of({"r": 1}), mode=0o755), None, None)
    assert index.stat_cache("e") == {}  # nothing stored in e: no index needed to say so
    index.commit()
    assert "entries_dir" not in _indexes(db)
    assert set(index.stat_cache("d")) == {"d/a", "d/b"}  # made again to answer
    assert "entries_dir" in _indexes(db) or index.conn.in_transaction
    index.conn.execute("DROP INDEX entries_dir")
    index.commit()
    index.conn.close()  # as a SIGKILL leaves it
    assert "entries_dir" not in _indexes(db)
    assert ms("status", root, "--json").code == 0
    assert "entries_dir" in _indexes(db) and "COVERING INDEX entries_dir" in plan(db)
