"""Two-way sync: every replica may change, nothing is lost without a policy
that says so.

For each differing path: equal versions need nothing; where one version
vector dominates, that version is copied the other way; concurrent versions
with the same content just merge their vectors; otherwise it is a conflict,
settled by the path's policy. A resolution is written on both sides with a
vector that dominates both (merged, plus one tick of A, the resolving
replica), so it travels on as an ordinary update.

A's tick is safe only once A has recorded it: a vector on B with a
counter of A that A never recorded would make A's next edit of the entry
look older than it (the same counter again). So A is written first, and
such a write on B only once its write on A went; where A changed since
the scan, neither side takes the resolution, and the next run sees the
new version as a conflict.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from merklesync import merge
from merklesync.clock import Order
from merklesync.errors import reason_about
from merklesync.model import (
    GONE,
    Entry,
    EntryKind,
    Stats,
    Unreadable,
    classify,
    is_dir_path,
    key_of,
)
from merklesync.peer import Outcome, Peer, Progress
from merklesync.policy import (
    Policy,
    Rules,
    chosen,
    conflict_name,
    keeps_name,
    made_by,
    merged_version,
    writer_of,
)
from merklesync.reconcile import differences
from merklesync.scratch import Scratch
from merklesync.transfer import Moves, Op, apply_ops, removes_directory, write_op

_NOT_YET = Outcome("", False)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing sync did (or would do) to a path."""

    path: str
    what: str  # "a->b", "b->a", "merge-version", "conflict", "modify-delete"
    detail: str = ""  # for a copy: what it does there, as diff says it (A, D, M, T or =)


@dataclass(slots=True)
class SyncResult:
    events: list[Event] = field(default_factory=list)
    outcomes_a: dict[str, Outcome] = field(default_factory=dict)  # what writing to A did
    outcomes_b: dict[str, Outcome] = field(default_factory=dict)
    # What the run could not do as asked: a merge that fell back to keep-both,
    # a file past the cap on conflict copies, a conflict left unresolved.
    warnings: list[str] = field(default_factory=list)
    # Conflicts no policy could settle (each replica keeps its own version),
    # and merges that failed (both versions kept, as keep-both keeps them):
    # (path, why).
    unresolved: list[tuple[str, str]] = field(default_factory=list)
    merges_failed: list[tuple[str, str]] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    # Copies of content made and let go of (see Syncer.keep_done): only counted.
    forgotten_copies: int = 0

    def _not_written(self) -> list[Outcome]:
        both = [*self.outcomes_a.values(), *self.outcomes_b.values()]
        return sorted((o for o in both if not o.ok), key=lambda o: o.path)

    def failures(self) -> list[Outcome]:
        """The writes that did not go (not those a side's rules ignore)."""
        return [o for o in self._not_written() if not o.ignored]

    def ignored(self) -> list[tuple[str, str]]:
        """(path, "a" or "b"): writes refused because the side written to
        ignores the path (a remote one: a local one's rules keep it out of
        the run), by design and no failure; such a run proves less."""
        sides = (("a", self.outcomes_a), ("b", self.outcomes_b))
        found = [(o.path, side) for side, outcomes in sides for o in outcomes.values() if o.ignored]
        return sorted(found)

    def undone(self) -> set[str]:
        """The paths whose events did not all happen: a write that failed
        or was ignored, a conflict no policy settled."""
        return {o.path for o in self._not_written()} | {path for path, _ in self.unresolved}

    def incomplete(self) -> bool:
        """Whether anything is left for the user (exit status 1): a write
        that failed, or a warning (see ``warnings``)."""
        return bool(self.failures() or self.unresolved or self.warnings)

    def copies_made(self) -> list[Event]:
        """The plain copies written so far (not those let go of), by path:
        what a run stopped midway has done."""
        written = {"a->b": self.outcomes_b, "b->a": self.outcomes_a}
        made = [
            e for e in self.events if e.what in written and written[e.what].get(e.path, _NOT_YET).ok
        ]
        return sorted(made, key=lambda e: e.path)


_COPIES = ("a->b", "b->a")  # the events of plain copies


