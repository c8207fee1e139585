"""What a replica's first scan finds carries the version of its content
(model.found_version): replicas made apart from the same files agree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merklesync import index
from merklesync.clock import FOUND_PREFIX, Order, VersionVector, is_replica
from merklesync.index import FIRST_SCAN
from merklesync.model import Entry, EntryKind, found_version
from merklesync.policy import newer, writer_of
from merklesync.replica import Replica
from merklesync.sources import directory
from tests.clirun import ms
from tests.treegen import make_tree

FILE = Entry("f", EntryKind.FILE, VersionVector(), digest=b"\x01" * 32, size=3, mode=0o644)


def _status(root: Path) -> dict[str, object]:
    r = ms("status", root, "--json")
    assert r.code == 0, r.err
    return dict(r.json())


def _entry(root: Path, path: str) -> Entry:
    with Replica.open(root) as replica:
        cached = replica.index.get(path)
    assert cached is not None
    return cached.entry


def test_the_found_version_is_named_by_the_content_alone() -> None:
    same = found_version(FILE)
    assert same == found_version(
        Entry(
            "f",
            EntryKind.FILE,
            VersionVector(),
            digest=b"\x01" * 32,
            size=3,
            mode=0o644,
            mtime_ns=123,
            stamp=9,
            origin="x",
        )
    )
    ((name, count),) = same.pairs
    assert name.startswith(FOUND_PREFIX) and count == 1 and not is_replica(name)
    others = [
        Entry("f", EntryKind.FILE, VersionVector(), digest=b"\x02" * 32, size=3, mode=0o644),
        Entry("f", EntryKind.FILE, VersionVector(), digest=b"\x01" * 32, size=3, mode=0o755),
        Entry("f", EntryKind.LINK, VersionVector(), digest=b"\x01" * 32, target="t"),
        Entry("f", EntryKind.DIR, VersionVector(), mode=0o755),
    ]
    for other in others:
        assert found_version(other).compare(same) is Order.CONCURRENT
    # A write on top of it descends from it.
    assert same.bump("0123abcd").compare(same) is Order.AFTER


def test_a_found_version_is_made_where_it_was_found() -> None:
    """Its origin is the replica that found it, as the wire takes it; a
    found name is never taken for a writer."""
    found = FILE.with_version(found_version(FILE), origin="cafe")
    assert Entry.from_wire(found.to_wire()) == found
    assert writer_of(found, FILE) == "cafe"
    assert writer_of(found.with_version(found.vv, origin=""), FILE) == "-"
    edited = found.with_version(found.vv.bump("beef"), origin="beef")
    assert writer_of(edited.with_version(edited.vv, origin=""), found) == "beef"
    for vv, origin in ((VersionVector.of({"beef": 1}), "cafe"), (found.vv, "=abc")):
        with pytest.raises(ValueError, match="origin"):
            Entry.from_wire(FILE.with_version(vv, origin=origin).to_wire())


def test_the_first_scan_gives_found_versions_and_later_ones_their_own(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "there.txt").write_text("there before\n")
    assert ms("init", "--as-copy", root).code == 0
    with Replica.open(root) as replica:
        me = replica.replica_id
    there = _entry(root, "there.txt")
    assert there.vv == found_version(there) and there.origin == me
    (root / "new.txt").write_text("written since\n")
    (root / "there.txt").write_text("edited since\n")
    _status(root)
    with Replica.open(root) as replica:
        assert replica.index.writers() == {me}  # found names are no replica's
    new, edited = _entry(root, "new.txt"), _entry(root, "there.txt")
    assert new.vv == VersionVector.of({me: 1}) and new.origin == me
    assert edited.vv == there.vv.bump(me) and edited.origin == me


def test_only_init_as_copy_finds(tmp_path: Path) -> None:
    """A plain init, or a run that makes a replica of a directory, counts
    what it finds as the replica's writes (a directory that shares some
    files with a replica is no copy of it unless said so: its files are not
    brought up to date behind the user's back); --as-copy is for a new
    replica only."""
    plain, copy = tmp_path / "plain", tmp_path / "copy"
    for root in (plain, copy):
        root.mkdir()
        (root / "f").write_text("there before\n")
    assert ms("init", plain).code == 0
    assert ms("init", "--as-copy", copy).code == 0
    with Replica.open(plain) as replica:
        me = replica.replica_id
    assert _entry(plain, "f").vv == VersionVector.of({me: 1})
    assert _entry(copy, "f").vv == found_version(_entry(copy, "f"))
    made = tmp_path / "made"
    made.mkdir()
    (made / "f").write_text("there before\n")
    r = ms("push", copy, made)  # concurrent versions of the same f: merged
    assert r.code == 0 and "1 entry already the same there (versions updated)" in r.err
    with Replica.open(made) as replica:
        assert replica.index.writers() == {replica.replica_id}
    assert ms("init", "--as-copy", copy).code == 2
    assert ms("init", "--rebuild", "--as-copy", copy).code == 2


def test_a_first_scan_cut_short_goes_on_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first scan that commits as it goes and is cut short: the next one
    gives the rest found versions too; once one ends, new files are writes."""
    root = tmp_path / "r"
    make_tree(root, files=60, dirs=6, seed=3)
    monkeypatch.setattr(directory, "SCAN_COMMIT_EVERY", 0.0)  # commit after every directory
    original = directory.DirectorySource._count
    calls = 0

    def count(scan: Any, scanned: int) -> None:  # each directory's entries counted
        nonlocal calls
        original(scan, scanned)
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt

    replica = Replica.open(root, create=True, as_copy=True)
    monkeypatch.setattr(directory.DirectorySource, "_count", staticmethod(count))
    with pytest.raises(KeyboardInterrupt):
        replica.scan(spread=False)
    replica.close(commit=False)
    with Replica.open(root) as replica:
        kept = replica.index.count()
        assert kept > 0 and replica.index.meta(FIRST_SCAN) == 1
    monkeypatch.undo()
    _status(root)
    with Replica.open(root) as replica:
        rows = [c.entry for c in replica.index.get_many(_paths(root)).values()]
        assert replica.index.meta(FIRST_SCAN) is None
        assert len(rows) > kept and all(e.vv == found_version(e) for e in rows)
    (root / "later.txt").write_text("x")
    _status(root)
    assert all(is_replica(r) for r, _ in _entry(root, "later.txt").vv.pairs)


