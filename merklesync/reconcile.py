"""Compare two peers: descend only where fingerprints differ, one batched
request per side per tree level, and pair up the entries that differ.

For d differences among N entries this costs depth + 1 round trips (the
depth of the stored tree, about log16(N / 32)): one per level, then one to
compare the leaves under the mismatched buckets and fetch the differing
entries; O(d log N) bytes. Two identical replicas cost one round trip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from merklesync import merkle
from merklesync.batches import batches
from merklesync.clock import Order
from merklesync.errors import ProtocolError
from merklesync.merkle import NodeId
from merklesync.model import Action, Change, ChangeKind, Entry, Stats, classify, is_dir_path
from merklesync.peer import Node, Peer

# A mismatched node this small on both sides: compare its leaves. Twice the
# bucket size the tree's depth aims at, so a crowded bucket does not cost
# one more level of round trips.
LEAF_FETCH = 2 * merkle.TARGET_BUCKET
SUBTREE_FETCH = 4096  # a node only one side has: fetch it whole below this size
LEAF_BATCH = 16_384  # leaves compared in one exchange at most (128 kB of short records)

Pair = tuple[Entry | None, Entry | None]


# Nodes still to descend into, per exchange: a level holding more is taken
# in slices, the deeper levels of one slice before the next slice, so what
# is held stays bounded however much differs (or a peer claims differs).
MAX_FRONTIER = 4096


@dataclass(slots=True)
class _Frontier:
    """Nodes to descend into, with what each side said they hold."""

    both: list[tuple[NodeId, int, int]] = field(default_factory=list)
    only_a: list[tuple[NodeId, int]] = field(default_factory=list)
    only_b: list[tuple[NodeId, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.both or self.only_a or self.only_b)

    def slices(self) -> list[_Frontier]:
        """This frontier in parts of at most MAX_FRONTIER nodes, in order."""
        if not self:
            return []
        if len(self.both) + len(self.only_a) + len(self.only_b) <= MAX_FRONTIER:
            return [self]
        n = MAX_FRONTIER
        return (
            [_Frontier(both=self.both[i : i + n]) for i in range(0, len(self.both), n)]
            + [_Frontier(only_a=self.only_a[i : i + n]) for i in range(0, len(self.only_a), n)]
            + [_Frontier(only_b=self.only_b[i : i + n]) for i in range(0, len(self.only_b), n)]
        )


def differences(a: Peer, b: Peer, stats: Stats | None = None) -> Iterator[list[Pair]]:
    """Yield batches of (a's entry, b's entry) for every path whose leaf
    differs; None where a side has no entry for the path."""
    stats = stats if stats is not None else Stats()
    salt = os.urandom(merkle.SALT_BYTES)  # fresh for each comparison (merkle.short)
    grown_a, grown_b = _Growth(), _Growth()
    for batch in _descend(a, b, salt, stats, grown_a, grown_b):
        grown_a.given += len(batch)
        grown_b.given += len(batch)
        yield batch


def _descend(
    a: Peer, b: Peer, salt: bytes, stats: Stats, grown_a: _Growth, grown_b: _Growth
) -> Iterator[list[Pair]]:
    # The root's counts are not known here: its children are taken as they come.
    todo = [_Frontier(both=[(merkle.ROOT, -1, -1)])]
    # Small mismatched nodes met at different levels are compared together,
    # in one exchange after the descent (or sooner, once they hold many
    # entries): a change under a crowded bucket costs no extra round trips.
    compare_leaves: list[NodeId] = []
    pending = 0  # entries in compare_leaves (the larger side of each node)
    while todo:
        frontier = todo.pop()
        asked_a = [(n, ca) for n, ca, _ in frontier.both] + frontier.only_a
        asked_b = [(n, cb) for n, _, cb in frontier.both] + frontier.only_b
        kids_a = _children(a, asked_a, salt, grown_a) if asked_a else []
        kids_b = _children(b, asked_b, salt, grown_b) if asked_b else []
        nxt = _Frontier()
        whole_a: list[tuple[NodeId, int]] = []
        whole_b: list[tuple[NodeId, int]] = []
        for (node, _, _), xs, ys in zip(frontier.both, kids_a, kids_b, strict=False):
            for child, x, y in zip(merkle.children_of(node), xs, ys, strict=True):
                stats.nodes_compared += 1
                if x.fingerprint == y.fingerprint:
                    continue
                if y.count == 0:
                    _one_sided(child, x, whole_a, nxt.only_a)
                elif x.count == 0:
                    _one_sided(child, y, whole_b, nxt.only_b)
                elif max(x.count, y.count) <= LEAF_FETCH or child[0] >= merkle.MAX_DEPTH:
                    compare_leaves.append(child)
                    pending += max(x.count, y.count)
                    if pending >= LEAF_BATCH:  # memory stays bounded where much differs
                        yield from _compared(a, b, compare_leaves, salt, stats)
                        compare_leaves, pending = [], 0
                else:
                    nxt.both.append((child, x.count, y.count))
        for one_side, kids, whole, deeper in (
            (frontier.only_a, kids_a[len(frontier.both) :], whole_a, nxt.only_a),
            (frontier.only_b, kids_b[len(frontier.both) :], whole_b, nxt.only_b),
        ):
            for (node, _), xs in zip(one_side, kids, strict=True):
                for child, x in zip(merkle.children_of(node), xs, strict=True):
                    stats.nodes_compared += 1
                    if x.count:
                        _one_sided(child, x, whole, deeper)
        todo.extend(reversed(nxt.slices()))
        if compare_leaves and not todo:
            yield from _compared(a, b, compare_leaves, salt, stats)
            compare_leaves, pending = [], 0
        # Subtrees only one side has come in slices, so memory stays bounded.
        for nodes in _slices(whole_a):
            batch: list[Pair] = [(e, None) for e in a.entries_under(nodes)]
            stats.entries_compared += len(batch)
            yield batch
        for nodes in _slices(whole_b):
            batch = [(None, e) for e in b.entries_under(nodes)]
            stats.entries_compared += len(batch)
            yield batch


@dataclass(slots=True)
class _Growth:
    """Entries a remote peer's nodes held beyond what it said of them, in
    one comparison. A sync writes conflict copies (new paths) while it
    compares, and one may land under a node still to be descended: at most
    one new path per differing pair already given out, and a few more."""

    given: int = 0  # pairs yielded so far
    beyond: int = 0

    SLACK: ClassVar[int] = 64


def _children(
    peer: Peer, asked: list[tuple[NodeId, int]], salt: bytes, growth: _Growth
) -> list[list[Node]]:
    """The children of each node asked for. From a remote peer, they must
    hold what the peer said the node holds (a count below 0: not said),
    give or take what this comparison may have written there (_Growth):
    counts that grow level after level would have this side descend
    without end."""
    kids = peer.children([node for node, _ in asked], salt)
    if not peer.local:
        for (node, count), xs in zip(asked, kids, strict=True):
            held = sum(x.count for x in xs)
            if count >= 0 and held > count:
                growth.beyond += held - count
                if growth.beyond > growth.given + growth.SLACK:
                    raise ProtocolError(
                        f"{peer.name}: the children of node {list(node)} hold "
                        f"{held} entries, the node {count}"
                    )
    return kids


def _compared(
    a: Peer, b: Peer, nodes: list[NodeId], salt: bytes, stats: Stats
) -> Iterator[list[Pair]]:
    batch = _compare_buckets(a, b, nodes, salt, stats)
    stats.entries_compared += len(batch)
    if batch:
        yield batch


def _one_sided(
    child: NodeId,
    node: Node,
    whole: list[tuple[NodeId, int]],
    deeper: list[tuple[NodeId, int]],
) -> None:
    if node.count <= SUBTREE_FETCH or child[0] >= merkle.MAX_DEPTH:
        whole.append((child, node.count))
    else:
        deeper.append((child, node.count))


def _slices(nodes: list[tuple[NodeId, int]]) -> Iterator[list[NodeId]]:
    """Groups of nodes holding about SUBTREE_FETCH entries each."""
    for group in batches(nodes, lambda pair: pair[1], max_weight=SUBTREE_FETCH):
        yield [node for node, _count in group]


def _compare_buckets(
    a: Peer, b: Peer, nodes: list[NodeId], salt: bytes, stats: Stats
) -> list[Pair]:
    """The differing entries under small mismatched nodes, in one exchange
    per side: a local side lists its entries; a remote one is sent the
    other side's leaves (short, salted) and answers with what differs."""
    if a.local and b.local:
        mine, theirs = a.entries_under(nodes), b.entries_under(nodes)
        # Counted as between a local and a remote side, which learns only
        # of the other side's entries that differ: the numbers compare.
        known = {(e.path, e.leaf_hash()) for e in mine}
        stats.nodes_compared += len(mine) + sum(
            (e.path, e.leaf_hash()) not in known for e in theirs
        )
        return _pair(mine, theirs)
    near, far = (a, b) if a.local or not b.local else (b, a)
    mine = near.entries_under(nodes)
    groups, by_record = _records(mine, nodes, salt)
    theirs, lacking = far.compare(salt, groups)
    stats.nodes_compared += len(mine) + len(theirs)
    unlike_mine = [by_record[r] for r in lacking if r in by_record]
    if near is a:
        return _pair(unlike_mine, theirs)
    return _pair(theirs, unlike_mine)


