"""Small value types shared by every layer."""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

import blake3
import msgpack

from merklesync.clock import (
    FOUND_HASH_BYTES,
    FOUND_PREFIX,
    MAX_STAMP,
    VersionVector,
    descends_from_found,
    is_replica,
)

KEY_BYTES = 8  # leaves are bucketed by the first bytes of blake3(path)
LEAF_BYTES = 32
DIGEST_BYTES = 32
_MAX_INT64 = (1 << 63) - 1  # what the index (SQLite) and the file system take
_MIN_INT64 = -(1 << 63)


def int64(n: int) -> int:
    """``n`` held to what the index, the wire and the file system take: a
    file's time can lie beyond (ns after 2262, or before 1677, on a file
    system with 64-bit seconds), and is carried as the nearest one."""
    return n if _MIN_INT64 <= n <= _MAX_INT64 else max(_MIN_INT64, min(n, _MAX_INT64))


# The mode bits a replica syncs: the permission bits and the sticky bit.
# Setuid and setgid are each machine's own, as in Unison and Syncthing: a
# scan leaves them out, a peer's entry never sets them (one that carries them
# is written without), and a directory or file whose mode is changed in place
# keeps its own. So a replica a peer writes into never gets a setuid program
# from it, and pulling as root from a replica you do not control cannot
# plant one.
SYNCED_MODE = 0o1777
LOCAL_MODE = 0o6000


def synced_mode(mode: int) -> int:
    """The part of a mode (``st_mode``, or an entry's) that a replica syncs."""
    return mode & SYNCED_MODE


class EntryKind(enum.IntEnum):
    FILE = 0
    DIR = 1
    LINK = 2


_KINDS = {int(kind): kind for kind in EntryKind}


def key_of(path: str) -> bytes:
    """The bucketing key of a path: independent of the folder layout."""
    return blake3.blake3(path.encode()).digest(KEY_BYTES)


