"""`merklesync watch`: follow a replica's file events (watchdog, inotify on
Linux) and answer scans with what changed, so they look only there.

The watcher never writes the index: it keeps a journal of directories
touched since it started and answers questions (see journal.py). A scan that
asked holds the replica lock and does its own, partial, scan.

Events it cannot vouch for make the next answer "everything": a start, a
kernel queue overflow (watchdog logs it from 7.1 on; a logging handler
notices), a failure to rebuild watches, a change of the mount table (a file
system mounted inside the tree raises no event of its own), and the
periodic full rescan (``rescan_every``), the safety net Syncthing also
keeps. Each of them also has the next answer check again which directories
are watched: those no watch covers (another file system mounted inside)
are walked by every scan (watch_coverage.py). A tree on a network file
system is not watched at all.

For continuous work, ``on_settled`` is called once changes have been quiet
for ``settle`` seconds (`watch --run`); what that call itself changes in the
tree leads to one more call, which finds nothing to do, and it stops there.
A call that returns a number of seconds is made again that much later,
changes or not (a run that found a replica locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import select
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from merklesync import watch_coverage
from merklesync.errors import LocalIOError, ReplicaLocked, UsageError
from merklesync.ignore import IGNORE_FILE, STATE_DIR
from merklesync.journal import ANSWER, NO_TOKEN, WATCH_DIR, WATCH_LOCK, Changes, parse_question

MAX_TRACKED = 200_000  # directories remembered before the journal starts over
WATCHDOG_LOGGER = "watchdog.observers"

# watchdog warns when the kernel hands it a watch it holds already (a
# directory removed and made again, given the same watch number): it
# replaces the old one, which is what is wanted, and the warning would only
# reach the terminal or the log of `merklesync watch`.
warnings.filterwarnings(
    "ignore",
    message="Callback with id .* already exists for watch",
    category=RuntimeWarning,
    module="watchdog",
)


def parent_of(rel: str) -> str:
    return rel.rpartition("/")[0]


class ChangeJournal:
    """Directories touched since the journal started, each with the number
    of the last event that touched it. Thread-safe."""

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or secrets.token_hex(6)
        self._lock = threading.Lock()
        self._seq = 0
        self._base = 0  # tokens before this cannot be answered
        self._shallow: dict[str, int] = {}
        self._deep: dict[str, int] = {}

    @property
    def token(self) -> str:
        with self._lock:
            return f"{self.instance}.{self._seq}"

    def touched(self, rel: str, *, deep: bool = False) -> None:
        """The listing of directory ``rel`` changed (``deep``: anything below it may have)."""
        with self._lock:
            self._seq += 1
            (self._deep if deep else self._shallow)[rel] = self._seq
            if len(self._shallow) + len(self._deep) > MAX_TRACKED:
                self._forget_all()

    def lost_track(self) -> None:
        """Events were lost: every earlier token now gets "everything"."""
        with self._lock:
            self._seq += 1
            self._forget_all()

    def _forget_all(self) -> None:
        self._base = self._seq
        self._shallow.clear()
        self._deep.clear()

    def since(self, token: str) -> Changes:
        with self._lock:
            now = f"{self.instance}.{self._seq}"
            instance, _, seq_text = token.rpartition(".")
            if instance != self.instance or not (seq_text.isascii() and seq_text.isdecimal()):
                return Changes(now, everything=True)
            seq = int(seq_text)
            if seq < self._base or seq > self._seq:
                return Changes(now, everything=True)
            deep = sorted(d for d, s in self._deep.items() if s > seq)
            shallow = sorted(d for d, s in self._shallow.items() if s > seq)
            return Changes(now, everything=False, deep=tuple(deep), shallow=tuple(shallow))


class _LostEvents(logging.Handler):
    """watchdog reports a kernel queue overflow only in its log."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().lower()
        if "overflow" in message or "unable to" in message:
            self.watcher.lost_events()


