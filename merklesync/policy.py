"""What to do when two replicas changed the same entry concurrently.

Every rule here is deterministic: two replicas that resolve the same
conflict reach the same result without talking again.
"""

from __future__ import annotations

import enum
import posixpath
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merklesync.clock import is_found, is_replica
from merklesync.errors import UsageError
from merklesync.ignore import compile_patterns, read_rules
from merklesync.model import Entry, EntryKind

ATTRIBUTES_FILE = ".merklesyncattributes"
CONFLICT_MARK = ".conflict-"


class Policy(enum.Enum):
    KEEP_BOTH = "keep-both"
    LWW = "lww"
    LOCAL = "local"  # the first replica named (A in `sync A B`)
    REMOTE = "remote"  # the second one
    UNION = "union"
    MERGE_CMD = "merge-cmd"


Patterns = Sequence[tuple[Any, Policy]]  # parse_attributes


@dataclass
class Rules:
    """The policy for each path: per-pattern rules from the replicas'
    ``.merklesyncattributes`` (``PATTERN conflict=POLICY``, last match wins,
    as .gitattributes), one set per distinct file; where the sets say
    different things of a path (a file changed on one replica and not yet
    synced), or none matches, the default. So the replicas of a run settle
    a conflict alike whichever is named first. ``more``: sets read only
    when a first conflict asks (a remote replica's: a run with no conflict
    pays no round trip for them)."""

    default: Policy = Policy.KEEP_BOTH
    merge_cmd: str | None = None
    sets: Sequence[Patterns] = field(default_factory=tuple)
    more: Callable[[], Sequence[Patterns]] | None = None

    def for_path(self, path: str) -> Policy:
        if self.more is not None:
            more, self.more = self.more, None
            self.sets = [*self.sets, *more()]
        said = {_last_match(patterns, path) for patterns in self.sets}
        chosen = said.pop() if len(said) == 1 else None
        return self.default if chosen is None else chosen


def _last_match(patterns: Patterns, path: str) -> Policy | None:
    chosen = None
    for spec, policy in patterns:
        if spec.match_file(path):
            chosen = policy
    return chosen


