"""Tombstones do not live forever, and a replica away too long is refused.

A tombstone may go once every replica this one knows of (the replicas it
synced with, and every writer named in a version vector) has completed a run
with it that began after it learned of the deletion (not the run that brought
it, which proves nothing new), or once it has known of the deletion for
longer than the retention period (90 days unless configured); both are
judged by this replica's own clock, never the writer's. The deletion of a
version that copies made apart found (init --as-copy) waits for the
retention alone: a copy that found it and never wrote is named nowhere.
A replica whose last run with this one is older than the retention could
bring deleted files back, so it is refused (Cassandra's gc_grace lesson)
unless the user says otherwise.

A run that ends having left paths out (--exclude, a path one side's rules
ignore, a file a scan skipped, a write that failed or was left alone) is no
proof that the other side has seen every deletion: it is recorded apart,
as a contact. A contact keeps the other replica from being refused as
away; in exchange, the retention period alone does not collect a tombstone
that a replica in contact within that period has not been proven to have
seen (it may still hold the file, left out of the runs). Such a tombstone
waits for a complete run, for that replica to be away longer than the
retention (which then refuses it), or for one more retention period at most.
"""

from __future__ import annotations

import time

from merklesync.clock import descends_from_found
from merklesync.errors import ReplicaError
from merklesync.peer import Peer
from merklesync.peer.local import local_replica
from merklesync.replica import Replica

DAY_NS = 86_400 * 10**9
DEFAULT_RETENTION_DAYS = 90
GC_EVERY_NS = DAY_NS  # automatic collection at most once a day


class StaleReplica(ReplicaError):
    """The other replica has been away longer than the tombstone retention."""


def retention_days(replica: Replica) -> int:
    return int(replica.index.meta("tombstone_retention_days") or DEFAULT_RETENTION_DAYS)


def set_retention_days(replica: Replica, days: int) -> None:
    replica.index.set_meta("tombstone_retention_days", days)


def _last_runs(replica: Replica) -> dict[str, int]:
    """Replica id -> when this replica last ended a run with it, complete
    or not (a contact)."""
    index = replica.index
    last = index.peers()
    for other, when in index.contacts().items():
        last[other] = max(last.get(other, 0), when)
    return last


def check_not_stale(replica: Replica, other: str, now: int | None = None) -> None:
    last = _last_runs(replica).get(other)
    now = time.time_ns() if now is None else now
    days = retention_days(replica)
    if last is not None and now - last > days * DAY_NS:
        away = (now - last) // DAY_NS
        raise StaleReplica(
            f"replica {other} last ran with {replica.root} {days_text(away)} ago, longer than "
            f"the tombstone retention ({days_text(days)}): files deleted since could come back. "
            "Check it, then run again with --allow-stale, or make it a fresh copy"
        )


def days_text(n: int) -> str:
    """A count of days as said: 1 day, 2 days."""
    return "1 day" if n == 1 else f"{n} days"


def collect(
    replica: Replica, *, now: int | None = None, dry_run: bool = False, days: int | None = None
) -> list[str]:
    """Drop the tombstones every known replica has seen, or that are older
    than the retention (``days``, default the replica's) and not kept for a
    replica in contact (see the module's docstring); returns their paths."""
    now = time.time_ns() if now is None else now
    index = replica.index
    retention_ns = (retention_days(replica) if days is None else days) * DAY_NS
    horizon = now - retention_ns
    peers = index.peers()
    last_runs = _last_runs(replica)
    known = set(last_runs) | index.writers()
    known.discard(replica.replica_id)
    # Every known replica must have completed a run with this one that began
    # (its scan, see Replica.snapshot_ns) no earlier than this one learned of
    # the deletion; our own clock on both sides of the test. A run recorded
    # later than now was stamped by a clock since set back (it ran ahead):
    # when it really happened is unknown, so it proves nothing.
    seen_by_all = min((_trusted(peers.get(r, 0), now) for r in known), default=now)
    # The retention alone collects nothing that a replica in contact within
    # it (a contact since its last complete run) has not been proven to have
    # seen; for one more retention period at most, so that replicas whose
    # runs always leave something out do not keep every tombstone for ever.
    in_contact = [
        _trusted(peers.get(r, 0), now)
        for r, when in index.contacts().items()
        if when >= horizon and when > peers.get(r, 0)
    ]
    aged = max(horizon - retention_ns, min([horizon, *in_contact]))
    dropped = []
    for entry, learned in index.tombstones():
        # Of a version copies made apart found (init --as-copy), a copy that
        # never wrote may hold the file, unknown here (named in no vector):
        # only the retention collects it.
        if learned < aged or (learned <= seen_by_all and not descends_from_found(entry.vv)):
            dropped.append(entry.path)
            if not dry_run:
                index.forget(entry)
    if not dry_run:
        index.set_meta("last_gc", now)
        index.commit()
    return dropped


def _trusted(stamp: int, now: int) -> int:
    return stamp if stamp <= now else 0


def maybe_collect(replica: Replica, now: int | None = None) -> list[str]:
    now = time.time_ns() if now is None else now
    last = int(replica.index.meta("last_gc") or 0)
    return collect(replica, now=now) if now - last >= GC_EVERY_NS else []


def guard(a: Peer, b: Peer, *, allow_stale: bool = False) -> None:
    """Refuse a run with a replica that has been away too long, by the
    record and the retention of each side (an agent checks its own)."""
    if allow_stale:
        return
    for mine, other in ((a, b), (b, a)):
        # Named as the user named it, not by its id alone.
        mine.check_not_stale(other.replica_id, other.name)


def after_run(a: Peer, b: Peer, *, complete: bool, one_way: bool = False) -> list[str]:
    """A run between a and b has ended; recorded on a's side (and, unless
    one-way, b's). ``complete``: b now holds all that a has (and, unless
    one-way, the reverse), remembered as such; else it left paths out, and
    is recorded as a contact (see the module's docstring). Either way the
    tombstones due are collected, at most once a day (a remote agent
    records and collects on its side)."""
    dropped: list[str] = []
    for mine, other in ((a, b),) if one_way else ((a, b), (b, a)):
        if complete:
            mine.remember(other.replica_id)
        else:
            mine.contact(other.replica_id)
        replica = local_replica(mine)
        if replica is not None:
            dropped += maybe_collect(replica)
    return dropped
