"""A directory tree as a source of entries: scanning it into the index,
reading file content, and writing versions into it safely.

Writes go to a temp file in the destination directory, are verified against
the blake3 digest, get their mode and mtime, and are renamed into place only
if the destination still holds what the index says it holds. Reads and
writes reach a file through its directories, from the root, never through a
symlink (dir_fds.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat as st_mod
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import blake3
import msgpack

from merklesync import journal
from merklesync.clock import MAX_STAMP, HybridClock, VersionVector
from merklesync.errors import LocalIOError
from merklesync.ignore import STATE_DIR, IgnoreRules
from merklesync.index import TOMBSTONE, Cached, Index
from merklesync.model import (
    GONE,
    LOCAL_MODE,
    Entry,
    EntryKind,
    Outcome,
    ScanReport,
    Unreadable,
    WriteItem,
    int64,
    leaf_of,
    synced_mode,
)
from merklesync.orphans import cores
from merklesync.protocol.paths import check_relpath
from merklesync.reading import OpenFile, open_to_read, read_chunks
from merklesync.sources import dir_fds, final_modes, placer, prehash, prelist, write_intents
from merklesync.sources.dir_fds import DIR_FLAGS, DirFds, NotADirectory, open_dir
from merklesync.sources.file_write import (
    IN_THE_WAY,
    Refused,
    place_new,
    temp_name,
    unlink_quietly,
    write_file,
)
from merklesync.sources.listing import Listing, listing_sum, refused_name, stat_key
from merklesync.sources.placer import Placer

RACY_NS = 2_000_000_000  # an mtime this close to the scan may hide a same-tick edit
# A long walk commits what it found this often (seconds), so that one cut
# short (Ctrl-C, a crash, a reboot) keeps it: a first scan of millions of
# files starts again where it stopped, mostly (see DirectorySource._keep_so_far).
SCAN_COMMIT_EVERY = 30.0
HASH_RETRIES = 3
THREADED_HASH = 8 << 20
WATCH_TOKEN = "watch_token"  # index meta: the journal token the last scan covered
RELIST = "relist"  # index meta: directories every partial scan re-lists (_Scan.relist)
# Index meta: directories every partial scan walks deep, whatever a watcher
# says: those whose ignore file is a symlink or has other hard links, since
# its rules can change without an event in the tree (IgnoreRules.volatile).
REWALK = "rewalk"

_CHANGED_SINCE_COMPARISON = "changed on the destination since the comparison"
_ABSENT = b"absent"  # not in the stat cache (never a packed stat, nor TOMBSTONE)
# The stat of a file written here that the stat cache must not vouch for (see _touch_up).
_UNTRUSTED = os.stat_result((0,) * 10)

# A file open_to_read cannot reach for these is not there (any more) as the
# scan saw it: a name gone, a directory on its way replaced, a link.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR})


_KINDS = {
    st_mod.S_IFREG: EntryKind.FILE,
    st_mod.S_IFDIR: EntryKind.DIR,
    st_mod.S_IFLNK: EntryKind.LINK,
}


def kind_of(mode: int) -> EntryKind | None:
    return _KINDS.get(st_mod.S_IFMT(mode))


@dataclass(slots=True)
class _Scan:
    """The state of one scan."""

    index: Index
    replica_id: str
    clock: HybridClock
    checksum: bool
    progress: Callable[[int], None] | None
    report: ScanReport = field(default_factory=ScanReport)
    racy_after: int = field(default_factory=lambda: time.time_ns() - RACY_NS)
    pending: int = 0
    # Directories the next partial scan re-lists whatever a watcher says:
    # those holding hard-linked files (a write through another link raises
    # no event here) and those where something could not be read.
    relist: set[str] = field(default_factory=set)
    shortcuts: bool = False  # see DirectorySource._shortcuts
    # Directories listed ahead of the walk, on two cores (prelist.py).
    prelisted: dict[str, prelist.Prelisted] = field(default_factory=dict)
    # Files hashed ahead of the walk, on two cores (prehash.py): wanted in
    # a scan that reads every file (a first one, or --checksum).
    reads_all: bool = False
    prehash: prehash.Prehasher | None = None
    commit_at: float = field(default_factory=lambda: time.monotonic() + SCAN_COMMIT_EVERY)


_Subdir = tuple[str, tuple[int, int] | None]  # a path, and its (device, inode) when listed


def link_digest(target: str) -> bytes:
    return blake3.blake3(os.fsencode(target)).digest()


class FileChanged(Exception):
    """The file changed while it was read."""


# A large file is hashed on several threads, on a pool of its own: blake3's
# shared pool (AUTO), once started in a process, has no threads in the
# process's forked children (a placing, listing, hashing or scanning child),
# where it would wait for ever.
_CORES = cores()


def hash_open_file(fd: int, size_hint: int) -> tuple[bytes, os.stat_result]:
    threads = _CORES if size_hint > THREADED_HASH else 1
    hasher = blake3.blake3(max_threads=threads)
    for chunk in read_chunks(fd, size_hint):
        hasher.update(chunk)
    return hasher.digest(), os.fstat(fd)


class DirectorySource:
    def __init__(self, root: Path, ignore: IgnoreRules) -> None:
        self.root = root
        self.ignore = ignore
        # Directories written read-only, or made writable to write in them,
        # and the mode each gets at the end of the run (see _put_dir).
        self._final_modes: dict[str, int] = {}
        self._notes = final_modes.Notes(root / STATE_DIR)
        # Writes noted before they are made (write_intents.py); and during a
        # scan, those an interrupted run noted, by path.
        self._intents = write_intents.Intents(root / STATE_DIR)
        self._noted: dict[str, Entry] = {}
        self._writable: set[str] = set()  # directories this batch may write in (_open_up)
        self._root = str(root)
        # The directories this batch of writes goes into, held open; and
        # those this batch of reads reads from (see read).
        self._dirs = DirFds(self._root)
        self._read_dirs = DirFds(self._root)
        self._placer: Placer | None = None  # see write_items
        self._placer_tried = False
        self._new_files = 0
        # True: scans leave the files and the state directory as they are
        # (no abandoned temp file tidied, no intent discarded): a replica
        # opened from a copy of its index (a dry run's, a read-only one's).
        self.hands_off = False

    def abs(self, rel: str) -> str:
        """The path of a (validated, relative) entry path on this machine."""
        return f"{self._root}/{rel}" if rel else self._root

    # -- scanning --------------------------------------------------------

    def hash_file(self, rel: str, dir_fd: int | None = None) -> tuple[bytes, os.stat_result]:
        """blake3 of a file, read without following links (``dir_fd``: its
        directory, open: the file is found there, not by its whole path);
        retried while the file keeps changing under us."""
        where = self._where(rel, dir_fd)
        for _ in range(HASH_RETRIES):
            fd = open_to_read(where, dir_fd=dir_fd)
            try:
                before = os.fstat(fd)
                if not st_mod.S_ISREG(before.st_mode):
                    raise FileChanged(rel)  # no longer a file (a FIFO now, say)
                digest, after = hash_open_file(fd, before.st_size)
            finally:
                os.close(fd)
            if stat_key(before) == stat_key(after) and after.st_mtime_ns == before.st_mtime_ns:
                return digest, after
        raise FileChanged(rel)

    def _where(self, rel: str, dir_fd: int | None) -> str:
        """How an entry is named: its path, or its name in ``dir_fd``."""
        return self.abs(rel) if dir_fd is None else rel.rpartition("/")[2]

    def _readlink(self, rel: str, dir_fd: int | None) -> str:
        return os.readlink(self._where(rel, dir_fd), dir_fd=dir_fd)

    def _shortcuts(self, checksum: bool) -> bool:
        """Whether a scan may skip work (a watcher's answer, listing sums):
        not when it looks with other eyes (--checksum, --exclude)."""
        return not (checksum or self.ignore.has_excludes)

    def watched(self, *, checksum: bool = False) -> bool:
        """Whether a scan would ask a running watcher where to look."""
        return self._shortcuts(checksum) and journal.watcher_running(self.root / STATE_DIR)

    def scan(
        self,
        index: Index,
        replica_id: str,
        clock: HybridClock,
        *,
        checksum: bool = False,
        progress: Callable[[int], None] | None = None,
        learned_ns: int | None = None,
        spread: bool = True,
        listing: bool = True,
    ) -> ScanReport:
        """Bring the index up to date: unchanged entries (same stat) cost
        one stat call; changed ones are re-read. With a watcher running
        (journal.py), only the directories it saw change are looked at.
        ``spread``: a full scan may list on a second core (no other scan
        runs beside this one). ``listing`` False: the report does not name
        the paths changed (see ScanReport.listing)."""
        scan = _Scan(index, replica_id, clock, checksum, progress)
        scan.report.listing = listing
        scan.shortcuts = self._shortcuts(checksum)
        scan.reads_all = spread and (checksum or index.root()[1] == 0)
        self.ignore.start_over()  # an ignore file may have changed since the last scan
        changes = journal.ask(self.root, index.meta(WATCH_TOKEN)) if scan.shortcuts else None
        index.learned_at = learned_ns  # deletions found now are as old as the scan
        relist = _stored_dirs(index, RELIST) if changes is not None else None
        rewalk = _stored_dirs(index, REWALK) if changes is not None else None
        noted = self._intents.read()
        self._noted = noted or {}
        try:
            if changes is None or changes.everything or relist is None or rewalk is None:
                rewalk = set()
                if spread and scan.shortcuts:
                    scan.prelisted = prelist.prelist(self._root, index.listed_dirs())
                self._scan_tree("", scan)
            else:
                scan.relist = relist
                deep = (*changes.deep, *sorted(rewalk))
                self._scan_changed(dataclasses.replace(changes, deep=deep), index, scan)
        finally:
            index.learned_at = None
            self._noted = {}
        index.set_meta(RELIST, msgpack.packb(sorted(scan.relist)))
        # Of the directories looked at, those whose ignore file can change
        # without an event here; the others as the last scan found them.
        kept = rewalk - self.ignore.looked_at
        index.set_meta(REWALK, msgpack.packb(sorted(kept | self.ignore.volatile)))
        if progress is not None and scan.pending:
            progress(scan.pending)
        index.set_meta(WATCH_TOKEN, None if changes is None else changes.token)
        index.set_meta("hlc", clock.last)
        index.commit()
        if noted is not None and not self.ignore.has_excludes and not self.hands_off:
            self._intents.discard()  # (else, kept for a scan of all, or for the replica's own)
        return scan.report

    def _scan_tree(self, top: str, scan: _Scan) -> None:
        stack: list[_Subdir] = [(top, None)]
        try:
            while stack:
                directory, identity = stack.pop()
                stack.extend(self._scan_directory(directory, scan, identity))
                if stack and time.monotonic() >= scan.commit_at:
                    self._keep_so_far(scan)
                if scan.prehash is not None:
                    scan.prehash.finished(directory)
                elif scan.reads_all and scan.report.hashed >= prehash.MIN_FILES and stack:
                    scan.reads_all = False  # one try
                    scan.prehash = prehash.Prehasher.start(
                        self._root, self.ignore, stack, self.hash_file
                    )
        finally:
            if scan.prehash is not None:
                scan.prehash.close()
                scan.prehash = None

    @staticmethod
    def _keep_so_far(scan: _Scan) -> None:
        """Commit what a long walk found so far: every directory it is done
        with, each entry with its version, and the tree they make. One cut
        short keeps that; the next scan walks everything again (no
        watcher's shortcut: this one did not reach the end), and finds what
        it kept unchanged, by its stat."""
        scan.index.set_meta(WATCH_TOKEN, None)
        scan.index.set_meta("hlc", scan.clock.last)
        scan.index.commit()
        scan.commit_at = time.monotonic() + SCAN_COMMIT_EVERY

    def _scan_changed(self, changes: journal.Changes, index: Index, scan: _Scan) -> None:
        """Re-list the directories a watcher saw change (``shallow``) and walk
        the subtrees it saw appear (``deep``), parents first, so a new
        directory is in the index before its own turn comes."""
        deep = set(changes.deep)
        walked: set[str] = set()  # deep ones done: everything below is covered
        wanted = deep.union(changes.shallow, scan.relist)
        for directory in sorted(wanted, key=lambda d: (d.count("/"), d)):
            if _below_any(directory, walked):
                continue
            if directory:
                cached = index.get(directory)
                if cached is None or cached.entry.deleted or cached.entry.kind is not EntryKind.DIR:
                    scan.relist.discard(directory)
                    continue  # left out, or gone: its parent's listing says so
            if directory in deep:
                self._scan_tree(directory, scan)
                if not directory:
                    return  # the whole tree
                walked.add(directory)
            else:
                self._scan_directory(directory, scan)

    def _scan_directory(
        self, directory: str, scan: _Scan, identity: tuple[int, int] | None = None
    ) -> list[_Subdir]:
        """Scan one directory's entries; returns its subdirectories, each
        with its (device, inode) as listed here. This is the loop every
        entry of every scan goes through: kept lean.

        A directory whose listing (names and stats, under the same ignore
        rules) sums to what it summed to when the index last agreed with
        all of it is done without reading its rows from the index."""
        report = scan.report
        scan.relist.discard(directory)
        pre = scan.prelisted.pop(directory, None)
        if pre is not None and pre.identity == identity and not pre.has_temp_files:
            self.ignore.for_directory(directory, has_file=pre.has_ignore_file)
            subdirs = self._unchanged(directory, scan, pre.digest, pre.subdirs.get)
            if subdirs is not None:
                return subdirs
        # Listed through a descriptor, so each stat below resolves one name
        # (not the whole path: about a fifth of a scan's system time). It
        # must be the directory its parent listed (``identity``): one of its
        # parents swapped for a symlink since would lead elsewhere, and the
        # last component is not followed at all (O_NOFOLLOW).
        dir_fd: int | None = None
        try:
            try:
                if identity is None:  # named by a watcher: no parent's listing vouches for it
                    dir_fd = open_dir(self._root, directory)
                else:
                    dir_fd = os.open(self.abs(directory), DIR_FLAGS)
                    st = os.fstat(dir_fd)
                    if (st.st_dev, st.st_ino) != identity:
                        report.warnings.append(
                            f"{directory}: replaced during the scan; looked at again next time"
                        )
                        scan.relist.add(directory)
                        return []  # keep what we knew
                listing = Listing.read(dir_fd, tidy=not self.hands_off)
            except (FileNotFoundError, NotADirectoryError):
                listing = Listing()
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    report.warnings.append(f"{directory or '.'}: cannot list: {exc.strerror}")
                    scan.relist.add(directory)
                    return []  # keep what we knew: unreadable is not deleted
                listing = Listing()  # it, or a parent, is now a symlink: it is gone
            return self._scan_open(directory, listing, scan, dir_fd)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def _scan_open(
        self, directory: str, listing: Listing, scan: _Scan, dir_fd: int | None
    ) -> list[_Subdir]:
        """The rest of _scan_directory, with the directory listed (and open
        as ``dir_fd``; None when it is gone)."""
        ignored = self.ignore.for_directory(directory, has_file=listing.has_ignore_file)
        if scan.shortcuts:
            subdirs = self._unchanged(directory, scan, listing.digest(), listing.identity)
            if subdirs is not None:
                return subdirs
        return self._scan_listing(directory, listing, ignored, scan, dir_fd)

    def _unchanged(
        self,
        directory: str,
        scan: _Scan,
        digest: bytes | None,
        identity: Callable[[str], tuple[int, int] | None],
    ) -> list[_Subdir] | None:
        """When a directory's listing (its ``digest``) sums to what the index
        kept with its rows, under the same ignore rules: its subdirectories
        (each with its ``identity`` as listed), its rows left unread. None:
        it must be scanned."""
        stored = scan.index.dir_sum(directory)
        if stored is None or stored[0] != listing_sum(self.ignore.signature(directory), digest):
            return None
        kept = _kept(stored[1])
        if kept is None:
            return None
        scanned, names = kept
        self._count(scan, scanned)
        prefix = f"{directory}/" if directory else ""
        return [(prefix + name, identity(name)) for name in names]

    @staticmethod
    def _count(scan: _Scan, scanned: int) -> None:
        scan.report.scanned += scanned
        scan.pending += scanned
        if scan.pending >= 512 and scan.progress is not None:
            scan.progress(scan.pending)
            scan.pending = 0

    def _scan_listing(
        self,
        directory: str,
        listing: Listing,
        ignored: Callable[[str, bool], bool] | None,
        scan: _Scan,
        dir_fd: int | None,
    ) -> list[_Subdir]:
        index, report = scan.index, scan.report
        known = index.stat_cache(directory)  # left in it at the end: gone
        subdirs: list[_Subdir] = []
        prefix = f"{directory}/" if directory else ""
        kinds, checksum = _KINDS, scan.checksum
        scanned = 0
        warned = len(report.warnings)
        clean = True  # every name listed is either kept as listed, or ignored
        wrote = False  # rows of this directory were written
        kept: dict[str, bytes] = {}  # the rows the index should hold now
        for name, st, key in zip(listing.names, listing.stats, listing.keys, strict=True):
            rel = prefix + name
            refused = refused_name(name, rel)
            if refused is not None:  # what a peer would refuse is never put in the index
                is_dir = not isinstance(st, OSError) and st_mod.S_ISDIR(st.st_mode)
                if ignored is None or not ignored(rel, is_dir):  # else, not ours to judge
                    report.warnings.append(f"{refused.message}; skipped")
                continue
            cached = known.pop(rel, _ABSENT)
            if isinstance(st, OSError):
                if isinstance(st, FileNotFoundError):
                    clean = False
                    if cached != _ABSENT:
                        known[rel] = cached  # vanished just now: gone
                else:
                    report.warnings.append(f"{rel}: cannot stat: {st.strerror}")
                    scan.relist.add(directory)
                continue
            kind = kinds.get(st.st_mode & 0o170000)
            if kind is None:
                if ignored is None or not ignored(rel, False):
                    report.warnings.append(f"{rel}: not a file, directory or link; skipped")
                clean = False
                if cached != _ABSENT:
                    known[rel] = cached  # a file became a FIFO: the file is gone
                continue
            is_dir = kind is EntryKind.DIR
            if ignored is not None and ignored(rel, is_dir):
                if cached != _ABSENT and not self.ignore.excluded_by_option(rel, is_dir):
                    wrote = True
                    self._forget(index, rel)
                continue
            scanned += 1
            kept[rel] = key
            if is_dir:
                subdirs.append((rel, (st.st_dev, st.st_ino)))
            elif st.st_nlink > 1 and kind is EntryKind.FILE:
                clean = False
                scan.relist.add(directory)
            if not checksum and cached == key:
                continue  # a tombstone, a racy entry (None) or a new one never matches
            wrote = True
            before = len(report.warnings)
            hashed = None
            if (
                scan.prehash is not None
                and kind is EntryKind.FILE
                and st.st_size <= prehash.MAX_SIZE
            ):
                hashed = scan.prehash.digest(directory, name, key)
            self._rescan(
                index,
                scan.replica_id,
                scan.clock,
                rel,
                kind,
                st,
                scan.racy_after,
                report,
                indexed=cached != _ABSENT,
                dir_fd=dir_fd,
                hashed=hashed,
            )
            if len(report.warnings) > before:  # not read this time: look again next time
                scan.relist.add(directory)
        for rel, stat in known.items():
            if stat != TOMBSTONE:
                wrote = True
                gone = index.get(rel)
                if gone is None:
                    continue
                if ignored is not None and self._left_out(rel, gone.entry, ignored):
                    # Ignored now, then deleted before a scan saw it ignored:
                    # as for one still there, no tombstone (its copies elsewhere stay).
                    self._forget(index, rel)
                else:
                    self._tombstone(index, scan.replica_id, scan.clock, gone.entry, report)
        if clean and len(report.warnings) == warned and scan.shortcuts:
            self._keep_sum(directory, listing, index, kept, subdirs, check=wrote)
        self._count(scan, scanned)
        return subdirs

    def _keep_sum(
        self,
        directory: str,
        listing: Listing,
        index: Index,
        kept: dict[str, bytes],
        subdirs: list[_Subdir],
        *,
        check: bool,
    ) -> None:
        """Keep the listing's sum, with what this scan kept of it (the count
        and the subdirectories: the ignored names left out), when the index
        holds exactly those rows: as they were (nothing written), or as
        written now (``check``: read again; a racy file makes them differ)."""
        listed = listing.sum(self.ignore.signature(directory))
        if listed is None:
            return
        if check:
            rows = {rel: st for rel, st in index.stat_cache(directory).items() if st != TOMBSTONE}
            if rows != kept:
                return
        names = [rel.rpartition("/")[2] for rel, _ in subdirs]
        index.set_dir_sum(directory, listed, msgpack.packb([len(kept), names]))

    def _rescan(
        self,
        index: Index,
        replica_id: str,
        clock: HybridClock,
        rel: str,
        kind: EntryKind,
        st: os.stat_result,
        racy_after: int,
        report: ScanReport,
        indexed: bool = True,
        dir_fd: int | None = None,
        hashed: bytes | None = None,
    ) -> None:
        """Read one new or changed entry into the index (``indexed``: the
        index may hold a row for it; False spares the look-up; ``dir_fd``:
        its directory, open, where it is read from; ``hashed``: a file's
        digest, read with the stat ``st`` by whoever hashed it ahead)."""
        cached = index.get(rel) if indexed else None
        digest, target = b"", ""
        try:
            if kind is EntryKind.FILE:
                if hashed is not None:
                    digest = hashed
                else:
                    digest, st = self.hash_file(rel, dir_fd)
                report.hashed += 1
            elif kind is EntryKind.LINK:
                target = self._readlink(rel, dir_fd)
                if not _storable(target):
                    report.warnings.append(
                        f"{rel}: link target is not UTF-8 text, or holds a NUL; skipped"
                    )
                    return
                digest = link_digest(target)
        except FileNotFoundError:
            return
        except FileChanged:
            report.warnings.append(f"{rel}: kept changing while it was read; skipped this time")
            return
        except OSError as exc:
            report.warnings.append(f"{rel}: cannot read: {exc.strerror}")
            return
        stat = None if st.st_mtime_ns >= racy_after else stat_key(st)
        old = cached.entry if cached is not None else None
        fresh = Entry(
            path=rel,
            kind=kind,
            vv=VersionVector(),
            digest=digest,
            size=st.st_size if kind is EntryKind.FILE else 0,
            mode=synced_mode(st.st_mode),
            mtime_ns=int64(st.st_mtime_ns) if kind is EntryKind.FILE else 0,
            target=target,
        )
        if old is not None and not old.deleted and old.content() == fresh.content():
            # Touched, not changed: no new version.
            index.put(fresh.with_version(old.vv, old.stamp, old.origin), stat, old)
            return
        if old is not None and not old.deleted and old.kind is EntryKind.DIR is not kind:
            # No longer a directory: what was under it is gone. (A directory
            # whose mode changed keeps its contents.)
            self._tombstone_under(index, replica_id, clock, old.path, report)
        noted = self._noted.get(rel)
        if noted is not None and _as_noted(noted, fresh, old):
            # Written by a run stopped before it recorded the write: its version.
            clock.observe(noted.stamp)
            index.put(fresh.with_version(noted.vv, noted.stamp, noted.origin), stat, old)
            return
        vv = (old.vv if old is not None else VersionVector()).bump(replica_id)
        # The write's stamp: when it happened (its mtime), and always after
        # the version it replaces, whatever the clocks say.
        # A time ahead of this machine's clock (a file dated in the future)
        # is not when the write happened: it happened by now.
        written = min(st.st_mtime_ns, time.time_ns())
        stamp = min(max(written, old.stamp + 1 if old is not None else 0), MAX_STAMP)
        clock.observe(stamp)
        index.put(fresh.with_version(vv, stamp, replica_id), stat, old)
        report.changed(rel, old)

    def _tombstone(
        self, index: Index, replica_id: str, clock: HybridClock, entry: Entry, report: ScanReport
    ) -> None:
        """Record a deletion (of a directory: of everything under it too)."""
        if entry.kind is EntryKind.DIR:
            self._tombstone_under(index, replica_id, clock, entry.path, report)
        self._bury(index, replica_id, clock, entry, report)

    def _tombstone_under(
        self, index: Index, replica_id: str, clock: HybridClock, directory: str, report: ScanReport
    ) -> None:
        gone = dir_fds.last_change_above(self._root, directory)  # the same for all of them
        for child in index.live_under(directory):  # deepest first
            if self._left_out(child.path, child, self.ignore.ignored):
                index.forget(child)  # ignored now: no tombstone, as for one still there
            else:
                self._bury(index, replica_id, clock, child, report, gone)

    def _bury(
        self,
        index: Index,
        replica_id: str,
        clock: HybridClock,
        entry: Entry,
        report: ScanReport,
        gone: int | None = None,
    ) -> None:
        # When the deletion happened, at the latest (``gone``: see
        # last_change_above), not when this scan came to see it: a write
        # made elsewhere in between is the later one. And after the version
        # it deletes.
        noted = self._noted.get(entry.path)
        if noted is not None and noted.deleted and _as_noted(noted, noted, entry):
            # Removed by a run stopped before it recorded the removal.
            clock.observe(noted.stamp)
            index.put(noted, None, entry)
            report.gone(entry.path)
            return
        now = clock.tick()
        gone = gone or dir_fds.last_change_above(self._root, entry.path)
        stamp = max(now if gone is None else min(now, gone), entry.stamp + 1)
        index.put(entry.tombstone(entry.vv.bump(replica_id), stamp, replica_id), None, entry)
        report.gone(entry.path)

    def _left_out(self, rel: str, entry: Entry, ignored: Callable[[str, bool], bool]) -> bool:
        """Whether an indexed path is left out by the ignore files (not by
        a run's --exclude, which keeps its row as it is)."""
        is_dir = entry.kind is EntryKind.DIR
        return ignored(rel, is_dir) and not self.ignore.excluded_by_option(rel, is_dir)

    def _forget(self, index: Index, rel: str) -> None:
        cached = index.get(rel)
        if cached is None:
            return
        if cached.entry.kind is EntryKind.DIR:
            for child in index.live_under(rel):
                index.forget(child)
        index.forget(cached.entry)

    # -- reading ---------------------------------------------------------

    def read(self, entry: Entry) -> Iterator[bytes] | Unreadable:
        """The content of a file, or why not: it is gone, is no longer a
        regular file, or changed size since the scan (GONE), or it cannot
        be read (permission denied, an I/O error...). Other changes are
        caught by the receiver, which checks the blake3 digest.

        The file is opened in its directory, reached from the root one
        component at a time, none followed if it is a link (as writes are,
        see dir_fds.py): a directory swapped for a symlink since the scan
        makes the file gone, and nothing outside the replica is ever opened.
        The directories stay open for the next reads until end_reads."""
        parent, _, name = entry.path.rpartition("/")
        try:
            fd = open_to_read(name, dir_fd=self._read_dirs.get(parent))
        except NotADirectory:
            return GONE
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                return GONE
            return Unreadable(f"cannot read it: {exc.strerror or exc}")
        st = os.fstat(fd)
        if not st_mod.S_ISREG(st.st_mode) or st.st_size != entry.size:
            os.close(fd)
            return GONE
        return OpenFile(fd, st.st_size)

    def end_reads(self) -> None:
        """Close the directories of this batch of reads: the next one walks
        to them again (one swapped for a link meanwhile is not followed)."""
        self._read_dirs.close()

    # -- writing ---------------------------------------------------------

    def write_items(
        self, items: Iterable[WriteItem], index: Index, clock: HybridClock
    ) -> Generator[tuple[WriteItem, Outcome], None, None]:
        """Write each item; yield it with its outcome once that is known.

        Once a run has many new files, they go to a placing process
        (sources/placer.py) and their outcomes come later. Any other write
        first waits for every file handed over, so the writes still happen
        in the order given, as if made here one by one."""
        handed = _Handed()
        try:
            for item in items:
                entry = item.entry
                rel = check_relpath(entry.path)
                if self.ignore.ignored(rel, entry.kind is EntryKind.DIR):  # deleted or not
                    yield item, Outcome(rel, False, "ignored on this replica")
                    continue
                if rel in handed.live:  # its index row is still to come
                    yield from self._settle(handed, index, clock, wait=True)
                cached = index.get(rel)
                current = cached.entry if cached is not None else None
                if leaf_of(current) != item.expect:
                    yield item, Outcome(rel, False, _CHANGED_SINCE_COMPARISON)
                    continue
                child = self._placer_for(item, current)
                if child is not None:
                    yield from self._hand_over(child, item, current, handed, index, clock)
                    continue
                if self._placer is not None and self._placer.busy:
                    yield from self._settle(handed, index, clock, wait=True)
                yield item, self._write(item, rel, cached, index, clock)
            if self._placer is not None and self._placer.busy:
                yield from self._settle(handed, index, clock, wait=True)
        except BaseException:
            self._stop_placer()  # what it placed and nobody recorded, the next scan finds
            raise

    def _placer_for(self, item: WriteItem, current: Entry | None) -> Placer | None:
        """The placing process, for a new file with its content, once this
        replica has been given enough of them to make it worth forking."""
        entry = item.entry
        if (
            entry.kind is not EntryKind.FILE
            or entry.deleted
            or item.data is None
            or not (current is None or current.deleted)
        ):
            return None
        if self._placer is None and not self._placer_tried:
            self._new_files += 1
            if self._new_files >= placer.MIN_FILES:
                self._placer_tried = True
                self._placer = Placer.start(self._root, self._flush_intents)
        return self._placer

    def _hand_over(
        self,
        child: Placer,
        item: WriteItem,
        current: Entry | None,
        handed: _Handed,
        index: Index,
        clock: HybridClock,
    ) -> Iterator[tuple[WriteItem, Outcome]]:
        entry = item.entry
        assert item.data is not None
        parent = entry.path.rpartition("/")[0]
        if parent not in self._writable:
            with contextlib.suppress(OSError, NotADirectory):  # the child says what is wrong
                self._open_up(parent, self._dirs.get(parent))
        handed.live[entry.path] = (item, current)
        self._intents.note(entry)  # the placer has it noted before anything goes to its child
        try:
            child.hand_over(entry.path, entry.mode, entry.mtime_ns, entry.digest, item.data)
        except OSError as exc:  # reading the content (the child drops the file)
            del handed.live[entry.path]
            handed.dropped[entry.path] += 1
            yield item, self._failed(entry.path, exc)
        yield from self._settle(handed, index, clock, wait=False)

    def _settle(
        self,
        handed: _Handed,
        index: Index,
        clock: HybridClock,
        *,
        wait: bool,
    ) -> Iterator[tuple[WriteItem, Outcome]]:
        """Record what the placing process placed (``wait``: everything)."""
        assert self._placer is not None
        for answer in self._placer.answers(wait=wait):
            if handed.dropped[answer.path]:  # answers come in order: the older one
                handed.dropped[answer.path] -= 1
                if not handed.dropped[answer.path]:
                    del handed.dropped[answer.path]
                continue  # its outcome was given when its content failed
            item, current = handed.live.pop(answer.path)
            rel = answer.path
            if answer.placed is not None:
                key, mtime_ns = answer.placed
                yield item, self._record(item.entry, key, mtime_ns, current, index, clock)
            elif answer.error is not None:
                yield item, self._failed(rel, answer.error)
            else:
                yield item, Outcome(rel, False, answer.refused or "not placed")

    def _flush_intents(self) -> None:
        """Make the writes noted durable, before any of them is made."""
        try:
            self._intents.flush()
        except OSError as exc:
            raise LocalIOError(f"{self._intents.path}: {exc.strerror or exc}") from exc

    def written(self) -> None:
        """Every write of the batch is in the index (committed): none is
        left for a scan to recognize."""
        self._intents.clear()

    def _stop_placer(self) -> None:
        child, self._placer = self._placer, None
        if child is not None:
            child.close()

    def _write(
        self, item: WriteItem, rel: str, cached: Cached | None, index: Index, clock: HybridClock
    ) -> Outcome:
        entry = item.entry
        current = cached.entry if cached is not None else None
        if cached is not None and item.data is None and _version_only(entry, cached.entry):
            # Only the index changes, and the disk is not looked at: what
            # changed there since the scan (the stat the index keeps says),
            # the next scan finds, as a change made after this version.
            return self._record(entry, cached.stat, cached.entry.mtime_ns, current, index, clock)
        placed = None  # the stat of what was written, where known
        try:
            spot = self._spot_for(rel, entry, cached)
            if spot is not None:
                on_disk = self._verify_unchanged(spot, cached, entry)
                placed = self._put(spot, item, on_disk, current)
        except (Refused, NotADirectory) as refusal:
            _drain(item)
            return Outcome(rel, False, refusal.message)
        except OSError as exc:
            _drain(item)
            return self._failed(rel, exc)
        if entry.deleted:
            return self._record(entry, None, 0, current, index, clock)
        if placed is _UNTRUSTED:  # the stat cache leaves it out: the next scan reads it
            return self._record(entry, None, entry.mtime_ns, current, index, clock)
        assert spot is not None
        st = placed or os.stat(spot.name, dir_fd=spot.fd, follow_symlinks=False)
        return self._record(entry, stat_key(st), st.st_mtime_ns, current, index, clock)

    def _put(
        self, spot: _Spot, item: WriteItem, on_disk: os.stat_result | None, current: Entry | None
    ) -> os.stat_result | None:
        """Write ``item`` at ``spot`` (noted first, see write_intents.py);
        the stat of the file written, where known."""
        entry = item.entry
        self._intents.note(entry)
        self._flush_intents()
        if entry.kind is EntryKind.FILE and item.data is None and not entry.deleted:
            return self._put_file(spot, entry, on_disk, item.data, current)
        self._open_up(spot.rel.rpartition("/")[0], spot.fd)  # a name made, replaced or removed
        if entry.deleted:
            self._remove(spot, on_disk)
        elif entry.kind is EntryKind.DIR:
            self._put_dir(spot, entry, on_disk)
        elif entry.kind is EntryKind.LINK:
            self._put_link(spot, entry, on_disk)
        else:
            return self._put_file(spot, entry, on_disk, item.data, current)
        return None

    def _failed(self, rel: str, exc: OSError) -> Outcome:
        """A write that failed: the run goes on, unless the disk is full."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise LocalIOError(f"{self.abs(rel)}: {exc.strerror}") from exc
        return Outcome(rel, False, exc.strerror or str(exc))

    @staticmethod
    def _record(
        entry: Entry,
        key: bytes | None,
        mtime_ns: int,
        current: Entry | None,
        index: Index,
        clock: HybridClock,
    ) -> Outcome:
        """Record a write in the index: ``key`` and ``mtime_ns`` as the
        stat cache has them (a racy mtime is left out of the cache, so the
        next scan reads the file again)."""
        clock.observe(entry.stamp)
        stat = None
        if not entry.deleted:
            stat = None if mtime_ns >= time.time_ns() - RACY_NS else key
            if entry.kind is EntryKind.FILE and entry.mtime_ns != mtime_ns:
                entry = dataclasses.replace(entry, mtime_ns=mtime_ns)
        index.put(entry, stat, current)
        return Outcome(entry.path, True)

    def _spot_for(self, rel: str, entry: Entry, cached: Cached | None) -> _Spot | None:
        """Where ``entry`` is written; None for a tombstone whose parent is
        gone or is no directory now (nothing to remove, if the index agrees)."""
        try:
            return self._spot(rel, create=not entry.deleted)
        except (FileNotFoundError, NotADirectory):
            if not entry.deleted:
                raise
            if cached is not None and not cached.entry.deleted:
                raise Refused("deleted on the destination since the scan") from None
            return None

    def _spot(self, rel: str, *, create: bool) -> _Spot:
        """Where ``rel`` is written: its parent, open (``create``: made if
        missing), and its name in it."""
        parent, _, name = rel.rpartition("/")
        return _Spot(rel, self._dirs.get(parent, create=create), name)

    def _lstat(self, spot: _Spot) -> os.stat_result | None:
        try:
            return os.stat(spot.name, dir_fd=spot.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _verify_unchanged(
        self, spot: _Spot, cached: Cached | None, entry: Entry
    ) -> os.stat_result | None:
        """The destination must hold exactly what its index says (an
        unindexed directory may be adopted: it holds no content itself).
        A new file is not looked for here: it is renamed into place only
        where nothing is (see file_write.place_new)."""
        known = cached is not None and not cached.entry.deleted
        if not known and entry.kind is EntryKind.FILE and not entry.deleted:
            return None
        st = self._lstat(spot)
        if st is None:
            if known:
                raise Refused("deleted on the destination since the scan")
            return None
        if not known:
            if st_mod.S_ISDIR(st.st_mode) and entry.kind is EntryKind.DIR and not entry.deleted:
                return st
            raise Refused(IN_THE_WAY)
        assert cached is not None
        if cached.stat == stat_key(st):
            return st
        if cached.entry.kind is EntryKind.FILE and kind_of(st.st_mode) is EntryKind.FILE:
            try:
                digest, st2 = self.hash_file(spot.rel, spot.fd)
            except (OSError, FileChanged):
                raise Refused("changed on the destination since the scan") from None
            if digest == cached.entry.digest and _same_mode(st2, cached.entry):
                return st2
        elif cached.entry.kind is EntryKind.DIR and kind_of(st.st_mode) is EntryKind.DIR:
            # Its stat moves with what is written in it; what it holds of
            # its own is its mode.
            if synced_mode(st.st_mode) == self._dir_mode_on_disk(spot.rel, cached.entry):
                return st
        elif cached.entry.kind is EntryKind.LINK and kind_of(st.st_mode) is EntryKind.LINK:
            # A racy link (written within the last seconds): its target says.
            try:
                target = self._readlink(spot.rel, spot.fd)
            except OSError:
                raise Refused("changed on the destination since the scan") from None
            if link_digest(target) == cached.entry.digest:
                return st
        raise Refused("changed on the destination since the scan")

    def _dir_mode_on_disk(self, rel: str, entry: Entry) -> int:
        """The synced mode a directory indexed as ``entry`` has on disk: its
        own, unless this run wrote it read-only (its owner may write in it
        until finish, see _put_dir)."""
        final = self._final_modes.get(rel)
        mode = synced_mode(entry.mode)
        return mode | 0o700 if final is not None and synced_mode(final) == mode else mode

    def end_batch(self) -> None:
        """Close the directories of this batch: the next one walks to them again."""
        self._dirs.close()
        self._writable.clear()

    def _remove(self, spot: _Spot, on_disk: os.stat_result | None) -> None:
        if on_disk is None:
            return
        if st_mod.S_ISDIR(on_disk.st_mode):
            self._dirs.forget(spot.rel)
            self._writable.clear()  # its name may be a new directory's
            try:
                os.rmdir(spot.name, dir_fd=spot.fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise Refused("directory is not empty on the destination") from None
                raise
        else:
            self._recheck(spot, on_disk)  # not edited since it was verified
            os.unlink(spot.name, dir_fd=spot.fd)

    def _put_dir(self, spot: _Spot, entry: Entry, on_disk: os.stat_result | None) -> None:
        if on_disk is not None and kind_of(on_disk.st_mode) is not EntryKind.DIR:
            self._remove(spot, on_disk)
        # A read-only directory gets its mode once its contents are in (as
        # rsync does): until finish(), its owner may write in it. Noted
        # first: a run stopped before then must not leave it so.
        mode = synced_mode(entry.mode)
        if on_disk is not None and kind_of(on_disk.st_mode) is EntryKind.DIR:
            mode = _mode_in_place(on_disk, entry)  # its setgid (a shared group's, say) stays
        read_only = mode & 0o700 != 0o700
        if read_only:
            self._notes.note(spot.rel, mode, found=False)
        made = on_disk is None or kind_of(on_disk.st_mode) is not EntryKind.DIR
        if made:
            os.mkdir(spot.name, 0o700, dir_fd=spot.fd)
        try:
            if read_only:
                self._final_modes[spot.rel] = mode
                _chmod(spot, mode | 0o700)
            else:
                self._final_modes.pop(spot.rel, None)
                _chmod(spot, mode)
        except OSError:
            # Not left half made (at 0o700, which the next scan would take
            # for an edit made here): as if never written.
            if made:
                self._final_modes.pop(spot.rel, None)
                with contextlib.suppress(OSError):
                    os.rmdir(spot.name, dir_fd=spot.fd)
            raise
        self._writable.add(spot.rel)

    def _open_up(self, directory: str, fd: int) -> None:
        """Let its owner write in ``directory`` (open as ``fd``): one found
        read-only is made writable until finish(), which puts its mode
        back, noted first as _put_dir does."""
        if directory in self._writable:
            return
        mode = st_mod.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o700 != 0o700 and directory not in self._final_modes:
            self._notes.note(directory, mode, found=True)
            try:
                os.chmod(fd, mode | 0o700)
            except PermissionError:
                pass  # not ours: the write finds out what it may do there
            else:
                self._final_modes[directory] = mode
        self._writable.add(directory)

    def finish(self) -> None:
        """Give directories written read-only, and those made writable to
        write in them, their mode, deepest first."""
        self._stop_placer()
        try:
            for rel in _deepest_first(self._final_modes):
                with contextlib.suppress(OSError, NotADirectory):  # removed meanwhile
                    os.chmod(self._dirs.get(rel), self._final_modes[rel])
            if self._notes.taken:
                self._notes.clear()
        finally:
            self._final_modes.clear()
            self._writable.clear()
            self._dirs.close()
            self._read_dirs.close()

    def resume(self, index: Index) -> None:
        """Give the directories a run stopped before its end left writable
        the mode they were to get (see final_modes.py), so that the next
        scan does not take that for a change made here: the mode one found
        read-only had; for one written read-only, the mode the index says,
        or the one noted where the index has no row for it. Only one still
        as that run left it (all of its owner's bits, none it did not give
        it) is changed."""
        noted = self._notes.read()
        if noted is None:
            return
        try:
            for rel in _deepest_first(noted):
                left, found = noted[rel]
                mode = left
                cached = index.get(rel) if rel and not found else None
                if cached is not None and not cached.entry.deleted:
                    if cached.entry.kind is not EntryKind.DIR:
                        continue
                    mode = synced_mode(cached.entry.mode) | (left & LOCAL_MODE)
                with contextlib.suppress(OSError, NotADirectory):  # gone, or no directory now
                    fd = self._dirs.get(rel)
                    now = st_mod.S_IMODE(os.fstat(fd).st_mode)
                    if now != mode and now & 0o700 == 0o700 and now & ~(left | 0o700) == 0:
                        os.chmod(fd, mode)
            self._notes.clear()
        finally:
            self._dirs.close()

    def _put_link(self, spot: _Spot, entry: Entry, on_disk: os.stat_result | None) -> None:
        if link_digest(entry.target) != entry.digest:
            raise Refused("link target does not match its digest")
        tmp = temp_name(spot.name)
        try:
            os.symlink(entry.target, tmp, dir_fd=spot.fd)
            self._clear_dir_in_way(spot, on_disk)
            self._recheck(spot, on_disk)
            os.replace(tmp, spot.name, src_dir_fd=spot.fd, dst_dir_fd=spot.fd)
        except BaseException:
            unlink_quietly(tmp, spot.fd)
            raise

    def _put_file(
        self,
        spot: _Spot,
        entry: Entry,
        on_disk: os.stat_result | None,
        data: Iterable[bytes] | None,
        current: Entry | None,
    ) -> os.stat_result | None:
        """Write a file's content (None: the same bytes are there, only the
        mode and mtime change); returns its stat once placed, if known
        (_UNTRUSTED: see _touch_up)."""
        if data is None:
            # Same bytes already there (a mode or version change).
            if (
                current is None
                or current.deleted
                or current.kind is not EntryKind.FILE
                or current.digest != entry.digest
                or on_disk is None
            ):
                raise Refused("content missing for a changed file")
            return self._touch_up(spot, entry, on_disk)

        def replace(tmp: str) -> None:
            self._clear_dir_in_way(spot, on_disk)
            self._recheck(spot, on_disk)
            os.replace(tmp, spot.name, src_dir_fd=spot.fd, dst_dir_fd=spot.fd)

        def new(tmp: str) -> None:
            place_new(tmp, spot.name, spot.fd)

        place = new if on_disk is None else replace
        return write_file(
            spot.fd,
            spot.name,
            entry.mode,
            entry.mtime_ns,
            entry.digest,
            data,
            place,
            _owner_kept(on_disk),
        )

    def _touch_up(self, spot: _Spot, entry: Entry, on_disk: os.stat_result) -> os.stat_result:
        """Give a file that already holds ``entry``'s bytes (``on_disk``,
        just verified) its mode and mtime, through a descriptor of that very
        file, checked unchanged first: a file edited or saved over since is
        refused, not touched. Returns its stat for the stat cache, or _UNTRUSTED
        when a write meanwhile cannot be ruled out (setting the mtime would
        hide one), so that the next scan reads the file again instead of
        taking an edit for the old content."""
        try:
            fd = open_to_read(spot.name, dir_fd=spot.fd)
        except PermissionError:  # a file we may not read: by its name
            self._recheck(spot, on_disk)
            if not _same_mode(on_disk, entry):
                _chmod(spot, _mode_in_place(on_disk, entry))
            if on_disk.st_mtime_ns != entry.mtime_ns:
                times = (entry.mtime_ns, entry.mtime_ns)
                os.utime(spot.name, ns=times, dir_fd=spot.fd, follow_symlinks=False)
            return _UNTRUSTED
        try:
            before = os.fstat(fd)
            if stat_key(before) != stat_key(on_disk):
                raise Refused("changed on the destination during the transfer")
            if not _same_mode(before, entry):
                os.chmod(fd, _mode_in_place(before, entry))
            moved = before.st_mtime_ns != entry.mtime_ns
            if moved:
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if moved or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            return _UNTRUSTED
        return after

    def _clear_dir_in_way(self, spot: _Spot, on_disk: os.stat_result | None) -> None:
        if on_disk is not None and st_mod.S_ISDIR(on_disk.st_mode):
            self._remove(spot, on_disk)

    def _recheck(self, spot: _Spot, on_disk: os.stat_result | None) -> None:
        """Compare-and-swap: the destination is as we saw it just now."""
        st = self._lstat(spot)
        if on_disk is not None and st_mod.S_ISDIR(on_disk.st_mode):
            on_disk = None  # we removed it ourselves
        if (st is None) != (on_disk is None) or (
            st is not None and on_disk is not None and stat_key(st) != stat_key(on_disk)
        ):
            raise Refused("changed on the destination during the transfer")


@dataclass(slots=True)
class _Handed:
    """Files with the placing process, by path. Those it was told to drop
    (their content failed on the way) are counted: their answers, whatever
    they say, come before those of a later file at the same path."""

    live: dict[str, tuple[WriteItem, Entry | None]] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)


class _Spot(NamedTuple):
    """Where an entry is written: its path, its parent (open), its name there."""

    rel: str
    fd: int
    name: str


def _same_mode(st: os.stat_result, entry: Entry) -> bool:
    """Whether what is on disk has ``entry``'s mode, as far as it is synced."""
    return synced_mode(st.st_mode) == synced_mode(entry.mode)


