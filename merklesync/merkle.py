"""The bucketed Merkle tree, as pure arithmetic.

Leaves are placed by their key (the first bytes of blake3(path)), so the
tree is balanced whatever the folder layout. A node is identified by
``(level, prefix)``: the leaves whose key starts with the ``level`` hex
digits ``prefix``. Its fingerprint is derived from the SUM modulo 2**256 of
its leaves' hashes and their count (as Riak's TicTac trees and Negentropy
do), which gives three properties:

- a node's fingerprint depends only on the leaves under it, not on how deep
  either replica stores its tree, so replicas of different sizes compare;
- a leaf change updates every ancestor by a delta: O(depth), no rebuild;
- the root is independent of the order leaves were added or edited in.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator

import blake3

from merklesync.model import KEY_BYTES

FANOUT = 16  # one hex digit per level
BITS_PER_LEVEL = 4
MODULUS = 1 << 256
MAX_DEPTH = 2 * KEY_BYTES  # a prefix can never be longer than the key
TARGET_BUCKET = 32  # entries per bucket the depth aims at
FINGERPRINT_BYTES = 16
SALT_BYTES = 16
SHORT_BYTES = 8  # a salted stand-in for a fingerprint or a leaf when replicas compare

NodeId = tuple[int, int]
ROOT: NodeId = (0, 0)


def short(salt: bytes, data: bytes) -> bytes:
    """An 8-byte stand-in for a fingerprint or a leaf record, salted per
    comparison (as rsync seeds its checksums): half the bytes on the wire,
    and the rare (2**-64) pair that collides does not collide again in the
    next run, which finds what this one missed."""
    return blake3.blake3(salt + data).digest(SHORT_BYTES)


def short_record(salt: bytes, key: bytes, leaf: bytes) -> bytes:
    """What a leaf is compared by: its key and its hash together, shortened."""
    return short(salt, key + leaf)


def depth_for(count: int) -> int:
    """How many levels below the root to store for ``count`` leaves."""
    if count <= TARGET_BUCKET:
        return 1
    return min(6, max(1, math.ceil(math.log(count / TARGET_BUCKET, FANOUT))))


def prefix_of(key: bytes, level: int) -> int:
    """The first ``level`` hex digits of ``key`` as an integer."""
    if level == 0:
        return 0
    return int.from_bytes(key, "big") >> (KEY_BYTES * 8 - BITS_PER_LEVEL * level)


def key_range(node: NodeId) -> tuple[bytes, bytes | None]:
    """The keys under a node: ``lo <= key < hi``; hi is None for the end."""
    level, prefix = node
    shift = KEY_BYTES * 8 - BITS_PER_LEVEL * level
    lo = (prefix << shift).to_bytes(KEY_BYTES, "big")
    end = (prefix + 1) << shift
    hi = None if end >= 1 << (KEY_BYTES * 8) else end.to_bytes(KEY_BYTES, "big")
    return lo, hi


def children_of(node: NodeId) -> list[NodeId]:
    level, prefix = node
    return [(level + 1, prefix * FANOUT + i) for i in range(FANOUT)]


def check_node(node: object) -> NodeId:
    """Validate a node id that came from elsewhere."""
    if (
        not isinstance(node, tuple | list)
        or len(node) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in node)
    ):
        raise ValueError("malformed node id")
    level, prefix = node
    if not 0 <= level < MAX_DEPTH or not 0 <= prefix < FANOUT**level:
        raise ValueError("node id out of range")
    return (level, prefix)


def leaf_value(leaf: bytes) -> int:
    return int.from_bytes(leaf, "big")


def fingerprint(total: int, count: int) -> bytes:
    """What is compared between replicas for one node."""
    if count == 0:
        return bytes(FINGERPRINT_BYTES)
    data = (total % MODULUS).to_bytes(32, "big") + count.to_bytes(8, "big")
    return blake3.blake3(data).digest(FINGERPRINT_BYTES)


class Accumulator:
    """Sums and counts for the nodes of levels 0..depth, from leaves or
    deltas: one update per leaf, in its node of the deepest level; the
    levels above are summed from those when asked for (``nodes``)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._shift = KEY_BYTES * 8 - BITS_PER_LEVEL * depth
        self._deepest: dict[int, list[int]] = {}  # prefix -> [sum, count]
        self._nodes: dict[NodeId, list[int]] | None = None

    def add(self, key: bytes, leaf: bytes, sign: int = 1) -> None:
        prefix = int.from_bytes(key, "big") >> self._shift
        value = leaf_value(leaf) * sign
        slot = self._deepest.get(prefix)
        if slot is None:
            self._deepest[prefix] = [value, sign]
        else:
            slot[0] += value
            slot[1] += sign
        self._nodes = None

    def change(self, key: bytes, old: bytes | None, new: bytes | None) -> None:
        if old is not None:
            self.add(key, old, -1)
        if new is not None:
            self.add(key, new, 1)

    @property
    def nodes(self) -> dict[NodeId, list[int]]:
        """Every node a leaf was added under, at every level: (level,
        prefix) -> [sum modulo MODULUS, count]."""
        if self._nodes is None:
            nodes: dict[NodeId, list[int]] = {}
            here = self._deepest
            for level in range(self.depth, -1, -1):
                above: dict[int, list[int]] = {}
                for prefix, (total, count) in here.items():
                    nodes[(level, prefix)] = [total % MODULUS, count]
                    slot = above.get(prefix >> BITS_PER_LEVEL)
                    if slot is None:
                        above[prefix >> BITS_PER_LEVEL] = [total, count]
                    else:
                        slot[0] += total
                        slot[1] += count
                here = above
            self._nodes = nodes
        return self._nodes


Node = tuple[int, int, int, int]  # level, prefix, sum modulo MODULUS, count


def tree_of(leaves: Iterable[tuple[bytes, bytes]], depth: int) -> Iterator[Node]:
    """The nodes of levels 0..``depth`` that hold any of ``leaves`` ((key,
    leaf hash) pairs, in any order): ``(level, prefix, sum modulo MODULUS,
    count)``, the deepest level first, each level in prefix order. The
    leaves are read to the end before the first node comes. Memory: one
    slot per node of the deepest level in two flat arrays (about 70 bytes
    a node where the tree is full), not an object per node: a tree of
    millions of leaves is made in tens of megabytes, not hundreds."""
    shift = KEY_BYTES * 8 - BITS_PER_LEVEL * depth
    sums = [0] * FANOUT**depth
    counts = array("q", bytes(8 * len(sums)))
    for key, leaf in leaves:
        prefix = int.from_bytes(key, "big") >> shift
        sums[prefix] += int.from_bytes(leaf, "big")
        counts[prefix] += 1
    for level in range(depth, -1, -1):
        for prefix, count in enumerate(counts):
            if count:
                yield level, prefix, sums[prefix] % MODULUS, count
        if level:  # the level above: each node the sum of its FANOUT children
            sums = [sum(sums[i : i + FANOUT]) for i in range(0, len(sums), FANOUT)]
            counts = array(
                "q", (sum(counts[i : i + FANOUT]) for i in range(0, len(counts), FANOUT))
            )


def root_of(leaves: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The root fingerprint of a set of (key, leaf hash) pairs."""
    total = count = 0
    for _key, leaf in leaves:
        total += leaf_value(leaf)
        count += 1
    return fingerprint(total, count)
