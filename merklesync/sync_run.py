"""A sync run between opened and scanned replicas: two of them
(`merklesync sync`), or any number brought to the same state
(`merklesync repair`, the anti-entropy round a cron job runs).

Repair goes through the first replica, the hub: it syncs with each of the
others in turn, gathering every change; then every replica it met before
the last one is synced with it once more, to take what arrived after its
turn (skipped where the hub's root is still the one they shared). With d
replicas that is at most 2d - 3 pairwise syncs, each one the ordinary
two-way sync with its conflict policies, its retention guard and its
record of who has seen what. A replica that cannot take part (it cannot be
reached, is locked, has been away too long, or fails on the way) is left
out and named; the others go on. Only a failure of the hub ends the round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from merklesync import retention
from merklesync.conflicts import list_conflicts, over_cap
from merklesync.errors import MerklesyncError
from merklesync.ignore import MAX_IGNORE_BYTES
from merklesync.model import EntryKind, Unreadable, key_of
from merklesync.peer import Node, Peer, Progress
from merklesync.peer.local import Included, local_replica
from merklesync.policy import (
    ATTRIBUTES_FILE,
    Patterns,
    Policy,
    Rules,
    attributes_of,
    parse_attributes,
)
from merklesync.sync import SyncResult, sync


def rules_for(peers: Sequence[Peer], policy: str, merge_cmd: str | None) -> Rules:
    """The conflict rules of a run: ``policy`` by default, and the per-path
    patterns of the replicas' .merklesyncattributes (the file syncs, so the
    replicas normally hold the same one; see Rules): a local one's read
    now, a remote one's as its scan found it, once a conflict asks."""
    texts: dict[str, str] = {}  # text -> the replica it was first read from
    remote = []
    for peer in peers:
        replica = local_replica(peer)
        if replica is None:
            remote.append(peer)
        else:
            texts.setdefault(attributes_of(replica.root), peer.name)

    def remote_sets() -> list[Patterns]:
        theirs: dict[str, str] = {}
        for peer in remote:
            text = _remote_attributes(peer)
            if text not in texts:
                theirs.setdefault(text, peer.name)
        return _parsed(theirs)

    return Rules(Policy(policy), merge_cmd, _parsed(texts), remote_sets if remote else None)


def _parsed(texts: dict[str, str]) -> list[Patterns]:
    return [parse_attributes(text, f"{name}: {ATTRIBUTES_FILE}") for text, name in texts.items()]


def _remote_attributes(peer: Peer) -> str:
    """A remote replica's .merklesyncattributes, as its scan found it (""
    when it has none)."""
    found = [e for e in peer.entries([key_of(ATTRIBUTES_FILE)]) if e.path == ATTRIBUTES_FILE]
    if not found or found[0].deleted or found[0].kind is not EntryKind.FILE:
        return ""
    if found[0].size > MAX_IGNORE_BYTES:
        return ""  # as a local one too large to be read
    for _entry, chunks in peer.read(found):
        if not isinstance(chunks, Unreadable):
            return b"".join(chunks).decode("utf-8-sig", errors="replace")
    return ""


def sync_pair(
    a: Peer,
    b: Peer,
    *,
    rules: Rules,
    excludes: Sequence[str] = (),
    dry_run: bool = False,
    scan_complete: bool = True,
    progress: Progress | None = None,
    keep_done: bool = True,
    result: SyncResult | None = None,
) -> SyncResult:
    """Sync two scanned replicas (their retention already checked: see
    retention.guard). ``scan_complete``: neither scan skipped a file; only
    then, and with nothing left out or left alone, is the run a proof that
    each side has all the other has, and recorded as such (else as a
    contact: see retention). ``keep_done``, ``result``: see sync."""
    include = Included(excludes, (a, b))
    result = sync(
        a,
        b,
        rules=rules,
        include=include,
        dry_run=dry_run,
        progress=progress,
        keep_done=keep_done,
        result=result,
    )
    if any(e.what == "conflict" for e in result.events):
        for replica in filter(None, (local_replica(a), local_replica(b))):
            for path, n in over_cap(list_conflicts(replica)).items():
                result.warnings.append(
                    f"{path} has {n} conflict copies in {replica.root}; "
                    "settle them with `merklesync resolve`"
                )
    complete = (
        not excludes
        and not include.left_out
        and scan_complete
        and not result.failures()
        and not result.ignored()
    )
    if not dry_run:
        retention.after_run(a, b, complete=complete)
    return result


@dataclass(slots=True)
class PairSync:
    """One sync of a repair round: the hub with ``other``."""

    hub: str
    other: str
    second: bool  # the second pass: what reached the hub after the first
    result: SyncResult | None  # None: it failed (``error``)
    error: MerklesyncError | None = None
    round_trips: int = 0  # of the busier side (the two sides' requests overlap), the
    # hub's root asked after it included