def parse_attributes(text: str, source: str = ATTRIBUTES_FILE) -> list[tuple[Any, Policy]]:
    rules: list[tuple[Any, Policy]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, *attrs = line.split()
        for attr in attrs:
            if attr.startswith("conflict="):
                try:
                    policy = Policy(attr.partition("=")[2])
                except ValueError:
                    raise UsageError(f"{source}:{number}: unknown conflict policy {attr}") from None
                rules.append((compile_patterns([pattern]), policy))
    return rules


def attributes_of(root: Path) -> str:
    """The text of a replica's .merklesyncattributes ("" when it has none)."""
    try:
        # A BOM is no part of the first rule (as in ignore files).
        return read_rules(root / ATTRIBUTES_FILE).decode("utf-8-sig", errors="replace")
    except OSError:
        return ""


def writer_of(entry: Entry, other: Entry) -> str:
    """The replica whose write made ``entry``: its origin; where that is not
    known (an index from before origins were recorded), the smallest id
    whose counter in entry is ahead of ``other``'s (a found content's
    name is no writer's: see model.found_version)."""
    if entry.origin:
        return entry.origin
    writers = [r for r, _ in entry.vv.pairs if is_replica(r)]
    ahead = [r for r in writers if entry.vv.get(r) > other.vv.get(r)]
    return min(ahead or writers) if ahead or writers else "-"


def made_by(entry: Entry, other: Entry) -> str:
    """Whose the version ``entry`` is, as a message says it: "written by R",
    or "found by R" for a found version (see model.found_version)."""
    return f"{'found' if is_found(entry.vv) else 'written'} by {writer_of(entry, other)}"


def newer(x: Entry, y: Entry) -> Entry:
    """Last write wins: the later hybrid-clock stamp, then the writer id,
    then the content, so every replica picks the same one. A found version
    has no writer: each replica that found it names itself its origin."""
    kx = (x.stamp, "" if is_found(x.vv) else writer_of(x, y), x.leaf_hash())
    ky = (y.stamp, "" if is_found(y.vv) else writer_of(y, x), y.leaf_hash())
    return x if kx > ky else y


def chosen(policy: Policy, x: Entry, y: Entry) -> Entry:
    """The version a policy that keeps one side keeps: x under local, y
    under remote, else the later write (lww)."""
    if policy is Policy.LOCAL:
        return x
    if policy is Policy.REMOTE:
        return y
    return newer(x, y)


def merged_version(held: Entry, other: Entry) -> Entry:
    """``held`` and ``other`` hold the same content under concurrent
    versions: ``held`` at one version that dominates both (their vectors
    merged, the later stamp), the writer of the later write's, so that
    either side computing it gets the same."""
    vv = held.vv.merge(other.vv)
    return held.with_version(vv, max(held.stamp, other.stamp), newer(held, other).origin)


def keeps_name(x: Entry, y: Entry) -> Entry:
    """Which of two conflicting versions keeps the path under keep-both: a
    directory (it holds other entries), else the newer one."""
    if (x.kind is EntryKind.DIR) != (y.kind is EntryKind.DIR):
        return x if x.kind is EntryKind.DIR else y
    if x.deleted != y.deleted:
        return y if x.deleted else x
    return newer(x, y)


NAME_MAX = 255  # bytes in one path component
_NOT_IN_ID = re.compile(r"[^0-9A-Za-z_]")


def id_in_name(replica_id: str) -> str:
    """A replica id as a conflict copy's name holds it. An id is hex here;
    one from a peer may hold anything up to 64 printable characters: never
    a "/" that would make a directory, nor a "-" or "." that original_of
    would read the name apart at."""
    return _NOT_IN_ID.sub("_", replica_id)


def time_in_name(stamp: int) -> str:
    """A version's time as a conflict copy's name holds it (UTC, to the second)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(stamp / 1e9))


def conflict_name(path: str, writer: str, stamp: int, n: int = 1) -> str:
    """``dir/name.conflict-<replica>-<YYYYMMDDTHHMMSS>.ext``; ``-<n>`` follows
    the time when that name is taken already."""
    head, name = posixpath.split(path)
    stem, dot, ext = split_name(name)
    writer = id_in_name(writer)
    when = time_in_name(stamp)
    if n > 1:
        when += f"-{n}"
    suffix = f"{CONFLICT_MARK}{writer}-{when}"
    room = NAME_MAX - len(f"{suffix}{dot}{ext}".encode())
    if room < 1:  # a very long extension: the whole name is the stem
        stem, dot, ext = name, "", ""
        room = NAME_MAX - len(suffix.encode())
    # A long name is shortened (on a character boundary) to keep the copy's
    # name within what file systems allow.
    stem = stem.encode()[:room].decode(errors="ignore")
    new = f"{stem}{suffix}{dot}{ext}"
    return posixpath.join(head, new) if head else new


def split_name(name: str) -> tuple[str, str, str]:
    """A file name as its conflict copies are named from it: (stem, ".",
    extension), or (name, "", "") without an extension (a dotfile has none)."""
    stem, dot, ext = name.rpartition(".")
    return (stem, dot, ext) if stem else (name, "", "")


def maybe_shortened(copy: str) -> bool:
    """Whether the name of conflict copy ``copy`` may hold its original's
    shortened (conflict_name cuts the stem, on a character boundary, to a
    name of NAME_MAX bytes, or up to 3 less)."""
    return len(posixpath.basename(copy).encode()) >= NAME_MAX - 3


def original_of(path: str) -> tuple[str, str, str] | None:
    """For a conflict copy: (the original path, the writer, when the
    version was written: YYYYMMDDTHHMMSS, UTC); else None. The last mark
    counts: a copy of a copy (``f.conflict-X-T1.conflict-Y-T2.txt``) is
    one of ``f.conflict-X-T1.txt``."""
    head, name = posixpath.split(path)
    stem, mark, rest = name.rpartition(CONFLICT_MARK)
    writer, dash, tail = rest.partition("-")
    when, dot, ext = tail.partition(".")
    moment, _, n = when.partition("-")
    if not (mark and stem and writer and dash) or len(moment) != 15 or moment[8] != "T":
        return None
    if n and not n.isdigit():
        return None
    original = f"{stem}.{ext}" if dot else stem
    return (posixpath.join(head, original) if head else original), writer, moment
