"""A replica on this machine: its root, its index, its lock."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merklesync import scratch as scratch_dir
from merklesync.clock import HybridClock
from merklesync.errors import (
    CorruptIndex,
    LocalIOError,
    MerklesyncError,
    NewerFormat,
    NotAReplica,
    ReadOnlyReplica,
    UsageError,
)
from merklesync.ignore import STATE_DIR, IgnoreRules
from merklesync.index import FIRST_SCAN, Index
from merklesync.lock import ReplicaLock
from merklesync.model import Progress, ScanReport
from merklesync.orphans import die_with_parent, signals_held
from merklesync.sources.directory import DirectorySource

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

INDEX_FILE = "index.db"
LOCK_FILE = "lock"


def new_replica_id() -> str:
    return secrets.token_hex(8)


def is_replica(root: Path) -> bool:
    return (root / STATE_DIR / INDEX_FILE).exists()


def find_root(start: Path, *, named: bool = False) -> Path:
    """The replica around ``start``, looking upwards as git does, when it is
    this user's (see owned_here): a replica another user made in a shared
    directory above (/tmp, say) must not become the source of a push, nor
    give the name of a remote whose command would run as this user.
    ``named``: ``start`` was named on the command line, so a replica right
    there is meant, whoever owns it (and one that does not exist is a
    missing directory, as for every command)."""
    if named and not start.is_dir():
        what = "no such directory" if not start.exists() else "not a directory"
        raise LocalIOError(f"{what}: {start}")
    here = start.resolve()
    for candidate in (here, *here.parents):
        if is_replica(candidate):
            if not owned_here(candidate) and not (named and candidate == here):
                raise NotAReplica(
                    f"{candidate} is a replica of another user (its {STATE_DIR} is not yours): "
                    f"not used for {start}; name it explicitly if you mean it"
                )
            return candidate
    raise NotAReplica(f"not a merklesync replica (or any parent up to /): {start}")


def _check_makeable(root: Path) -> None:
    """A replica's directory is made, not its parent, as rsync makes a
    destination: a parent that is missing may be a disk not mounted, not
    one to fill."""
    if root.parent.exists() and not root.parent.is_dir():
        raise LocalIOError(f"cannot create {root}: {root.parent} is not a directory")
    if not root.parent.is_dir():
        missing = f"no such directory: {root.parent}"
        raise LocalIOError(f"cannot create {root}: {missing} (make it first)")


def _not_a_replica(root: Path) -> str:
    """Why ``root`` cannot be opened: no replica there, or one above it
    (synced whole: a replica made here would hold the same files twice)."""
    around = next((p for p in root.parents if is_replica(p)), None)
    if around is not None:
        return f"{root} is inside the replica {around}, not one itself: name {around}"
    return f"{root} is not a merklesync replica (run `merklesync init {root}`)"


def owned_here(root: Path) -> bool:
    """Whether ``root``'s state belongs to this user (as git's safe.directory
    check: to root, under sudo, the user who ran sudo)."""
    try:
        owner = (root / STATE_DIR).stat().st_uid
    except OSError:
        return False
    me = os.geteuid()
    if owner == me:
        return True
    sudo = os.environ.get("SUDO_UID", "")
    return me == 0 and sudo.isdecimal() and owner == int(sudo)


class Replica:
    def __init__(
        self, root: Path, index: Index, lock: ReplicaLock, excludes: Sequence[str]
    ) -> None:
        self.root = root
        self.index = index
        self.lock = lock
        self.source = DirectorySource(root, IgnoreRules(root, excludes))
        self.clock = HybridClock(int(index.meta("hlc") or 0))
        # When the state this run works from was taken: the start of its
        # scan. Deletions that scan finds count as learned then, and the
        # replicas this run completes with are remembered as of then.
        self.snapshot_ns = time.time_ns()
        self.scratch: Path | None = None  # a preview's throwaway state (see open)
        self.read_only = False  # on a read-only file system (see open)

    @property
    def replica_id(self) -> str:
        return self.index.replica_id

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        create: bool = False,
        as_copy: bool = False,
        preview: bool = False,
        excludes: Sequence[str] = (),
        read_only_ok: bool = False,
    ) -> Replica:
        """Open (and lock) the replica at ``root``; create it when asked
        (``as_copy``: made as a copy, see index.FIRST_SCAN: a new one only).
        ``preview`` (a dry run's create): where ``root`` is not a replica
        yet, nothing is written there; its files, if any, are scanned into a
        throwaway index, as a real run would find them. ``read_only_ok``: a
        replica on a read-only file system (a snapshot, a read-only mount)
        is opened from a copy of its index (see _read_only), for a caller
        that writes nothing there; else that is a ReadOnlyReplica error."""
        root = _resolved(root)
        if preview and not is_replica(root):
            if not root.exists():
                _check_makeable(root)
            return cls._preview(root, excludes, as_copy)
        _check_index_path(root)
        if not root.is_dir():
            if create and not root.exists():
                _check_makeable(root)
                try:
                    root.mkdir()
                except OSError as exc:
                    raise LocalIOError(f"cannot create {root}: {exc.strerror}") from exc
            elif root.exists():
                raise UsageError(f"not a directory: {root}")
            else:
                raise LocalIOError(f"no such directory: {root}")
        state = root / STATE_DIR
        if not (state / INDEX_FILE).exists() and not create:
            raise NotAReplica(_not_a_replica(root))
        try:
            if not state.is_dir():
                state.mkdir()
        except OSError as exc:
            raise LocalIOError(f"cannot create {state}: {exc.strerror}") from exc
        lock = ReplicaLock(state / LOCK_FILE)
        try:
            lock.acquire()
        except ReadOnlyReplica:
            if not read_only_ok or not (state / INDEX_FILE).is_file():
                raise
            return cls._read_only(root, excludes)
        index = None
        try:
            if (state / INDEX_FILE).exists():
                index = Index.open(state / INDEX_FILE)
            else:
                index = Index.create(state / INDEX_FILE, new_replica_id(), as_copy=as_copy)
            replica = cls(root, index, lock, excludes)
        except BaseException:
            if index is not None:
                with contextlib.suppress(Exception):  # the failure in flight says why
                    index.close(commit=False)
            lock.release()
            raise
        return cls._resumed(replica)

    @staticmethod
    def _resumed(replica: Replica) -> Replica:
        """``replica``, once what a run stopped before its end left
        unfinished there is finished (DirectorySource.resume)."""
        try:
            replica.source.resume(replica.index)
        except BaseException:
            with contextlib.suppress(Exception):  # the failure in flight says why
                replica.close()
            raise
        return replica

    @classmethod
    def _preview(cls, root: Path, excludes: Sequence[str], as_copy: bool = False) -> Replica:
        if root.exists() and not root.is_dir():
            raise UsageError(f"not a directory: {root}")
        return cls._in_scratch(
            "preview",
            root if root.is_dir() else None,
            excludes,
            lambda scratch: Index.create(scratch / INDEX_FILE, new_replica_id(), as_copy=as_copy),
        )

    @classmethod
    def _in_scratch(
        cls,
        kind: str,
        files: Path | None,
        excludes: Sequence[str],
        make_index: Callable[[Path], Index],
    ) -> Replica:
        """A replica of the files at ``files`` (None: an empty directory)
        whose state is a throwaway directory (see scratch.py: its lock is
        held while it is used), removed when it closes: ``make_index``
        makes its index there."""
        scratch = scratch_dir.make(kind)
        try:
            if files is None:
                files = scratch / "empty"
                files.mkdir()
            lock = ReplicaLock(scratch / scratch_dir.LOCK_FILE)
            lock.acquire()
            try:
                index = make_index(scratch)
            except BaseException:
                lock.release()
                raise
            replica = cls(files, index, lock, excludes)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        replica.scratch = scratch
        replica.source.hands_off = True  # its files and state are not this run's to tidy
        return replica

    @classmethod
    def _read_only(cls, root: Path, excludes: Sequence[str]) -> Replica:
        """The replica at ``root``, on a read-only file system: its index
        (and the index's log, if a run left one) is copied to a throwaway
        place and used from there, unlocked (nothing can write at ``root``).
        Scans record there what they find; writes to the files are refused
        (LocalPeer.write); nothing is left behind. What a run stopped
        before its end left unfinished stays as it is: the scan finds the
        files as they are."""

        def copied(scratch: Path) -> Index:
            _copy_index(root, scratch, "on a read-only file system")
            return _opened_copy(root, scratch)

        replica = cls._in_scratch("read-only", root, excludes, copied)
        replica.read_only = True
        return replica

    @classmethod
    def rehearsal(
        cls, root: Path, *, rebuild: bool, as_copy: bool = False
    ) -> tuple[Replica, Path | None, bool]:
        """For ``init --dry-run``: the replica at ``root`` as init would find
        it (``rebuild``: as rebuild would leave it, and what rebuild returns
        besides: where it would set the index aside, whether it would make
        its tree again; a whole index is refused, as rebuild refuses it).
        It is made in a throwaway place: nothing is written at ``root``.
        Its index is copied under its lock (without one on a read-only file
        system: nothing can change it there either)."""
        root = _resolved(root)
        state = root / STATE_DIR
        if not is_replica(root):
            return cls._preview(root, (), as_copy), None, False
        aside: Path | None = None
        mended = False

        def copied(scratch: Path) -> Index:
            nonlocal aside, mended
            original = state / INDEX_FILE
            if rebuild and (original.is_symlink() or not original.is_file()):
                aside = _aside(state)
                return Index.create(scratch / INDEX_FILE, new_replica_id())
            lock = ReplicaLock(state / LOCK_FILE)
            with contextlib.suppress(ReadOnlyReplica):
                lock.acquire()
            try:
                _copy_index(root, scratch, "for a dry run")
            finally:
                lock.release()
            if not rebuild:
                return _opened_copy(root, scratch)
            index = _mended_or_refused(scratch / INDEX_FILE, root)
            if index is not None:
                mended = True
                return index
            aside = _aside(state)
            for name in (INDEX_FILE, f"{INDEX_FILE}-wal", f"{INDEX_FILE}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (scratch / name).unlink()
            return Index.create(scratch / INDEX_FILE, new_replica_id())

        replica = cls._in_scratch("dry-run", root, (), copied)
        return replica, aside, mended

    @classmethod
    def rebuild(cls, root: Path) -> tuple[Replica, Path | None, bool]:
        """Set a broken index aside and start a fresh one (with a new
        replica id, since the old counters are lost); the next scan reads
        every file again. An index whose rows read well but whose tree is
        not the one they make is kept, its tree made again (True)."""
        root = _resolved(root)
        state = root / STATE_DIR
        lock = ReplicaLock(state / LOCK_FILE)
        state.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        moved: Path | None = None
        try:
            old = state / INDEX_FILE
            if old.exists():
                mended = _mended_or_refused(old, root)
                if mended is not None:
                    return cls._resumed(cls(root, mended, lock, ())), None, True
                moved = _aside(state)
                # Its log first: one left beside the new index would be
                # replayed into it.
                for suffix in ("-wal", "-shm"):
                    side = state / f"{INDEX_FILE}{suffix}"
                    if side.exists():
                        os.replace(side, state / f"{moved.name}{suffix}")
                os.replace(old, moved)
            index = Index.create(old, new_replica_id())
        except BaseException:
            lock.release()
            raise
        return cls._resumed(cls(root, index, lock, ())), moved, False

    @property
    def first_scan_as_copy(self) -> bool:
        """Made as a copy (init --as-copy), and no scan of it has ended yet."""
        return self.index.meta(FIRST_SCAN) is not None

    def renew_id(self) -> str:
        """Give the replica a fresh random id, keeping its entries and their
        versions (for a copy of another replica, which had its id): its
        writes from now on count under the new one. Returns the old id."""
        old = self.replica_id
        self.index.set_meta("replica_id", new_replica_id())
        self.index.commit()
        return old

    def scan(
        self, *, checksum: bool = False, progress: Progress | None = None, spread: bool = True
    ) -> ScanReport:
        """Bring the index up to date with the files (``spread``: on a second
        core too, when no other scan runs beside this one)."""
        self.snapshot_ns = time.time_ns()
        return self.source.scan(
            self.index,
            self.replica_id,
            self.clock,
            checksum=checksum,
            progress=progress,
            learned_ns=self.snapshot_ns,
            spread=spread,
        )

    def start_scan(self, *, checksum: bool = False, spread: bool = False) -> ChildScan:
        """Scan in a forked process, so two local replicas scan on two cores,
        or one scans while the other is reached (``spread``: see scan).
        Call from a process with no other threads running."""
        self.index.reload()
        self.snapshot_ns = time.time_ns()
        import multiprocessing  # only for a scan beside another: not at every start

        ctx = multiprocessing.get_context("fork")
        counter = ctx.Value("q", 0, lock=False)
        receiver, sender = ctx.Pipe(duplex=False)
        with signals_held() as mask:
            proc = ctx.Process(
                target=_scan_child,
                args=(
                    os.getpid(),
                    mask,
                    self.source,
                    self.index.path,
                    checksum,
                    spread,
                    self.snapshot_ns,
                    counter,
                    sender,
                ),
                daemon=True,
            )
            proc.start()
        sender.close()
        return ChildScan(self, proc, receiver, counter)

    def close(self, *, commit: bool = True) -> None:
        """``commit`` False: the run ends on a failure or an interruption;
        what it wrote in the index since the last commit is dropped (see
        Index.close)."""
        try:
            self.source.finish()
            if commit:
                self.index.set_meta("hlc", self.clock.last)
            self.index.close(commit=commit)
        finally:
            self.lock.release()
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the failure in flight says why
            self.close(commit=False)


# SQLite opens its files by paths shorter than 512 bytes, the index's
# write-ahead log ("-wal") included.
MAX_INDEX_PATH = 511 - len("-wal")


def _resolved(root: Path) -> Path:
    """``root`` resolved, refused where it lies in a replica's state
    directory: files put there (a ``config``, an ``index.db``) would be
    that replica's own."""
    root = root.resolve()
    if STATE_DIR in root.parts:
        raise UsageError(f"{root} is inside a replica's {STATE_DIR} directory: not for files")
    return root


def _check_index_path(root: Path) -> None:
    """Refuse, before anything is made, a replica whose index SQLite could
    not open for the length of its path."""
    size = len(os.fsencode(root / STATE_DIR / INDEX_FILE))
    if size > MAX_INDEX_PATH:
        raise LocalIOError(
            f"{root}: too deep for a replica: the path of its index would be {size} bytes, "
            f"over the {MAX_INDEX_PATH} SQLite takes"
        )


def _copy_index(root: Path, scratch: Path, why: str) -> None:
    """Copy the index of the replica at ``root`` (and its log, if a run
    left one) to ``scratch``."""
    state = root / STATE_DIR
    try:
        for name in (INDEX_FILE, f"{INDEX_FILE}-wal"):
            if (state / name).is_file():
                shutil.copyfile(state / name, scratch / name)
    except OSError as exc:
        raise LocalIOError(
            f"cannot copy the index of {root} ({why}) to {scratch}: {exc.strerror}"
        ) from exc


def _opened_copy(root: Path, scratch: Path) -> Index:
    """The index copied to ``scratch`` by _copy_index, open; an error names
    the index it is a copy of."""
    try:
        return Index.open(scratch / INDEX_FILE)
    except (CorruptIndex, NewerFormat) as exc:
        original = root / STATE_DIR / INDEX_FILE
        raise type(exc)(exc.message.replace(str(scratch / INDEX_FILE), str(original))) from exc


def _mended_or_refused(path: Path, root: Path) -> Index | None:
    """Rebuilding throws the versions away: only for an index that cannot be
    used (None; anything but a regular file there is none). One whose rows
    read well but whose tree is not the one they make keeps them: its tree
    is made again (the index, open). One that is whole is refused."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        index = Index.open(path)
    except (CorruptIndex, NewerFormat):
        return None
    try:
        index.check()
        if not index.tree_matches():
            index.rebuild_tree()
            return index
    except CorruptIndex:
        index.close(commit=False)
        return None
    except BaseException:
        index.close(commit=False)
        raise
    index.close()
    raise UsageError(
        f"the index of {root} is readable: rebuilding it would throw away its versions; "
        "nothing done (--rebuild is for an index merklesync cannot read)"
    )


class ChildScan:
    """A scan running in a child process."""

    def __init__(
        self, replica: Replica, proc: BaseProcess, receiver: Connection, counter: Any
    ) -> None:
        self.replica = replica
        self.proc = proc
        self.receiver = receiver
        self.counter = counter

    def wait(self, progress: Progress | None = None) -> ScanReport:
        died = LocalIOError(f"the scan of {self.replica.root} stopped unexpectedly")
        reported = 0
        done = False
        try:
            while not self.receiver.poll(0.05):
                if not self.proc.is_alive() and not self.receiver.poll(0.05):
                    raise died
                reported = self._progress(progress, reported)
            result = self.receiver.recv()
            done = True
        except EOFError:
            raise died from None
        finally:
            if not done and self.proc.is_alive():
                # Interrupted here (a Ctrl-C or SIGTERM to this process
                # alone): the child may be writing a report nobody reads.
                self.proc.terminate()
            self.proc.join()
            self.receiver.close()
        if isinstance(result, MerklesyncError):
            raise result
        self._progress(progress, reported)
        self._take_in()
        assert isinstance(result, ScanReport)
        return result

    def cancel(self) -> None:
        """Stop the scan and wait until it has. A scan commits once, at its
        end: stopped sooner, it leaves the index as it was, and the next
        scan does the work. Stopped later, what it wrote is taken in, as
        wait() would."""
        self.proc.terminate()
        self.proc.join()
        self.receiver.close()
        self._take_in()

    def _take_in(self) -> None:
        """See what the child wrote: the index, and the clock it kept."""
        self.replica.index.reload()
        self.replica.clock.observe(int(self.replica.index.meta("hlc") or 0))

    def _progress(self, progress: Progress | None, reported: int) -> int:
        done = int(self.counter.value)
        if progress is not None and done > reported:
            progress(done - reported)
        return done


def _scan_child(
    parent: int,
    mask: set[signal.Signals],
    source: DirectorySource,
    index_path: Path,
    checksum: bool,
    spread: bool,
    learned_ns: int,
    counter: Any,
    sender: Connection,
) -> None:
    """Runs in a forked process that shares the parent's lock. What ends
    it is sent to the parent, as one line; an interrupted scan goes quietly
    (the parent was interrupted too, and says so). ``mask``: the signals
    it is to let in once inside its try (see orphans.signals_held)."""
    die_with_parent(parent)
    result: ScanReport | MerklesyncError
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        index = Index.open(index_path)
        try:

            def count(n: int) -> None:
                counter.value += n

            clock = HybridClock(int(index.meta("hlc") or 0))
            result = source.scan(
                index,
                index.replica_id,
                clock,
                checksum=checksum,
                progress=count,
                learned_ns=learned_ns,
                spread=spread,
            )
        except BaseException:
            index.close(commit=False)  # stopped midway: see Index.close
            raise
        index.close()
    except MerklesyncError as exc:
        result = exc
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        result = LocalIOError(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        sys.exit(130)  # multiprocessing exits with it, no traceback
    sender.send(result)
    sender.close()


def _aside(state: Path) -> Path:
    """A name in ``state`` for a broken index set aside (with when), none
    of its files taken: a rebuild run twice in a second keeps both (the
    first may have set aside the user's index, the second what the first
    left half made)."""
    name = f"{INDEX_FILE}.broken-{time.strftime('%Y%m%dT%H%M%S')}"
    taken = {p.name for p in state.iterdir()}
    candidate, n = name, 1
    while any(f"{candidate}{suffix}" in taken for suffix in ("", "-wal", "-shm")):
        n += 1
        candidate = f"{name}-{n}"
    return state / candidate
