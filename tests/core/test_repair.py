"""`merklesync repair`: any number of replicas brought to the same state
through the first one, the others going on when one cannot take part."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from merklesync import retention
from merklesync.errors import ConnectionFailed
from merklesync.lock import ReplicaLock
from merklesync.peer import Peer
from merklesync.peer.local import LocalPeer
from merklesync.peer.open import refresh_all
from merklesync.replica import Replica
from merklesync.sync_run import PairSync, repair, rules_for
from tests.clirun import ms
from tests.treegen import assert_same_tree, make_tree, mutate, snapshot


@pytest.fixture
def four(tmp_path: Path) -> list[Path]:
    """Four replicas holding the same 30 files."""
    roots = [tmp_path / name for name in "abcd"]
    make_tree(roots[0], files=30, dirs=4, seed=11)
    assert ms("init", roots[0]).code == 0
    assert ms("repair", *roots).code == 0
    return roots


def _pairs(result: dict[str, object]) -> list[tuple[str, str, bool]]:
    syncs = result["syncs"]
    assert isinstance(syncs, list)
    return [(Path(s["a"]).name, Path(s["b"]).name, s["second"]) for s in syncs]


def test_changes_everywhere_reach_every_replica(four: list[Path]) -> None:
    for i, root in enumerate(four):
        mutate(root, modify=1, add=1, delete=1 if i % 2 else 0, seed=20 + i)
    r = ms("repair", *four, "--json")
    assert r.code == 0, r.err
    for root in four[1:]:
        assert_same_tree(four[0], root)
    result = r.json()
    assert result["identical"] is True and result["left_out"] == []
    assert len(set(result["roots"].values())) == 1
    # Each spoke once; then each but the last once more, to take what
    # reached the hub after its turn.
    assert _pairs(result) == [
        ("a", "b", False),
        ("a", "c", False),
        ("a", "d", False),
        ("a", "b", True),
        ("a", "c", True),
    ]
    again = ms("repair", *four, "--json").json()
    assert _pairs(again) == [("a", "b", False), ("a", "c", False), ("a", "d", False)]
    assert all(s["events"] == [] for s in again["syncs"])


def test_a_second_pass_only_where_the_hub_gained_since(four: list[Path]) -> None:
    mutate(four[1], modify=2, add=0, delete=0, seed=3)  # b only: gathered at its turn
    r = ms("repair", *four, "--json")
    assert r.code == 0, r.err
    assert _pairs(r.json()) == [("a", "b", False), ("a", "c", False), ("a", "d", False)]
    for root in four[1:]:
        assert_same_tree(four[0], root)
    mutate(four[2], modify=1, add=0, delete=0, seed=4)  # c: b still needs it afterwards
    r = ms("repair", *four, "--json")
    assert _pairs(r.json())[3:] == [("a", "b", True)]
    for root in four[1:]:
        assert_same_tree(four[0], root)


def test_concurrent_edits_on_three_replicas_keep_every_version(four: list[Path]) -> None:
    for i, root in enumerate(four[1:]):
        (root / "notes.txt").write_text(f"edit on replica {i}\n")
    r = ms("repair", *four)
    assert r.code == 0, r.err
    assert r.err.count("conflict: notes.txt") == 2
    for root in four[1:]:
        assert_same_tree(four[0], root)
    texts = sorted(p.read_text() for p in four[0].glob("notes*.txt"))
    assert texts == [f"edit on replica {i}\n" for i in range(3)]
    assert "4 replicas identical" in r.err


def test_a_deletion_on_one_reaches_all_and_does_not_come_back(four: list[Path]) -> None:
    victim = next(p for p in four[3].rglob("*.bin"))
    rel = victim.relative_to(four[3])
    victim.unlink()
    assert ms("repair", *four).code == 0
    assert not any((root / rel).exists() for root in four)
    assert ms("repair", *four[::-1]).code == 0  # any hub
    assert not any((root / rel).exists() for root in four)


def test_a_new_replica_joins(four: list[Path], tmp_path: Path) -> None:
    new = tmp_path / "e"
    r = ms("repair", four[0], new, four[1])
    assert r.code == 0, r.err
    assert_same_tree(four[0], new)


def test_the_current_replica_is_the_hub_when_one_is_named(
    four: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mutate(four[1], modify=1, add=1, delete=0, seed=8)
    monkeypatch.chdir(four[0])
    r = ms("repair", four[1], "--json")
    assert r.code == 0, r.err
    assert _pairs(r.json()) == [("a", "b", False)]
    assert_same_tree(four[0], four[1])


def test_dry_run_writes_nowhere(four: list[Path], tmp_path: Path) -> None:
    mutate(four[1], modify=1, add=1, delete=1, seed=5)
    before = [snapshot(root) for root in four]
    r = ms("repair", *four, tmp_path / "new", "--dry-run")
    assert r.code == 0, r.err
    assert [snapshot(root) for root in four] == before
    assert not (tmp_path / "new").exists()
    assert "would sync" in r.err and "->" in r.out


_HOLD = """
import sys
from merklesync.lock import ReplicaLock
lock = ReplicaLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_locked_replica_is_left_out_and_the_others_go_on(
    four: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mutate(four[3], modify=1, add=1, delete=0, seed=6)
    from merklesync import replica

    monkeypatch.setattr(replica, "ReplicaLock", lambda path: ReplicaLock(path, wait=0.2))
    holder = subprocess.Popen(  # another process holds b's lock
        [sys.executable, "-c", _HOLD, str(four[1] / ".merklesync" / "lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        r = ms("repair", *four, "--json")
    finally:
        holder.communicate(b"", timeout=30)
    assert r.code == 4, r.err  # the lock's own exit status
    assert f"left out {four[1]}" in r.err and "in use by another merklesync process" in r.err
    assert_same_tree(four[0], four[2])
    assert_same_tree(four[0], four[3])
    result = r.json()
    assert [g["exit_code"] for g in result["left_out"]] == [4]
    assert result["identical"] is False  # b did not take part


def test_a_stale_replica_is_refused_and_the_others_go_on(four: list[Path]) -> None:
    with Replica.open(four[2]) as c:
        c_id = c.index.replica_id
    with Replica.open(four[0]) as hub:
        assert c_id in hub.index.peers()
        hub.index.remember_peer(c_id, time.time_ns() - 100 * retention.DAY_NS)
    mutate(four[1], modify=1, add=0, delete=0, seed=9)
    r = ms("repair", *four)
    assert r.code == 3, r.err
    assert f"left out {four[2]}" in r.err
    assert "longer than the tombstone retention" in r.err
    assert_same_tree(four[0], four[1])
    assert_same_tree(four[0], four[3])


def test_usage_errors(four: list[Path]) -> None:
    r = ms("repair", four[0], four[1], four[0])
    assert r.code == 2 and "the same replica is named twice" in r.err
    r = ms("repair", four[0], four[1], four[0] / "d0000")
    assert r.code == 2 and "inside" in r.err
    r = ms("sync", *four[:3])
    assert r.code == 2 and "merklesync repair" in r.err


class _Dying:
    """A peer that works until it is told it died, then fails as a dead
    connection does."""

    def __init__(self, inner: LocalPeer) -> None:
        self._inner = inner
        self.dead = False

    def __getattr__(self, name: str) -> object:
        if self.dead and name not in ("name", "replica_id", "local", "stats", "close"):
            raise ConnectionFailed("the connection died")
        return getattr(self._inner, name)


def test_when_the_hub_fails_the_round_ends_and_says_who_missed_what(four: list[Path]) -> None:
    mutate(four[3], modify=1, add=0, delete=0, seed=12)
    peers: list[Peer] = [LocalPeer.open(root) for root in four]
    hub = _Dying(peers[0])  # type: ignore[arg-type]

    def after(done: PairSync) -> None:
        hub.dead = Path(done.other).name == "b"  # dies once b's sync is over: c's fails

    try:
        refresh_all(peers)
        result = repair(
            [hub, *peers[1:]],  # type: ignore[list-item]
            rules=rules_for(peers, "keep-both", None),
            on_sync=after,
        )
    finally:
        for peer in peers:
            peer.close()
    assert [Path(s.other).name for s in result.syncs] == ["b", "c"]
    named = {Path(left.name).name: left.error.message for left in result.left_out}
    assert list(named) == ["a", "c", "b", "d"]  # the hub, the one it failed with, the rest
    assert "the connection died" in named["a"] and "the connection died" in named["c"]
    assert "not given what reached" in named["b"]
    assert "not synced" in named["d"]
    assert result.roots == {}


def test_a_hub_that_cannot_take_part_ends_the_round(four: list[Path], tmp_path: Path) -> None:
    """Another hub could bring back deletions its spokes have forgotten."""
    plain = tmp_path / "plain"
    plain.mkdir()
    mutate(four[1], modify=1, add=1, delete=0, seed=13)
    before = [snapshot(root) for root in four]
    r = ms("repair", plain, *four[1:], "--json")
    assert r.code == 3, r.err
    assert "the first replica, through which the others sync: none was synced" in r.err
    assert [snapshot(root) for root in four] == before
    assert r.json()["exit_code"] == 3


def test_the_same_replica_by_two_names_is_a_usage_error(four: list[Path]) -> None:
    """A path and an address of one replica: this run holds its lock."""
    rsh = f"{sys.executable} {Path(__file__).parents[1] / 'remote' / 'rsh.py'}"
    r = ms(
        "repair",
        *four[:2],
        f"pipehost:{four[1]}",
        "--rsh",
        rsh,
        "--remote-cmd",
        f"{sys.executable} -m merklesync",
    )
    assert r.code == 2, r.err
    assert "is held by this very run: a replica named twice?" in r.err


def test_left_out_replicas_are_named_once_and_the_rest_counted(
    four: list[Path], tmp_path: Path
) -> None:
    with Replica.open(four[2]) as c:
        c_id = c.index.replica_id
    with Replica.open(four[0]) as hub:
        hub.index.remember_peer(c_id, time.time_ns() - 100 * retention.DAY_NS)
    r = ms("repair", *four)
    assert r.code == 3
    assert r.err.count("longer than the tombstone retention") == 1, r.err
    assert "3 of 4 replicas identical" in r.err
    result = ms("repair", *four, "--json").json()
    assert result["identical"] is False and len(set(result["roots"].values())) == 1


def test_remote_replicas_are_reached_at_the_same_time(
    four: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of two remote replicas waits, as it is reached, for the other to
    be being reached too: one after the other, the wait would time out."""
    import threading

    from merklesync.peer import open as opening

    real = opening.open_peer
    both = threading.Barrier(2, timeout=20)

    def meeting(spec: str | None, **kwargs: object) -> Peer:
        if spec is not None and spec.startswith("pipehost:"):
            both.wait()
        return real(spec, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(opening, "open_peer", meeting)
    rsh = f"{sys.executable} {Path(__file__).parents[1] / 'remote' / 'rsh.py'}"
    mutate(four[3], modify=1, add=1, delete=0, seed=14)
    r = ms(
        "repair",
        four[0],
        f"pipehost:{four[2]}",
        f"pipehost:{four[3]}",
        "--rsh",
        rsh,
        "--remote-cmd",
        f"{sys.executable} -m merklesync",
    )
    assert r.code == 0, r.err
    assert_same_tree(four[0], four[2])
    assert_same_tree(four[0], four[3])