@dataclass(slots=True)
class _Plan:
    to_a: list[Op] = field(default_factory=list)
    to_b: list[Op] = field(default_factory=list)


def _displaced(target: Entry, copy_path: str) -> str:
    """What becomes of a file or link that wanted a kept directory's place."""
    return f"the {target.kind.name.lower()} that wanted its place goes to {copy_path}"


def _content(peer: Peer, entry: Entry) -> bytes | None:
    """A small file's content (None: no such file, or it cannot be read)."""
    found = _read_small(peer, entry)
    return found if isinstance(found, bytes) else None


def _read_small(peer: Peer, entry: Entry) -> bytes | Unreadable | None:
    """A small file's content, for merging; None where there is none to
    merge (no file, or too large), Unreadable where it is not as scanned."""
    if entry.deleted or entry.kind is not EntryKind.FILE or entry.size > merge.MAX_MERGE_BYTES:
        return None
    for _entry, chunks in peer.read([entry]):
        if isinstance(chunks, Unreadable):
            return chunks
        data = b"".join(chunks)
        # Merged, these bytes get a digest of their own, which no later
        # check would hold against them: they must be the version compared
        # (a file that changed as it was read ends short, or differs).
        if len(data) != entry.size or blake3.blake3(data).digest() != entry.digest:
            return GONE
        return data
    return None


