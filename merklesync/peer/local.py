"""A replica opened in this process."""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from merklesync import merkle
from merklesync.errors import MerklesyncError, ProtocolError, ReadOnlyReplica
from merklesync.ignore import exclude_predicate
from merklesync.merkle import NodeId
from merklesync.model import GONE, Entry, EntryKind, Stats, Unreadable
from merklesync.peer import Node, Outcome, Peer, Progress, ScanReport, WriteItem
from merklesync.replica import ChildScan, Replica

COMMIT_EVERY = 2000  # entries written between index commits: progress survives a crash


def local_replica(peer: Peer) -> Replica | None:
    """The replica behind a local peer (None for a remote one)."""
    return peer.replica if isinstance(peer, LocalPeer) else None


class Included:
    """What a run between ``peers`` compares: what --exclude's patterns and
    the ignore rules of each local replica leave in, as they are after the
    scans. A path a replica leaves out is none of the run's business: its
    scan keeps it out of its index, and one that has just begun to leave
    it out (a rule that came with this very run) must not find it newer
    elsewhere, nor be asked to write it. ``left_out``: whether a replica's
    rules left out a path that differed (the run then proves less: see
    retention.after_run)."""

    def __init__(self, excludes: Sequence[str], peers: Sequence[Peer]) -> None:
        self._by_option = exclude_predicate(excludes)
        self._rules = [r.source.ignore for r in filter(None, map(local_replica, peers))]
        self.left_out = False

    def __call__(self, path: str, is_dir: bool) -> bool:
        if not self._by_option(path, is_dir):
            return False
        for rule in self._rules:  # a loop, not any(): asked once for every difference
            if rule.ignored(path, is_dir):
                self.left_out = True
                return False
        return True


