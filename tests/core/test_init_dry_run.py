"""`init --dry-run`: what init (and `--rebuild`, `--new-id`) would do,
with nothing written at the replica."""

from __future__ import annotations

from pathlib import Path

from merklesync.replica import Replica
from tests.clirun import ms


def _state(root: Path) -> dict[str, bytes]:
    """Every file of the replica's state, with its content."""
    state = root / ".merklesync"
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.is_file()}


def test_a_dry_run_finds_what_init_would_and_writes_nothing(
    tmp_path: Path, private_tmp: Path
) -> None:
    root = tmp_path / "r"
    root.mkdir()
    for name in ("a", "b", "c"):
        (root / name).write_text(name)
    dry = ms("init", "-n", root, "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["dry_run"] is True and dry.json()["replica_id"] is None
    assert dry.json()["entries"] == 3 and dry.json()["root"] == root.resolve().as_posix()
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "c"]
    assert "Would initialise a replica in" in ms("init", "--dry-run", root).out
    missing = ms("init", "-n", tmp_path / "not-yet")
    assert missing.code == 0 and "0 entries" in missing.out
    assert not (tmp_path / "not-yet").exists()
    done = ms("init", root, "--json").json()
    assert done["entries"] == 3 and done["dry_run"] is False
    assert list(private_tmp.iterdir()) == []


def test_a_dry_run_on_a_replica_neither_records_its_scan_nor_renews_its_id(
    tmp_path: Path, private_tmp: Path
) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "a").write_text("a")
    replica_id = ms("init", root, "--json").json()["replica_id"]
    (root / "new").write_text("new")
    before = _state(root)
    dry = ms("init", "-n", root, "--json").json()
    assert dry["replica_id"] == replica_id and dry["entries"] == 2
    renewed = ms("init", "-n", "--new-id", root)
    assert renewed.code == 0, renewed.err
    assert f"Replica {replica_id} would get a new id in" in renewed.out
    assert _state(root) == before
    assert "A new" in ms("status", root).out  # still a change to scan
    assert ms("init", root, "--json").json()["replica_id"] == replica_id
    assert list(private_tmp.iterdir()) == []


def test_a_dry_rebuild_tells_where_the_unreadable_index_would_go(
    tmp_path: Path, private_tmp: Path
) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "a").write_text("a")
    assert ms("init", root).code == 0
    index = root / ".merklesync" / "index.db"
    index.write_bytes(index.read_bytes()[:5000])  # cut short
    before = _state(root)
    dry = ms("init", "-n", "--rebuild", root, "--json")
    assert dry.code == 0, dry.err
    would = dry.json()["index_set_aside"]
    assert would.startswith(f"{index}.broken-") and dry.json()["entries"] == 1
    assert "would set the unreadable index aside" in ms("init", "-n", "--rebuild", root).err
    assert _state(root) == before
    assert ms("status", root).code == 3  # still unreadable
    done = ms("init", "--rebuild", root, "--json")
    assert done.code == 0 and done.json()["index_set_aside"].startswith(f"{index}.broken-")
    assert Path(done.json()["index_set_aside"]).read_bytes() == before["index.db"]
    assert list(private_tmp.iterdir()) == []


def test_a_dry_rebuild_tells_a_wrong_tree_would_be_made_again(
    tmp_path: Path, private_tmp: Path
) -> None:
    root = tmp_path / "r"
    root.mkdir()
    for name in ("a", "b"):
        (root / name).write_text(name)
    replica_id = ms("init", root, "--json").json()["replica_id"]
    with Replica.open(root) as r:
        r.index.conn.execute("UPDATE nodes SET count = count + 1 WHERE level = 0")
    dry = ms("init", "-n", "--rebuild", root, "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["tree_rebuilt"] is True and dry.json()["replica_id"] == replica_id
    assert "index_set_aside" not in dry.json()
    with Replica.open(root) as r:
        assert not r.index.tree_matches()  # untouched
    assert ms("init", "--rebuild", root, "--json").json()["tree_rebuilt"] is True
    refused = ms("init", "-n", "--rebuild", root)  # whole now: refused, as a real run
    assert refused.code == 2 and "is readable" in refused.err
    assert list(private_tmp.iterdir()) == []


def test_a_dry_rebuild_of_a_directory_where_the_index_should_be(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "a").write_text("a")
    assert ms("init", root).code == 0
    index = root / ".merklesync" / "index.db"
    index.unlink()
    index.mkdir()
    dry = ms("init", "-n", "--rebuild", root, "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["index_set_aside"].startswith(f"{index}.broken-")
    assert index.is_dir()  # left as it is


def test_a_dry_run_leaves_what_a_killed_run_left_for_the_next_one(tmp_path: Path) -> None:
    """The notes of writes a killed run made (write intents) and its
    abandoned temp files are the replica's next real scan's to settle:
    a dry run reads them, and leaves them where they are."""
    from merklesync.ignore import TEMP_PREFIX
    from merklesync.sources.write_intents import Intents

    root = tmp_path / "r"
    root.mkdir()
    (root / "a").write_text("a")
    assert ms("init", root).code == 0
    with Replica.open(root) as r:
        [entry] = [e for e in r.index.iter_entries() if e.path == "a"]
    intents = Intents(root / ".merklesync")
    intents.note(entry)
    intents.flush()
    temp = root / f"{TEMP_PREFIX}999999999-1-x"  # its writer long gone
    temp.write_text("half written")
    before = _state(root)
    assert "intents" in " ".join(before)
    for args in (("init", "-n", root), ("init", "-n", "--new-id", root)):
        assert ms(*args).code == 0
    assert _state(root) == before and temp.exists()