@dataclass(frozen=True, slots=True)
class Entry:
    """One leaf: a file, directory or symlink (or a record of a dataset),
    live or deleted (a tombstone), with the version vector of its state."""

    path: str
    kind: EntryKind
    vv: VersionVector
    digest: bytes = b""  # blake3 of the content; of the target for a link
    size: int = 0
    mode: int = 0  # the synced bits (SYNCED_MODE); an older index may hold others
    mtime_ns: int = 0
    target: str = ""  # symlink target
    deleted: bool = False
    stamp: int = 0  # hybrid logical clock of the write that made this version
    # The replica whose write made this content (or deletion), kept as the
    # version travels, is copied or wins a conflict: the vector alone does
    # not say, once a resolution has merged two (its writer is in the vector
    # too). "" where not known (an entry from an index made before it was
    # recorded): then writer_of guesses from the vectors.
    origin: str = ""
    # leaf_hash, once asked for: an entry is compared, checked against and
    # stored several times in a run. Not a field of its own anywhere else
    # (dataclasses.replace makes a new entry without it).
    _leaf: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> bytes:
        return key_of(self.path)

    def content(self) -> tuple[object, ...]:
        """What two replicas must agree on for the entry to be the same."""
        if self.deleted:
            return (True,)
        return (False, int(self.kind), self.mode, self.digest, self.target)

    def same_content(self, other: Entry | None) -> bool:
        if other is None:
            return self.deleted
        return self.content() == other.content()

    def leaf_hash(self) -> bytes:
        """The hash this entry contributes to the Merkle tree: content and
        version, not mtime or size (those follow from the content)."""
        leaf = self._leaf
        if leaf is None:
            leaf = self.computed_leaf()
            object.__setattr__(self, "_leaf", leaf)
        return leaf

    def computed_leaf(self) -> bytes:
        """leaf_hash, from the fields themselves (never one stored with them)."""
        data = msgpack.packb([self.path, list(self.content()), self.vv.to_wire()])
        return blake3.blake3(data).digest(LEAF_BYTES)

    def tombstone(self, vv: VersionVector, stamp: int, origin: str = "") -> Entry:
        return Entry(self.path, self.kind, vv, deleted=True, stamp=stamp, origin=origin)

    def with_version(
        self, vv: VersionVector, stamp: int | None = None, origin: str | None = None
    ) -> Entry:
        """The same entry at another version (made directly: dataclasses.replace
        costs several times as much, and a run may do this for every entry);
        of the same writer unless ``origin`` says."""
        return Entry(
            self.path,
            self.kind,
            vv,
            self.digest,
            self.size,
            self.mode,
            self.mtime_ns,
            self.target,
            self.deleted,
            self.stamp if stamp is None else stamp,
            self.origin if origin is None else origin,
        )

    def to_wire(self) -> list[object]:
        return [
            self.path,
            int(self.kind),
            self.vv.to_wire(),
            self.digest,
            self.size,
            self.mode,
            self.mtime_ns,
            self.target,
            self.deleted,
            self.stamp,
            self.origin,
        ]

    @classmethod
    def from_wire(cls, value: object) -> Entry:
        """Parse an entry from the peer; raises ValueError when malformed.
        Its origin, when given, is a replica of its vector (an entry of ten
        fields, as written before origins were, has none)."""
        if not isinstance(value, list | tuple) or len(value) not in (10, 11):
            raise ValueError("malformed entry")
        path, kind, vv, digest, size, mode, mtime_ns, target, deleted, stamp = value[:10]
        origin = value[10] if len(value) == 11 else ""
        if not isinstance(path, str) or not isinstance(target, str):
            raise ValueError("malformed entry path")
        if not isinstance(digest, bytes) or len(digest) not in (0, DIGEST_BYTES):
            raise ValueError("malformed entry digest")
        int_ = int  # exactly: not a bool
        if not (
            type(kind) is int_
            and type(size) is int_
            and type(mode) is int_
            and type(mtime_ns) is int_
            and type(stamp) is int_
        ):
            raise ValueError("malformed entry field")
        if not isinstance(deleted, bool) or not 0 <= mode <= 0o7777:
            raise ValueError("malformed entry field")
        if not (0 <= size <= _MAX_INT64 and _MIN_INT64 <= mtime_ns <= _MAX_INT64):
            raise ValueError("entry size or modification time out of range")
        if not 0 <= stamp <= MAX_STAMP:
            raise ValueError("entry stamp out of range")
        known = _KINDS.get(kind)
        version = VersionVector.from_wire(vv)
        if not isinstance(origin, str) or (origin and not _may_have_made(origin, version)):
            raise ValueError("entry origin: not a replica of its version vector")
        return cls(
            path=path,
            kind=known if known is not None else EntryKind(kind),  # ValueError: not a kind
            vv=version,
            digest=digest,
            size=size,
            mode=mode,
            mtime_ns=mtime_ns,
            target=target,
            deleted=deleted,
            stamp=stamp,
            origin=origin,
        )


def _may_have_made(origin: str, vv: VersionVector) -> bool:
    """Whether ``origin`` can be the replica that made a version ``vv``: one
    of its writers, or, for a found version, any replica (where it was found)."""
    if not is_replica(origin):
        return False
    return bool(vv.get(origin)) or descends_from_found(vv)


_FOUND_HEAD = struct.Struct(">BH")  # kind, mode


def found_version(entry: Entry) -> VersionVector:
    """The version of content as the first scan of a replica made as a copy
    (init --as-copy, see index.FIRST_SCAN) found it: named
    after the content itself (kind, mode, and digest or link target), so
    that replicas made apart (copied with rsync -a or cp -a), each made so,
    hold the same version of everything they hold alike, and agree
    from their first run without a word on it. Other content found there
    is another version, concurrent with this one; a later write there
    descends from it (its replica's counter added). Never a deletion's."""
    content = _FOUND_HEAD.pack(entry.kind, entry.mode) + entry.digest  # 0 or 32 bytes
    content += entry.target.encode("utf-8", "surrogateescape")  # the rest
    name = FOUND_PREFIX + blake3.blake3(content).hexdigest(length=FOUND_HASH_BYTES)
    return VersionVector(((name, 1),))


def is_dir_path(*entries: Entry | None) -> bool:
    """Whether a path is a directory to a rule that matches directories
    only (``build/``): it is one on either side, live or deleted (a
    tombstone keeps the kind of what it deletes)."""
    return any(entry is not None and entry.kind is EntryKind.DIR for entry in entries)


class ChangeKind(enum.Enum):
    """How the destination differs from the source, as ``diff`` prints it."""

    ADDED = "A"  # only in the source
    DELETED = "D"  # only in the destination (or deleted in the source)
    MODIFIED = "M"
    TYPE = "T"  # a file became a directory or a link, or the reverse
    NONE = "="  # same content; only the versions differ


