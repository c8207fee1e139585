"""Apply a one-way plan: stream the differing leaves from one peer to the
other, in batches, verified and atomic on the receiving side."""

from __future__ import annotations

import bisect
import contextlib
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from merklesync.clock import is_found, is_replica
from merklesync.errors import ReadOnlyReplica
from merklesync.model import (
    NOT_EMPTY,
    Action,
    Change,
    ChangeKind,
    Entry,
    EntryKind,
    Stats,
    is_dir_path,
    leaf_of,
)
from merklesync.peer import Outcome, Peer, Progress, Unreadable, WriteItem
from merklesync.policy import made_by, merged_version
from merklesync.reconcile import differences, plan_one_way

BATCH_FILES = 2048
BATCH_BYTES = 64 << 20


@dataclass(slots=True)
class TransferResult:
    """Every difference found (without its entries), and what became of it;
    unless the caller let go of those done (``keep_done`` False: see push),
    which are then only counted."""

    changes: list[Change] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    # What --force overwrites, by path: the destination's version, as
    # "the version written by R" or "a deletion by R".
    discarded: dict[str, str] = field(default_factory=dict)
    forgotten: int = 0  # changes applied and let go of (see _let_go)
    # Paths the source has no row of: it never had them, or collected their tombstone.
    only_there: set[str] = field(default_factory=set)
    forgotten_same: int = 0  # of those, changes of version only (no data moved)
    # Conflicts of content each replica's first scan found there, neither
    # written since: nobody changed them (replicas made apart that differ).
    found_apart: set[str] = field(default_factory=set)

    def applied(self) -> list[Change]:
        """The changes applied (not those let go of: see forgotten)."""
        return [c for c in self.changes if self.outcomes.get(c.path, _NO).ok]

    def _let_go(self, since: int) -> None:
        """Forget the changes from ``since`` on that were applied, counting
        them: a first copy of millions of files does not hold one object
        per file until the end. What the report names is kept: what was
        left alone, what failed, what --force overwrote."""
        kept = self.changes[:since]
        for change in self.changes[since:]:
            outcome = self.outcomes.get(change.path)
            if outcome is None or not outcome.ok or change.action is Action.FORCE:
                kept.append(change)
                continue
            del self.outcomes[change.path]
            self.forgotten += 1
            self.forgotten_same += change.kind is ChangeKind.NONE
        self.changes = kept

    def left_alone(self) -> list[tuple[Change, str]]:
        """Differences this run did not resolve, with the reason."""
        out: list[tuple[Change, str]] = []
        for c in self.changes:
            outcome = self.outcomes.get(c.path)
            if c.action is Action.CONFLICT and c.path in self.found_apart:
                out.append((c, "conflict: different content found by first scans, unchanged since"))
            elif c.action is Action.CONFLICT:
                out.append((c, "conflict: both sides changed it"))
            elif c.action is Action.DEST_NEWER and c.kind is not ChangeKind.NONE:
                # A path the source never had (not even deleted) is no newer
                # version of anything: a push copies, it never deletes it.
                newer = "the destination has a newer version"
                out.append((c, "only on the destination" if c.path in self.only_there else newer))
            elif outcome is not None and not outcome.ok and not outcome.ignored:
                out.append((c, outcome.reason))
        return out

    def ignored(self) -> list[str]:
        """The paths not written because the destination's ignore rules
        leave them out (a remote one: a local one's rules keep them out of
        the run): no failure, and no proof the destination has everything."""
        return [c.path for c in self.changes if self.outcomes.get(c.path, _NO).ignored]


_NO = Outcome("", False)


@dataclass(frozen=True, slots=True)
class Op:
    """Write ``entry`` on a target that now holds ``expect``; its content
    streams from ``source`` (which holds it as ``read_as``), or is given in
    ``content``, or is not needed (a directory, link, tombstone or a change
    of version or mode only)."""

    entry: Entry
    expect: Entry | None
    source: Peer | None = None
    read_as: Entry | None = None
    content: bytes | Path | None = None  # a Path: a local spool file to stream