class Watcher:
    """Watches one replica; ``run`` blocks until ``stop`` (or a fatal event)."""

    def __init__(
        self,
        root: Path,
        *,
        rescan_every: float = 3600.0,
        settle: float = 2.0,
        on_settled: Callable[[], float | None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.state = self.root / STATE_DIR
        self.folder = self.state / WATCH_DIR
        self.journal = ChangeJournal()
        self.rescan_every = rescan_every
        self.settle = settle
        self.on_settled = on_settled
        self.answered = 0
        self._last_event: float | None = None  # monotonic time of an unsettled change
        self._stopping = threading.Event()
        self.failure: str | None = None
        self._lock_fd: int | None = None
        self._prefix = str(self.root) + os.sep
        self._state_prefix = str(self.state) + os.sep
        self.warn = warn
        self._root_id = (0, 0)  # (st_dev, st_ino) of the root while watched
        # Directories no watch covers are walked by every scan (watch_coverage):
        self._unseen: set[str] = set()
        self._to_check: set[str] = set()  # new directories, checked at the next answer
        self._check_all = True  # at start, and after lost events
        # Answers come from the event thread, and at start from run()'s.
        self._answering = threading.Lock()

    # -- life ------------------------------------------------------------

    def _take_lock(self) -> None:
        try:
            self.folder.mkdir(exist_ok=True)
            fd = os.open(self.state / WATCH_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LocalIOError(f"cannot set up {self.folder}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ReplicaLocked(f"{self.root} is already watched by another process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def run(self, ready: Callable[[], None] | None = None) -> None:
        remote = watch_coverage.remote_file_system(self.root)
        if remote is not None:
            raise UsageError(
                f"{self.root} is on a {remote} file system: changes made by other hosts raise "
                "no events here, so a watcher would hide them from scans"
            )
        self._take_lock()
        st = os.stat(self.root)
        self._root_id = (st.st_dev, st.st_ino)
        lost = _LostEvents(self)
        log = logging.getLogger(WATCHDOG_LOGGER)
        log.addHandler(lost)
        log.setLevel(logging.WARNING)  # what a root logger set higher would drop
        observer = Observer()
        mounts = _MountTable()
        try:
            observer.schedule(_Handler(self), str(self.root), recursive=True)
            try:
                observer.start()
            except OSError as exc:
                raise LocalIOError(
                    f"cannot watch {self.root}: {exc.strerror or exc} "
                    "(for many directories raise fs.inotify.max_user_watches)"
                ) from exc
            self._answer_waiting()  # questions asked before the watches were in place
            if ready is not None:
                ready()
            if self.on_settled is not None:
                self._last_event = time.monotonic()  # catch up with what happened unwatched
            last_full = time.monotonic()
            while not self._stopping.wait(min(0.2, self.settle)):
                if not observer.is_alive():
                    self.failure = self.failure or f"lost the watch on {self.root}"
                    break
                if not self._root_in_place():
                    self.failure = f"{self.root} was moved or removed"
                    break
                if not self._state_in_place():
                    self.failure = f"{self.state} was removed: {self.root} is no replica now"
                    break
                now = time.monotonic()
                if mounts.changed():
                    self.lost_events()
                if now - last_full >= self.rescan_every:
                    self.lost_events()
                    self._last_event, last_full = now, now
                changed = self._last_event
                settled = changed is not None and now - changed >= self.settle
                if settled and self.on_settled is not None:
                    self._last_event = None  # changes during the call make another one
                    again = self.on_settled()
                    if again is not None and self._last_event is None:
                        # Asked to be called again that much later, changes or not.
                        self._last_event = time.monotonic() + again - self.settle
        finally:
            mounts.close()
            observer.stop()
            with contextlib.suppress(RuntimeError):
                observer.join(5)
            logging.getLogger(WATCHDOG_LOGGER).removeHandler(lost)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        if self.failure is not None:
            raise LocalIOError(self.failure)

    def stop(self) -> None:
        self._stopping.set()

    def lost_events(self) -> None:
        """Events were lost: the next scan walks everything, and the next
        answer checks again which directories are watched."""
        self.journal.lost_track()
        self._check_all = True

    def _state_in_place(self) -> bool:
        """Whether the lock this watcher holds is still in the replica's
        state (a `rm -rf .merklesync` unlinks it; a new `init` there would
        start another watcher's life)."""
        if self._lock_fd is None:
            return True
        try:
            return os.fstat(self._lock_fd).st_nlink > 0
        except OSError:
            return False

    def _root_in_place(self) -> bool:
        try:
            st = os.stat(self.root)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._root_id

    # -- events ----------------------------------------------------------

    def _rel(self, path: str) -> str | None:
        """The replica-relative path of an absolute one; None outside."""
        if path == str(self.root):
            return ""
        if path.startswith(self._prefix):
            return path[len(self._prefix) :]
        return None

    def event(self, kind: str, is_dir: bool, src: str, dest: str) -> None:
        if src.startswith(self._state_prefix) or src == str(self.state):
            if kind == "created" and os.path.dirname(src) == str(self.folder):
                self._answer(os.path.basename(src))
            return
        if kind == "deleted" and src == str(self.root):
            self.failure = f"{self.root} was removed"
            self.stop()
            return
        for path in (src, dest):
            rel = self._rel(path) if path else None
            if rel is None or rel.startswith(STATE_DIR + "/") or rel == STATE_DIR:
                continue
            self._note(kind, is_dir, rel, path is dest)
            self._last_event = time.monotonic()

    def _note(self, kind: str, is_dir: bool, rel: str, is_dest: bool) -> None:
        journal = self.journal
        if not _encodable(rel):  # the scanner skips such names; their directory is enough
            rel = parent_of(rel)
            while not _encodable(rel):
                rel = parent_of(rel)
            journal.touched(rel)
            return
        if kind == "modified" and is_dir:
            journal.touched(rel)  # its listing changed
            return
        if rel:
            journal.touched(parent_of(rel))
        if is_dir and (kind in ("created", "attrib") or (kind == "moved" and is_dest)):
            # new, or maybe readable now: walk it, and see that it is watched
            journal.touched(rel, deep=True)
            with self._answering:
                self._to_check.add(rel)
                if len(self._to_check) > MAX_TRACKED:  # memory stays bounded: check them all
                    self._to_check.clear()
                    self._check_all = True
        if rel.rpartition("/")[2] == IGNORE_FILE:
            journal.touched(parent_of(rel), deep=True)  # what is left out below changed

    def _answer_waiting(self) -> None:
        """Answer the questions asked before the watches were in place, and
        clear answers a previous watcher left behind."""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.folder):
                if name.startswith((ANSWER, "." + ANSWER)):
                    with contextlib.suppress(OSError):
                        os.unlink(self.folder / name)
                else:
                    self._answer(name)

    def _check_coverage(self) -> None:
        """Walk unwatched directories in this answer; and once more in the
        answer after they get a watch, since changes before it were unseen."""
        if self._check_all:
            self._check_all = False
            candidates: Iterable[str] = watch_coverage.directories(self.root)
        else:
            candidates = self._to_check | self._unseen
        self._to_check = set()
        unseen = watch_coverage.unseen(self.root, candidates, self._root_id[0])
        if unseen is None:
            return  # the kernel does not say: trust the watches
        for rel in self._unseen | unseen:
            self.journal.touched(rel, deep=True)
        new = unseen - self._unseen
        if new and self.warn is not None:
            self.warn(
                f"{len(new)} director{'y is' if len(new) == 1 else 'ies are'} not watched "
                f"(e.g. {sorted(new)[0] or '.'}; raise fs.inotify.max_user_watches, or check "
                "permissions and mounts): scans walk them every time"
            )
        self._unseen = unseen

    def _answer(self, name: str) -> None:
        question = parse_question(name)
        if question is None:
            return
        nonce, token = question
        with self._answering:
            self._check_coverage()
            changes = (
                Changes(self.journal.token, everything=True)
                if token == NO_TOKEN
                else self.journal.since(token)
            )
        final = self.folder / f"{ANSWER}{nonce}"
        temp = self.folder / f".{ANSWER}{nonce}"
        try:
            temp.write_bytes(changes.to_bytes())
            os.replace(temp, final)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            return
        if not (self.folder / name).exists():  # asked, and given up waiting: nobody reads it
            with contextlib.suppress(OSError):
                final.unlink()
        self.answered += 1


class _MountTable:
    """Tells when a file system was mounted or unmounted (Linux: the mount
    table in /proc is then ready with a priority event); never elsewhere."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._poll: Any = None
        with contextlib.suppress(OSError, AttributeError):  # no /proc, or no poll
            self._poll = select.poll()
            self._file = open("/proc/self/mountinfo", "rb")  # noqa: SIM115 (closed by close)
            self._file.read()
            self._poll.register(self._file, select.POLLPRI | select.POLLERR)

    def changed(self) -> bool:
        if self._file is None or not self._poll.poll(0):
            return False
        with contextlib.suppress(OSError):
            self._file.seek(0)
            self._file.read()  # what has been seen: the next change raises the event again
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _encodable(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Handler(FileSystemEventHandler):
    """watchdog's events, in order, to the watcher."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__()
        self.watcher = watcher

    def on_any_event(self, event: Any) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        self.watcher.event(kind, bool(event.is_directory), src, dest)
