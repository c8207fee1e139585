"""Writing versions into a directory tree, safely.

Each write goes to a temp file in the destination directory, is verified
against the blake3 digest, gets its mode and mtime, and is renamed into
place only if the destination still holds what the index says it holds
(compare-and-swap); a write that changes a version only touches the index.
Writes reach a file through its directories, from the root, never through
a symlink (dir_fds.py); each that reaches the disk is noted first
(write_intents.py), and many new files go to a placing process (placer.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat as st_mod
import time
from collections import Counter
from collections.abc import Container, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from merklesync.clock import HybridClock
from merklesync.errors import LocalIOError
from merklesync.ignore import STATE_DIR
from merklesync.index import Cached, Index
from merklesync.model import (
    IGNORED_HERE,
    LOCAL_MODE,
    NOT_EMPTY,
    Entry,
    EntryKind,
    Outcome,
    WriteItem,
    leaf_of,
    synced_mode,
)
from merklesync.protocol.paths import check_relpath
from merklesync.reading import open_to_read
from merklesync.sources import final_modes, placer, write_intents
from merklesync.sources.dir_fds import DirFds, NotADirectory
from merklesync.sources.file_write import (
    IN_THE_WAY,
    Refused,
    place_new,
    temp_name,
    unlink_quietly,
    write_file,
)
from merklesync.sources.listing import remove_abandoned, stat_key
from merklesync.sources.on_disk import RACY_NS, FileChanged, kind_of, link_digest
from merklesync.sources.placer import Placer

if TYPE_CHECKING:
    from merklesync.sources.directory import DirectorySource

_CHANGED_SINCE_COMPARISON = "changed on the destination since the comparison"
_CHANGED_DURING = "changed on the destination during the transfer"
# The stat of a file written here that the stat cache must not vouch for (see _touch_up).
_UNTRUSTED = os.stat_result((0,) * 10)


class DirectoryWriter:
    """The writes of a DirectorySource (``source``: for its ignore rules and
    how it reads what is on disk); each write that reaches the disk is noted
    first in ``intents``."""

    def __init__(self, source: DirectorySource, intents: write_intents.Intents) -> None:
        self._source = source
        self.root = root = source.root
        self._root = str(root)
        # Directories written read-only, or made writable to write in them,
        # and the mode each gets at the end of the run (see _put_dir).
        self._final_modes: dict[str, int] = {}
        self._notes = final_modes.Notes(root / STATE_DIR)
        self._intents = intents
        self._writable: set[str] = set()  # directories this batch may write in (_open_up)
        # The directories this batch of writes goes into, held open.
        self._dirs = DirFds(self._root)
        self._placer: Placer | None = None  # see write_items
        self._placer_tried = False
        self._new_files = 0

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
            for item, known in _rows_ahead(items, index, handed.live):
                entry = item.entry
                rel = check_relpath(entry.path)
                rules = self._source.ignore
                if rules.ignored(rel, entry.kind is EntryKind.DIR):  # deleted or not
                    # Rules that cannot be read leave everything out: no
                    # design of this replica's, a failure, said as such.
                    why = rules.unread(rel.rpartition("/")[0])
                    yield item, Outcome(rel, False, IGNORED_HERE if why is None else why)
                    continue
                if rel in handed.live:  # its index row is still to come
                    yield from self._settle(handed, index, clock, wait=True)
                    known = _ASK
                cached = index.get(rel) if isinstance(known, _Ask) else known
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
        putting = None  # where it was being put, once found as the index says
        try:
            spot = self._spot_for(rel, entry, cached)
            if spot is not None:
                on_disk = self._verify_unchanged(spot, cached, entry)
                putting = spot
                placed = self._put(spot, item, on_disk, current)
        except (Refused, NotADirectory) as refusal:
            _drain(item)
            self._left_empty(putting, entry, current, index)
            return Outcome(rel, False, refusal.message)
        except OSError as exc:
            _drain(item)
            self._left_empty(putting, entry, current, index)
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

    def _left_empty(
        self, spot: _Spot | None, entry: Entry, current: Entry | None, index: Index
    ) -> None:
        """After a write at ``spot`` (None: it never began) of an entry of
        another kind than the one the index holds failed (a directory for a
        file, or the reverse: what was there is removed first), the path may
        hold neither: that is no deletion made here, and the path is dropped
        from the index, as a scan drops it after a run stopped there
        (DirectorySource._bury)."""
        if spot is None or current is None or current.deleted or current.kind is entry.kind:
            return
        with contextlib.suppress(OSError):
            if self._lstat(spot) is None:
                index.drop(current)

    def _failed(self, rel: str, exc: OSError) -> Outcome:
        """A write that failed: the run goes on, unless the disk is full."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise LocalIOError(f"{self._source.abs(rel)}: {exc.strerror}") from exc
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
                digest, st2 = self._source.hash_file(spot.rel, spot.fd)
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
                target = self._source.readlink(spot.rel, spot.fd)
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
                    raise Refused(NOT_EMPTY) from None
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
        made = on_disk is None or kind_of(on_disk.st_mode) is not EntryKind.DIR
        if read_only or (made and mode != 0o700):  # made 0o700 first (the umask), then chmod
            self._notes.note(spot.rel, mode, found=False)
        try:
            if made:
                try:
                    os.mkdir(spot.name, 0o700, dir_fd=spot.fd)
                except OSError:
                    made = False  # none made here
                    raise
            if read_only:
                self._final_modes[spot.rel] = mode
                _chmod(spot, mode | 0o700)
            else:
                self._final_modes.pop(spot.rel, None)
                _chmod(spot, mode)
        except BaseException:
            # Not left half made (at 0o700, which the next scan would take
            # for an edit made here): as if never written, whether the chmod
            # failed or a Ctrl-C came in the meantime (as soon as mkdir
            # returned, say: a signal that arrived during it). (Killed, it
            # gets its mode at the next open: final_modes.py.)
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

    def resume(self, index: Index) -> None:
        """Give the directories a run stopped before its end left writable
        (or at 0700, as made) the mode they were to get (see final_modes.py),
        so that the next scan does not take that for a change made here: the
        mode one found read-only had; for one written, the mode the index
        says, or the one noted where the index has no directory there. Only
        one still as that run left it (all of its owner's bits, none it did
        not give it) is changed. The temp files that run abandoned in them
        go first, while they are writable."""
        noted = self._notes.read()
        if noted is None:
            return
        try:
            for rel in _deepest_first(noted):
                left, found = noted[rel]
                mode = left
                cached = index.get(rel) if rel and not found else None
                row = cached.entry if cached is not None and not cached.entry.deleted else None
                # (A row of another kind: the run was making the directory
                # in its place. It gets the mode noted.)
                if row is not None and row.kind is EntryKind.DIR:
                    mode = synced_mode(row.mode) | (left & LOCAL_MODE)
                with contextlib.suppress(OSError, NotADirectory):  # gone, or no directory now
                    fd = self._dirs.get(rel)
                    # Still writable: what the run left half written goes now.
                    with contextlib.suppress(OSError):
                        remove_abandoned(fd)
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
                raise Refused(_CHANGED_DURING)
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
            raise Refused(_CHANGED_DURING)


