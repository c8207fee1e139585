"""Conflict copies left by keep-both: listing them, and settling them in bulk.

A conflict copy is an ordinary entry named ``NAME.conflict-<replica>-<time>.EXT``,
so the list travels with the data and every replica sees the same one.
Resolving edits the files, then rescans: the result is a new local write
that reaches the other replicas on the next sync.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from merklesync import merge
from merklesync.clock import MAX_STAMP, Order
from merklesync.errors import MerklesyncError, UsageError
from merklesync.index import TOMBSTONE
from merklesync.model import Entry, EntryKind, ScanReport
from merklesync.policy import (
    CONFLICT_MARK,
    id_in_name,
    maybe_shortened,
    original_of,
    split_name,
    time_in_name,
    writer_of,
)
from merklesync.reading import read_file
from merklesync.replica import Replica
from merklesync.sources.file_write import temp_name, write_all

CAP = 5  # conflict copies of one file before sync warns


class Take(enum.Enum):
    LOCAL = "local"  # the version this replica wrote
    REMOTE = "remote"  # the version another replica wrote
    BOTH = "both"  # keep both as ordinary files
    UNION = "union"  # merge them (text lines, JSON sets)


@dataclass(frozen=True, slots=True)
class Conflict:
    original: str
    copy: Entry
    writer: str  # the replica that wrote the copy's version (its name says, unless rewritten)
    written: str  # when, to the second (YYYYMMDDTHHMMSS, UTC)


def list_conflicts(replica: Replica) -> list[Conflict]:
    found: list[Conflict] = []
    for entry in replica.index.iter_entries(live_only=True):
        if entry.kind is EntryKind.DIR or CONFLICT_MARK not in entry.path:
            continue
        parsed = original_of(entry.path)
        if parsed is not None:
            original, writer, written = parsed
            if entry.origin and id_in_name(entry.origin) != writer:
                # Written again since it was made (edited on a replica): its
                # name tells of the version it first held, not of this one.
                writer, written = entry.origin, time_in_name(entry.stamp)
            found.append(
                Conflict(_unshortened(replica, entry.path, original), entry, writer, written)
            )
    return found


def _unshortened(replica: Replica, copy: str, original: str) -> str:
    """The file ``copy`` is a conflict copy of. Its name says, unless it
    was shortened to fit a file name (see policy.conflict_name): then it is
    the one other file in that directory whose name begins with what is
    left of the original's stem and ends with its extension. None such, or
    more than one: the name as parsed (resolve refuses to settle it)."""
    if not maybe_shortened(copy):
        return original
    head, name = posixpath.split(original)
    stem, dot, ext = split_name(name)
    ending = f"{dot}{ext}"
    found = [
        path
        for path, stat in replica.index.stat_cache(head).items()
        if stat != TOMBSTONE
        and CONFLICT_MARK not in posixpath.basename(path)
        and posixpath.basename(path).startswith(stem)
        and posixpath.basename(path).endswith(ending)
        and len(posixpath.basename(path)) > len(name)
    ]
    return found[0] if len(found) == 1 else original


def _shortened_beyond_telling(replica: Replica, copies: list[Conflict]) -> bool:
    """Copies whose original's name was shortened in theirs and cannot be
    told from the others in their directory (see _unshortened)."""
    for c in copies:
        if maybe_shortened(c.copy.path):
            cached = replica.index.get(c.original)
            if cached is None or cached.entry.deleted:
                return True
    return False


def over_cap(conflicts: list[Conflict], cap: int = CAP) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for c in conflicts:
        counts[c.original] += 1
    return {path: n for path, n in counts.items() if n > cap}


def _write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` (its mode kept) through a temp file,
    which no failure or Ctrl-C leaves behind."""
    head, name = os.path.split(path)
    tmp = os.path.join(head, temp_name(name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Step:
    """One thing resolve did (in a dry run, would do): ``action`` is keep,
    merge, take or remove; ``path`` the conflict copy (or the original,
    kept as it is); ``target`` the name the copy is kept as, merged into
    or taken for (None: kept or removed where it is)."""

    action: str
    path: str
    target: str | None = None
    gone: bool = False  # kept: a deletion (the name holds no file here)

    def text(self, dry_run: bool) -> str:
        """``kept a.conflict-... as a-2``, ``would remove a.conflict-...``."""
        verb = f"would {self.action}" if dry_run else _PAST[self.action]
        where = f" {_LINK[self.action]} {self.target}" if self.target is not None else ""
        what = f"the deletion of {self.path}" if self.gone else self.path
        return f"{verb} {what}{where}"


_PAST = {"keep": "kept", "merge": "merged", "take": "took", "remove": "removed"}
_LINK = {"keep": "as", "merge": "into", "take": "for"}


@dataclass
class Resolved:
    """What resolve did, step by step; the originals it could not settle,
    each with why (the others were settled all the same); the scan that
    recorded it all (on a dry run, the one before: nothing was recorded)."""

    done: list[Step]
    failed: list[tuple[str, MerklesyncError]]
    report: ScanReport


def resolve(
    replica: Replica, originals: list[str], take: Take, *, dry_run: bool = False
) -> Resolved:
    """Settle the conflicts of the given original paths, one after the
    other: one that cannot be settled is left as it was, and the others
    are settled all the same."""
    before = replica.scan()
    by_original: dict[str, list[Conflict]] = defaultdict(list)
    for c in list_conflicts(replica):
        by_original[c.original].append(c)
    done: list[Step] = []
    failed: list[tuple[str, MerklesyncError]] = []
    # A copy's own copies first: settled, it is settled in its turn as any
    # copy of its original.
    settled: list[str] = []
    decided: set[str] = set()  # their names' new version recorded already
    for original in sorted(originals, key=lambda o: -o.count(CONFLICT_MARK)):
        copies = sorted(by_original.get(original, []), key=lambda c: c.copy.stamp)
        try:
            done += _settle(replica, original, copies, take, dry_run, decided)
        except MerklesyncError as exc:
            failed.append((original, exc))
        else:
            settled.append(original)
    if dry_run:
        return Resolved(done, failed, before)
    after = replica.scan()
    # A merge whose result is what the name held: a choice all the same.
    _decided(replica, [o for o in settled if o not in decided], {*after.added, *after.modified})
    return Resolved(done, failed, after)


def _decided(replica: Replica, originals: list[str], changed: set[str]) -> None:
    """A resolution that left the name as it was (its version kept, under
    local, remote or both) is a write all the same: the name gets a new
    version of this replica, as one whose content changed (``changed``:
    the scan gave it one) does. Else a replica that chose otherwise (and
    wrote) would look newer, and its choice would silently undo this one;
    now the two choices meet as a conflict. Its origin stays the writer of
    the content (as in a merged version), which tells its side: a run
    stopped after this, then run again, chooses as the first did."""
    me = replica.replica_id
    for path in originals:
        cached = replica.index.get(path) if path not in changed else None
        if cached is None or cached.entry.deleted:
            continue
        entry = cached.entry
        stamp = min(max(replica.clock.tick(), entry.stamp + 1), MAX_STAMP)
        replica.clock.observe(stamp)
        decided = entry.with_version(entry.vv.bump(me), stamp, entry.origin)
        replica.index.put(decided, cached.stat, entry)


def _decide_first(replica: Replica, original: str, decided: set[str]) -> None:
    """The name keeps what it holds: its new version is recorded before any
    copy goes (a run stopped after that would leave nothing to settle, and
    the choice unmade)."""
    _decided(replica, [original], set())
    replica.index.commit()
    decided.add(original)


def _settle(
    replica: Replica,
    original: str,
    copies: list[Conflict],
    take: Take,
    dry_run: bool,
    decided: set[str],
) -> list[Step]:
    """Settle one original's conflict copies (oldest first); what was done.
    A union is merged whole, from every copy, before anything is written.
    Where the name keeps what it holds, its new version comes first
    (_decide_first, adding it to ``decided``)."""
    if not copies:
        raise UsageError(f"no conflict copies of {original}")
    if _shortened_beyond_telling(replica, copies):
        raise UsageError(
            f"{copies[0].copy.path}: its name was shortened, and which file it is a copy of "
            "cannot be told: rename it or settle it by hand"
        )
    target = replica.root / original
    if take is not Take.BOTH and target.is_dir() and not target.is_symlink():
        raise UsageError(f"{original} is a directory now: move it or its conflict copies by hand")
    done: list[Step] = []
    if take is Take.BOTH:
        if not dry_run:
            _decide_first(replica, original, decided)
        planned: set[str] = set()
        for c in copies:
            new = _keep_as_own_file(replica, original, c, dry_run, planned)
            done.append(Step("keep", c.copy.path, new))
        return done
    if take is Take.UNION:
        merged = _read_file(target) or b""
        for c in copies:
            theirs = _read_file(replica.root / c.copy.path)
            if theirs is None:
                raise UsageError(f"{c.copy.path} is gone: sync or scan first")
            merged = merge.union_merge(original, merged, theirs)
            done.append(Step("merge", c.copy.path, original))
        if not dry_run:
            _write(str(target), merged)
        chosen = None
    else:
        local = take is Take.LOCAL
        chosen = _wanted_copy(replica, original, copies, local)
        if chosen is None:
            done.append(Step("keep", original, gone=not os.path.lexists(target)))
            if not dry_run:
                _decide_first(replica, original, decided)
        else:
            done.append(Step("take", chosen.copy.path, original))
    # In an order a run stopped on the way, then run again, chooses the
    # same by: the older copies of the chosen one's side (the newest copy,
    # which the choice is judged by, stays), the chosen one onto the name,
    # then the other side's (none is from the wanted side then).
    if chosen is not None:
        first = [c for c in copies if c is not chosen and _on_side(replica, c, local)]
        copies = [*first, chosen, *(c for c in copies if c not in first and c is not chosen)]
    for c in copies:
        if c is chosen:
            if not dry_run:
                os.replace(replica.root / c.copy.path, target)
            continue
        done.append(Step("remove", c.copy.path))
        if not dry_run:
            (replica.root / c.copy.path).unlink()
    return done


def _on_side(replica: Replica, c: Conflict, local: bool) -> bool:
    """Whether a copy holds a version of the side asked for (``local``:
    written by this replica; else by another one)."""
    return (c.writer == replica.replica_id) == local


def _wanted_copy(
    replica: Replica, original: str, copies: list[Conflict], local: bool
) -> Conflict | None:
    """The copy holding the newest version written on the wanted side
    (``local``: this replica; else another one), or None when the name
    holds it already, or when no copy is from that side.

    ``copies`` are oldest first: each conflict's copy is stamped after
    both of its versions, and a later conflict is between versions that
    came after the one before. The name's version beat the newest copy,
    or came after it: where it changed since that copy was made (its
    vector no longer the copy's), it was written by the replica that
    changed it; else it is the version the copy lost to, from the other
    side of that conflict. Either way it is newer than every copy. Its
    writer is recorded with it (its origin), save in an index from before
    origins were: then the vectors tell."""
    me = replica.replica_id
    wanted = [c for c in copies if _on_side(replica, c, local)]
    if not wanted:
        return None
    newest = copies[-1].copy
    cached = replica.index.get(original)
    name = cached.entry if cached is not None else None
    if name is None or name.deleted or name.kind is EntryKind.DIR:
        return wanted[-1]
    order = name.vv.compare(newest.vv)
    if name.origin and (name.origin == me or any(c.writer == me for c in copies)):
        name_is_wanted = (name.origin == me) == local
    elif order is Order.EQUAL:
        name_is_wanted = (copies[-1].writer == me) != local
    elif order is Order.AFTER:
        name_is_wanted = (writer_of(name, newest) == me) == local
    else:  # not after the copy: it cannot tell
        name_is_wanted = False
    return None if name_is_wanted else wanted[-1]


def _read_file(path: Path) -> bytes | None:
    """A version's bytes: a regular file, read without following a link
    (whatever the link points at is not the version) nor waiting on a FIFO,
    and no larger than a sync merges; None when nothing is there."""
    try:
        return read_file(path, limit=merge.MAX_MERGE_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise UsageError(f"{path}: not a file to merge ({why})") from None


def _keep_as_own_file(
    replica: Replica, original: str, c: Conflict, dry_run: bool, planned: set[str]
) -> str:
    """Rename a conflict copy to NAME.<writer>.EXT (-2, -3... when taken),
    never over an existing file. ``planned``: the names a dry run has
    given already (it makes none); the name given is added."""
    stem, ext = posixpath.splitext(original)
    copy = replica.root / c.copy.path
    for n in range(1, 1000):
        new = f"{stem}.{c.writer}{'' if n == 1 else f'-{n}'}{ext}"
        if dry_run:
            if new not in planned and not (replica.root / new).exists():
                planned.add(new)
                return new
            continue
        try:
            os.link(copy, replica.root / new)  # fails if it exists
        except FileExistsError:
            if not _same_file(copy, replica.root / new):
                continue
            # Linked by a run stopped before it removed the copy: done but that.
        os.unlink(copy)
        return new
    raise UsageError(f"no free name to keep {c.copy.path}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
