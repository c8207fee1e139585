"""The replica index: SQLite in ``.merklesync/index.db``.

It holds one row per entry (live or tombstone) with its version vector and
stat cache, the node sums of the bucketed Merkle tree (levels 0..depth), and
a few facts about the replica (id, format, hybrid clock). Queries stream;
nothing loads the whole tree into memory.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import msgpack

from merklesync import merkle
from merklesync.clock import FOUND_HASH_BYTES, FOUND_PREFIX, MAX_STAMP, VersionVector, is_replica
from merklesync.errors import ChangeCut, CorruptIndex, LocalIOError, NewerFormat, ReplicaLocked
from merklesync.merkle import MAX_DEPTH, NodeId
from merklesync.model import LEAF_BYTES, Entry, EntryKind, key_of

# 2: entries record their origin (the replica whose write made the version).
# 3: versions found by the first scan of a replica made as a copy
# (model.found_version), which an earlier release would misread. An older
# index is brought up to date when opened (it holds no found version).
FORMAT = 3
PREFETCH_CHUNK = 8 << 20
_P = ParamSpec("_P")
_R = TypeVar("_R")

# Entries dropped from the index as they became ignored (each as Entry.to_wire).
_FORGOTTEN_TABLE = (
    "CREATE TABLE IF NOT EXISTS forgotten "
    "(path TEXT PRIMARY KEY, entry BLOB NOT NULL) WITHOUT ROWID"
)
# Runs that ended having left paths out, per other replica (see retention).
_CONTACTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS contacts "
    "(replica_id TEXT PRIMARY KEY, last_ns INTEGER NOT NULL) WITHOUT ROWID"
)
_DIR_INDEX = "CREATE INDEX IF NOT EXISTS entries_dir ON entries (parent, path, deleted, stat)"
# An index being filled from empty (a first copy, a first scan) makes
# entries_dir after its rows, in one sorted pass, not row by row: its rows
# come in no order of it (a copy writes in key order), and keeping it up to
# date was a third of each insert. It is dropped once this many rows are in.
_DIR_INDEX_LATER = 1024
_DIR_INDEX_FOUND = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'entries_dir'"
_OLD_PARENT_INDEX = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'entries_parent'"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    key BLOB NOT NULL,
    leaf BLOB NOT NULL,
    kind INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    vv BLOB NOT NULL,
    digest BLOB NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    target TEXT NOT NULL,
    stamp INTEGER NOT NULL,
    stat BLOB,
    learned_ns INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS entries_key ON entries (key);
{_DIR_INDEX};
{_FORGOTTEN_TABLE};
CREATE TABLE IF NOT EXISTS peers (
    replica_id TEXT PRIMARY KEY,
    last_sync_ns INTEGER NOT NULL
) WITHOUT ROWID;
{_CONTACTS_TABLE};
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    prefix INTEGER NOT NULL,
    total BLOB NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (level, prefix)
) WITHOUT ROWID;
"""

# Each directory's listing sum and what its scan kept (see DirectorySource):
# valid only while no row of that directory changes. Index drops a
# directory's sum when it first writes one of its rows in a transaction
# (every write to entries goes through Index). Earlier layouts did this with
# triggers, which made every insert cost twice as much: they are dropped,
# with the first layout's table.
_EARLIER_TRIGGERS = tuple(
    f"{table}_{event}"
    for table in ("dirsums", "listings")
    for event in ("insert", "update", "delete")
)
_LISTINGS = (
    *(f"DROP TRIGGER IF EXISTS {name}" for name in _EARLIER_TRIGGERS),
    "DROP TABLE IF EXISTS dirsums",
    "CREATE TABLE IF NOT EXISTS listings "
    "(parent TEXT PRIMARY KEY, sum BLOB NOT NULL, kept BLOB NOT NULL) WITHOUT ROWID",
)
# What of the above is there: the layout is in place when that is "listings" alone.
_LISTINGS_FOUND = "SELECT name FROM sqlite_master WHERE name IN ({})".format(
    ", ".join(f"'{name}'" for name in ("listings", "dirsums", *_EARLIER_TRIGGERS))
)

# The stored leaf hash too: what put computed from the same row (the tree is
# made of these), so an entry read here needs not compute it again.
_ENTRY_COLUMNS = (
    "path, kind, deleted, vv, digest, size, mode, mtime_ns, target, stamp, origin, leaf"
)