def _records(
    entries: list[Entry], nodes: list[NodeId], salt: bytes
) -> tuple[list[tuple[NodeId, list[bytes]]], dict[bytes, Entry]]:
    """Each node with the short records of its entries, and the entry of
    each record."""
    groups: dict[NodeId, list[bytes]] = {node: [] for node in nodes}
    levels = sorted({level for level, _ in nodes})
    by_record: dict[bytes, Entry] = {}
    for entry in entries:
        key = entry.key
        record = merkle.short_record(salt, key, entry.leaf_hash())
        for level in levels:
            group = groups.get((level, merkle.prefix_of(key, level)))
            if group is not None:
                group.append(record)
                by_record[record] = entry
                break
    return list(groups.items()), by_record


def _pair(xs: list[Entry], ys: list[Entry]) -> list[Pair]:
    """(a's, b's) per path where the two differ, by path."""
    by_x = {e.path: e for e in xs}
    by_y = {e.path: e for e in ys}
    pairs: list[Pair] = []
    for path in sorted(by_x.keys() | by_y.keys()):
        x, y = by_x.get(path), by_y.get(path)
        if x is not None and y is not None and x.leaf_hash() == y.leaf_hash():
            continue
        pairs.append((x, y))
    return pairs


def plan_one_way(src: Entry | None, dst: Entry | None) -> Change:
    """What a fast-forward-only transfer does with one differing path."""
    path = (src or dst).path  # type: ignore[union-attr]
    kind = classify(src, dst)
    if src is None:
        return Change(path, kind, src, dst, Action.DEST_NEWER)
    if dst is None:
        return Change(path, kind, src, dst, Action.COPY)
    order = src.vv.compare(dst.vv)
    if order is Order.AFTER:
        action = Action.COPY
    elif order is Order.BEFORE:
        action = Action.DEST_NEWER
    elif order is Order.CONCURRENT and src.same_content(dst):
        action = Action.MERGE_VERSION
    else:
        action = Action.CONFLICT
    return Change(path, kind, src, dst, action)


def diff(
    a: Peer,
    b: Peer,
    stats: Stats | None = None,
    include: Callable[[str, bool], bool] = lambda path, is_dir: True,
) -> list[Change]:
    """Every path whose content differs between a and b, sorted; the action
    says what a push from a to b would do with it. ``include``: the paths
    a run between them would compare (see peer.local.Included)."""
    changes = []
    for batch in differences(a, b, stats):
        for x, y in batch:
            change = plan_one_way(x, y)
            if change.kind is not ChangeKind.NONE and include(change.path, is_dir_path(x, y)):
                changes.append(change)
    return sorted(changes, key=lambda c: c.path)
