"""A directory tree as a source of entries: scanning it into the index,
reading file content, and (directory_write.py) writing versions into it.

Reads reach a file through its directories, from the root, never through a
symlink (dir_fds.py), as writes do.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat as st_mod
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from merklesync import journal
from merklesync.clock import MAX_STAMP, HybridClock, VersionVector
from merklesync.ignore import STATE_DIR, IgnoreRules
from merklesync.index import FIRST_SCAN, TOMBSTONE, Index
from merklesync.model import (
    GONE,
    Entry,
    EntryKind,
    Outcome,
    ScanReport,
    Unreadable,
    WriteItem,
    found_version,
    int64,
    synced_mode,
)
from merklesync.reading import OpenFile, open_to_read
from merklesync.sources import dir_fds, prehash, prelist, write_intents
from merklesync.sources.dir_fds import DIR_FLAGS, DirFds, NotADirectory, open_dir
from merklesync.sources.directory_write import DirectoryWriter
from merklesync.sources.listing import Listing, listing_sum, refused_name, stat_key
from merklesync.sources.on_disk import KINDS, RACY_NS, FileChanged, hash_open_file, link_digest

# A long walk commits what it found this often (seconds), so that one cut
# short (Ctrl-C, a crash, a reboot) keeps it: a first scan of millions of
# files starts again where it stopped, mostly (see DirectorySource._keep_so_far).
SCAN_COMMIT_EVERY = 30.0
HASH_RETRIES = 3
WATCH_TOKEN = "watch_token"  # index meta: the journal token the last scan covered
RELIST = "relist"  # index meta: directories every partial scan re-lists (_Scan.relist)
# Index meta: directories every partial scan walks deep, whatever a watcher
# says: those whose ignore file is a symlink or has other hard links, since
# its rules can change without an event in the tree (IgnoreRules.volatile).
REWALK = "rewalk"

_ABSENT = b"absent"  # not in the stat cache (never a packed stat, nor TOMBSTONE)

# A file open_to_read cannot reach for these is not there (any more) as the
# scan saw it: a name gone, a directory on its way replaced, a link.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR})


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
    # The first scan of a replica made as a copy (until one ends: see
    # index.FIRST_SCAN): what it finds gets the version of its content.
    first: bool = False


_Subdir = tuple[str, tuple[int, int] | None]  # a path, and its (device, inode) when listed


class DirectorySource:
    def __init__(self, root: Path, ignore: IgnoreRules) -> None:
        self.root = root
        self.ignore = ignore
        self._root = str(root)
        # Writes noted before they are made (write_intents.py), by the
        # writer; during a scan, those an interrupted run noted, by path.
        self._intents = write_intents.Intents(root / STATE_DIR)
        self._noted: dict[str, Entry] = {}
        # The directories this batch of reads reads from (see read).
        self._read_dirs = DirFds(self._root)
        self._writer = DirectoryWriter(self, self._intents)
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

    def readlink(self, rel: str, dir_fd: int | None) -> str:
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
        scan.first = index.meta(FIRST_SCAN) is not None
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
        if scan.first:  # it ended: from now on, what is new here is this replica's write
            index.set_meta(FIRST_SCAN, None)
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
            if self._rules_unread(directory, scan):
                return []
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
        if self._rules_unread(directory, scan):
            return []
        if scan.shortcuts:
            subdirs = self._unchanged(directory, scan, listing.digest(), listing.identity)
            if subdirs is not None:
                return subdirs
        return self._scan_listing(directory, listing, ignored, scan, dir_fd)

    def _rules_unread(self, directory: str, scan: _Scan) -> bool:
        """When the ignore rules in force in ``directory`` cannot be read:
        said, and what the index knew of it is kept as it was (as for a
        directory that cannot be listed), so that nothing they were meant
        to leave out is taken in meanwhile."""
        why = self.ignore.unread(directory)
        if why is None:
            return False
        scan.report.warnings.append(
            f"{why}; {directory or '.'} is left as it was, and out of runs, until it can be read"
        )
        scan.relist.add(directory)
        return True

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
        kinds, checksum = KINDS, scan.checksum
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
                first=scan.first,
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
        first: bool = False,
    ) -> None:
        """Read one new or changed entry into the index (``indexed``: the
        index may hold a row for it; False spares the look-up; ``dir_fd``:
        its directory, open, where it is read from; ``hashed``: a file's
        digest, read with the stat ``st`` by whoever hashed it ahead;
        ``first``: a replica's first scan, see found_version)."""
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
                target = self.readlink(rel, dir_fd)
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
        base = old.vv if old is not None else None
        if old is None and (gone := index.forgotten(rel)) is not None:
            if gone.same_content(fresh):  # as it was when it became ignored: that version
                index.put(fresh.with_version(gone.vv, gone.stamp, gone.origin), stat, None)
                report.changed(rel, None)
                return
            base = gone.vv
        # Found by the first scan of a replica made as a copy: no write of its
        # own, the version of its content (its origin: where it was found).
        found = base is None and first
        vv = found_version(fresh) if found else (base or VersionVector()).bump(replica_id)
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
        if noted is not None and _replacing(noted, entry):
            # Removed by a run stopped before it put the new entry in its
            # place: no deletion made here. The path is no longer known
            # here, and the next run brings the new version.
            index.drop(entry)
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
        return self.read_at(entry.path, entry.size)

    def read_at(self, path: str, size: int) -> Iterator[bytes] | Unreadable:
        """The content of the file at ``path``, as read() reads an entry's
        of ``size`` bytes."""
        parent, _, name = path.rpartition("/")
        try:
            fd = open_to_read(name, dir_fd=self._read_dirs.get(parent))
        except NotADirectory:
            return GONE
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                return GONE
            return Unreadable(f"cannot read it: {exc.strerror or exc}")
        st = os.fstat(fd)
        if not st_mod.S_ISREG(st.st_mode) or st.st_size != size:
            os.close(fd)
            return GONE
        return OpenFile(fd, st.st_size)

    def end_reads(self) -> None:
        """Close the directories of this batch of reads: the next one walks
        to them again (one swapped for a link meanwhile is not followed)."""
        self._read_dirs.close()

    # -- writing (directory_write.py) -----------------------------------

    def write_items(
        self, items: Iterable[WriteItem], index: Index, clock: HybridClock
    ) -> Generator[tuple[WriteItem, Outcome], None, None]:
        """Write each item; yield it with its outcome once that is known
        (see DirectoryWriter.write_items)."""
        return self._writer.write_items(items, index, clock)

    def written(self) -> None:
        """Every write of the batch is in the index (committed)."""
        self._writer.written()

    def end_batch(self) -> None:
        """Close the directories of this batch: the next one walks to them again."""
        self._writer.end_batch()

    def finish(self) -> None:
        """The end of a run's writes and reads (see DirectoryWriter.finish)."""
        try:
            self._writer.finish()
        finally:
            self._read_dirs.close()

    def resume(self, index: Index) -> None:
        """What a run stopped before its end left (see DirectoryWriter.resume)."""
        self._writer.resume(index)


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


def _replacing(noted: Entry, old: Entry) -> bool:
    """Whether ``noted`` is a write that puts an entry of another kind in
    place of ``old`` (a directory for a file or a link, or the reverse):
    the one write that removes what is there before it makes the new
    entry, so that a run stopped in between leaves neither."""
    return (
        not noted.deleted
        and noted.kind is not old.kind
        and EntryKind.DIR in (noted.kind, old.kind)
        and noted.vv.dominates(old.vv)
    )


def _as_noted(noted: Entry, found: Entry, old: Entry | None) -> bool:
    """Whether ``found`` (what a scan reads) is what the write noted as
    ``noted`` made of ``old`` (what the index holds): the same content, at a
    version that is no older (every write records one that dominates what
    it replaces)."""
    return noted.content() == found.content() and (old is None or noted.vv.dominates(old.vv))
