"""Open a peer from what the user typed: a local path (or, later, a remote address)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from merklesync.errors import UsageError
from merklesync.model import Stats
from merklesync.peer import Peer, Progress
from merklesync.peer.local import LocalPeer
from merklesync.replica import find_root


def open_peer(spec: str | None, *, create: bool = False, excludes: Sequence[str] = ()) -> Peer:
    """``None`` means the replica around the current directory."""
    if spec is None:
        return LocalPeer.open(find_root(Path.cwd()), excludes=excludes)
    return LocalPeer.open(Path(spec), create=create, excludes=excludes)


def combined_stats(engine: Stats, *peers: Peer) -> Stats:
    """One set of counters for a run over several peers: round trips are
    those of the busiest peer (requests to different peers overlap)."""
    out = Stats(
        nodes_compared=engine.nodes_compared,
        entries_compared=engine.entries_compared,
    )
    for p in peers:
        s = p.stats
        out.round_trips = max(out.round_trips, s.round_trips)
        out.bytes_sent += s.bytes_sent
        out.bytes_received += s.bytes_received
        out.files_scanned += s.files_scanned
        out.files_hashed += s.files_hashed
        out.files_transferred += s.files_transferred
        out.bytes_transferred += s.bytes_transferred
    return out


def check_apart(a: Peer, b: Peer) -> None:
    """Two local replicas must not be the same or nested in each other."""
    if not (isinstance(a, LocalPeer) and isinstance(b, LocalPeer)):
        return
    ra, rb = a.replica.root, b.replica.root
    if ra == rb:
        raise UsageError(f"source and destination are the same replica: {ra}")
    if rb.is_relative_to(ra):
        raise UsageError(f"the destination {rb} is inside the source {ra}")
    if ra.is_relative_to(rb):
        raise UsageError(f"the source {ra} is inside the destination {rb}")


def refresh_all(
    peers: Sequence[Peer], *, checksum: bool = False, progress: Progress | None = None
) -> list[str]:
    """Scan every peer at the same time; returns their warnings."""
    pending = [p.start_refresh(checksum=checksum) for p in peers[1:]]
    reports = [peers[0].refresh(checksum=checksum, progress=progress)]
    reports += [finish(progress) for finish in pending]
    return [w for r in reports for w in r.warnings]


def local_file_text(peer: Peer, name: str) -> str | None:
    """A small file at the root of a local replica (such as its
    .merklesyncattributes), or None."""
    if not isinstance(peer, LocalPeer):
        return None
    try:
        return (peer.replica.root / name).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
