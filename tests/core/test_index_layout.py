"""The stat cache a scan reads per directory: served by one covering index,
migrated from the older layout, and exact about tombstones."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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
