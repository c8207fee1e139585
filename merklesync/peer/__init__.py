"""One interface for "a replica I can talk to".

`LocalPeer` opens a replica in-process; `RemotePeer` speaks the protocol over
a transport. The engine never knows which one it has. Every method that takes
a sequence is one batched request: one round trip for a remote peer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from merklesync.merkle import NodeId
from merklesync.model import (
    Entry,
    Outcome,
    Progress,
    ScanReport,
    Stats,
    Unreadable,
    WriteItem,
)

__all__ = ["Node", "Outcome", "Peer", "Progress", "ScanReport", "Unreadable", "WriteItem"]


@dataclass(frozen=True, slots=True)
class Node:
    fingerprint: bytes
    count: int


class Peer(Protocol):
    name: str  # for messages: a path or an address
    local: bool  # in this process: a call costs no round trip on a network
    replica_id: str
    stats: Stats

    @property
    def read_only(self) -> bool:
        """On a read-only file system (a snapshot, a read-only mount): it is
        compared and read from, never written (a write fails with
        ReadOnlyReplica)."""
        ...

    @property
    def copies_locally(self) -> bool:
        """Whether write takes items whose content is a copy of one of its
        own files (WriteItem.copy_of): a file moved or renamed on the other
        side is then copied here from its old path, not sent."""
        ...

    def refresh(self, *, checksum: bool = False, progress: Progress | None = None) -> ScanReport:
        """Bring the index up to date with the data (a scan)."""
        ...

    def start_refresh(self, *, checksum: bool = False) -> Callable[[Progress | None], ScanReport]:
        """Start a scan that runs while the caller does other work (a local
        peer scans in a child process, a remote one on its own machine);
        call the result to wait for its report."""
        ...

    def root(self) -> Node:
        """The root of the tree: fingerprint and entry count (tombstones too)."""
        ...

    def children(self, nodes: Sequence[NodeId], salt: bytes) -> list[list[Node]]:
        """For each node, its 16 children in order, each fingerprint given
        as ``merkle.short(salt, fingerprint)``."""
        ...

    def compare(
        self, salt: bytes, groups: Sequence[tuple[NodeId, Sequence[bytes]]]
    ) -> tuple[list[Entry], list[bytes]]:
        """The other side's leaves under some nodes, as
        ``merkle.short_record(salt, key, leaf)`` per node: this side's entries
        under those nodes that are not among them, and which of them this
        side lacks."""
        ...

    def entries(self, keys: Sequence[bytes]) -> list[Entry]:
        """Every entry (live or tombstone) whose key is in ``keys``."""
        ...

    def entries_under(self, nodes: Sequence[NodeId]) -> list[Entry]:
        """Every entry under the given nodes (for subtrees the other side lacks)."""
        ...

    def read(
        self, entries: Sequence[Entry]
    ) -> Iterator[tuple[Entry, Iterator[bytes] | Unreadable]]:
        """Stream the content of the given files, in order; for a file that
        is gone or changed since the scan, or cannot be read, why."""
        ...

    def write(self, items: Iterable[WriteItem], progress: Progress | None = None) -> list[Outcome]:
        """Apply versions: verified, atomic, compare-and-swap per entry; one
        outcome per item, in the items' order."""
        ...

    def check_not_stale(self, replica_id: str, name: str | None = None) -> None:
        """Refuse a run with ``replica_id`` (StaleReplica) when it has been
        away from this replica longer than this replica's tombstone
        retention: files deleted here and forgotten since could come back.
        ``name``: that replica as the user named it, which the refusal
        begins with."""
        ...

    def remember(self, replica_id: str) -> None:
        """Record that a run with ``replica_id`` just completed: this replica
        has seen everything that one had (tombstones can be collected)."""
        ...

    def contact(self, replica_id: str) -> None:
        """Record that a run with ``replica_id`` just ended having left some
        paths out: no proof that this replica has seen all that one had, yet
        it was not away (see retention)."""
        ...

    def close(self, *, commit: bool = True) -> None:
        """``commit`` False: the run ends on a failure or an interruption."""
        ...
