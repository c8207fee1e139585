"""Invariants over random histories: convergence, idempotence, exact costs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clirun import ms
from tests.treegen import assert_same_tree, make_tree

names = st.sampled_from(["a", "b", "c", "d/e", "d/f", "g/h/i", "g/j"])
ops = st.lists(
    st.tuples(
        st.sampled_from(["write", "delete", "rename", "push"]), names, names, st.binary(max_size=40)
    ),
    min_size=1,
    max_size=12,
)


def _apply(root: Path, op: str, name: str, other: str, data: bytes) -> None:
    path, target = root / name, root / other
    if op == "write":
        if path.is_dir():
            shutil.rmtree(path)
        for parent in list(path.parents)[::-1]:
            if parent.is_file():
                parent.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    elif op == "delete":
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    elif op == "rename" and path.is_file() and not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, target)
        except (FileExistsError, NotADirectoryError):
            pass


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops)
def test_random_histories_converge_after_push(history: list[tuple[str, str, str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        src.mkdir()
        ms("init", src)
        for op, name, other, data in history:
            if op == "push":
                assert ms("push", src, dst).code == 0
            else:
                _apply(src, op, name, other, data)
        assert ms("push", src, dst).code == 0
        assert_same_tree(src, dst)
        assert ms("diff", src, dst).code == 0
        again = ms("push", src, dst, "--json").json()
        assert again["changes"] == [] and again["stats"]["round_trips"] == 1


def _status_root(root: Path) -> str:
    return str(ms("status", root, "--json").json()["fingerprint"])


@settings(max_examples=10, deadline=None)
@given(st.permutations(range(12)))
def test_root_independent_of_creation_order(order: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        for root, sequence in ((a, range(12)), (b, order)):
            root.mkdir()
            for i in sequence:
                (root / f"f{i}").write_text(str(i))
        ms("init", a)
        ms("init", b)
        # Same content, but each replica wrote its own versions: make them agree.
        ms("push", a, b)
        ms("push", b, a)
        assert _status_root(a) == _status_root(b)


def test_round_trips_for_one_change_among_2000(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=2000, dirs=30, min_size=10, max_size=20, seed=1)
    ms("init", src)
    ms("push", src, dst)
    assert ms("diff", src, dst, "--json").json()["stats"]["round_trips"] == 1
    victim = next(p for p in sorted(src.rglob("*")) if p.is_file() and ".merklesync" not in p.parts)
    victim.write_text("changed")
    stats = ms("diff", src, dst, "--json").json()["stats"]
    # 2,000 entries (plus directories): the tree stores 2 levels of 16.
    # children(root), children(level 1), the entries of one bucket = depth + 1.
    assert stats["round_trips"] == 3
    assert stats["entries_compared"] == 1
    assert stats["nodes_compared"] <= 16 + 16 + 2 * 64
    # The push adds the write: depth + 2.
    assert ms("push", src, dst, "--json").json()["stats"]["round_trips"] == 4


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    contents=st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=14),
    moves=st.lists(st.tuples(st.integers(0, 13), st.sampled_from(["x", "y/z", "w"])), max_size=8),
    batch=st.sampled_from([2, 5, 16_384]),
)
def test_files_moved_travel_as_copies_there(
    contents: list[bytes], moves: list[tuple[int, str]], batch: int
) -> None:
    """Whatever files move where (into new directories too), and however
    the comparison splits its differences into batches, a push sends none
    of their content: each is copied on the destination from its old path."""
    from unittest import mock

    from merklesync import reconcile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        for i, data in enumerate(contents):
            (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i % 3}" / f"f{i}").write_bytes(data)
        assert ms("init", src).code == 0
        assert ms("push", src, dst).code == 0
        moved = 0
        for n, (i, where) in enumerate(moves):
            old = src / f"d{i % 3}" / f"f{i}"
            if i < len(contents) and old.exists():
                new = src / where / f"m{n}"
                new.parent.mkdir(parents=True, exist_ok=True)
                old.rename(new)
                moved += 1
        with mock.patch.object(reconcile, "LEAF_BATCH", batch):
            r = ms("push", src, dst, "--json")
        assert r.code == 0, r.err
        assert r.json()["stats"]["files_transferred"] == 0
        assert r.json()["stats"]["files_copied"] == moved
        assert_same_tree(src, dst)
