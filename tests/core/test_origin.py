"""Each version records the replica whose write made it (its origin): with
three replicas, conflict copies are named after their real writers, `resolve
--take local` keeps this replica's own version, and last-writer-wins breaks
ties the same way whatever order the replicas meet in."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from merklesync.clock import VersionVector
from merklesync.errors import ProtocolError
from merklesync.index import FORMAT
from merklesync.model import Entry, EntryKind
from merklesync.protocol.messages import entry_from_wire
from merklesync.replica import Replica
from tests.clirun import ms

BASE_TIME = 1_700_000_000


def _id(root: Path) -> str:
    with Replica.open(root) as r:
        return r.replica_id


def three(tmp_path: Path) -> tuple[Path, Path, Path]:
    a, b, c = (tmp_path / n for n in "abc")
    a.mkdir()
    (a / "f.txt").write_text("base\n")
    os.utime(a / "f.txt", (BASE_TIME, BASE_TIME))
    ms("init", a)
    for other in (b, c):
        assert ms("push", a, other).code == 0
    return a, b, c


def edit(root: Path, text: str, when: int) -> None:
    (root / "f.txt").write_text(text)
    os.utime(root / "f.txt", (when, when))


def copies(root: Path) -> dict[str, str]:
    """Conflict copies of f.txt: the writer in the name -> the content."""
    found = {}
    for p in root.glob("f.conflict-*.txt"):
        writer = p.name.removeprefix("f.conflict-").split("-")[0]
        found[writer] = p.read_text()
    return found


@pytest.mark.parametrize("order", [("b", "c", "b"), ("c", "b", "c")])
def test_three_way_conflict_copies_are_named_after_their_writers(
    tmp_path: Path, order: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three concurrent edits; a meets the others in turn. Whichever order,
    each copy is named after the replica that wrote it (a version that lost
    twice was once the winner of a resolution, which a's counter also
    marks), and `resolve --take local` on each replica keeps its own."""
    a, b, c = three(tmp_path)
    ids = {n: _id(r) for n, r in zip("abc", (a, b, c), strict=True)}
    for n, r, t in ((a, "a", 100), (b, "b", 200), (c, "c", 300)):  # c's is the latest
        edit(n, f"written on {r}\n", BASE_TIME + t)
    replicas = {"a": a, "b": b, "c": c}
    for n in order:
        assert ms("sync", a, replicas[n]).code == 0
    assert (a / "f.txt").read_text() == "written on c\n"
    assert copies(a) == {ids["a"]: "written on a\n", ids["b"]: "written on b\n"}
    listed = ms("conflicts", a, "--json").json()["conflicts"]
    assert sorted(c["writer"] for c in listed) == sorted([ids["a"], ids["b"]])
    assert ms("sync", a, b).code == 0
    for n in "ab":
        monkeypatch.chdir(replicas[n])
        assert ms("resolve", "f.txt", "--take", "local").code == 0
        assert (replicas[n] / "f.txt").read_text() == f"written on {n}\n"
        assert copies(replicas[n]) == {}


def test_lww_ties_go_to_the_same_writer_whatever_the_order(tmp_path: Path) -> None:
    """Three concurrent edits with the same time (copied in with their
    times kept, say): last-writer-wins picks by writer id, not by which two
    replicas met first."""
    first = tmp_path / "first"
    first.mkdir()
    a, b, c = three(first)
    for r, n in ((a, "a"), (b, "b"), (c, "c")):
        edit(r, f"written on {n}\n", BASE_TIME + 100)
    second = tmp_path / "second"
    shutil.copytree(first, second, symlinks=True)  # the same replicas, ids and all
    ids = {n: _id(first / n) for n in "abc"}
    winner = max(ids, key=lambda n: ids[n])
    for root, pairs in ((first, ("ab", "ac", "bc")), (second, ("bc", "ba", "ac"))):
        for x, y in pairs:
            assert ms("sync", root / x, root / y, "--on-conflict", "lww").code == 0
        for n in "abc":
            assert (root / n / "f.txt").read_text() == f"written on {winner}\n", (root, n)


def test_an_index_from_before_origins_is_brought_up_to_date(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "f.txt").write_text("one\n")
    ms("init", a)
    db = a / ".merklesync" / "index.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("ALTER TABLE entries DROP COLUMN origin")
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'format'")
    conn.close()
    with Replica.open(a) as r:
        (entry,) = [e for e in r.index.iter_entries() if e.path == "f.txt"]
        assert entry.origin == ""  # not known: writer_of guesses from the vectors
        assert r.index.meta("format") == FORMAT
    (a / "f.txt").write_text("two\n")
    assert ms("status", a).code == 0
    with Replica.open(a) as r:
        (entry,) = [e for e in r.index.iter_entries() if e.path == "f.txt"]
        assert entry.origin == r.replica_id


def test_an_origin_outside_the_vector_is_refused() -> None:
    entry = Entry("f", EntryKind.FILE, VersionVector.of({"r1": 1}), origin="r1")
    assert entry_from_wire(entry.to_wire()) == entry
    with pytest.raises(ProtocolError, match="origin"):
        entry_from_wire([*entry.to_wire()[:10], "../../evil"])
    assert entry_from_wire(entry.to_wire()[:10]).origin == ""  # as protocol 2 had it