@dataclass(slots=True)
class _Handed:
    """Files with the placing process, by path. Those it was told to drop
    (their content failed on the way) are counted: their answers, whatever
    they say, come before those of a later file at the same path."""

    live: dict[str, tuple[WriteItem, Entry | None]] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)


class _Ask:
    """A row not read ahead (see _rows_ahead): the writer asks the index."""


_ASK = _Ask()
_AHEAD = 512  # items whose rows are read in one query


def _rows_ahead(
    items: Iterable[WriteItem], index: Index, pending: Container[str]
) -> Iterator[tuple[WriteItem, Cached | _Ask | None]]:
    """Each item, with its path's index row read ahead, together with the
    rows of the items that follow it (one query, not one per item): of
    items without content, up to the first with content (its file may be
    open already: no more are taken in). A row read ahead is the row at
    the item's turn, because every item before it was written then, and
    none of them had its path: a path given twice in a window, or whose
    file is still with the placing process (``pending``), is not read
    ahead (_ASK)."""
    window: list[WriteItem] = []
    for item in items:
        if item.data is not None and not window:  # content after content (a first copy)
            yield item, _ASK
            continue
        window.append(item)
        if item.data is None and len(window) < _AHEAD:
            continue
        yield from _with_rows(window, index, pending)
        window = []
    yield from _with_rows(window, index, pending)


def _with_rows(
    window: list[WriteItem], index: Index, pending: Container[str]
) -> Iterator[tuple[WriteItem, Cached | _Ask | None]]:
    if len(window) < 2:  # one query either way
        for item in window:
            yield item, _ASK
        return
    times = Counter(item.entry.path for item in window)
    ahead = {path for path, n in times.items() if n == 1 and path not in pending}
    rows = index.get_many(ahead)
    for item in window:
        path = item.entry.path
        yield item, rows.get(path) if path in ahead else _ASK


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
    """Change the mode of the file or directory at ``spot``, never through
    a link: one put there since it was looked at is refused."""
    try:
        os.chmod(spot.name, mode, dir_fd=spot.fd, follow_symlinks=False)
    except (ValueError, NotImplementedError):  # Linux has no mode for a link to take
        raise Refused(_CHANGED_DURING) from None


def _deepest_first(paths: Iterable[str]) -> list[str]:
    """Replica paths, each before the directories above it ("" is the root)."""
    return sorted(paths, key=lambda r: r.count("/") + bool(r), reverse=True)


def _owner_kept(on_disk: os.stat_result | None) -> tuple[int, int] | None:
    """Whom a file replaced with new content is to belong to: whoever owned
    the file it replaces, where that is someone else and this process may
    give files away (root, as rsync -a keeps it); else None, the writer."""
    if on_disk is None or os.geteuid() != 0:
        return None
    owner = (on_disk.st_uid, on_disk.st_gid)
    return owner if owner != (os.geteuid(), os.getegid()) else None


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