def needs_content(target: Entry, expect: Entry | None) -> bool:
    """Whether making a peer that holds ``expect`` hold ``target`` moves bytes."""
    if target.deleted or target.kind is not EntryKind.FILE:
        return False
    return (
        expect is None
        or expect.deleted
        or expect.kind is not EntryKind.FILE
        or expect.digest != target.digest
    )


def removes_directory(target: Entry, expect: Entry | None) -> bool:
    """Such a write waits until everything under the directory has gone."""
    return (
        expect is not None
        and not expect.deleted
        and expect.kind is EntryKind.DIR
        and (target.deleted or target.kind is not EntryKind.DIR)
    )


def write_op(target: Entry, expect: Entry | None, holder: Peer, holding: Entry) -> Op:
    """The write making a peer that holds ``expect`` hold ``target``, whose
    content ``holder`` has (as its entry ``holding``)."""
    if needs_content(target, expect):
        return Op(target, expect, holder, holding)
    return Op(target, expect)


def _target(change: Change, writer: str) -> Entry:
    src, dst = change.src, change.dst
    assert src is not None
    if change.action is Action.MERGE_VERSION:
        assert dst is not None
        return merged_version(dst, src)
    if change.action is Action.FORCE:
        assert dst is not None
        # A new write that dominates what it replaces, made by the
        # destination (``writer``): the one replica sure to record its
        # counter, in the very write that uses it. The source records the
        # vector too (see _catch_up) when nothing changed there since the
        # scan; if something did, its next version is concurrent with this
        # one (a conflict), never older.
        vv = src.vv.merge(dst.vv).bump(writer)
        return src.with_version(vv, max(src.stamp, dst.stamp) + 1)
    return src


def push(
    src: Peer,
    dst: Peer,
    *,
    dry_run: bool = False,
    include: Callable[[str, bool], bool] = lambda path, is_dir: True,
    progress: Progress | None = None,
    force: bool = False,
    keep_done: bool = True,
    result: TransferResult | None = None,
) -> TransferResult:
    """Make ``dst`` hold ``src``'s version of everything, where that is a
    fast-forward; leave newer and concurrent versions alone, unless
    ``force`` says to overwrite them. ``keep_done`` False: the changes
    applied are let go of as the run goes, only counted (the caller does
    not list them), so that memory stays bounded. ``result``: filled as
    the run goes (a caller interrupted still holds what was done)."""
    result = TransferResult() if result is None else result
    blocked: set[str] = set()  # left alone where the destination holds no directory
    deferred: list[tuple[Change, Entry]] = []  # (change, what the destination is to hold)
    deferred_same: list[tuple[Change, Entry]] = []  # their catching up, once they are written
    moves = Moves() if not dry_run and dst.copies_locally else None
    for pairs in differences(src, dst, result.stats):
        since = len(result.changes)
        todo: list[tuple[Change, Entry]] = []
        same: list[tuple[Change, Entry]] = []  # same content: the source is to catch up
        for s, d in pairs:
            change = plan_one_way(s, d)
            if not include(change.path, is_dir_path(s, d)):
                continue
            if change.action is Action.DEST_NEWER and change.kind is ChangeKind.NONE:
                if s is not None and d is not None:
                    same.append((change, d))
                continue  # the destination knows more, and the content is the same
            if force and s is not None and change.action in (Action.DEST_NEWER, Action.CONFLICT):
                change = Change(change.path, change.kind, s, d, Action.FORCE)
                if d is not None:
                    result.discarded[change.path] = _discarded(d, s)
            if change.action in (Action.DEST_NEWER, Action.CONFLICT) and _no_directory(d):
                blocked.add(change.path)
            # Keep what the report needs, not the entries: memory stays bounded.
            result.changes.append(Change(change.path, change.kind, None, None, change.action))
            if s is None:
                result.only_there.add(change.path)
            elif change.action is Action.CONFLICT and is_found(s.vv) and d and is_found(d.vv):
                result.found_apart.add(change.path)
            if change.action in (Action.COPY, Action.MERGE_VERSION, Action.FORCE):
                assert s is not None
                target = _target(change, dst.replica_id)
                later = removes_directory(target, d)
                if (
                    moves is not None
                    and not later
                    and change.action is Action.COPY
                    and moves.hold(write_op(target, d, src, s))
                ):
                    continue
                (deferred if later else todo).append((change, target))
                if change.action in (Action.MERGE_VERSION, Action.FORCE):
                    (deferred_same if later else same).append((change, target))
        if not dry_run:
            _apply(src, dst, todo, result, progress, moves)
            _catch_up(src, same, result)
            if not keep_done:
                result._let_go(since)
    if moves is not None:
        moves.release(dst, result.outcomes, progress)
        if not keep_done:
            result._let_go(0)  # what was held is applied now
    deferred.sort(key=lambda planned: planned[0].path.count("/"), reverse=True)
    if not dry_run and deferred:
        _apply(src, dst, deferred, result, progress)
        _catch_up(src, deferred_same, result)
    result.changes.sort(key=lambda c: c.path)
    if dry_run:
        _foresee(result, blocked, [change.path for change, _target in deferred])
    return result