def _spool(peer: Peer, entry: Entry, spool: Path) -> Path | None:
    """A copy of a file of any size in a local spool directory, so that it
    can be written back to the side it came from."""
    target = spool / f"{len(list(spool.iterdir()))}.data"
    for _entry, chunks in peer.read([entry]):
        if isinstance(chunks, Unreadable):
            return None
        with open(target, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        return target
    return None


class Syncer:
    def __init__(
        self,
        a: Peer,
        b: Peer,
        rules: Rules,
        include: Callable[[str, bool], bool],
        keep_done: bool = True,
        result: SyncResult | None = None,
    ) -> None:
        self.a, self.b = a, b
        self.rules = rules
        self.include = include
        # False: a plain copy, once written, is let go of (its event and
        # outcome) and only counted, where the caller lists no event: a
        # first sync of millions of files holds no object per file.
        self.keep_done = keep_done
        self.result = SyncResult() if result is None else result  # filled as the run goes
        self._copies: dict[str, str] = {}  # conflicted path -> its conflict copy
        # (conflicted path, the loser's leaf) -> the copy made of it in this run
        self._made: dict[tuple[str, bytes], str] = {}
        self._copy_paths: set[str] = set()  # the values of _made
        # Copies an earlier run made (see _free_name) -> whether A, B hold it.
        self._held: dict[str, tuple[bool, bool]] = {}
        self._unsettled: dict[str, str] = {}  # conflicted path -> why no policy settled it
        # Paths whose write on B carries a tick of A: it waits for A's write.
        self._after_a: set[str] = set()
        self._spool: Scratch | None = None
        # Of the pass under way, on each side: plain copies held until its
        # end, so that a file moved is copied from its old path there
        # (transfer.Moves); None in a dry run, or where a side cannot copy.
        self._moves: tuple[Moves | None, Moves | None] = (None, None)

    def _fetch(self, peer: Peer, entry: Entry) -> bytes | Path | None:
        """A file's content to write elsewhere: in memory, or spooled."""
        if entry.size <= merge.MAX_MERGE_BYTES:
            return _content(peer, entry)
        return _spool(peer, entry, self._spool_dir())

    def _spool_dir(self) -> Path:
        if self._spool is None:
            self._spool = Scratch("spool")
        return self._spool.path

    def run(self, *, dry_run: bool = False, progress: Progress | None = None) -> SyncResult:
        try:
            return self._run(dry_run, progress)
        finally:
            if self._spool is not None:
                self._spool.cleanup()

    def _run(self, dry_run: bool, progress: Progress | None) -> SyncResult:
        deferred = self._pass(dry_run, progress)
        if dry_run:
            self._foresee_kept_directories(deferred)
        elif self.result.failures() or self._unsettled:
            self._keep_needed_directories(deferred, progress)
            # An entry can arrive before the directory it lives in replaces
            # a file: one more pass settles what the first one could not
            # (and tells what it does there: not the first pass's events).
            failed: set[str] = set()
            for outcomes in (self.result.outcomes_a, self.result.outcomes_b):
                for path in [p for p, o in outcomes.items() if not o.ok]:
                    del outcomes[path]
                    failed.add(path)
            # The second pass decides again, and says again, what the first
            # decided for a path whose write failed: a plain copy's event
            # goes; so does any event of a path written on neither side (a
            # merge or a discard that happened nowhere). Where one side's
            # write went, what it did stays said.
            went = self.result.outcomes_a.keys() | self.result.outcomes_b.keys()
            self.result.events = [
                e
                for e in self.result.events
                if e.path not in failed or (e.what not in _COPIES and e.path in went)
            ]
            self._unsettled.clear()
            self._copies.clear()
            self._after_a.clear()
            self._pass(dry_run, progress)
        self.result.unresolved = sorted(self._unsettled.items())
        self.result.merges_failed = sorted(set(self.result.merges_failed))
        self.result.warnings += [
            f"{path}: conflict left unresolved: {why}"
            for path, why in sorted(self._unsettled.items())
        ]
        unique = {(e.path, e.what, e.detail): e for e in self.result.events}
        self.result.events = sorted(unique.values(), key=lambda e: e.path)
        return self.result

    def _pass(self, dry_run: bool, progress: Progress | None) -> _Plan:
        deferred = _Plan()
        self._moves = (
            None if dry_run or not self.a.copies_locally else Moves(),
            None if dry_run or not self.b.copies_locally else Moves(),
        )
        moves_a, moves_b = self._moves
        for pairs in differences(self.a, self.b, self.result.stats):
            plan = _Plan()
            since = len(self.result.events)
            for x, y in pairs:
                entry = x or y
                assert entry is not None
                if self._made_here(entry.path):
                    continue
                if self.include(entry.path, is_dir_path(x, y)):
                    self._decide(x, y, plan, deferred)
            if not dry_run:
                self._apply(plan, progress)
                if not self.keep_done:
                    self._let_go(since)
        if not dry_run:
            if moves_a is not None:
                moves_a.release(self.a, self.result.outcomes_a, progress)
            if moves_b is not None:
                moves_b.release(self.b, self.result.outcomes_b, progress)
            if not self.keep_done and (moves_a is not None or moves_b is not None):
                self._let_go(0)  # what was held is written now
            for ops, outcomes in (
                (deferred.to_a, self.result.outcomes_a),
                (deferred.to_b, self.result.outcomes_b),
            ):
                ops[:] = [o for o in ops if self._copy_is_safe(o.entry.path, outcomes)]
                ops.sort(key=lambda o: o.entry.path.count("/"), reverse=True)
            self._apply(deferred, progress)
        return deferred

    def _apply(self, plan: _Plan, progress: Progress | None) -> None:
        """Write A's side, then B's: there, a write that carries a tick of A
        only where A's write of that path went (see the module's docstring)."""
        outcomes_a = self.result.outcomes_a
        moves_a, moves_b = self._moves
        apply_ops(self.a, plan.to_a, outcomes_a, progress, moves_a)
        plan.to_b[:] = [
            o
            for o in plan.to_b
            if o.entry.path not in self._after_a or outcomes_a.get(o.entry.path, _NOT_YET).ok
        ]
        apply_ops(self.b, plan.to_b, self.result.outcomes_b, progress, moves_b)

    def _let_go(self, since: int) -> None:
        """Forget the plain copies among the events from ``since`` on that
        were written (their outcomes too), counting them. Whatever else a
        later step looks up is kept: conflicts and their copies, writes
        still to come or that failed."""
        result = self.result
        kept = result.events[:since]
        for event in result.events[since:]:
            path = event.path
            if event.what not in _COPIES or self._involved(path):
                kept.append(event)
                continue
            outcomes = [o for o in (result.outcomes_a, result.outcomes_b) if path in o]
            if not outcomes or not all(o[path].ok for o in outcomes):
                kept.append(event)
                continue
            for o in outcomes:
                del o[path]
            result.forgotten_copies += event.detail != "="
        result.events = kept

    def _involved(self, path: str) -> bool:
        """Whether ``path`` takes part in a conflict of this run."""
        return (
            path in self._copies
            or path in self._copy_paths
            or path in self._after_a
            or path in self._unsettled
            or path in self._held
        )

    def _made_here(self, path: str) -> bool:
        """A conflict copy this run wrote on both sides, met again by the
        comparison still under way: the next run compares it (a write now,
        refused as the copy's stat is not trusted yet, would hide that the
        copy is there)."""
        return path in self._copy_paths and all(
            outcomes.get(path, _NOT_YET).ok
            for outcomes in (self.result.outcomes_a, self.result.outcomes_b)
        )

    def _copy_is_safe(self, path: str, outcomes: dict[str, Outcome]) -> bool:
        """A keep-both winner is written on a side only once the loser's
        copy is there (``outcomes``: what writing to that side did)."""
        copy = self._copies.get(path)
        if copy is None:
            return True
        held = self._held.get(copy)
        if held is not None and held[0 if outcomes is self.result.outcomes_a else 1]:
            return True
        outcome = outcomes.get(copy)
        if outcome is not None and outcome.ok:
            return True
        if outcome is None and path in self._unsettled:  # not tried: A's side says why
            return False
        reason = outcome.reason if outcome is not None else "not written"
        self._unresolved(path, f"its conflict copy {copy} could not be written ({reason})")
        return False

    def _keep_needed_directories(self, deferred: _Plan, progress: Progress | None) -> None:
        """A directory that still holds entries cannot give way to a file or
        a deletion from the other side: it stays on both sides (with a
        version that dominates), and a file that wanted its place becomes a
        conflict copy. Nothing under the directory is lost."""
        fixes = _Plan()
        kept_dirs: dict[str, str] = {}  # path -> what became of what wanted its place
        sides = (
            (deferred.to_b, self.a, True, self.result.outcomes_b),
            (deferred.to_a, self.b, False, self.result.outcomes_a),
        )
        for ops, other, to_b, outcomes in sides:
            for op in ops:
                outcome = outcomes.get(op.entry.path)
                if outcome is None or outcome.ok or "not empty" not in outcome.reason:
                    continue
                target, directory = op.entry, op.expect
                assert directory is not None
                kept = dataclasses.replace(
                    directory,
                    vv=target.vv.merge(directory.vv).bump(self.a.replica_id),
                    stamp=max(target.stamp, directory.stamp) + 1,
                )
                path = directory.path
                self._after_a.add(path)
                there = next((e for e in other.entries([key_of(path)]) if e.path == path), None)
                fate = "the deletion is not made"
                if not target.deleted:
                    content = op.content
                    if content is None and op.source is not None and op.read_as is not None:
                        content = self._fetch(op.source, op.read_as)
                    if target.kind is EntryKind.FILE and content is None:
                        self._unresolved(
                            path, "a directory with entries against an unreadable file"
                        )
                        continue
                    free = self._free_name(target, writer_of(target, directory))
                    if free is None:
                        self._unresolved(path, "no free name for a conflict copy")
                        continue
                    copy_path, made_before = free
                    fate = _displaced(target, copy_path)
                    if not made_before:
                        copy = dataclasses.replace(
                            target, path=copy_path, vv=kept.vv, stamp=kept.stamp
                        )
                        self._after_a.add(copy_path)
                        fixes.to_a.append(Op(copy, None, content=content))
                        fixes.to_b.append(Op(copy, None, content=content))
                (fixes.to_b if to_b else fixes.to_a).append(Op(kept, directory))
                (fixes.to_a if to_b else fixes.to_b).append(Op(kept, there))
                kept_dirs[path] = fate
        self._say_kept(kept_dirs)
        self._apply(fixes, progress)

    def _say_kept(self, kept_dirs: dict[str, str]) -> None:
        """Directories that stay (path -> what became of what wanted their
        place): what was decided for them did not happen (the copy that
        would have replaced the directory, a policy's winner), only what
        did is said."""
        if kept_dirs:
            events = self.result.events
            events[:] = [e for e in events if e.path not in kept_dirs or e.what == "merge-version"]
            events += (
                Event(path, "conflict", f"the directory still holds entries: it stays; {fate}")
                for path, fate in sorted(kept_dirs.items())
            )

    def _foresee_kept_directories(self, deferred: _Plan) -> None:
        """A dry run's word on the directories the run would remove or
        replace: one that, by its turn, still holds what the run leaves or
        writes in it stays, as the real run finds (_keep_needed_directories).
        What a side's rules keep out of the run, the plan does not know."""
        events = sorted(self.result.events, key=lambda e: e.path)
        paths = [e.path for e in events]
        kept_dirs: dict[str, str] = {}
        for ops, into in ((deferred.to_a, "b->a"), (deferred.to_b, "a->b")):
            for op in ops:
                target, directory = op.entry, op.expect
                assert directory is not None
                prefix = directory.path + "/"
                i = bisect.bisect_left(paths, prefix)
                while i < len(paths) and paths[i].startswith(prefix):
                    if not (events[i].what == into and events[i].detail == "D"):
                        break  # something stays in it, or comes into it
                    i += 1
                else:
                    continue  # emptied by its turn
                fate = "the deletion is not made"
                if not target.deleted:
                    free = self._free_name(target, writer_of(target, directory))
                    if free is None:
                        fate = "no free name for a conflict copy"
                    else:
                        fate = _displaced(target, free[0])
                kept_dirs[directory.path] = fate
        self._say_kept(kept_dirs)

    # -- deciding ----------------------------------------------------------

    def _copy(
        self,
        entry: Entry,
        holder: Peer,
        expect: Entry | None,
        plan: _Plan,
        deferred: _Plan,
        to_b: bool,
        write_as: Entry | None = None,
        movable: bool = False,
    ) -> None:
        """Make one side hold ``entry`` (as ``write_as`` if given), its
        content streamed from ``holder``. ``movable``: a plain copy, which
        the pass may hold until its end (see _moves)."""
        target = write_as or entry
        op = write_op(target, expect, holder, entry)
        if removes_directory(target, expect):
            (deferred.to_b if to_b else deferred.to_a).append(op)
            return
        moves = self._moves[1 if to_b else 0]
        if movable and moves is not None and target.path not in self._after_a and moves.hold(op):
            return
        (plan.to_b if to_b else plan.to_a).append(op)

    def _decide(self, x: Entry | None, y: Entry | None, plan: _Plan, deferred: _Plan) -> None:
        events = self.result.events
        if y is None or (x is not None and x.vv.compare(y.vv) is Order.AFTER):
            assert x is not None
            self._copy(x, self.a, y, plan, deferred, to_b=True, movable=True)
            events.append(Event(x.path, "a->b", classify(x, y).value))
            return
        if x is None or x.vv.compare(y.vv) is Order.BEFORE:
            self._copy(y, self.b, x, plan, deferred, to_b=False, movable=True)
            events.append(Event(y.path, "b->a", classify(y, x).value))
            return
        if x.same_content(y):
            self._both(merged_version(x, y), x, y, plan, deferred)
            events.append(Event(x.path, "merge-version"))
            return
        if _mode_only(x, y):
            self._mode_conflict(x, y, plan, deferred)
            return
        self._conflict(x, y, plan, deferred)

    def _mode_conflict(self, x: Entry, y: Entry, plan: _Plan, deferred: _Plan) -> None:
        """The same bytes (or target) with other permission bits on each
        side: no content to keep twice, so no conflict copy whatever the
        policy; the later mode wins (or the side a ``local`` / ``remote``
        policy names), on both sides, and the event says which."""
        policy = self.rules.for_path(x.path)
        winner = chosen(policy, x, y)
        loser = y if winner is x else x
        self._both(self._resolved(winner, x, y), x, y, plan, deferred)
        self.result.events.append(
            Event(
                x.path,
                "conflict",
                f"mode only: kept {winner.mode:04o} {made_by(winner, loser)}, "
                f"not {loser.mode:04o} {made_by(loser, winner)}",
            )
        )

    def _resolved(self, winner: Entry, x: Entry, y: Entry) -> Entry:
        """The winner as a new write (of A) that dominates both sides: the
        same version to the last-writer-wins rule (its writer and stamp, or
        the later stamp where the winner is the earlier write), so that the
        order in which replicas meet decides nothing."""
        vv = x.vv.merge(y.vv).bump(self.a.replica_id)
        self._after_a.add(winner.path)
        return dataclasses.replace(winner, vv=vv, stamp=max(x.stamp, y.stamp))

    def _both(self, target: Entry, x: Entry, y: Entry, plan: _Plan, deferred: _Plan) -> None:
        """Write ``target`` on both sides; its content is x's or y's. Both
        writes go in the same round (B's may wait for A's: see _apply), the
        later one if either side must wait for a directory to empty."""
        holder_a = x.same_content(target) or target.deleted
        holder_b = y.same_content(target) or target.deleted
        if removes_directory(target, x) or removes_directory(target, y):
            plan = deferred
        if holder_a:
            self._copy(x, self.a, x, plan, plan, to_b=False, write_as=target)
            self._copy(x, self.a, y, plan, plan, to_b=True, write_as=target)
        elif holder_b:
            self._copy(y, self.b, x, plan, plan, to_b=False, write_as=target)
            self._copy(y, self.b, y, plan, plan, to_b=True, write_as=target)

    def _conflict(self, x: Entry, y: Entry, plan: _Plan, deferred: _Plan) -> None:
        events = self.result.events
        policy = self.rules.for_path(x.path)
        if x.deleted or y.deleted:
            if policy in (Policy.LWW, Policy.LOCAL, Policy.REMOTE):
                winner = chosen(policy, x, y)
            else:
                winner = y if x.deleted else x
            self._both(self._resolved(winner, x, y), x, y, plan, deferred)
            side = "a" if winner is x else "b"
            what = "deletion" if winner.deleted else "modification"
            events.append(Event(x.path, "modify-delete", f"the {what} on {side} wins"))
            return
        if policy in (Policy.LWW, Policy.LOCAL, Policy.REMOTE):
            winner = chosen(policy, x, y)
            loser = y if winner is x else x
            self._both(self._resolved(winner, x, y), x, y, plan, deferred)
            events.append(
                Event(
                    x.path,
                    "conflict",
                    f"{policy.value}: discarded the version {made_by(loser, winner)}",
                )
            )
            return
        if policy in (Policy.UNION, Policy.MERGE_CMD) and self._merge(x, y, policy, plan):
            return
        self._keep_both(x, y, plan, deferred)

    def _merge(self, x: Entry, y: Entry, policy: Policy, plan: _Plan) -> bool:
        ours, theirs = _read_small(self.a, x), _read_small(self.b, y)
        for side, found in ((self.a, ours), (self.b, theirs)):
            if isinstance(found, Unreadable):  # changed since the scan: the next run sees it
                self._unresolved(x.path, f"{found.reason} ({side.name})")
                return True
        if not isinstance(ours, bytes) or not isinstance(theirs, bytes):
            self._merge_failed(x.path, f"{x.path}: cannot merge ({policy.value})")
            return False
        try:
            if policy is Policy.UNION:
                merged = merge.union_merge(x.path, ours, theirs)
            else:
                if not self.rules.merge_cmd:
                    raise merge.MergeFailed(f"{x.path}: no --merge-cmd given")
                merged = merge.run_merge_command(self.rules.merge_cmd, x.path, ours, theirs, None)
        except merge.MergeFailed as exc:
            self._merge_failed(x.path, exc.message)
            return False
        base = self._resolved(x, x, y)
        stamp = base.stamp + 1  # new content, written by A, after both
        target = dataclasses.replace(
            base,
            digest=blake3.blake3(merged).digest(),
            size=len(merged),
            mtime_ns=stamp,
            stamp=stamp,
            origin=self.a.replica_id,
        )
        plan.to_a.append(Op(target, x, content=merged))
        plan.to_b.append(Op(target, y, content=merged))
        self.result.events.append(Event(x.path, "conflict", f"{policy.value}: merged both"))
        return True

    def _free_name(self, loser: Entry, writer: str) -> tuple[str, bool] | None:
        """A conflict-copy name for ``loser`` that neither side uses yet
        (False); or one that holds it already, on one side or both (True):
        a run stopped after it made the copy, before it wrote the winner.
        Where one side lacks it, this run copies it there as any entry."""
        for n in range(1, 100):
            name = conflict_name(loser.path, writer, loser.stamp, n)
            key = key_of(name)
            held = [
                next((e for e in peer.entries([key]) if e.path == name), None)
                for peer in (self.a, self.b)
            ]
            if held == [None, None]:
                return name, False
            if all(e is None or e.content() == loser.content() for e in held):
                self._held[name] = (held[0] is not None, held[1] is not None)
                return name, True
        return None

    def _merge_failed(self, path: str, why: str) -> None:
        """A merge that could not be made: both versions are kept instead."""
        self.result.warnings.append(f"{why}; kept both")
        self.result.merges_failed.append((path, reason_about(path, why)))

    def _unresolved(self, path: str, why: str) -> None:
        self._unsettled[path] = why

    def _keep_both(self, x: Entry, y: Entry, plan: _Plan, deferred: _Plan) -> None:
        winner = keeps_name(x, y)
        loser = y if winner is x else x
        copy_path: str | None = None
        made = self._made.get((x.path, loser.leaf_hash()))
        if made is not None and all(
            outcomes.get(made, _NOT_YET).ok
            for outcomes in (self.result.outcomes_a, self.result.outcomes_b)
        ):
            # The first pass made its copy on both sides (the winner was not
            # written): the second one does not make another.
            copy_path = self._copies[x.path] = made
        elif loser.kind is not EntryKind.DIR:  # two directories never conflict on content
            holder = self.a if loser is x else self.b
            content: bytes | Path | None = None
            if loser.kind is EntryKind.FILE:
                content = self._fetch(holder, loser)
                if content is None:
                    self._unresolved(x.path, "the losing version could not be read")
                    return
            free = self._free_name(loser, writer_of(loser, winner))
            if free is None:
                self._unresolved(x.path, "no free name for a conflict copy")
                return
            copy_path, made_before = free
            if not made_before:
                copy = dataclasses.replace(
                    loser,
                    path=copy_path,
                    vv=loser.vv.merge(winner.vv).bump(self.a.replica_id),
                    stamp=max(x.stamp, y.stamp) + 1,
                )
                self._after_a.add(copy_path)
                # The copies are written first; the winner, which may replace
                # the loser, only once they are safe (see _pass).
                plan.to_a.append(Op(copy, None, content=content))
                plan.to_b.append(Op(copy, None, content=content))
                self._made[(x.path, loser.leaf_hash())] = copy_path
            self._copies[x.path] = copy_path
            self._copy_paths.add(copy_path)
        self._both(self._resolved(winner, x, y), x, y, deferred, deferred)
        holder = self.a if winner is x else self.b
        detail = f"keep-both: the version from {holder.name} keeps the name"
        if copy_path is not None:
            detail += f"; the other goes to {copy_path}"
        self.result.events.append(Event(x.path, "conflict", detail))


def _mode_only(x: Entry, y: Entry) -> bool:
    """Whether two live versions differ in their permission bits alone."""
    return (
        not x.deleted
        and not y.deleted
        and x.kind is y.kind
        and x.digest == y.digest
        and x.target == y.target
        and x.mode != y.mode
    )


def sync(
    a: Peer,
    b: Peer,
    *,
    rules: Rules | None = None,
    include: Callable[[str, bool], bool] = lambda path, is_dir: True,
    dry_run: bool = False,
    progress: Progress | None = None,
    keep_done: bool = True,
    result: SyncResult | None = None,
) -> SyncResult:
    """Sync ``a`` and ``b`` (scanned). ``keep_done`` False: plain copies
    are counted, not listed, in the result (see Syncer.keep_done).
    ``result``: filled as the run goes (a caller interrupted still holds
    what was done)."""
    syncer = Syncer(a, b, rules or Rules(), include, keep_done, result)
    return syncer.run(dry_run=dry_run, progress=progress)