def _prefetch(path: Path) -> None:
    """Have the kernel read the index and its WAL into the page cache, in
    the background, while the scan and the connection to the other replica
    go on. A comparison reads rows by key hash, scattered all over the file:
    with the file out of the cache (a run from cron) that is a disk read per
    row, where one sequential read of the whole file costs less (git, too,
    reads its whole index every time). A cached file costs next to nothing."""
    advise = getattr(os, "posix_fadvise", None)  # not on macOS
    if advise is None:
        return
    for name in (path, path.with_name(path.name + "-wal")):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            for offset in range(0, size, PREFETCH_CHUNK):  # one call reads ahead 8 MB at most
                advise(fd, offset, PREFETCH_CHUNK, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only a hint
        finally:
            os.close(fd)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def _guard(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn SQLite failures into the errors a user can act on."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise ReplicaLocked(f"the replica index is busy: {text}; try again") from exc
            if any(w in text for w in ("full", "disk I/O", "readonly", "unable to open")):
                raise LocalIOError(f"cannot use the replica index: {text}") from exc
            raise CorruptIndex(_corrupt_message(_where(args), text)) from exc
        except sqlite3.DatabaseError as exc:
            raise CorruptIndex(_corrupt_message(_where(args), str(exc))) from exc
        except (ValueError, msgpack.UnpackException) as exc:  # a row that does not parse
            why = str(exc) or type(exc).__name__
            raise CorruptIndex(_corrupt_message(_where(args), f"bad row: {why}")) from exc

    return wrapper


def _where(args: tuple[object, ...]) -> object:
    """The index a guarded call works on: the instance, or for the class
    methods that open one, its path."""
    if len(args) > 1 and isinstance(args[1], Path):
        return args[1]
    return args[0] if args else None


def _corrupt_message(where: object, detail: str) -> str:
    """``where``: the index, or its path (for the class methods that open one)."""
    path = where if isinstance(where, Path) else getattr(where, "path", None)
    name = f"the replica index {path}" if path is not None else "the replica index"
    return (
        f"{name} is unreadable ({detail}); "
        "rebuild it from the files with `merklesync init --rebuild`"
    )


@dataclass(frozen=True, slots=True)
class Cached:
    """What the index remembers of one path, for the scanner."""

    entry: Entry
    stat: bytes | None  # None: never scanned here, or racy


def _to_entry(row: Sequence[Any]) -> Entry:
    path, kind, deleted, vv, digest, size, mode, mtime_ns, target, stamp, origin, leaf = row
    known = _KIND_OF.get(kind)
    entry = Entry(
        path=path,
        kind=known if known is not None else EntryKind(kind),  # ValueError: not a kind
        vv=_vv(vv),
        digest=digest,
        size=size,
        mode=mode,
        mtime_ns=mtime_ns,
        target=target,
        deleted=bool(deleted),
        stamp=stamp if stamp <= MAX_STAMP else MAX_STAMP,  # an earlier release's
        origin=origin,
    )
    if type(leaf) is bytes and len(leaf) == LEAF_BYTES:
        object.__setattr__(entry, "_leaf", leaf)
    return entry


_KIND_OF = {int(kind): kind for kind in EntryKind}
_VVS: dict[bytes, VersionVector] = {}  # packed -> parsed: most rows share a few vectors
_MAX_VVS = 4096


class PathFilter:
    """The paths stored since the index was empty, as a Bloom filter of a
    fixed size (512 KiB, two bits a path): a path not in it is certainly
    not stored; one in it may be (then SQLite is asked). Memory does not
    grow with the paths, as a set of them would (about 120 bytes a path):
    the lookups a first copy of millions of files saves stay saved,
    fewer of them as the filter fills."""

    BITS = 1 << 22
    MASK = BITS - 1

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def add(self, path: str) -> None:
        h = hash(path)
        one, two = h & self.MASK, (h >> 22) & self.MASK
        bits = self._bits
        bits[one >> 3] |= 1 << (one & 7)
        bits[two >> 3] |= 1 << (two & 7)

    def __contains__(self, path: str) -> bool:
        # Spelled out (no loop): a first copy asks once for every file.
        h = hash(path)
        one, two = h & self.MASK, (h >> 22) & self.MASK
        bits = self._bits
        return bool(bits[one >> 3] & (1 << (one & 7)) and bits[two >> 3] & (1 << (two & 7)))


_MANY_PATHS = 500  # paths per query of get_many (SQLite allows 32,766 parameters)
_PACKED: dict[VersionVector, bytes] = {}  # the other way: a run writes a few vectors often
_INSERT = "INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_UPDATE = (
    "UPDATE entries SET leaf = ?, kind = ?, deleted = ?, vv = ?, digest = ?, size = ?, "
    "mode = ?, mtime_ns = ?, target = ?, stamp = ?, stat = ?, learned_ns = ?, origin = ? "
    "WHERE path = ?"
)
# The same, for a row whose stat and deleted flag stay as they are (a new
# version of the same file, above all): no index of the table is touched.
_UPDATE_IN_PLACE = (
    "UPDATE entries SET leaf = ?, kind = ?, vv = ?, digest = ?, size = ?, mode = ?, "
    "mtime_ns = ?, target = ?, stamp = ?, learned_ns = ?, origin = ? "
    "WHERE path = ? AND deleted = ? AND stat IS ?"
)


# A found version packed (model.found_version): its vector holds one pair,
# a name of a fixed length, beginning with FOUND_PREFIX, counting 1. Each
# content has its own: packed and unpacked here directly, never cached.
_FOUND_ONLY = msgpack.packb(VersionVector(((FOUND_PREFIX + "00" * FOUND_HASH_BYTES, 1),)).to_wire())
_FOUND_ONLY_HEAD = _FOUND_ONLY[: _FOUND_ONLY.index(FOUND_PREFIX.encode()) + 1]
_FOUND_NAME = slice(len(_FOUND_ONLY_HEAD) - 1, -1)  # in the packed bytes
_FOUND_TAIL = _FOUND_ONLY[-1:]  # the counter, 1


def _packed(vv: VersionVector) -> bytes:
    pairs = vv.pairs
    if len(pairs) == 1 and pairs[0][1] == 1 and not is_replica(pairs[0][0]):
        found = _FOUND_ONLY_HEAD[:-1] + pairs[0][0].encode() + _FOUND_TAIL
        if len(found) == len(_FOUND_ONLY):
            return found
    cached = _PACKED.get(vv)
    if cached is None:
        if len(_PACKED) >= _MAX_VVS:
            _PACKED.clear()
        cached = _PACKED[vv] = msgpack.packb(vv.to_wire())
    return cached


def _vv(packed: bytes) -> VersionVector:
    if len(packed) == len(_FOUND_ONLY) and packed.startswith(_FOUND_ONLY_HEAD):
        name = packed[_FOUND_NAME]
        if name.isascii() and packed.endswith(_FOUND_TAIL):
            return VersionVector(((name.decode(), 1),))
    vv = _VVS.get(packed)
    if vv is None:
        if len(_VVS) >= _MAX_VVS:
            _VVS.clear()
        vv = _VVS[packed] = VersionVector.from_wire(msgpack.unpackb(packed))
    return vv


# Index meta, from a new replica's making as a copy (init --as-copy) until
# a scan of it ends: what its scans find takes the version of its content
# (model.found_version).
FIRST_SCAN = "first_scan"

TOMBSTONE = b"\x00"  # stat_cache's mark of a deleted entry (never a packed stat)


class Index:
    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self._pending = merkle.Accumulator(self.depth)
        self._dirty = False
        # A change cut in two (a row written, the tree not yet told of it;
        # the tree half brought up to date by a commit): an interruption or
        # a failure landed in it. Such a transaction is never committed.
        self._torn = False
        # When the table held no entry as get() first looked (a replica being
        # filled, by a first copy say): the paths stored since, so that get()
        # answers for most others without a query. None: ask SQLite.
        self._stored_since_empty: PathFilter | None = None
        self._looked = False
        # Since then: the directories of the rows stored, and how many rows
        # (see _DIR_INDEX_LATER); whether entries_dir is dropped for now.
        self._parents_since_empty: set[str] = set()
        self._count_since_empty = 0
        self._dir_index_later = False
        self._any_forgotten: bool | None = None  # None: not looked yet (see forgotten)
        # When tombstones stored now were learned (None: now). A scan sets
        # it to when it started, the moment of the state it records.
        self.learned_at: int | None = None
        # Directories whose listing sum this transaction has dropped already
        # (it is dropped before the first write of one of their rows).
        self._unlisted: set[str] = set()

    # -- opening ---------------------------------------------------------

    @classmethod
    @_guard
    def create(cls, path: Path, replica_id: str, *, as_copy: bool = False) -> Index:
        """A new index at ``path`` (which does not exist: the replica's lock
        is held); one that cannot be made whole (a full disk) is removed,
        so that the next run makes it afresh instead of finding it broken.
        ``as_copy``: made as a copy (see FIRST_SCAN), in the same commit."""
        conn: sqlite3.Connection | None = None
        try:
            conn = cls._connect(path)  # its first write too (WAL mode)
            return cls._fill(path, conn, replica_id, as_copy)
        except BaseException:
            if conn is not None:
                conn.close()
            for leftover in (
                path,
                path.with_name(f"{path.name}-wal"),
                path.with_name(f"{path.name}-shm"),
            ):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            raise

    @classmethod
    def _fill(cls, path: Path, conn: sqlite3.Connection, replica_id: str, as_copy: bool) -> Index:
        conn.executescript(SCHEMA)
        for statement in _LISTINGS:
            conn.execute(statement)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("format", FORMAT), ("replica_id", replica_id), ("depth", 1), ("hlc", 0)]
            + ([(FIRST_SCAN, 1)] if as_copy else []),
        )
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        return cls(path, conn)

    @classmethod
    def open(cls, path: Path) -> Index:
        if not path.exists():
            raise CorruptIndex(_corrupt_message(path, "missing"))
        _prefetch(path)
        return cls._open(path)

    @classmethod
    @_guard
    def _open(cls, path: Path) -> Index:
        conn = cls._connect(path)
        try:
            return cls._check(path, conn)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def _check(cls, path: Path, conn: sqlite3.Connection) -> Index:
        """Check the facts an index must hold; bring an older layout up to date."""
        conn.execute("BEGIN")
        row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None or not isinstance(row[0], int):
            raise CorruptIndex(_corrupt_message(path, "no format version"))
        if row[0] > FORMAT:
            raise NewerFormat(
                f"the replica index {path} has format {row[0]}, this merklesync reads "
                f"format {FORMAT}: upgrade merklesync, or rebuild with `merklesync init --rebuild`"
            )
        facts = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('replica_id', 'hlc')"))
        if not isinstance(facts.get("replica_id"), str) or not facts["replica_id"]:
            raise CorruptIndex(_corrupt_message(path, "no replica id"))
        if not isinstance(facts.get("hlc", 0), int):
            raise CorruptIndex(_corrupt_message(path, "bad clock"))
        depth = conn.execute("SELECT value FROM meta WHERE key = 'depth'").fetchone()
        if depth is not None and not (isinstance(depth[0], int) and 1 <= depth[0] <= MAX_DEPTH):
            raise CorruptIndex(_corrupt_message(path, "bad tree depth"))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS peers (replica_id TEXT PRIMARY KEY, "
            "last_sync_ns INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute(_FORGOTTEN_TABLE)
        conn.execute(_CONTACTS_TABLE)
        if row[0] < FORMAT:
            if "origin" not in {c[1] for c in conn.execute("PRAGMA table_info(entries)")}:
                conn.execute("ALTER TABLE entries ADD COLUMN origin TEXT NOT NULL DEFAULT ''")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (FORMAT,))
            conn.execute("COMMIT")
            conn.execute("BEGIN")
        if conn.execute(_DIR_INDEX_FOUND).fetchone() is None:  # a run stopped as it filled
            with contextlib.suppress(sqlite3.OperationalError):  # a read-only file system
                conn.execute(_DIR_INDEX)
                conn.execute("COMMIT")
                conn.execute("BEGIN")
        if {name for (name,) in conn.execute(_LISTINGS_FOUND)} != {"listings"}:
            for statement in _LISTINGS:
                conn.execute(statement)
            conn.execute("COMMIT")
            conn.execute("BEGIN")
        if conn.execute(_OLD_PARENT_INDEX).fetchone() is not None:
            # Scans read a directory's stat cache from this index alone: rows
            # written in key order (a pushed copy) are scattered in the table.
            conn.execute("DROP INDEX entries_parent")
            conn.execute(_DIR_INDEX)
            conn.execute("COMMIT")
            conn.execute("BEGIN")
        return cls(path, conn)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    @_guard
    def close(self, *, commit: bool = True) -> None:
        """Close; with ``commit`` False (a run ending on a failure or an
        interruption), what was written since the last commit is dropped:
        a row can be written and the tree not yet told of it when a Ctrl-C
        lands, and committed so the tree would be wrong for good. What the
        run did is found again as a run stopped by SIGKILL leaves it. So
        it is where a change was cut (see _torn), and that is said
        (ChangeCut)."""
        torn = commit and self._torn
        if not commit or torn:
            try:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            finally:
                self.conn.close()
            if torn:
                raise self._cut()
            return
        try:
            self._dir_index_now()
            self.commit()
            self.conn.execute("COMMIT")
        finally:  # (cut short: what was not committed is rolled back)
            self.conn.close()

    # -- facts -----------------------------------------------------------

    @_guard
    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @_guard
    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def replica_id(self) -> str:
        return str(self.meta("replica_id"))

    @property
    def depth(self) -> int:
        return int(self.meta("depth") or 1)

    # -- entries ---------------------------------------------------------

    @_guard
    def get(self, path: str) -> Cached | None:
        if not self._may_hold(path):
            return None
        row = self.conn.execute(
            f"SELECT {_ENTRY_COLUMNS}, stat FROM entries WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        return Cached(_to_entry(row[:-1]), row[-1])

    @_guard
    def get_many(self, paths: Iterable[str]) -> dict[str, Cached]:
        """What get says of each of ``paths``, for those the index holds:
        a query for many paths, not one each."""
        wanted = [p for p in dict.fromkeys(paths) if self._may_hold(p)]
        found: dict[str, Cached] = {}
        for start in range(0, len(wanted), _MANY_PATHS):
            chunk = wanted[start : start + _MANY_PATHS]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {_ENTRY_COLUMNS}, stat FROM entries WHERE path IN ({marks})"
            for row in self.conn.execute(query, chunk):
                found[row[0]] = Cached(_to_entry(row[:-1]), row[-1])
        return found

    def _may_hold(self, path: str) -> bool:
        """False when ``path`` is surely not in the index: one that was
        empty when first asked remembers the paths stored since."""
        stored = self._since_empty()
        return stored is None or path in stored

    def _since_empty(self) -> PathFilter | None:
        """The paths stored since the table held no entry, when it held
        none as first asked (since it was opened, or last reloaded): every
        row is one of them. None: it held some."""
        if not self._looked:
            self._looked = True
            if self.conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is None:
                self._stored_since_empty = PathFilter()
                self._parents_since_empty = set()
                self._count_since_empty = 0
        return self._stored_since_empty

    def _dir_index_now(self) -> None:
        """Make entries_dir again, if it was dropped while the table filled."""
        if self._dir_index_later:
            self.conn.execute(_DIR_INDEX)
            self._dir_index_later = False

    @_guard
    def stat_cache(self, parent: str) -> dict[str, bytes | None]:
        """For the scanner: path -> packed stat of a directory's entries
        (None: to be re-read; ``TOMBSTONE`` for a deleted one)."""
        if self._since_empty() is not None and parent not in self._parents_since_empty:
            return {}
        self._dir_index_now()
        return dict(
            self.conn.execute(
                "SELECT path, CASE WHEN deleted THEN ? ELSE stat END FROM entries WHERE parent = ?",
                (TOMBSTONE, parent),
            )
        )

    @_guard
    def dir_sum(self, parent: str) -> tuple[bytes, bytes] | None:
        """A directory's listing sum and what its scan kept, while no row in
        it has changed since."""
        row = self.conn.execute(
            "SELECT sum, kept FROM listings WHERE parent = ?", (parent,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    @_guard
    def listed_dirs(self) -> list[str]:
        """The directories below the root with a listing sum kept."""
        rows = self.conn.execute("SELECT parent FROM listings WHERE parent != '' ORDER BY parent")
        return [parent for (parent,) in rows]

    @_guard
    def set_dir_sum(self, parent: str, value: bytes, kept: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO listings VALUES (?, ?, ?)", (parent, value, kept))
        self._unlisted.discard(parent)

    def _unlist(self, parent: str) -> None:
        """A row of ``parent`` is about to change: its listing sum no longer holds."""
        if parent not in self._unlisted:
            self.conn.execute("DELETE FROM listings WHERE parent = ?", (parent,))
            self._unlisted.add(parent)

    @_guard
    def live_under(self, directory: str) -> list[Entry]:
        """Live entries strictly below a directory, deepest first."""
        lo, hi = directory + "/", directory + "0"  # "0" follows "/" in byte order
        rows = self.conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE path >= ? AND path < ? AND NOT deleted "
            "ORDER BY path DESC",
            (lo, hi),
        )
        return [_to_entry(r) for r in rows]

    @_guard
    def by_keys(self, keys: Sequence[bytes]) -> list[Entry]:
        out: list[Entry] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE key IN ({marks}) ORDER BY key, path",
                chunk,
            )
            out.extend(_to_entry(r) for r in rows)
        return out

    def iter_entries(self, live_only: bool = False) -> Iterator[Entry]:
        """Stream the entries in path order (errors mapped while iterating)."""
        where = " WHERE NOT deleted" if live_only else ""
        cursor = self._cursor(f"SELECT {_ENTRY_COLUMNS} FROM entries{where} ORDER BY path")
        while rows := self._fetch(cursor):
            yield from (_to_entry(row) for row in rows)

    @_guard
    def _cursor(self, sql: str) -> sqlite3.Cursor:
        return self.conn.execute(sql)

    @_guard
    def _fetch(self, cursor: sqlite3.Cursor) -> list[Any]:
        return cursor.fetchmany(1000)

    @_guard
    def count(self, live_only: bool = False) -> int:
        where = " WHERE NOT deleted" if live_only else ""
        return int(self.conn.execute(f"SELECT count(*) FROM entries{where}").fetchone()[0])

    @_guard
    def put(self, entry: Entry, stat: bytes | None, old: Entry | None) -> None:
        """Store ``entry`` (replacing ``old``, the entry the caller read)."""
        stored = self._since_empty()
        key = key_of(entry.path)
        leaf = entry.leaf_hash()
        parent = parent_of(entry.path)
        learned = 0
        if entry.deleted:
            learned = self.learned_at or time.time_ns()
            if old is not None and old.deleted:  # known deleted since then
                learned = self._learned(entry.path) or learned
        self._torn = True  # until the tree hears of the row
        self._unlist(parent)
        fields = (
            leaf,
            int(entry.kind),
            int(entry.deleted),
            _packed(entry.vv),
            entry.digest,
            entry.size,
            entry.mode,
            entry.mtime_ns,
            entry.target,
            entry.stamp,
            stat,
            learned,
            entry.origin,
            entry.path,
        )
        # A row that is there is updated in place: its path, parent and key
        # stay, so SQLite leaves their indexes alone (a replace would delete
        # the row and insert it again, in every index); where its stat and
        # deleted flag stay too (a new version of the same file), the index
        # of the directories' stat caches as well.
        if old is None or not self._update(fields, stat, old.deleted == entry.deleted):
            self.conn.execute(_INSERT, (entry.path, parent, key, *fields[:-1]))
        self._pending.change(key, None if old is None else old.leaf_hash(), leaf)
        self._dirty = True
        if stored is not None:
            stored.add(entry.path)
            self._parents_since_empty.add(parent)
            self._count_since_empty += 1
            if self._count_since_empty == _DIR_INDEX_LATER:
                self.conn.execute("DROP INDEX IF EXISTS entries_dir")
                self._dir_index_later = True
        self._torn = False

    def _update(self, fields: tuple[object, ...], stat: bytes | None, same_deleted: bool) -> bool:
        """Update the row at ``fields``' path (the _UPDATE order); False
        when there is none."""
        if same_deleted:  # the stat too, unless the statement finds another
            in_place = (*fields[:2], *fields[3:10], *fields[11:], fields[2], stat)
            if self.conn.execute(_UPDATE_IN_PLACE, in_place).rowcount:
                return True
        return bool(self.conn.execute(_UPDATE, fields).rowcount)

    def _learned(self, path: str) -> int:
        """When the tombstone stored at ``path`` was learned (0: none is)."""
        row = self.conn.execute(
            "SELECT learned_ns FROM entries WHERE path = ? AND deleted", (path,)
        ).fetchone()
        return int(row[0]) if row is not None else 0

    @_guard
    def check(self) -> None:
        """Read everything there is to read: CorruptIndex if any of it is
        damaged (SQLite's own check, then every row, whose stored key and
        leaf hash must be those of its fields: entries read here come with
        the stored leaf, and the tree is made of them)."""
        found = self.conn.execute("PRAGMA quick_check").fetchone()
        if found is None or found[0] != "ok":
            raise CorruptIndex(_corrupt_message(self, f"damaged: {found[0] if found else '?'}"))
        for row in self.conn.execute(f"SELECT {_ENTRY_COLUMNS}, key FROM entries"):
            entry, leaf, key = _to_entry(row[:-1]), row[-2], row[-1]
            if entry.computed_leaf() != leaf or key_of(entry.path) != key:
                raise CorruptIndex(_corrupt_message(self, f"damaged row: {entry.path!r}"))
        self.peers()
        self.contacts()
        for _level, _prefix, total, count in self.conn.execute("SELECT * FROM nodes"):
            if not (isinstance(total, bytes) and len(total) == 32 and isinstance(count, int)):
                raise CorruptIndex(_corrupt_message(self, "damaged tree node"))

    @_guard
    def tree_matches(self) -> bool:
        """Whether the stored tree is the one its rows make (an earlier
        release could commit a run cut between a row and its leaf)."""
        wanted = self._tree_of_rows(self.depth)
        stored = (
            (level, prefix, int.from_bytes(total, "big"), count)
            for level, prefix, total, count in self.conn.execute(
                "SELECT level, prefix, total, count FROM nodes ORDER BY level DESC, prefix"
            )
        )
        return all(a == b for a, b in itertools.zip_longest(wanted, stored))

    @_guard
    def rebuild_tree(self) -> None:
        """Make the tree again from the rows (their versions kept)."""
        self._rebuild_nodes(self.depth)
        self._pending = merkle.Accumulator(self.depth)
        self._dirty = False
        self.commit()

    @_guard
    def tombstones(self) -> list[tuple[Entry, int]]:
        """Every tombstone, with the time this replica learned of it."""
        rows = self.conn.execute(f"SELECT {_ENTRY_COLUMNS}, learned_ns FROM entries WHERE deleted")
        return [(_to_entry(r[:-1]), r[-1]) for r in rows]

    @_guard
    def writers(self) -> set[str]:
        """Every replica named in a version vector here (not the names of
        found contents' versions, see clock.FOUND_PREFIX). The vectors of
        found versions alone, one for each content, are left out unread."""
        found: set[str] = set()
        query = (
            "SELECT DISTINCT vv FROM entries WHERE NOT (length(vv) = ? AND substr(vv, 1, ?) = ?)"
        )
        args = (len(_FOUND_ONLY), len(_FOUND_ONLY_HEAD), _FOUND_ONLY_HEAD)
        for (blob,) in self.conn.execute(query, args):
            found.update(r for r, _c in VersionVector.from_wire(msgpack.unpackb(blob)).pairs)
        return {r for r in found if is_replica(r)}

    @_guard
    def peers(self) -> dict[str, int]:
        """Replica id -> when this replica last completed a run with it."""
        return dict(self.conn.execute("SELECT replica_id, last_sync_ns FROM peers"))

    @_guard
    def remember_peer(self, replica_id: str, when: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO peers VALUES (?, ?)", (replica_id, when))

    @_guard
    def contacts(self) -> dict[str, int]:
        """Replica id -> when this replica last ended a run with it that
        left some paths out (see retention)."""
        return dict(self.conn.execute("SELECT replica_id, last_ns FROM contacts"))

    @_guard
    def remember_contact(self, replica_id: str, when: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO contacts VALUES (?, ?)", (replica_id, when))

    @_guard
    def forget(self, entry: Entry) -> None:
        """Drop an entry without a tombstone (it became ignored), keeping
        it aside (see forgotten)."""
        self._torn = True  # until the tree hears of it
        self.conn.execute(
            "INSERT OR REPLACE INTO forgotten VALUES (?, ?)",
            (entry.path, msgpack.packb(entry.to_wire())),
        )
        self._any_forgotten = True
        self.drop(entry)

    @_guard
    def drop(self, entry: Entry) -> None:
        """Drop an entry without a tombstone: this replica no longer knows
        of its path."""
        self._torn = True  # until the tree hears of it
        self._unlist(parent_of(entry.path))
        self.conn.execute("DELETE FROM entries WHERE path = ?", (entry.path,))
        self._pending.change(entry.key, entry.leaf_hash(), None)
        self._dirty = True
        self._torn = False

    @_guard
    def forgotten(self, path: str) -> Entry | None:
        """The entry last forgotten at ``path``, taken out: what is found
        there again (no longer ignored) is that version, or a new version
        of it; not a first one, whose vector the other replicas may hold
        already, for other content."""
        if self._any_forgotten is None:
            found = self.conn.execute("SELECT 1 FROM forgotten LIMIT 1").fetchone()
            self._any_forgotten = found is not None
        if not self._any_forgotten:
            return None
        row = self.conn.execute("SELECT entry FROM forgotten WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        # Taken out for a row the caller then stores (see _torn): a change
        # cut before that would lose it.
        self._torn = True
        self.conn.execute("DELETE FROM forgotten WHERE path = ?", (path,))
        return Entry.from_wire(msgpack.unpackb(row[0]))

    # -- the tree --------------------------------------------------------

    @_guard
    def commit(self) -> None:
        """Fold pending leaf changes into the tree and make them durable.
        A transaction a change was cut in (see _torn) is rolled back
        instead (ChangeCut): committed, its tree would not match its rows
        for good. What it recorded, the next scan finds again, as after a
        run killed by SIGKILL."""
        if self._torn:
            self._roll_back()
            raise self._cut()
        if self._dirty:
            self._torn = True
            depth = self.depth
            wanted = merkle.depth_for(self.count())
            if wanted > depth or wanted < depth - 1:
                self._rebuild_nodes(wanted)
            else:
                self._apply_pending()
            self._pending = merkle.Accumulator(self.depth)
            self._dirty = False
            self._torn = False
        try:
            if self.conn.in_transaction:  # (not: a commit cut before its BEGIN)
                self.conn.execute("COMMIT")
        except sqlite3.OperationalError:
            # A full disk: SQLite rolled the transaction back. Begin the next,
            # so that a later commit says what is wrong, not "no transaction".
            if not self.conn.in_transaction:
                self.conn.execute("BEGIN")
            raise
        self._unlisted.clear()
        self.conn.execute("BEGIN")

    def _cut(self) -> ChangeCut:
        return ChangeCut(
            f"the replica index {self.path}: a change was cut short; "
            "what was recorded since the last commit is dropped"
        )

    def _roll_back(self) -> None:
        """Drop what was written since the last commit, and whatever this
        object knew of it."""
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self.conn.execute("BEGIN")
        self._pending = merkle.Accumulator(self.depth)
        self._dirty = self._torn = False
        self._unlisted.clear()
        self._stored_since_empty, self._looked = None, False
        self._any_forgotten = None
        self._dir_index_later = True  # dropped, or not: made again if missing
        self._dir_index_now()

    def reload(self) -> None:
        """Commit, then see what another connection wrote meanwhile. No
        read is left open: it would pin this connection to what it saw, so
        it could not write after another one did."""
        self._dir_index_now()  # another connection may look for it
        self.commit()
        self._pending = merkle.Accumulator(self.depth)
        self._stored_since_empty, self._looked = None, False  # others may have stored some
        self._any_forgotten = None
        self.conn.execute("COMMIT")
        self.conn.execute("BEGIN")

    def _apply_pending(self) -> None:
        for (level, prefix), (delta, dcount) in self._pending.nodes.items():
            row = self.conn.execute(
                "SELECT total, count FROM nodes WHERE level = ? AND prefix = ?", (level, prefix)
            ).fetchone()
            total, count = (int.from_bytes(row[0], "big"), row[1]) if row else (0, 0)
            total, count = (total + delta) % merkle.MODULUS, count + dcount
            if count:
                self.conn.execute(
                    "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?)",
                    (level, prefix, total.to_bytes(32, "big"), count),
                )
            else:
                self.conn.execute(
                    "DELETE FROM nodes WHERE level = ? AND prefix = ?", (level, prefix)
                )

    def _tree_of_rows(self, depth: int) -> Iterator[merkle.Node]:
        """The nodes the rows make, down to ``depth`` (see merkle.tree_of)."""
        return merkle.tree_of(self.conn.execute("SELECT key, leaf FROM entries"), depth)

    def _rebuild_nodes(self, depth: int) -> None:
        self.conn.execute("DELETE FROM nodes")
        self.conn.executemany(
            "INSERT INTO nodes VALUES (?, ?, ?, ?)",
            (
                (level, prefix, total.to_bytes(32, "big"), n)
                for level, prefix, total, n in self._tree_of_rows(depth)
            ),
        )
        self.set_meta("depth", depth)

    @_guard
    def node(self, node: NodeId) -> tuple[int, int]:
        """(sum, count) of a node, from the stored levels or from its leaves."""
        level, prefix = node
        if level <= self.depth:
            row = self.conn.execute(
                "SELECT total, count FROM nodes WHERE level = ? AND prefix = ?", (level, prefix)
            ).fetchone()
            return (int.from_bytes(row[0], "big"), row[1]) if row else (0, 0)
        total = count = 0
        for _key, leaf in self.leaves(node):
            total += merkle.leaf_value(leaf)
            count += 1
        return total % merkle.MODULUS, count

    @_guard
    def children(self, node: NodeId) -> list[tuple[bytes, int]]:
        """Fingerprint and count of each of the 16 children of a node."""
        level, prefix = node
        if level + 1 <= self.depth:
            found = {
                p: (int.from_bytes(t, "big"), c)
                for p, t, c in self.conn.execute(
                    "SELECT prefix, total, count FROM nodes "
                    "WHERE level = ? AND prefix >= ? AND prefix < ?",
                    (level + 1, prefix * merkle.FANOUT, (prefix + 1) * merkle.FANOUT),
                )
            }
            sums = [found.get(prefix * merkle.FANOUT + i, (0, 0)) for i in range(merkle.FANOUT)]
        else:
            sums = [(0, 0)] * merkle.FANOUT
            for key, leaf in self.leaves(node):
                i = merkle.prefix_of(key, level + 1) % merkle.FANOUT
                total, count = sums[i]
                sums[i] = ((total + merkle.leaf_value(leaf)) % merkle.MODULUS, count + 1)
        return [(merkle.fingerprint(t, c), c) for t, c in sums]

    @_guard
    def entries_in(self, node: NodeId) -> list[Entry]:
        lo, hi = merkle.key_range(node)
        bound, args = ("key >= ?", (lo,)) if hi is None else ("key >= ? AND key < ?", (lo, hi))
        rows = self.conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE {bound} ORDER BY key, path", args
        )
        return [_to_entry(r) for r in rows]

    @_guard
    def leaves(self, node: NodeId) -> list[tuple[bytes, bytes]]:
        lo, hi = merkle.key_range(node)
        bound, args = ("key >= ?", (lo,)) if hi is None else ("key >= ? AND key < ?", (lo, hi))
        cursor = self.conn.execute(
            f"SELECT key, leaf FROM entries WHERE {bound} ORDER BY key, leaf", args
        )
        return [(bytes(k), bytes(v)) for k, v in cursor]

    def root(self) -> tuple[bytes, int]:
        total, count = self.node(merkle.ROOT)
        return merkle.fingerprint(total, count), count