HELD_MAX = 65_536  # writes a run holds until its end (see Moves)
ARRIVALS_MAX = 16_384  # of those, new files


@dataclass(slots=True)
class Moves:
    """Writes to one peer held until the others of a run are done, so that
    a file moved or renamed is copied there from its old path whichever
    batch of the comparison brings each of its two paths (see apply_ops):
    those that take a file away (deleted, or a link in its place), with
    the content each takes away, and the new files (whose old path may
    come in any later batch, whatever came before: a batch may hold new
    paths alone). HELD_MAX at most, ARRIVALS_MAX of them new files: memory
    stays bounded (past it, a move found in two batches may be sent)."""

    removals: list[Op] = field(default_factory=list)
    arrivals: list[Op] = field(default_factory=list)
    leaving: dict[bytes, str] = field(default_factory=dict)  # digest -> path

    def hold(self, op: Op) -> bool:
        """Whether ``op`` is held (until release)."""
        was = op.expect
        if len(self.removals) + len(self.arrivals) >= HELD_MAX:
            return False
        if op.source is None and was is not None and _takes_away(op.entry, was):
            self.leaving.setdefault(was.digest, was.path)
            self.removals.append(op)
            return True
        if op.source is not None and len(self.arrivals) < ARRIVALS_MAX:
            self.arrivals.append(op)
            return True
        return False

    def release(
        self, target: Peer, outcomes: dict[str, Outcome], progress: Progress | None
    ) -> None:
        """Apply what was held: the new files (copies where they can be),
        then the removals; then, once more, a new file that failed where a
        removal freed its name (a file renamed in case alone, on a file
        system that ignores case: its old name was in the way)."""
        arrivals, self.arrivals = self.arrivals, []
        removals, self.removals = self.removals, []
        apply_ops(target, arrivals, outcomes, progress, self)
        self.leaving.clear()
        apply_ops(target, removals, outcomes, progress)
        freed = {_folded(o.entry.path) for o in removals if outcomes.get(o.entry.path, _NO).ok}
        again = [
            o
            for o in arrivals
            if not outcomes.get(o.entry.path, _NO).ok and _folded(o.entry.path) in freed
        ]
        if again:
            apply_ops(target, again, outcomes, progress)


def _folded(path: str) -> str:
    """A path as a file system that ignores case and normalization sees it."""
    return unicodedata.normalize("NFC", path).casefold()


def _takes_away(target: Entry, holds: Entry | None) -> bool:
    """Whether writing ``target`` takes away the content of a file the
    destination ``holds`` (a tombstone or a link in its place; not a
    directory, made before any copy)."""
    return (
        holds is not None
        and not holds.deleted
        and holds.kind is EntryKind.FILE
        and holds.size > 0
        and (target.deleted or target.kind is EntryKind.LINK)
    )


def _no_directory(entry: Entry | None) -> bool:
    return entry is not None and not entry.deleted and entry.kind is not EntryKind.DIR


