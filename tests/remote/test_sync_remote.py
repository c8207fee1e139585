"""Two-way sync with one replica on the other side of a pipe or SSH: the
same outcomes as between local replicas."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings
from sshd import Daemon

from tests.clirun import ms
from tests.core.test_sync_convergence import ConvergingReplicas
from tests.remote.conftest import Side, make_side
from tests.treegen import assert_same_tree, make_tree, mutate


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=30, dirs=4, seed=8)
    (a / "cart.json").write_text(json.dumps({"items": ["coffee"]}))
    ms("init", a)
    return a, b


def test_two_way_changes_and_conflicts(side: Side, pair: tuple[Path, Path]) -> None:
    a, b = pair
    r = side.ms("sync", side.src(a), side.dst(b))
    assert r.code == 0, r.err
    assert_same_tree(a, b)
    mutate(a, modify=2, add=2, delete=1, seed=3)
    mutate(b, modify=0, add=2, delete=0, seed=4)
    (a / "cart.json").write_text(json.dumps({"items": ["coffee", "MacBook"]}))
    (b / "cart.json").write_text(json.dumps({"items": ["coffee", "iPhone"]}))
    r = side.ms("sync", side.src(a), side.dst(b), "--on-conflict", "union")
    assert r.code == 0, r.err
    assert_same_tree(a, b)
    assert sorted(json.loads((b / "cart.json").read_text())["items"]) == [
        "MacBook",
        "coffee",
        "iPhone",
    ]
    again = side.ms("sync", side.src(a), side.dst(b), "--json", "--stats")
    assert again.code == 0
    assert again.json()["events"] == [] and again.json()["stats"]["round_trips"] == 1


def test_keep_both_over_the_wire(side: Side, pair: tuple[Path, Path]) -> None:
    a, b = pair
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    (a / "cart.json").write_text("mine\n")
    (b / "cart.json").write_text("theirs\n")
    r = side.ms("sync", side.src(a), side.dst(b))
    assert r.code == 0, r.err
    assert_same_tree(a, b)
    texts = sorted(p.read_text() for p in a.glob("cart*.json"))
    assert texts == ["mine\n", "theirs\n"]


class OneOverSSH(ConvergingReplicas):
    """The three-replica state machine with replica 2 reached over SSH."""

    side: Side

    def sync(self, i: int, j: int) -> None:
        if i == j:
            return
        names = [str(root) for root in self.roots]
        names[2] = self.side.addr(self.roots[2])
        r = (
            self.side.ms("sync", names[i], names[j])
            if 2 in (i, j)
            else ms("sync", names[i], names[j])
        )
        assert r.code == 0, r.err
        seen = self.views[i] | self.views[j]
        self.views[i] = self.views[j] = seen


def test_three_replicas_one_over_ssh(daemons: Callable[[str], Daemon], tmp_path: Path) -> None:
    OneOverSSH.side = make_side("ssh-to", daemons, tmp_path)
    OneOverSSH.TestCase.settings = settings(max_examples=4, stateful_step_count=10, deadline=None)
    OneOverSSH.TestCase().runTest()


@pytest.mark.parametrize("direction", ["to", "from"])
def test_large_conflict_copies_are_spooled_over_a_pipe(
    daemons: Callable[[str], Daemon],
    tmp_path: Path,
    pair: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
) -> None:
    from merklesync import merge as merge_module

    side = make_side(f"pipe-{direction}", daemons, tmp_path)
    monkeypatch.setattr(merge_module, "MAX_MERGE_BYTES", 10)  # the client spools everything
    a, b = pair
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    (a / "cart.json").write_text("mine\n" * 50)
    (b / "cart.json").write_text("theirs\n" * 50)
    r = side.ms("sync", side.src(a), side.dst(b))
    assert r.code == 0, r.err
    assert_same_tree(a, b)
    assert sorted(p.read_text() for p in a.glob("cart*.json")) == ["mine\n" * 50, "theirs\n" * 50]


@pytest.mark.parametrize("command", ["sync", "push"])
def test_the_remote_side_records_a_complete_run(
    daemons: Callable[[str], Daemon], tmp_path: Path, pair: tuple[Path, Path], command: str
) -> None:
    from merklesync.replica import Replica

    side = make_side("pipe-to", daemons, tmp_path)
    a, b = pair
    assert side.ms(command, a, side.addr(b)).code == 0
    with Replica.open(a) as ra:
        a_id = ra.replica_id
    with Replica.open(b) as rb:
        peers = rb.index.peers()
    # sync: both sides now hold everything; push: only b holds everything a has
    assert (a_id in peers) == (command == "sync")


def test_status_of_a_remote_replica_reports_its_traffic(
    daemons: Callable[[str], Daemon], tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    side = make_side("pipe-to", daemons, tmp_path)
    a, _b = pair
    r = side.ms("status", side.addr(a), "--json", "--stats")
    assert r.code == 0, r.err
    stats = r.json()["stats"]
    assert stats["files_scanned"] > 30  # the agent's scan, reported back
    assert stats["bytes_sent"] > 0 and stats["bytes_received"] > 0
    assert r.json()["entries"] > 30


def _away(root: Path, days: int) -> None:
    """Make ``root``'s record of its one peer ``days`` days old."""
    import time

    from merklesync import retention
    from merklesync.replica import Replica

    with Replica.open(root) as r:
        [other] = r.index.peers()
        r.index.remember_peer(other, time.time_ns() - days * retention.DAY_NS)


