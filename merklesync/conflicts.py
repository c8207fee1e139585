"""Conflict copies left by keep-both: listing them, and settling them in bulk.

A conflict copy is an ordinary entry named ``NAME.conflict-<replica>-<time>.EXT``,
so the list travels with the data and every replica sees the same one.
Resolving edits the files, then rescans: the result is a new local write
that reaches the other replicas on the next sync.
"""

from __future__ import annotations

import enum
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass

from merklesync import merge
from merklesync.errors import UsageError
from merklesync.model import Entry, EntryKind
from merklesync.peer import ScanReport
from merklesync.policy import CONFLICT_MARK, original_of
from merklesync.replica import Replica
from merklesync.sources.directory import write_all

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
    writer: str  # the replica that wrote the copy's version


def list_conflicts(replica: Replica) -> list[Conflict]:
    found: list[Conflict] = []
    for entry in replica.index.iter_entries(live_only=True):
        if entry.kind is EntryKind.DIR or CONFLICT_MARK not in entry.path:
            continue
        parsed = original_of(entry.path)
        if parsed is not None:
            found.append(Conflict(parsed[0], entry, parsed[1]))
    return found


def over_cap(conflicts: list[Conflict], cap: int = CAP) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for c in conflicts:
        counts[c.original] += 1
    return {path: n for path, n in counts.items() if n > cap}


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.merklesync-resolve"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    if os.path.exists(path):
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def resolve(
    replica: Replica, originals: list[str], take: Take, *, dry_run: bool = False
) -> tuple[list[str], ScanReport | None]:
    """Settle the conflicts of the given original paths; returns what was
    done, one line each, and the scan that recorded it."""
    replica.scan()
    by_original: dict[str, list[Conflict]] = defaultdict(list)
    for c in list_conflicts(replica):
        by_original[c.original].append(c)
    done: list[str] = []
    for original in originals:
        copies = sorted(by_original.get(original, []), key=lambda c: c.copy.stamp)
        if not copies:
            raise UsageError(f"no conflict copies of {original}")
        target = str(replica.root / original)
        for c in copies:
            copy_path = str(replica.root / c.copy.path)
            mine = c.writer == replica.replica_id
            if take is Take.BOTH:
                stem, ext = posixpath.splitext(original)
                new = f"{stem}.{c.writer}{ext}"
                done.append(f"kept {c.copy.path} as {new}")
                if not dry_run:
                    os.replace(copy_path, str(replica.root / new))
                continue
            if take is Take.UNION:
                done.append(f"merged {c.copy.path} into {original}")
                if not dry_run:
                    with open(target, "rb") as f:
                        ours = f.read()
                    with open(copy_path, "rb") as f:
                        theirs = f.read()
                    _write(target, merge.union_merge(original, ours, theirs))
            elif (take is Take.LOCAL) == mine:
                done.append(f"took {c.copy.path} for {original}")
                if not dry_run:
                    os.replace(copy_path, target)
                continue
            else:
                done.append(f"kept {original}, removed {c.copy.path}")
            if not dry_run:
                os.unlink(copy_path)
    report = None if dry_run else replica.scan()
    return done, report
