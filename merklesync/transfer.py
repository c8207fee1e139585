"""Apply a one-way plan: stream the differing leaves from one peer to the
other, in batches, verified and atomic on the receiving side."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from merklesync.model import Action, Change, ChangeKind, Entry, EntryKind, Stats
from merklesync.peer import Outcome, Peer, Progress, WriteItem
from merklesync.reconcile import differences, plan_one_way

BATCH_FILES = 2048
BATCH_BYTES = 64 << 20


@dataclass(slots=True)
class TransferResult:
    """Every difference found (without its entries), and what became of it."""

    changes: list[Change] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)

    def applied(self) -> list[Change]:
        return [c for c in self.changes if self.outcomes.get(c.path, _NO).ok]

    def left_alone(self) -> list[tuple[Change, str]]:
        """Differences this run did not resolve, with the reason."""
        out: list[tuple[Change, str]] = []
        for c in self.changes:
            outcome = self.outcomes.get(c.path)
            if c.action is Action.CONFLICT:
                out.append((c, "conflict: both sides changed it"))
            elif c.action is Action.DEST_NEWER and c.kind is not ChangeKind.NONE:
                out.append((c, "the destination has a newer version"))
            elif outcome is not None and not outcome.ok:
                out.append((c, outcome.reason))
        return out


_NO = Outcome("", False)


def needs_data(change: Change) -> bool:
    src, dst = change.src, change.dst
    if change.action is not Action.COPY or src is None or src.deleted:
        return False
    if src.kind is not EntryKind.FILE:
        return False
    return dst is None or dst.deleted or dst.kind is not EntryKind.FILE or dst.digest != src.digest


def _deferred(change: Change) -> bool:
    """Removing a directory waits until everything under it has gone."""
    dst = change.dst
    return (
        dst is not None
        and not dst.deleted
        and dst.kind is EntryKind.DIR
        and (change.src is None or change.src.deleted or change.src.kind is not EntryKind.DIR)
    )


def _target(change: Change) -> Entry:
    src, dst = change.src, change.dst
    assert src is not None
    if change.action is Action.MERGE_VERSION:
        assert dst is not None
        return dataclasses.replace(dst, vv=dst.vv.merge(src.vv), stamp=max(src.stamp, dst.stamp))
    return src


def push(
    src: Peer,
    dst: Peer,
    *,
    dry_run: bool = False,
    include: Callable[[str, bool], bool] = lambda path, is_dir: True,
    progress: Progress | None = None,
) -> TransferResult:
    """Make ``dst`` hold ``src``'s version of everything, where that is a
    fast-forward; leave newer and concurrent versions alone."""
    result = TransferResult()
    deferred: list[Change] = []
    for pairs in differences(src, dst, result.stats):
        todo: list[Change] = []
        for s, d in pairs:
            change = plan_one_way(s, d)
            entry = s or d
            assert entry is not None
            if change.action is Action.DEST_NEWER and change.kind is ChangeKind.NONE:
                continue  # the destination knows more, and the content is the same
            if not include(change.path, entry.kind is EntryKind.DIR and not entry.deleted):
                continue
            # Keep what the report needs, not the entries: memory stays bounded.
            result.changes.append(Change(change.path, change.kind, None, None, change.action))
            if change.action in (Action.COPY, Action.MERGE_VERSION):
                (deferred if _deferred(change) else todo).append(change)
        if not dry_run:
            _apply(src, dst, todo, result, progress)
    if not dry_run and deferred:
        deferred.sort(key=lambda c: c.path.count("/"), reverse=True)
        _apply(src, dst, deferred, result, progress)
    result.changes.sort(key=lambda c: c.path)
    return result


def _apply(
    src: Peer, dst: Peer, changes: list[Change], result: TransferResult, progress: Progress | None
) -> None:
    with_data = [c for c in changes if needs_data(c)]
    without = [c for c in changes if not needs_data(c)]
    # Directories first (shallow to deep), so their modes are in place early.
    without.sort(key=lambda c: (c.src is None or c.src.kind is not EntryKind.DIR, c.path))
    for start in range(0, len(without), BATCH_FILES):
        items = [WriteItem(_target(c), c.dst) for c in without[start : start + BATCH_FILES]]
        _record(dst.write(items, progress), result)
    for batch in _batches(with_data):
        _record(dst.write(_stream(src, batch, result), progress), result)


def _batches(changes: list[Change]) -> Iterator[list[Change]]:
    batch: list[Change] = []
    size = 0
    for c in changes:
        assert c.src is not None
        batch.append(c)
        size += c.src.size
        if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _stream(src: Peer, batch: list[Change], result: TransferResult) -> Iterable[WriteItem]:
    by_path = {c.path: c for c in batch}
    for entry, chunks in src.read([c.src for c in batch if c.src is not None]):
        change = by_path[entry.path]
        if chunks is None:
            result.outcomes[entry.path] = Outcome(
                entry.path, False, "changed or gone on the source since the scan"
            )
            continue
        yield WriteItem(entry, change.dst, chunks)


def _record(outcomes: list[Outcome], result: TransferResult) -> None:
    for outcome in outcomes:
        result.outcomes[outcome.path] = outcome