def test_init_as_copy_stopped_in_its_first_scan_is_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new index is made as a copy in its first commit: an init stopped
    in its scan leaves a replica made as a copy, and running the same
    command again goes on (it is refused once a scan of it has ended)."""
    root = tmp_path / "r"
    make_tree(root, files=60, dirs=4, seed=3)
    original = directory.DirectorySource._count
    calls = 0

    def count(scan: Any, scanned: int) -> None:
        nonlocal calls
        original(scan, scanned)
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(directory.DirectorySource, "_count", staticmethod(count))
    assert ms("init", "--as-copy", root).code == 130
    monkeypatch.undo()
    assert ms("init", "--as-copy", root).code == 0
    rows = [_entry(root, p) for p in _paths(root)]
    assert rows and all(e.vv == found_version(e) for e in rows)
    assert ms("init", "--as-copy", root).code == 2


def _paths(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".merklesync"]
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return out


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=0, max_value=2**16), st.booleans())
def test_copies_made_apart_have_the_same_root(seed: int, keep_times: bool) -> None:
    """Two copies of one tree (times kept or not), each made a replica on
    its own: the same root, so their first run has nothing to do."""
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        make_tree(a, files=40, dirs=5, seed=seed, symlinks=3)
        shutil.copytree(
            a, b, symlinks=True, copy_function=shutil.copy2 if keep_times else shutil.copy
        )
        assert ms("init", "--as-copy", a).code == 0
        assert ms("init", "--as-copy", b).code == 0
        assert _status(a)["fingerprint"] == _status(b)["fingerprint"]
        r = ms("push", a, b, "--json", "--stats")
        assert r.json()["changes"] == [] and r.json()["stats"]["round_trips"] == 1


def test_the_writers_are_read_without_the_found_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every entry of a new replica holds a vector of its own: the index
    reads the writers (for retention, after every run) past them."""
    root = tmp_path / "r"
    make_tree(root, files=50, dirs=3, seed=1)
    assert ms("init", "--as-copy", root).code == 0
    (root / "d0000" / "edited").write_text("x")
    _status(root)
    unpacked: list[bytes] = []
    unpack = index.msgpack.unpackb

    def counted(blob: bytes, **kwargs: Any) -> Any:
        unpacked.append(blob)
        return unpack(blob, **kwargs)

    with Replica.open(root) as replica:
        monkeypatch.setattr(index.msgpack, "unpackb", counted)
        writers = replica.index.writers()
        monkeypatch.undo()
        assert writers == {replica.replica_id}
    assert len(unpacked) == 1  # the one vector written since, alone


def test_a_found_version_is_packed_and_read_as_any_vector() -> None:
    """The index packs and reads a found version without its cache (each
    content has its own), byte for byte as msgpack does any vector."""
    import msgpack

    found = [
        found_version(Entry("f", EntryKind.FILE, VersionVector(), digest=bytes([i]) * 32))
        for i in range(5)
    ]
    for vv in [*found, found[0].bump("beef"), VersionVector.of({"=short": 1}), VersionVector()]:
        packed = index._packed(vv)
        assert packed == msgpack.packb(vv.to_wire())
        assert index._vv(packed) == vv
    assert not index._PACKED.keys() & set(found) and not index._VVS.keys() & {
        index._packed(vv) for vv in found
    }