@dataclass(slots=True)
class LeftOut:
    """A replica that took no part, or stopped taking part, and why."""

    name: str
    error: MerklesyncError


@dataclass(slots=True)
class RepairResult:
    syncs: list[PairSync] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    roots: dict[str, Node] = field(default_factory=dict)  # of each replica at the end
    round_trips: int = 0  # of the syncs, one after the other, and of the roots asked

    def identical(self) -> bool:
        """Every replica reached holds the same tree (same root)."""
        return len({(n.fingerprint, n.count) for n in self.roots.values()}) <= 1


def repair(
    peers: Sequence[Peer],
    *,
    rules: Rules,
    excludes: Sequence[str] = (),
    dry_run: bool = False,
    allow_stale: bool = False,
    scans_complete: bool = True,
    progress: Progress | None = None,
    on_sync: Callable[[PairSync], None] = lambda done: None,
    keep_done: bool = True,
    on_stop: Callable[[PairSync], None] = lambda stopped: None,
) -> RepairResult:
    """Bring ``peers`` (opened and scanned; the first is the hub) to the
    same state. ``scans_complete``: no scan skipped a file (else no sync is
    recorded as complete: see sync_pair). ``on_sync`` hears of each sync as
    it ends; ``on_stop`` of the one a Ctrl-C or SIGTERM stops, with what it
    did so far. A dry run shows each pair as it stands now, in one pass: what
    would reach the hub from one replica is not shown going on to the next."""
    out = RepairResult()
    hub, others = peers[0], list(peers[1:])
    shared: dict[int, Node] = {}  # the hub's root right after its sync with others[i]

    def leave_out(peer: Peer, error: MerklesyncError) -> None:
        out.left_out.append(LeftOut(peer.name, error))

    def hub_root() -> Node | None:
        try:
            return hub.root()
        except MerklesyncError as exc:
            leave_out(hub, exc)
            return None

    def one(i: int, second: bool) -> bool:
        """Sync the hub with others[i]; False when the hub failed."""
        other = others[i]
        result: SyncResult | None = None
        error: MerklesyncError | None = None
        trips = hub.stats.round_trips, other.stats.round_trips
        so_far = SyncResult()
        try:
            retention.guard(hub, other, allow_stale=allow_stale)
            result = sync_pair(
                hub,
                other,
                rules=rules,
                excludes=excludes,
                dry_run=dry_run,
                scan_complete=scans_complete,
                progress=progress,
                keep_done=keep_done,
                result=so_far,
            )
        except MerklesyncError as exc:
            error = exc
        except KeyboardInterrupt:
            on_stop(PairSync(hub.name, other.name, second, so_far))
            raise
        root = hub_root()  # also: whose failure was it?
        made = max(hub.stats.round_trips - trips[0], other.stats.round_trips - trips[1])
        out.round_trips += made
        done = PairSync(hub.name, other.name, second, result, error, made)
        out.syncs.append(done)
        on_sync(done)
        shared.pop(i, None)
        if root is None:  # the hub failed: this one is named too
            leave_out(other, error or MerklesyncError(f"not synced: {hub.name} failed"))
            return False
        if error is not None:
            leave_out(other, error)
        else:
            shared[i] = root
        return True

    tried: set[int] = set()
    current: set[int] = set()  # holds all the hub gathered
    hub_ok = True
    for i in range(len(others)):
        tried.add(i)
        if not one(i, second=False):
            hub_ok = False
            break
    if hub_ok and not dry_run:
        current.add(len(others) - 1)
        for i in range(len(others) - 1):
            if i in shared:
                before = hub.stats.round_trips
                now = hub_root()
                out.round_trips += hub.stats.round_trips - before
                if now is None or (now != shared[i] and not one(i, second=True)):
                    hub_ok = False
                    break
            current.add(i)
    if not hub_ok:  # the round ends here: say who missed what
        for i, other in enumerate(others):
            if i not in tried:
                leave_out(other, MerklesyncError(f"not synced: {hub.name} failed"))
            elif i in shared and i not in current:
                leave_out(
                    other,
                    MerklesyncError(
                        f"not given what reached {hub.name} after its turn: {hub.name} failed"
                    ),
                )
        return out
    for peer in [hub, *(others[i] for i in range(len(others)) if i in shared)]:
        before = peer.stats.round_trips
        try:
            out.roots[peer.name] = peer.root()
        except MerklesyncError as exc:
            leave_out(peer, exc)
        out.round_trips += peer.stats.round_trips - before
    return out