class Action(enum.Enum):
    """What a one-way transfer does with a difference."""

    COPY = "copy"  # write the source's version (file, dir, link or tombstone)
    MERGE_VERSION = "merge-version"  # same content, concurrent vectors
    DEST_NEWER = "dest-newer"  # the destination has a newer version: leave it
    CONFLICT = "conflict"  # concurrent versions with different content
    FORCE = "force"  # --force: overwrite a newer or concurrent version


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    kind: ChangeKind
    src: Entry | None
    dst: Entry | None
    action: Action


def classify(src: Entry | None, dst: Entry | None) -> ChangeKind:
    src_live = src is not None and not src.deleted
    dst_live = dst is not None and not dst.deleted
    if src_live and not dst_live:
        return ChangeKind.ADDED
    if dst_live and not src_live:
        return ChangeKind.DELETED
    if not src_live:
        return ChangeKind.NONE
    assert src is not None and dst is not None
    if src.kind != dst.kind:
        return ChangeKind.TYPE
    if src.content() != dst.content():
        return ChangeKind.MODIFIED
    return ChangeKind.NONE


@dataclass(slots=True)
class Stats:
    """Counters a command can print with ``--stats``."""

    round_trips: int = 0
    nodes_compared: int = 0
    entries_compared: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    files_transferred: int = 0
    bytes_transferred: int = 0
    files_copied: int = 0  # made from a file the destination had (a move), not sent
    files_scanned: int = 0
    files_hashed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


Progress = Callable[[int], None]  # called with an amount of work just done


# How the warning begins that counts the paths a remote replica's scan
# found and its answer did not list (protocol.messages.RefreshResult.of).
NOT_LISTED = "not listed here"


@dataclass(slots=True)
class ScanReport:
    """What a scan of a replica found."""

    scanned: int = 0
    hashed: int = 0
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # skipped, unreadable...
    # False: the paths changed are not kept (init, whose first scan would
    # hold every path of the tree to print none of them).
    listing: bool = field(default=True, compare=False)

    def changed(self, path: str, was: Entry | None) -> None:
        """Note ``path`` as added (``was`` None or deleted) or modified."""
        if self.listing:
            (self.added if was is None or was.deleted else self.modified).append(path)

    def gone(self, path: str) -> None:
        if self.listing:
            self.deleted.append(path)

    def to_wire(self) -> list[object]:
        return [self.scanned, self.hashed, self.added, self.modified, self.deleted, self.warnings]

    @property
    def skipped(self) -> list[str]:
        """The warnings of files skipped or unreadable: all but the one that
        counts the paths a remote replica's answer left out (NOT_LISTED)."""
        return [w for w in self.warnings if not w.startswith(NOT_LISTED)]


@dataclass(frozen=True, slots=True)
class WriteItem:
    """Make ``entry`` the destination's version of ``entry.path``, provided
    the destination still holds the entry whose leaf hash is ``expect``
    (None: nothing; compare-and-swap). ``data`` is the file content for a
    file, None otherwise. ``copy_of``: a file of the destination itself
    that holds the content (a file moved or renamed there: the same digest
    at its old path), copied there instead of sent (Peer.copies_locally);
    checked against the digest as any content."""

    entry: Entry
    expect: bytes | None
    data: Iterable[bytes] | None = None
    copy_of: str | None = None


def leaf_of(entry: Entry | None) -> bytes | None:
    """What a write expects to replace: the entry's leaf hash, or None."""
    return None if entry is None else entry.leaf_hash()


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file that could not be read to be sent, and why."""

    reason: str


GONE = Unreadable("changed or gone on the source since the scan")


# The reason of a write refused because the writing replica's ignore rules
# leave the path out: by design, not a failure (the protocol carries it as
# it is: see merklesync-protocol(7)).
IGNORED_HERE = "ignored on this replica"
# A directory a write would remove (or replace) that holds what the run leaves.
NOT_EMPTY = "directory is not empty on the destination"


@dataclass(frozen=True, slots=True)
class Outcome:
    path: str
    ok: bool
    reason: str = ""

    @property
    def ignored(self) -> bool:
        """Not written because the replica written to ignores the path."""
        return not self.ok and self.reason == IGNORED_HERE