def test_each_replica_knows_its_own_found_content_in_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies made apart that differ: the conflict copy is named after the
    replica that found its content, which resolve --take local keeps there."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        (root / "f").write_text(f"{root.name}'s own text\n")
        assert ms("init", "--as-copy", root).code == 0
    assert ms("sync", a, b).code == 0
    for root in (a, b):
        [c] = ms("conflicts", root, "--json").json()["conflicts"]
        copy_text = (root / c["copy"]).read_text()
        assert c["this_replica"] == (copy_text == f"{root.name}'s own text\n")
    monkeypatch.chdir(b)
    assert ms("resolve", "f", "--take", "local").code == 0
    assert (b / "f").read_text() == "b's own text\n"


def test_a_backup_restored_as_a_copy_is_brought_up_to_date(tmp_path: Path) -> None:
    """A copy from before a change: made --as-copy, its files are the
    versions the live replica changed since, and sync brings them up to
    date; made plainly, they are its writes, and sync keeps both."""
    live, backup = tmp_path / "live", tmp_path / "backup"
    live.mkdir()
    (live / "f").write_text("chapter one\n")
    shutil.copytree(live, backup)
    assert ms("init", "--as-copy", live).code == 0
    (live / "f").write_text("edited\n")
    for as_copy, expected in ((True, ["edited\n"]), (False, ["chapter one\n", "edited\n"])):
        copy = tmp_path / f"restored-{as_copy}"
        shutil.copytree(backup, copy)
        assert ms("init", *(["--as-copy"] if as_copy else []), copy).code == 0
        assert ms("sync", live, copy).code == 0
        assert sorted(p.read_text() for p in copy.iterdir() if p.is_file()) == expected


def test_last_write_wins_between_found_versions_never_asks_who_found_them() -> None:
    """Each replica that found a content names itself its origin: the same
    version holds another origin on each, so a tie of last-write-wins
    between found versions is broken by the content alone."""
    x = FILE.with_version(found_version(FILE), stamp=5, origin="aaaa")
    other = Entry("f", EntryKind.FILE, VersionVector(), digest=b"\x02" * 32, size=3, mode=0o644)
    y = other.with_version(found_version(other), stamp=5, origin="bbbb")
    winner = newer(x, y).digest
    for ox, oy in (("zzzz", "bbbb"), ("aaaa", "0000"), ("cccc", "cccc")):
        assert (
            newer(x.with_version(x.vv, origin=ox), y.with_version(y.vv, origin=oy)).digest == winner
        )


def test_the_deletion_of_a_found_version_waits_for_copies_named_nowhere(tmp_path: Path) -> None:
    """r2, a copy that never wrote, is named in no vector and unknown to r0
    and r1: their complete runs prove nothing of it. The tombstone stays
    (the retention alone collects it), and reaches r2 at its first sync."""
    roots = [tmp_path / f"r{i}" for i in range(3)]
    for root in roots:
        root.mkdir()
        (root / "a").write_text("as copied\n")
        (root / "b").write_text("kept\n")
        assert ms("init", "--as-copy", root).code == 0
    (roots[1] / "a").unlink()
    for _ in range(2):  # the second run proves r0 has seen the deletion
        assert ms("sync", roots[0], roots[1]).code == 0
    for root in roots[:2]:
        assert ms("gc", root, "--json").json()["collected"] == []
    assert ms("sync", roots[0], roots[2]).code == 0
    assert [not (root / "a").exists() for root in roots] == [True, True, True]


def test_messages_say_a_found_version_was_found_not_written(tmp_path: Path) -> None:
    """Copies made apart that differ: what --force overwrites and what lww
    discards is named as found by its replica, which wrote nothing."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ids = {}
    for root, when in ((a, 1_600_000_000), (b, 1_700_000_000), (c, 1_700_000_000)):
        root.mkdir()
        (root / "f").write_text(f"{root.name}'s own\n")
        os.utime(root / "f", (when, when))
        assert ms("init", "--as-copy", root).code == 0
        with Replica.open(root) as replica:
            ids[root.name] = replica.replica_id
    r = ms("sync", a, c, "--on-conflict", "lww", "--json")  # c's is later
    assert r.code == 0, r.err
    [event] = r.json()["events"]
    assert event["detail"] == f"lww: discarded the version found by {ids['a']}"
    forced = ms("push", "--force", c, b, "--json")
    assert forced.code == 0, forced.err
    [change] = forced.json()["changes"]
    assert change["discarded"] == f"the version found by {ids['b']}"
