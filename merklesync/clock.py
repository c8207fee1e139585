"""Version vectors and the hybrid logical clock.

A version vector maps a replica id to the number of writes that replica made
to one entry. Only replicas that actually wrote the entry appear in it, so
vectors stay small however many replicas exist. One name is no replica's:
``=`` and a hash of some content, counting 1, is the version of that content
as the first scan of a replica made as a copy found it (model.found_version).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

# The largest counter and stamp taken from a peer: far beyond any real
# history, and far enough below 2**63 (what SQLite and msgpack's signed
# integers hold) that bumping and ticking from there never overflows.
MAX_COUNTER = 1 << 62
MAX_STAMP = 1 << 62
# What begins the name of a found content's version, never a replica id's;
# the hash of the content follows, in hex, of this many bytes.
FOUND_PREFIX = "="
FOUND_HASH_BYTES = 16


def is_replica(name: str) -> bool:
    """Whether a name in a version vector is a replica's (not a found content's)."""
    return not name.startswith(FOUND_PREFIX)


def descends_from_found(vv: VersionVector) -> bool:
    """Whether ``vv`` holds a found version's name (it is one, or came after one)."""
    return any(not is_replica(r) for r, _c in vv.pairs)


def is_found(vv: VersionVector) -> bool:
    """Whether ``vv`` is a found version: no replica wrote it since."""
    return bool(vv.pairs) and not any(is_replica(r) for r, _c in vv.pairs)


class Order(enum.Enum):
    """How two version vectors relate."""

    EQUAL = "equal"
    BEFORE = "before"  # the left one is dominated by the right one
    AFTER = "after"  # the left one dominates the right one
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class VersionVector:
    """An immutable version vector; ``pairs`` is sorted by replica id."""

    pairs: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, counters: Mapping[str, int] | Iterable[tuple[str, int]]) -> VersionVector:
        items = counters.items() if isinstance(counters, Mapping) else counters
        return cls(tuple(sorted((str(r), int(c)) for r, c in items if int(c) > 0)))

    def as_dict(self) -> dict[str, int]:
        return dict(self.pairs)

    def get(self, replica: str) -> int:
        for r, c in self.pairs:
            if r == replica:
                return c
        return 0

    # Both below start from canonical pairs (sorted, no zero) and only raise
    # counters, so the result is canonical too: no need for ``of``'s checks.

    def bump(self, replica: str) -> VersionVector:
        """One more write by ``replica``."""
        d = dict(self.pairs)
        d[replica] = d.get(replica, 0) + 1
        return VersionVector(tuple(sorted(d.items())))

    def merge(self, other: VersionVector) -> VersionVector:
        """The least vector that dominates or equals both."""
        if other.pairs == self.pairs:
            return self
        d = dict(self.pairs)
        for r, c in other.pairs:
            if c > d.get(r, 0):
                d[r] = c
        return VersionVector(tuple(sorted(d.items())))

    def compare(self, other: VersionVector) -> Order:
        mine, theirs = self.as_dict(), other.as_dict()
        less = greater = False
        for r in mine.keys() | theirs.keys():
            a, b = mine.get(r, 0), theirs.get(r, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
        if less and greater:
            return Order.CONCURRENT
        if less:
            return Order.BEFORE
        if greater:
            return Order.AFTER
        return Order.EQUAL

    def dominates(self, other: VersionVector) -> bool:
        """True when self is at least as new as other (self >= other)."""
        return self.compare(other) in (Order.AFTER, Order.EQUAL)

    def to_wire(self) -> list[list[str | int]]:
        return [[r, c] for r, c in self.pairs]

    @classmethod
    def from_wire(cls, value: object) -> VersionVector:
        if not isinstance(value, list | tuple):
            raise ValueError("version vector must be a list")
        pairs: list[tuple[str, int]] = []
        canonical = True  # sorted, no replica twice, no zero: as to_wire makes it
        last = ""
        for item in value:
            if (
                not isinstance(item, list | tuple)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not isinstance(item[1], int)
                or isinstance(item[1], bool)
                or not 0 <= item[1] <= MAX_COUNTER
                or len(item[0]) > 64
            ):
                raise ValueError("malformed version vector")
            replica, count = item
            if replica <= last or not count:
                canonical = False
            last = replica
            pairs.append((replica, count))
        return cls(tuple(pairs)) if canonical else cls.of(pairs)

    def __str__(self) -> str:
        return "{" + ", ".join(f"{r}:{c}" for r, c in self.pairs) + "}"


class HybridClock:
    """A hybrid logical clock (Kulkarni et al.): physical time in ns, never
    going backwards, and always later than any stamp it has seen."""

    def __init__(self, last: int = 0, now: Callable[[], int] = time.time_ns) -> None:
        self.last = min(last, MAX_STAMP)
        self._now = now

    def tick(self) -> int:
        self.last = min(max(self._now(), self.last + 1), MAX_STAMP)
        return self.last

    def observe(self, stamp: int) -> None:
        """Remember a stamp received from elsewhere (or one an earlier
        release stored beyond MAX_STAMP, as MAX_STAMP)."""
        self.last = max(self.last, min(stamp, MAX_STAMP))
