"""A Hypothesis state machine over three replicas: random edits, deletes and
syncs between random pairs. After a full round of syncs all replicas are
identical, and every version ever written is still present somewhere,
unless a replica that had seen it wrote over it or deleted it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.clirun import ms

NAMES = ["a", "b", "d/e", "d/f", "a/x", "d"]


def contents(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".merklesync" not in p.parts
    }


class ThreeReplicas(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.roots = [self.tmp / f"r{i}" for i in range(3)]
        self.views: list[set[int]] = [set(), set(), set()]  # writes each replica has seen
        self.writes: dict[int, tuple[str, str]] = {}  # id -> (path, content)
        self.superseded: set[int] = set()
        self.counter = 0
        self.make_replicas()

    def make_replicas(self) -> None:
        for root in self.roots:
            root.mkdir()
            assert ms("init", root).code == 0

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _supersede(self, replica: int, path: str) -> None:
        for w in self.views[replica]:
            if self.writes[w][0] == path:
                self.superseded.add(w)

    @rule(replica=st.integers(0, 2), name=st.sampled_from(NAMES))
    def write(self, replica: int, name: str) -> None:
        self.counter += 1
        content = f"write {self.counter} by r{replica}\n"
        root = self.roots[replica]
        target = root / name
        # A file where a directory must go (or the reverse) is deleted first.
        for parent in reversed(target.relative_to(root).parents[:-1]):
            if (root / parent).is_file():
                self._supersede(replica, parent.as_posix())
                (root / parent).unlink()
        if target.is_dir():
            for inner in target.rglob("*"):
                self._supersede(replica, inner.relative_to(root).as_posix())
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._supersede(replica, name)
        target.write_text(content)
        self.writes[self.counter] = (name, content)
        self.views[replica].add(self.counter)

    @rule(replica=st.integers(0, 2), name=st.sampled_from(NAMES))
    def delete(self, replica: int, name: str) -> None:
        target = self.roots[replica] / name
        if target.is_file():
            self._supersede(replica, name)
            target.unlink()

    @rule(i=st.integers(0, 2), j=st.integers(0, 2))
    def sync(self, i: int, j: int) -> None:
        if i == j:
            return
        r = ms("sync", self.roots[i], self.roots[j])
        assert r.code == 0, r.err
        # Conflict copies are new writes that both sides have seen.
        seen = self.views[i] | self.views[j]
        self.views[i] = self.views[j] = seen

    @precondition(lambda self: self.counter > 0)
    @invariant()
    def nothing_is_lost(self) -> None:
        present = {c for root in self.roots for c in contents(root).values()}
        for w, (_path, content) in self.writes.items():
            if w not in self.superseded:
                assert content in present, f"write {w} ({content.strip()}) was lost"


class ConvergingReplicas(ThreeReplicas):
    @rule()
    def full_round(self) -> None:
        for i, j in ((0, 1), (1, 2), (0, 1)):
            self.sync(i, j)
        states = [contents(root) for root in self.roots]
        assert states[0] == states[1] == states[2]
        again = ms("sync", self.roots[0], self.roots[2], "--json").json()
        assert again["events"] == [], again


TestThreeReplicas = ConvergingReplicas.TestCase
TestThreeReplicas.settings = settings(max_examples=20, stateful_step_count=14, deadline=None)


class CopiesMadeApart(ConvergingReplicas):
    """The same, from three copies made apart, each made a replica with
    init --as-copy: two files alike on all three, and one that r2 holds
    differently. What each found counts as a write it has seen."""

    def make_replicas(self) -> None:
        found = {"a": "a as copied\n", "d/e": "d/e as copied\n", "b": "b as copied\n"}
        for i, root in enumerate(self.roots):
            for name, text in found.items():
                if name == "b" and i == 2:
                    text = "b as r2 has it\n"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_text(text)
                key = (name, text)
                w = next((w for w, write in self.writes.items() if write == key), None)
                if w is None:
                    self.counter += 1
                    w = self.counter
                    self.writes[w] = key
                self.views[i].add(w)
            assert ms("init", "--as-copy", root).code == 0


TestCopiesMadeApart = CopiesMadeApart.TestCase
TestCopiesMadeApart.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)


class RepairedReplicas(ThreeReplicas):
    """The same edits, brought together by `merklesync repair` from any hub."""

    @rule(hub=st.integers(0, 2))
    def repair(self, hub: int) -> None:
        order = self.roots[hub:] + self.roots[:hub]
        r = ms("repair", *order, "--json")
        assert r.code == 0, r.err
        assert r.json()["identical"] is True
        seen = set().union(*self.views)
        self.views = [set(seen) for _ in self.roots]
        states = [contents(root) for root in self.roots]
        assert states[0] == states[1] == states[2]
        again = ms("repair", *order, "--json").json()
        assert [s["events"] for s in again["syncs"]] == [[], []], again


TestRepairedReplicas = RepairedReplicas.TestCase
TestRepairedReplicas.settings = settings(max_examples=10, stateful_step_count=12, deadline=None)


class RepairedCopies(RepairedReplicas):
    """Repair, from three copies made apart (as CopiesMadeApart)."""

    make_replicas = CopiesMadeApart.make_replicas


TestRepairedCopies = RepairedCopies.TestCase
TestRepairedCopies.settings = settings(max_examples=10, stateful_step_count=12, deadline=None)
