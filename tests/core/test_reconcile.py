"""The comparison itself (reconcile.differences), between two local peers."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from merklesync import merkle, reconcile
from merklesync.errors import ProtocolError
from merklesync.model import Stats
from merklesync.peer import Node
from merklesync.peer.local import LocalPeer
from tests.clirun import ms
from tests.treegen import make_tree


def test_much_that_differs_comes_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas made apart from the same files differ in every leaf (each
    has its own versions): the differing entries come in batches of about
    LEAF_BATCH, not all at once at the deepest level, so memory stays
    bounded; and every one of them comes, once."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=1500, dirs=12, seed=7)
    shutil.copytree(a, b, symlinks=True)
    assert ms("init", a).code == 0
    assert ms("init", b).code == 0
    monkeypatch.setattr(reconcile, "LEAF_BATCH", 200)
    pa, pb = LocalPeer.open(a), LocalPeer.open(b)
    try:
        stats = Stats()
        batches = list(reconcile.differences(pa, pb, stats))
        live = pa.replica.index.count()
    finally:
        pa.close()
        pb.close()
    paths = [x.path for batch in batches for x, _y in batch if x is not None]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == live
    assert all(x is not None and y is not None for batch in batches for x, y in batch)
    assert len(batches) >= live // (200 + 2 * merkle.TARGET_BUCKET)
    assert max(len(batch) for batch in batches) < 200 + 2 * merkle.TARGET_BUCKET
    assert stats.entries_compared == live


def test_a_wide_level_is_descended_in_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where more nodes differ at a level than MAX_FRONTIER, they are asked
    for in slices (the deeper levels of one slice first), so the nodes held
    stay bounded: the same differences come, in more exchanges."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=1500, dirs=12, seed=8)
    shutil.copytree(a, b, symlinks=True)
    assert ms("init", a).code == 0
    assert ms("init", b).code == 0
    monkeypatch.setattr(reconcile, "LEAF_FETCH", 2)  # descend to small buckets

    def run() -> tuple[list[str], list[int]]:
        pa, pb = LocalPeer.open(a), LocalPeer.open(b)
        asked: list[int] = []
        children = pa.children

        def counted(nodes: Sequence[merkle.NodeId], salt: bytes) -> list[list[Node]]:
            asked.append(len(nodes))
            return children(nodes, salt)

        pa.children = counted  # type: ignore[method-assign]
        try:
            found = [x.path for batch in reconcile.differences(pa, pb) for x, _y in batch if x]
        finally:
            pa.close()
            pb.close()
        return sorted(found), asked

    whole, asked_whole = run()
    monkeypatch.setattr(reconcile, "MAX_FRONTIER", 5)
    sliced, asked_sliced = run()
    assert sliced == whole and len(whole) == 1512  # 1500 files and 12 directories
    assert max(asked_whole) > 5 >= max(asked_sliced)
    assert len(asked_sliced) > len(asked_whole)


@pytest.mark.parametrize("lie", [False, True], ids=["one-more", "16-times-more-each-time"])
def test_a_remote_node_may_grow_a_little_during_a_comparison_but_not_without_end(
    tmp_path: Path, lie: bool
) -> None:
    """A sync writes conflict copies (new paths) while it compares: a node
    met again may hold a few more entries than its parent said (one per
    differing pair given out, and a few). A peer whose children hold 16
    times more at every level is lying."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=3000, dirs=12, seed=9)
    shutil.copytree(a, b, symlinks=True)
    assert ms("init", a).code == 0
    assert ms("init", b).code == 0
    pa, pb = LocalPeer.open(a), LocalPeer.open(b)
    children = pb.children

    def claimed(nodes: Sequence[merkle.NodeId], salt: bytes) -> list[list[Node]]:
        out = []
        for (level, prefix), ks in zip(nodes, children(nodes, salt), strict=True):
            if lie:  # 16 times more at every level
                out.append([Node(k.fingerprint, k.count * 16 ** (level + 1)) for k in ks])
            else:  # one more entry under the first node of level 1 (a copy written there)
                more = 1 if (level, prefix) == (1, 0) else 0
                out.append([Node(ks[0].fingerprint, ks[0].count + more), *ks[1:]])
        return out

    pb.children = claimed  # type: ignore[method-assign]
    pb.local = False  # type: ignore[misc]
    try:
        if lie:
            with pytest.raises(ProtocolError, match="the children of node"):
                list(reconcile.differences(pa, pb))
        else:
            assert sum(len(batch) for batch in reconcile.differences(pa, pb)) == 3012
    finally:
        pa.close()
        pb.close()