class TooManyEntries(ProtocolError):
    """More entries asked for at once than an answer may hold."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"entries_under: the answer would hold over {limit} entries")


class LocalPeer:
    local = True

    def __init__(self, replica: Replica, name: str | None = None) -> None:
        self.replica = replica
        self.name = name or str(replica.root)
        self.replica_id = replica.replica_id
        self.stats = Stats()
        self._ahead: tuple[bool, ChildScan] | None = None  # see scan_ahead

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        create: bool = False,
        preview: bool = False,
        excludes: Sequence[str] = (),
    ) -> LocalPeer:
        """See Replica.open; named as given (a preview may look elsewhere).
        A replica on a read-only file system opens for reading (see write)."""
        replica = Replica.open(
            root, create=create, preview=preview, excludes=excludes, read_only_ok=True
        )
        try:
            return cls(replica, str(root.resolve()))
        except BaseException:  # (a Ctrl-C): not left open, and locked, in this process
            with contextlib.suppress(Exception):
                replica.close(commit=False)
            raise

    @property
    def read_only(self) -> bool:
        return self.replica.read_only

    @property
    def copies_locally(self) -> bool:
        return True

    def refresh(
        self, *, checksum: bool = False, progress: Progress | None = None, spread: bool = True
    ) -> ScanReport:
        """``spread``: see Replica.scan."""
        ahead = self._scanned_ahead(checksum)
        if ahead is not None:
            return ahead(progress)
        return self._count(self.replica.scan(checksum=checksum, progress=progress, spread=spread))

    def start_refresh(self, *, checksum: bool = False) -> Callable[[Progress | None], ScanReport]:
        ahead = self._ahead
        if ahead is not None and ahead[0] != checksum:  # another kind of scan: stopped
            self._ahead = None
            ahead[1].cancel()
        if self._ahead is None:
            try:
                # Held as a scan started ahead is: a run that ends before it
                # is waited for stops it (close), before the lock goes.
                self._ahead = checksum, self.replica.start_scan(checksum=checksum)
            except OSError:  # no process to be had (EAGAIN...): the scan waits its turn here
                return lambda progress: self.refresh(
                    checksum=checksum, progress=progress, spread=False
                )
        return lambda progress: self.refresh(checksum=checksum, progress=progress)

    def scan_ahead(self, *, checksum: bool = False) -> None:
        """Start the scan a refresh would do, in a child process, so that it
        runs while the other replica is reached (the first refresh then
        waits for it). Only while this process runs no other thread: else
        the refresh scans, as it would have; nor when a watcher will say
        where to look: that scan is cheaper than starting a process."""
        if self._ahead is not None or threading.active_count() > 1:
            return
        if self.replica.source.watched(checksum=checksum):
            return
        with contextlib.suppress(OSError):  # no process to be had: the refresh scans
            self._ahead = checksum, self.replica.start_scan(checksum=checksum, spread=True)

    def _scanned_ahead(self, checksum: bool) -> Callable[[Progress | None], ScanReport] | None:
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        kind, child = ahead
        if kind != checksum:
            child.cancel()  # another kind of scan: stopped (what it did is kept or redone)
            return None
        return lambda progress: self._count(child.wait(progress))

    def _count(self, report: ScanReport) -> ScanReport:
        self.stats.files_scanned += report.scanned
        self.stats.files_hashed += report.hashed
        return report

    def root(self) -> Node:
        fingerprint, count = self.replica.index.root()
        return Node(fingerprint, count)

    def children(self, nodes: Sequence[NodeId], salt: bytes) -> list[list[Node]]:
        self.stats.round_trips += 1
        index = self.replica.index
        return [
            [Node(merkle.short(salt, fp), count) for fp, count in index.children(node)]
            for node in nodes
        ]

    def compare(
        self, salt: bytes, groups: Sequence[tuple[NodeId, Sequence[bytes]]]
    ) -> tuple[list[Entry], list[bytes]]:
        self.stats.round_trips += 1
        index = self.replica.index
        unlike: set[tuple[bytes, bytes]] = set()
        lacking: list[bytes] = []
        for node, shorts in groups:
            theirs = set(shorts)
            mine = set()
            for key, leaf in index.leaves(node):
                record = merkle.short_record(salt, key, leaf)
                mine.add(record)
                if record not in theirs:
                    unlike.add((key, leaf))
            lacking.extend(s for s in shorts if s not in mine)
        if not unlike:
            return [], lacking
        # A key may be shared by several paths: only the unlike ones go back.
        found = index.by_keys(sorted({key for key, _leaf in unlike}))
        return [e for e in found if (e.key, e.leaf_hash()) in unlike], lacking

    def entries(self, keys: Sequence[bytes]) -> list[Entry]:
        self.stats.round_trips += 1
        return self.replica.index.by_keys(keys)

    def entries_under(self, nodes: Sequence[NodeId], limit: int | None = None) -> list[Entry]:
        """``limit``: fail (TooManyEntries) rather than gather more entries
        than that, reading none for a stored node that holds more."""
        self.stats.round_trips += 1
        index = self.replica.index
        if limit is None:
            return [entry for node in nodes for entry in index.entries_in(node)]
        found: list[Entry] = []
        for node in nodes:
            if node[0] < index.depth and len(found) + index.node(node)[1] > limit:
                raise TooManyEntries(limit)
            found.extend(index.entries_in(node))
            if len(found) > limit:
                raise TooManyEntries(limit)
        return found

    def read(
        self, entries: Sequence[Entry]
    ) -> Iterator[tuple[Entry, Iterator[bytes] | Unreadable]]:
        self.stats.round_trips += 1
        source = self.replica.source
        try:
            for entry in entries:
                yield entry, source.read(entry)
        finally:
            source.end_reads()

    def write(self, items: Iterable[WriteItem], progress: Progress | None = None) -> list[Outcome]:
        self.stats.round_trips += 1
        r = self.replica
        if r.read_only:
            raise ReadOnlyReplica(
                f"replica {r.root} is on a read-only file system: it can be compared and "
                "copied from, not written"
            )
        # Outcomes may come out of order (see DirectoryWriter.write_items);
        # an item given twice is answered in its turns.
        order: dict[int, list[int]] = {}  # id of an item not yet answered -> its places
        outcomes: list[tuple[int, Outcome]] = []

        def numbered() -> Iterator[WriteItem]:
            for n, item in enumerate(items):
                if item.copy_of is not None:
                    item = self._copied(item)
                order.setdefault(id(item), []).append(n)
                yield item

        writes = r.source.write_items(numbered(), r.index, r.clock)
        failed = True
        try:
            for n, (item, outcome) in enumerate(writes, 1):
                places = order[id(item)]
                outcomes.append((places.pop(0), outcome))
                if not places:
                    del order[id(item)]
                if outcome.ok and item.copy_of is not None:
                    self.stats.files_copied += 1
                elif outcome.ok and item.entry.kind is EntryKind.FILE and item.data is not None:
                    self.stats.files_transferred += 1
                    self.stats.bytes_transferred += item.entry.size
                if progress is not None:
                    progress(item.entry.size if item.data is not None else 0)
                if n % COMMIT_EVERY == 0:
                    r.index.commit()
            failed = False
        finally:
            writes.close()  # on a failure here, its placing process stops now
            r.source.end_batch()
            r.source.end_reads()  # of the files copied (see _copied)
            if not failed:
                r.index.commit()
            else:  # keep what is recorded; the first failure is the one to report
                with contextlib.suppress(MerklesyncError):
                    r.index.commit()
        r.source.written()
        outcomes.sort(key=lambda placed: placed[0])
        return [outcome for _n, outcome in outcomes]

    def _copied(self, item: WriteItem) -> WriteItem:
        """An item whose content is to be copied from another of this
        replica's files (``copy_of``), with that file as its content. Only
        a live file the index holds with the item's digest is read (as the
        agent serves reads, see serve._indexed), through its directories
        from the root, none followed if it is a link; the write checks the
        content against the digest as any other. Where there is no such
        file, the item's content fails to be read, and the write with it:
        the caller sends the content instead."""
        entry, path = item.entry, item.copy_of
        assert path is not None
        cached = self.replica.index.get(path)
        known = cached.entry if cached is not None else None
        data: Iterable[bytes] | Unreadable = _NOT_HERE
        if (
            known is not None
            and not known.deleted
            and known.kind is EntryKind.FILE
            and known.digest == entry.digest
            and known.size == entry.size
            and entry.kind is EntryKind.FILE
            and not entry.deleted
        ):
            data = self.replica.source.read_at(path, entry.size)
        if isinstance(data, Unreadable):
            why = _CHANGED_HERE if data is GONE else data.reason
            data = _Unread(f"{path}, to copy it from: {why}")
        return WriteItem(entry, item.expect, data, path)

    def check_not_stale(self, replica_id: str, name: str | None = None) -> None:
        from merklesync import retention  # which reads peers of this module

        try:
            retention.check_not_stale(self.replica, replica_id)
        except retention.StaleReplica as exc:
            if name is None:
                raise
            raise retention.StaleReplica(f"{name}: {exc.message}") from None

    def remember(self, replica_id: str) -> None:
        # As of this run's scan: a tombstone that arrived during the run is
        # not proof that the other side has seen it in a later one.
        self.replica.index.remember_peer(replica_id, self.replica.snapshot_ns)
        self.replica.index.commit()

    def contact(self, replica_id: str) -> None:
        self.replica.index.remember_contact(replica_id, self.replica.snapshot_ns)
        self.replica.index.commit()

    def close(self, *, commit: bool = True) -> None:
        """Close the replica (``commit`` False: the run failed, see
        Replica.close). A scan started ahead and never waited for (the
        run failed first) is stopped, not waited for: a first scan can take
        long. It writes the index under this process's lock, so it is gone
        before the lock is."""
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None:
                ahead[1].cancel()
        finally:
            self.replica.close(commit=commit)


_NOT_HERE = Unreadable("not here with that content")
_CHANGED_HERE = "changed or gone here since the scan"


class _Unread:
    """Content that fails once read, as a file that cannot be read does;
    then ends (what is drained of a failed item)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.failed = False

    def __iter__(self) -> _Unread:
        return self

    def __next__(self) -> bytes:
        if self.failed:
            raise StopIteration
        self.failed = True
        raise OSError(errno.ENOENT, self.reason)