def _foresee(result: TransferResult, blocked: set[str], removals: list[str]) -> None:
    """A dry run's word, as the real run would find it, on two writes the
    plan alone does not tell will fail: one under a path left alone that
    is no directory on the destination (its parent cannot be made there),
    and the removal of a directory (deepest first) that holds something the
    run leaves alone (it is not empty by its turn)."""
    for change in result.changes:
        if change.action in (Action.COPY, Action.MERGE_VERSION, Action.FORCE):
            parts = change.path.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent in blocked:
                    reason = f"parent {parent} is not a directory"
                    result.outcomes[change.path] = Outcome(change.path, False, reason)
                    break
    kept = sorted(c.path for c, _reason in result.left_alone())
    for path in removals:
        if path in result.outcomes:
            continue
        i = bisect.bisect_left(kept, path + "/")
        if i < len(kept) and kept[i].startswith(path + "/"):
            result.outcomes[path] = Outcome(path, False, NOT_EMPTY)
            bisect.insort(kept, path)


def _discarded(lost: Entry, kept: Entry) -> str:
    """Whose version --force overwrites: the replicas whose writes it holds
    and the source's does not (which of them wrote last, the vectors do
    not say)."""
    by = sorted(r for r, c in lost.vv.pairs if c > kept.vv.get(r) and is_replica(r))
    if not by and is_found(lost.vv) and lost.origin:
        return f"the version {made_by(lost, kept)}"
    if not by:
        return "the destination's version"
    what = "a deletion" if lost.deleted else "the version written"
    return f"{what} by {', '.join(by)}"


def _catch_up(src: Peer, same: list[tuple[Change, Entry]], result: TransferResult) -> None:
    """Where both hold the same content, the source takes the version the
    destination now holds (newer, merged from both, or forced there from
    the source): a change of version only, no file is rewritten. Else
    their leaves would still differ and every later run would compare them
    again (two replicas made apart from the same files, say, would compare
    every entry on every push). Done as any write, compare-and-swap: an
    entry changed on the source since its scan is left as it is, no
    failure of the run (the next run compares it again); a source on a
    read-only file system is left as it is too; a failure of the replica
    itself (a lost connection, a full disk) ends the run, as anywhere
    else."""
    ops = []
    for change, held in same:  # held: what the destination holds now, if its write went
        s = change.src
        assert s is not None
        if change.action is Action.DEST_NEWER or result.outcomes.get(change.path, _NO).ok:
            ops.append(Op(s.with_version(held.vv, held.stamp, held.origin), s))
    if ops:
        with contextlib.suppress(ReadOnlyReplica):
            apply_ops(src, ops, {}, None)


def _apply(
    src: Peer,
    dst: Peer,
    planned: list[tuple[Change, Entry]],
    result: TransferResult,
    progress: Progress | None,
    moves: Moves | None = None,
) -> None:
    ops = []
    for c, target in planned:
        assert c.src is not None
        ops.append(write_op(target, c.dst, src, c.src))
    apply_ops(dst, ops, result.outcomes, progress, moves)


def apply_ops(
    target: Peer,
    ops: list[Op],
    outcomes: dict[str, Outcome],
    progress: Progress | None,
    moves: Moves | None = None,
) -> None:
    """Apply writes to one peer: those without streamed content first
    (directories shallow to deep, then deletions deep to shallow, so a
    directory is empty by its turn), then streams in pipelined batches.

    A file whose content the target holds at a path these writes take it
    from (a file moved or renamed: deleted there, or a link in its place)
    is copied from that path on the target instead of sent, where the
    target can (Peer.copies_locally): once the directories are made and
    before anything is removed; so is one whose content a write ``moves``
    holds takes away. One whose copy fails (that file changed since the
    scan, say) is sent after all."""
    plain = sorted((o for o in ops if o.source is None), key=_plain_order)
    # In path order: each directory's files are read and written together,
    # and the index takes its rows in order.
    streamed = sorted((o for o in ops if o.source is not None), key=lambda o: o.entry.path)
    rest = [o for o in plain if not _makes_directory(o.entry)]
    copies = _copies(target, rest, streamed, moves.leaving if moves else {})
    if copies:
        _write_plain(target, [o for o in plain if _makes_directory(o.entry)], outcomes, progress)
        failed = _write_copies(target, streamed, copies, outcomes, progress)
        streamed = [o for o in streamed if o.entry.path not in copies or o.entry.path in failed]
        _write_plain(target, rest, outcomes, progress)
    else:  # in one stream: no round trip more
        _write_plain(target, plain, outcomes, progress)
    sources = {id(o.source): o.source for o in streamed if o.source is not None}
    for source in sources.values():
        mine = [o for o in streamed if o.source is source]
        for batch in _batches(mine):
            _record(target.write(_stream(source, batch, outcomes), progress), outcomes)