def test_a_rewrite_with_an_older_time_is_still_a_later_write(tmp_path: Path) -> None:
    """A file put back with an old time kept (`cp -p`, `tar x`): its
    version's stamp is after the one it replaces, whatever its mtime."""
    a = tmp_path / "a"
    a.mkdir()
    (a / "f.txt").write_text("one\n")
    ms("init", a)
    with Replica.open(a) as r:
        before = r.index.get("f.txt")
    assert before is not None
    edit(a, "two\n", 1_000_000_000)  # 2001
    assert ms("status", a).code == 0
    with Replica.open(a) as r:
        after = r.index.get("f.txt")
    assert after is not None and after.entry.stamp == before.entry.stamp + 1


@pytest.mark.parametrize("first", ["a", "b"])
def test_the_same_edit_on_both_sides_is_the_later_writers(tmp_path: Path, first: str) -> None:
    """Both wrote the same bytes: no conflict, and the version is the later
    write's, whichever side the sync (or push) starts from."""
    a, b, _ = three(tmp_path)
    edit(a, "same\n", BASE_TIME + 100)
    edit(b, "same\n", BASE_TIME + 200)  # the later write
    x, y = (a, b) if first == "a" else (b, a)
    assert ms("push" if first == "a" else "sync", x, y).code == 0
    for root in (a, b):
        with Replica.open(root) as r:
            cached = r.index.get("f.txt")
        assert cached is not None and cached.entry.origin == _id(b), root


def test_on_a_third_replica_remote_takes_the_newest_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that wrote none of the versions: `--take remote` takes the
    newest copy, as the help says (local keeps the name)."""
    a, b, c = three(tmp_path)
    edit(b, "b edit\n", BASE_TIME + 100)
    edit(c, "c edit\n", BASE_TIME + 200)  # keeps the name
    assert ms("sync", b, c).code == 0
    assert ms("sync", c, a).code == 0
    monkeypatch.chdir(a)
    assert ms("resolve", "-n", "f.txt", "--take", "local").lines()[0] == "would keep f.txt"
    assert ms("resolve", "f.txt", "--take", "remote").code == 0
    assert (a / "f.txt").read_text() == "b edit\n"


def test_conflict_copy_names_are_in_utc_whatever_the_zone(tmp_path: Path) -> None:
    """Every replica names the copy alike, wherever its clock's zone."""
    import subprocess
    import sys

    a, b, _ = three(tmp_path)
    edit(a, "a\n", BASE_TIME + 100)  # 2023-11-14 22:15:00 UTC: the earlier, the copy
    edit(b, "b\n", BASE_TIME + 200)
    env = {**os.environ, "TZ": "Asia/Tokyo"}  # 07:15 the next day there
    done = subprocess.run(
        [sys.executable, "-m", "merklesync", "sync", "-q", str(a), str(b)], env=env, check=False
    )
    assert done.returncode == 0
    (copy,) = [p.name for p in a.glob("f.conflict-*")]
    assert copy == f"f.conflict-{_id(a)}-20231114T221500.txt"


def test_a_conflict_copy_edited_since_it_was_made_is_listed_as_its_editor_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B edits the copy named after A's version: `conflicts` says B wrote
    what it holds now (and when), and `resolve` judges and names it so."""
    a, b, _c = three(tmp_path)
    ids = {"a": _id(a), "b": _id(b)}
    edit(a, "written on a\n", BASE_TIME + 100)
    edit(b, "written on b\n", BASE_TIME + 200)  # the later one: it keeps the name
    assert ms("sync", a, b).code == 0
    [copy] = [p.name for p in b.glob("f.conflict-*.txt")]
    assert ids["a"] in copy
    (b / copy).write_text("the copy, edited on b\n")
    os.utime(b / copy, (BASE_TIME + 300, BASE_TIME + 300))
    assert ms("sync", a, b).code == 0
    [listed] = ms("conflicts", a, "--json").json()["conflicts"]
    assert (listed["writer"], listed["this_replica"]) == (ids["b"], False), listed
    assert "written by " + ids["a"] not in ms("conflicts", a).out
    monkeypatch.chdir(a)
    r = ms("resolve", "f.txt", "--take", "both")
    assert r.code == 0, r.err
    assert (a / f"f.{ids['b']}.txt").read_text() == "the copy, edited on b\n"


def test_resolve_keeping_a_name_deleted_here_says_it_keeps_the_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _c = three(tmp_path)
    edit(a, "written on a\n", BASE_TIME + 100)
    edit(b, "written on b\n", BASE_TIME + 200)
    assert ms("sync", a, b).code == 0
    (a / "f.txt").unlink()
    monkeypatch.chdir(a)
    r = ms("resolve", "f.txt", "--take", "remote", "--dry-run", "--json")
    [kept] = [step for step in r.json()["done"] if step["action"] == "keep"]
    assert kept == {"action": "keep", "path": "f.txt", "target": None, "deletion": True}
    for dry in (["--dry-run"], []):
        r = ms("resolve", "f.txt", "--take", "remote", *dry)
        assert r.code == 0, r.err
        assert r.lines()[0] == f"{'would keep' if dry else 'kept'} the deletion of f.txt", r.out
    assert sorted(p.name for p in a.iterdir()) == [".merklesync"]