@pytest.mark.parametrize("holder", ["a", "b"])
def test_a_replica_away_too_long_is_refused_whichever_side_holds_the_record(
    side: Side, pair: tuple[Path, Path], holder: str
) -> None:
    """The record that says a replica has been away is checked where it is
    kept: in this process, or by the agent on the far side; either way the
    refusal begins with the name of the replica refused."""
    a, b = pair
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    _away(a if holder == "a" else b, 100)
    away = side.dst(b) if holder == "a" else side.src(a)
    for command in ("sync", "push", "pull"):
        src, dst = (side.src(a), side.dst(b)) if command != "pull" else (side.dst(b), side.src(a))
        r = side.ms(command, src, dst)
        assert r.code == 3, (command, r.out, r.err)
        assert "longer than the tombstone retention (90 days)" in r.err, r.err
        assert r.err.startswith(f"merklesync: error: {away}: replica "), r.err
    assert side.ms("sync", side.src(a), side.dst(b), "--allow-stale").code == 0


def test_a_replica_away_too_long_is_refused_between_two_agents(
    daemons: Callable[[str], Daemon], tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    side = make_side("pipe-to", daemons, tmp_path)
    a, b = pair
    assert side.ms("sync", a, b).code == 0
    _away(b, 100)
    r = side.ms("sync", side.addr(a), side.addr(b))
    assert r.code == 3 and "tombstone retention" in r.err, r.err


def test_repair_over_the_wire(side: Side, pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    c = tmp_path / "c"
    # "to": the hub here, the others remote; "from": the hub remote
    r = side.ms("repair", side.src(a), side.dst(b), side.dst(c))
    assert r.code == 0, r.err
    assert_same_tree(a, b)
    assert_same_tree(a, c)
    mutate(b, modify=1, add=1, delete=1, seed=5)
    (c / "cart.json").write_text(json.dumps({"items": ["coffee", "tea"]}))
    (b / "cart.json").write_text(json.dumps({"items": ["coffee", "milk"]}))
    r = side.ms("repair", side.src(a), side.dst(b), side.dst(c), "--on-conflict", "union")
    assert r.code == 0, r.err
    assert_same_tree(a, b)
    assert_same_tree(a, c)
    assert sorted(json.loads((a / "cart.json").read_text())["items"]) == ["coffee", "milk", "tea"]
    again = side.ms("repair", side.src(a), side.dst(b), side.dst(c), "--json", "--stats").json()
    assert again["identical"] is True
    assert [s["events"] for s in again["syncs"]] == [[], []]
    assert again["stats"]["round_trips"] == 2  # one a sync: the roots match


def test_repair_goes_on_past_an_unreachable_replica(
    daemons: Callable[[str], Daemon], pair: tuple[Path, Path], tmp_path: Path
) -> None:
    remote_side = make_side("ssh-to", daemons, tmp_path)
    a, b = pair
    c = tmp_path / "c"
    mutate(a, modify=1, add=1, delete=0, seed=6)
    nowhere = "ssh://127.0.0.1:1/nowhere"  # nothing listens on port 1
    r = remote_side.ms("repair", a, nowhere, remote_side.dst(b), c, "--json")
    assert r.code == 6, r.err
    assert "left out ssh://127.0.0.1:1/nowhere" in r.err
    assert_same_tree(a, b)
    assert_same_tree(a, c)
    result = r.json()
    assert [(g["replica"], g["exit_code"]) for g in result["left_out"]] == [(nowhere, 6)]


def test_replicas_whose_attributes_differ_settle_a_conflict_alike_either_way(
    side: Side, tmp_path: Path
) -> None:
    """A's .merklesyncattributes says union, B's (not synced yet) nothing:
    where they differ the run's policy decides (keep-both), named A B or B
    A; once both hold the file, union, the remote one read over the wire."""
    names = []
    for order in ("ab", "ba"):
        a, b = tmp_path / order / "a", tmp_path / order / "b"
        (a).mkdir(parents=True)
        (a / "f.txt").write_text("base\n")
        ms("init", a)
        assert side.ms("sync", side.src(a), side.dst(b)).code == 0
        (a / ".merklesyncattributes").write_text("*.txt conflict=union\n")
        (a / "f.txt").write_text("from a\n")
        (b / "f.txt").write_text("from b\n")
        named = (side.src(a), side.dst(b)) if order == "ab" else (side.dst(b), side.src(a))
        r = side.ms("sync", *named)
        assert r.code == 0, r.err
        assert "keep-both" in r.err and "union" not in r.err, r.err
        names.append(sorted(p.name.split(".conflict-")[0] for p in b.iterdir()))
    assert names[0] == names[1] == [".merklesync", ".merklesyncattributes", "f", "f.txt"]
    a, b = tmp_path / "ab" / "a", tmp_path / "ab" / "b"
    (a / "f.txt").write_text("again a\n")
    (b / "f.txt").write_text("again b\n")
    r = side.ms("sync", side.src(a), side.dst(b))
    assert r.code == 0 and "union: merged both" in r.err, r.err
    assert (a / "f.txt").read_text() == (b / "f.txt").read_text()
    assert {"again a", "again b"} <= set((b / "f.txt").read_text().splitlines())