def _mode_in_place(st: os.stat_result, entry: Entry) -> int:
    """The mode that gives a file or directory (``st``) ``entry``'s synced
    bits, keeping its own setuid and setgid (see model.SYNCED_MODE)."""
    return synced_mode(entry.mode) | (st.st_mode & LOCAL_MODE)


def _chmod(spot: _Spot, mode: int) -> None:
    os.chmod(spot.name, mode, dir_fd=spot.fd, follow_symlinks=False)


def _deepest_first(paths: Iterable[str]) -> list[str]:
    """Replica paths, each before the directories above it ("" is the root)."""
    return sorted(paths, key=lambda r: r.count("/") + bool(r), reverse=True)


def _storable(text: str) -> bool:
    """Text the index and the protocol can carry (os.fsdecode escapes bytes
    that are not UTF-8 as lone surrogates, which they cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _kept(raw: bytes) -> tuple[int, list[str]] | None:
    """What a scan kept of a listing, as stored with its sum (None when it
    does not parse: then the directory is scanned in full)."""
    try:
        kept = msgpack.unpackb(raw)
    except (ValueError, msgpack.UnpackException):
        return None
    if (
        isinstance(kept, list)
        and len(kept) == 2
        and isinstance(kept[0], int)
        and isinstance(kept[1], list)
        and all(isinstance(name, str) and name and "/" not in name for name in kept[1])
    ):
        return kept[0], kept[1]
    return None


def _stored_dirs(index: Index, key: str) -> set[str] | None:
    """The directories the last scan left to re-list or walk again (RELIST,
    REWALK); None when what is stored does not parse: then the scan walks
    everything."""
    raw = index.meta(key)
    if raw is None:
        return set()
    try:
        dirs = msgpack.unpackb(raw) if isinstance(raw, bytes) else None
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        return None
    return set(dirs)


def _below_any(path: str, tops: set[str]) -> bool:
    """True when one of ``tops`` is ``path`` or a directory above it."""
    while path:
        if path in tops:
            return True
        path = path.rpartition("/")[0]
    return False


def _owner_kept(on_disk: os.stat_result | None) -> tuple[int, int] | None:
    """Whom a file replaced with new content is to belong to: whoever owned
    the file it replaces, where that is someone else and this process may
    give files away (root, as rsync -a keeps it); else None, the writer."""
    if on_disk is None or os.geteuid() != 0:
        return None
    owner = (on_disk.st_uid, on_disk.st_gid)
    return owner if owner != (os.geteuid(), os.getegid()) else None


def _as_noted(noted: Entry, found: Entry, old: Entry | None) -> bool:
    """Whether ``found`` (what a scan reads) is what the write noted as
    ``noted`` made of ``old`` (what the index holds): the same content, at a
    version that is no older (every write records one that dominates what
    it replaces)."""
    return noted.content() == found.content() and (old is None or noted.vv.dominates(old.vv))


def _version_only(entry: Entry, current: Entry) -> bool:
    """Whether writing ``entry`` over ``current`` changes its version only
    (same kind, content and mode; a file's mtime too): then the file,
    directory or link on disk is left as it is, not made again or touched
    (its ctime, a link's inode, a change of mode made meanwhile to a
    directory all stay)."""
    return (
        not entry.deleted
        and not current.deleted
        and current.same_content(entry)
        and (entry.kind is not EntryKind.FILE or current.mtime_ns == entry.mtime_ns)
    )


def _drain(item: WriteItem) -> None:
    """Consume the rest of a refused item's data so a stream stays in step."""
    if item.data is not None:
        for _ in item.data:
            pass