def _makes_directory(entry: Entry) -> bool:
    return entry.kind is EntryKind.DIR and not entry.deleted


def _write_plain(
    target: Peer, ops: list[Op], outcomes: dict[str, Outcome], progress: Progress | None
) -> None:
    for start in range(0, len(ops), BATCH_FILES):
        items = [
            WriteItem(o.entry, leaf_of(o.expect), _given(o.content))
            for o in ops[start : start + BATCH_FILES]
        ]
        _record(target.write(items, progress), outcomes)


def _copies(
    target: Peer, plain: list[Op], streamed: list[Op], leaving: Mapping[bytes, str]
) -> dict[str, str]:
    """The files to copy on the target: path -> the path there whose content
    the ``plain`` writes (applied after the copies) take away, or that is
    ``leaving``."""
    if not streamed or not target.copies_locally:
        return {}
    taken: dict[bytes, str] = {}
    for op in plain:
        if op.expect is not None and _takes_away(op.entry, op.expect):
            taken.setdefault(op.expect.digest, op.expect.path)
    if not taken and not leaving:
        return {}
    copies = {}
    for op in streamed:
        digest = op.entry.digest
        found = taken.get(digest) or leaving.get(digest)
        if found is not None and found != op.entry.path:
            copies[op.entry.path] = found
    return copies


def _write_copies(
    target: Peer,
    streamed: list[Op],
    copies: dict[str, str],
    outcomes: dict[str, Outcome],
    progress: Progress | None,
) -> set[str]:
    """Make the files of ``copies`` from the target's own; the paths whose
    copy failed (to be sent instead)."""
    ops = [o for o in streamed if o.entry.path in copies]
    failed: set[str] = set()
    for start in range(0, len(ops), BATCH_FILES):
        items = [
            WriteItem(o.entry, leaf_of(o.expect), None, copies[o.entry.path])
            for o in ops[start : start + BATCH_FILES]
        ]
        for outcome in target.write(items, progress):
            if outcome.ok:
                outcomes[outcome.path] = outcome
            else:
                failed.add(outcome.path)
    return failed


def _plain_order(op: Op) -> tuple[bool, int, str]:
    entry = op.entry
    live_dir = entry.kind is EntryKind.DIR and not entry.deleted
    return (not live_dir, -entry.path.count("/") if entry.deleted else 0, entry.path)


def _given(content: bytes | Path | None) -> Iterable[bytes] | None:
    if content is None or isinstance(content, bytes):
        return None if content is None else [content]
    return _spooled(content)


def _spooled(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def _batches(ops: list[Op]) -> Iterator[list[Op]]:
    batch: list[Op] = []
    size = 0
    for op in ops:
        batch.append(op)
        size += op.entry.size
        if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _stream(source: Peer, batch: list[Op], outcomes: dict[str, Outcome]) -> Iterable[WriteItem]:
    by_path = {o.read_as.path: o for o in batch if o.read_as is not None}
    for entry, chunks in source.read([o.read_as for o in batch if o.read_as is not None]):
        op = by_path[entry.path]
        if isinstance(chunks, Unreadable):
            outcomes[op.entry.path] = Outcome(op.entry.path, False, chunks.reason)
            continue
        yield WriteItem(op.entry, leaf_of(op.expect), chunks)


def _record(results: list[Outcome], outcomes: dict[str, Outcome]) -> None:
    for outcome in results:
        outcomes[outcome.path] = outcome
