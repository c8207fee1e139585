"""New files placed by a second process, on a second core.

A first copy is mostly new files, and placing one is a run of short system
calls (create a temp file, write, chmod, utime, rename, stat) that leave the
index waiting. rsync splits the same work between a sender and a receiver;
here a child places the files while this process reads their content,
sends it over a pipe, and records in the index what the child placed.
Python threads would take turns instead (the GIL). The child is forked;
where this process runs other threads (paramiko's, in a pull over SSH) and
fork is not safe, it is a fresh interpreter running the same loop (``main``),
which first says READY on its answers.

The child writes each file exactly as the replica would (file_write), into
directories it reaches from the root without following a link (DirFds), and
only where nothing is yet. It answers with the placed file's stat, a refusal
or an error number; this process trusts it no further than a write of its
own. A child that dies fails the run (LocalIOError); the files it placed and
nobody recorded are found by the next scan, like those of any interrupted
run.

To a pipe (``jobs``): per file a header (u32 length, then msgpack ``[path,
mode, mtime_ns, digest]``), its content as chunks (u32 length,
bytes) and an end mark (u32 0), or an abort mark (u32 ``ABORT``) when the
content could not be read to the end. A file of this replica's own source
(a local push or sync) is not read here at all: its header is ``[path, mode,
mtime_ns, digest, size]`` and nothing follows it, and the descriptor this
process opened it with (as a read of its own, see DirectorySource.read)
goes to the child on a socket (``passed``, SCM_RIGHTS, in the headers'
order, before them), which reads the content itself: it is not copied
through this process and a pipe. The child checks it against the digest
as any other. ``FLUSH`` (in place of a header) asks
for the answers so far; the child then closes the directories it holds
open, since the parent writes itself only once all is answered (a directory
removed or replaced by then is looked up again, not written into).

Back (``answers``), in the same order: msgpack ``[path, PLACED, stat_key,
mtime_ns]``, ``[path, REFUSED, reason]``, ``[path, FAILED, errno, text]``
or ``[path, ABORTED]``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import select
import signal
import socket
import struct
import subprocess
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import msgpack

from merklesync.errors import LocalIOError, UnsafePath
from merklesync.orphans import can_fork, die_with_parent, fork_child, spawn_child, two_cores
from merklesync.pipe_room import widen_pipe
from merklesync.protocol.paths import check_relpath
from merklesync.reading import OpenFile, read_chunks
from merklesync.sources.dir_fds import DirFds, NotADirectory
from merklesync.sources.file_write import Refused, place_new, write_all, write_file
from merklesync.sources.listing import stat_key

MIN_FILES = 256  # new files in one run before a child is worth forking
IN_FLIGHT = 1024  # files handed over and not answered (their items wait in memory)
SEND_AT = 64 << 10  # bytes gathered before they go down the pipe
ANSWER_EVERY = 32  # the child answers in groups this size (or when asked)
PASS_GROUP = 64  # descriptors per message on the socket
# Descriptors handed over and not answered: each counts against the open
# files a process may have while it is on its way, and the child's once there.
MAX_PASSED = 256

_U32 = struct.Struct(">I")
END = 0
ABORT = 0xFFFFFFFF
FLUSH = 0xFFFFFFFE

PLACED, REFUSED, FAILED, ABORTED = range(4)


class Answer(NamedTuple):
    """What became of one file handed over."""

    path: str
    placed: tuple[bytes, int] | None  # (stat_key, mtime_ns) as placed
    refused: str | None  # why the write was refused (the run goes on)
    error: OSError | None  # why it failed


class Placer:
    """The parent's end: hand files over, collect what became of them."""

    def __init__(
        self,
        reap: Callable[[], object],
        jobs: int,
        answers: int,
        before_send: Callable[[], None],
        passed: socket.socket | None = None,
        max_passed: int = 0,
    ) -> None:
        self._reap = reap  # waits for the child to end
        self._before_send = before_send
        self._jobs = jobs
        self._answers = answers
        self._passed = passed  # None: every content goes down the pipe
        self._max_passed = max_passed  # at least ANSWER_EVERY, or the wait for answers would stall
        self._to_pass: list[int] = []  # descriptors of files handed over, not yet sent
        self._by_fd: deque[bool] = deque()  # of each file not answered: by descriptor?
        self._passed_waiting = 0  # files handed over by descriptor, not answered
        self._out = bytearray()
        self._unpacker = msgpack.Unpacker(use_list=True, raw=False)
        self._waiting = 0  # handed over, not answered
        self._ready: list[Answer] = []  # answered, not yet asked for
        self._unflushed = False  # files handed over since the last FLUSH
        self._broken = False
        self._answers_in = select.poll()
        self._answers_in.register(answers, select.POLLIN)
        self._both = select.poll()
        self._both.register(answers, select.POLLIN)
        self._both.register(jobs, select.POLLOUT)
        self._passing = select.poll()
        self._passing.register(answers, select.POLLIN)
        if passed is not None:
            self._passing.register(passed, select.POLLOUT)

    @classmethod
    def start(cls, root: str, before_send: Callable[[], None]) -> Placer | None:
        """Start the child for the replica at ``root``: forked, or where
        this process runs other threads (paramiko's, in a pull over SSH) a
        fresh interpreter. None on a single core, or when no child can be
        had (then the replica places its files itself). ``before_send`` is
        called before anything handed over goes to the child (the replica
        notes its writes first: write_intents.py)."""
        if not two_cores():
            return None
        try:
            jobs_r, jobs_w = os.pipe()
        except OSError:
            return None
        try:
            answers_r, answers_w = os.pipe()
        except OSError:
            os.close(jobs_r)
            os.close(jobs_w)
            return None
        max_passed = _max_passed()
        passing = _socket_pair() if max_passed else None
        passed_fds = () if passing is None else (passing[1].fileno(),)
        child = _start_child(root, jobs_r, answers_w, *passed_fds)
        os.close(jobs_r)
        os.close(answers_w)
        if passing is not None:
            passing[1].close()
        if child is not None and child.spawned is not None and not _said_ready(answers_r):
            child.spawned.kill()
            child.spawned.wait()
            child = None
        if child is None:
            os.close(jobs_w)
            os.close(answers_r)
            if passing is not None:
                passing[0].close()
            return None
        widen_pipe(jobs_w)  # room for a few files' worth
        os.set_blocking(jobs_w, False)
        os.set_blocking(answers_r, False)
        passed = None if passing is None else passing[0]
        if passed is not None:
            passed.setblocking(False)
        return cls(child.reap, jobs_w, answers_r, before_send, passed, max_passed)

    @property
    def busy(self) -> bool:
        """Files handed over and not all answered, or directories the child
        may still hold open: the parent writes itself only after a wait."""
        return self._waiting > 0 or self._unflushed

    def hand_over(
        self,
        path: str,
        mode: int,
        mtime_ns: int,
        digest: bytes,
        data: Iterable[bytes],
    ) -> None:
        """Send one file to be placed at ``path`` (checked: relative, in the
        replica). An exception from ``data`` (the content's source) is
        raised here once the child was told to drop the file. The child
        answers for it all the same (ABORTED, or a refusal that came first),
        in its turn; the caller ignores that answer. A file this process
        opened (an OpenFile not yet read) goes by its descriptor, and the
        child reads it: an error reading it is the child's answer."""
        passed = self._passable(data)
        fields: list[object] = [path, mode, mtime_ns, digest]
        if passed is not None:
            fd, size = passed
            fields.append(size)
            self._to_pass.append(fd)
            self._passed_waiting += 1
        header = msgpack.packb(fields)
        self._unflushed = True
        out = self._out
        out += _U32.pack(len(header))
        out += header
        self._waiting += 1
        self._by_fd.append(passed is not None)
        if passed is not None:
            if len(self._to_pass) >= PASS_GROUP or len(out) >= SEND_AT:
                self._send()
            return
        try:
            for chunk in data:
                if chunk:
                    out += _U32.pack(len(chunk))
                    out += chunk
                    if len(out) >= SEND_AT:
                        self._send()
        except BaseException:
            out += _U32.pack(ABORT)
            with contextlib.suppress(LocalIOError):
                self._send()
            raise
        out += _U32.pack(END)
        if len(out) >= SEND_AT:
            self._send()

    def _passable(self, data: Iterable[bytes]) -> tuple[int, int] | None:
        """The descriptor and size of a file to hand over by descriptor;
        None for content that goes down the pipe. With too many on their
        way, this first waits for some to be answered."""
        if self._passed is None or not isinstance(data, OpenFile):
            return None
        if self._passed_waiting >= self._max_passed:
            self._send()
            while self._passed_waiting >= self._max_passed:
                self._take(block=True)
        size = data.size
        fd = data.detach()
        return None if fd is None else (fd, size)

    def answers(self, *, wait: bool = False) -> list[Answer]:
        """Answers that have come; ``wait``: every answer still to come.
        With too many files waiting, this waits for some of them."""
        self._take(block=False)
        if wait:
            self._out += _U32.pack(FLUSH)
            self._unflushed = False
        if wait or self._waiting >= IN_FLIGHT:
            self._send()
            while self._waiting >= (1 if wait else IN_FLIGHT):
                self._take(block=True)
        found, self._ready = self._ready, []
        return found

    def close(self) -> None:
        """Tell the child there is nothing more, and reap it: a file it is
        placing is finished or removed, not cut off."""
        _close_all(self._to_pass)
        if self._passed is not None:
            self._passed.close()
        with contextlib.suppress(OSError):
            os.close(self._jobs)
        with contextlib.suppress(OSError):
            os.close(self._answers)
        with contextlib.suppress(ChildProcessError):
            self._reap()

    def _send(self) -> None:
        """Send what is gathered. While the pipe to the child is full, take
        in its answers: it may be waiting to send them before it reads on.
        What was sent leaves the buffer even when this is interrupted (a
        Ctrl-C), so an abort mark after it does not send it twice."""
        self._before_send()
        if self._to_pass:
            self._pass()
        sent = 0
        try:
            if not self._broken:
                # Views released before the buffer shrinks, even on a failure.
                with memoryview(self._out) as view:
                    while sent < len(view):
                        try:
                            with view[sent:] as rest:
                                sent += os.write(self._jobs, rest)
                        except BlockingIOError:
                            self._both.poll()
                            self._take(block=False)
        except OSError:  # the child is gone (EPIPE)
            self._broken = True
        finally:
            del self._out[:sent]
        if self._broken:
            raise _stopped()

    def _pass(self) -> None:
        """Send the descriptors gathered (before the headers that ask for
        them), and close them here: they are the child's. While the socket
        is full, take in answers, as _send does."""
        fds, self._to_pass = self._to_pass, []
        assert self._passed is not None
        try:
            start = 0
            while start < len(fds) and not self._broken:
                group = array("i", fds[start : start + PASS_GROUP])
                try:
                    self._passed.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, group)])
                except BlockingIOError:
                    self._passing.poll()
                    self._take(block=False)
                    continue
                start += len(group)
        except OSError:  # the child is gone
            self._broken = True
        finally:
            _close_all(fds)
        if self._broken:
            raise _stopped()

    def _take(self, *, block: bool) -> None:
        """Read the answers there are (``block``: at least some)."""
        if block:
            self._answers_in.poll()
        try:
            data = os.read(self._answers, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._broken = True
            raise _stopped()
        self._unpacker.feed(data)
        found = [_answer(raw) for raw in self._unpacker]
        self._waiting -= len(found)
        for _ in found:
            self._passed_waiting -= self._by_fd.popleft()
        self._ready += found


def _start_child(root: str, jobs: int, answers: int, *passed: int) -> _Child | None:
    """Fork the child, or where that is not safe spawn it; None when
    neither could be done. ``passed``: the child's end of the socket
    descriptors come by, if there is one."""
    if can_fork():
        pid = fork_child(functools.partial(_serve, root), jobs, answers, *passed)
        return None if pid is None else _Child(functools.partial(os.waitpid, pid, 0), None)
    proc = spawn_child(_SPAWNED, [os.path.abspath(root)], jobs, answers, *passed)
    return None if proc is None else _Child(proc.wait, proc)


def _socket_pair() -> tuple[socket.socket, socket.socket] | None:
    """The socket for descriptors (this process's end, the child's); None
    where a system has none, or cannot pass descriptors."""
    if not hasattr(socket, "SCM_RIGHTS") or not hasattr(socket, "MSG_CMSG_CLOEXEC"):
        return None
    try:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except (OSError, AttributeError):
        return None


def _max_passed() -> int:
    """Descriptors on their way at once, well within the open-file limit;
    0 (none passed) where that leaves too few to wait on: the child
    answers in groups of ANSWER_EVERY."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return MAX_PASSED
    fits = min(MAX_PASSED, soft // 8)
    return fits if fits >= ANSWER_EVERY else 0


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


class _Child(NamedTuple):
    reap: Callable[[], object]  # waits for it to end
    spawned: subprocess.Popen[bytes] | None  # a fresh interpreter: it says READY first


def _said_ready(answers: int) -> bool:
    """Whether a spawned child says it runs: one that could not start (no
    merklesync where its interpreter looks) ends without a word."""
    waiting = select.poll()
    waiting.register(answers, select.POLLIN)
    if not waiting.poll(READY_WAIT_MS):
        return False
    try:
        return os.read(answers, len(READY)) == READY
    except OSError:
        return False


_SPAWNED = "from merklesync.sources.placer import main; main(sys.argv[1:])"
READY = b"R"
READY_WAIT_MS = 10_000  # for a spawned child to start (a slow disk, a cold cache)


def main(argv: list[str]) -> None:
    """The child when it was spawned rather than forked: ``ROOT JOBS
    ANSWERS [PASSED] PARENT``. Like a forked one, it ends with status 0 when
    done and 1 on any failure, printing nothing (its parent tells what failed)."""
    status = 1
    try:
        root, jobs, answers, *passed, parent = argv
        die_with_parent(int(parent))
        write_all(int(answers), READY)
        _serve(root, int(jobs), int(answers), *map(int, passed))
        status = 0
    finally:
        os._exit(status)


def _stopped() -> LocalIOError:
    return LocalIOError("the process placing new files stopped before it was done")


def _answer(raw: Any) -> Answer:
    """From this module's own child: shaped as _serve made it."""
    path, kind = raw[0], raw[1]
    if kind == PLACED:
        return Answer(path, (raw[2], raw[3]), None, None)
    if kind == REFUSED:
        return Answer(path, None, raw[2], None)
    if kind == FAILED:
        return Answer(path, None, None, OSError(raw[2], raw[3]))
    return Answer(path, None, None, None)


# -- the child ---------------------------------------------------------------


class _Aborted(Exception):
    """The parent could not read this file's content to the end."""


_INT = array("i")


class _Passed:
    """The child's end of the socket: descriptors, in the order of the
    headers that ask for them."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._fds: deque[int] = deque()

    def take(self) -> int:
        if not self._fds:
            room = socket.CMSG_SPACE(PASS_GROUP * _INT.itemsize)
            data, ancillary, flags, _ = self._sock.recvmsg(1, room, socket.MSG_CMSG_CLOEXEC)
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array("i")
                    fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                    self._fds.extend(fds)
            if not data or not self._fds or flags & socket.MSG_CTRUNC:
                raise EOFError  # the parent is gone, or the stream is out of step
        return self._fds.popleft()

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._sock.close()


def _serve(root: str, jobs: int, answers: int, passed_fd: int | None = None) -> None:
    # A Ctrl-C is for the parent, which then ends the jobs: the file being
    # placed is finished or removed. When the parent dies instead, the
    # kernel's SIGTERM (die_with_parent) unwinds the file being written too,
    # where its default action would leave its temp file behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a hang-up too: the parent ends the jobs
    signal.signal(signal.SIGTERM, _terminated)
    dirs = DirFds(root)
    passed = None if passed_fd is None else _Passed(passed_fd)
    pending: list[bytes] = []
    with os.fdopen(jobs, "rb", buffering=1 << 20) as stream:

        def exact(n: int) -> bytes:
            data = stream.read(n)
            if len(data) != n:
                raise EOFError
            return data

        def chunks() -> Iterator[bytes]:
            while True:
                (n,) = _U32.unpack(exact(4))
                if n == END:
                    return
                if n == ABORT:
                    raise _Aborted
                yield exact(n)

        try:
            while True:
                (n,) = _U32.unpack(exact(4))
                if n == FLUSH:
                    _answer_all(answers, pending)
                    dirs.close()  # the parent may change directories now: open them afresh
                    continue
                fields = msgpack.unpackb(exact(n))
                if len(fields) == 5:  # its content is read here, from the descriptor passed
                    path, mode, mtime_ns, digest, size = fields
                    if passed is None:
                        raise EOFError  # out of step: no descriptor can come
                    fd = passed.take()
                    try:
                        done = _place(dirs, path, mode, mtime_ns, digest, read_chunks(fd, size))
                    finally:
                        os.close(fd)
                    pending.append(msgpack.packb(done))
                else:
                    path, mode, mtime_ns, digest = fields
                    content = chunks()
                    done = _place(dirs, path, mode, mtime_ns, digest, content)
                    pending.append(msgpack.packb(done))
                    with contextlib.suppress(_Aborted):
                        for _ in content:  # what a refused file had left
                            pass
                if len(pending) >= ANSWER_EVERY:
                    _answer_all(answers, pending)
        except EOFError:  # the parent is done (or gone)
            _answer_all(answers, pending)
        finally:
            dirs.close()
            if passed is not None:
                passed.close()


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(1)


def _place(
    dirs: DirFds, path: str, mode: int, mtime_ns: int, digest: bytes, content: Iterator[bytes]
) -> list[object]:
    parent, _, name = path.rpartition("/")
    try:
        check_relpath(path)  # the parent checked it; a stream out of step must not write
        fd = dirs.get(parent, create=True)

        def new(tmp: str) -> None:
            place_new(tmp, name, fd)

        st = write_file(fd, name, mode, mtime_ns, digest, content, new)
    except _Aborted:
        return [path, ABORTED]
    except (Refused, NotADirectory, UnsafePath) as refusal:
        return [path, REFUSED, refusal.message]
    except OSError as exc:
        return [path, FAILED, exc.errno or errno.EIO, exc.strerror or str(exc)]
    return [path, PLACED, stat_key(st), st.st_mtime_ns]


def _answer_all(fd: int, pending: list[bytes]) -> None:
    if pending:
        with contextlib.suppress(BrokenPipeError):
            write_all(fd, b"".join(pending))
        pending.clear()
