"""The agent: ``merklesync serve --stdio ROOT`` answers the protocol on its
standard input and output for one client, confined to one replica.

The replica is opened (and locked) before the hello is sent, and stays
locked for the whole session. When it cannot be opened, the hello carries
an empty replica id and every request is answered with the error, so the
client reports the server's own message and exit code (``not-a-replica``,
``locked``, ``io``...). Errors are ``error`` frames, never text on the
wire: standard output is moved to a private descriptor at start-up, and
file descriptor 1 then points at standard error, so a stray print cannot
corrupt the stream.

One thread, no I/O of its own beyond the two pipes: output is buffered and
flushed before every blocking read, so the two sides never wait on each
other; a write stream is read to its ``commit`` whatever happens to the
items in it, so the client can send it without waiting for answers.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3

from merklesync import __version__, retention
from merklesync.errors import (
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_PROTOCOL,
    EXIT_USAGE,
    MerklesyncError,
    ProtocolError,
)
from merklesync.model import GONE, Entry, EntryKind, Unreadable
from merklesync.peer import WriteItem
from merklesync.peer.local import LocalPeer
from merklesync.pipe_room import widen_pipe
from merklesync.protocol.framing import encode_frame
from merklesync.protocol.messages import (
    CONTACT,
    GUARD,
    INLINE_PUT,
    LOCAL_COPY,
    MAX_RESULT_ITEMS,
    PROTOCOL_VERSIONS,
    READ_ONLY,
    Bye,
    ByeResult,
    Children,
    ChildrenResult,
    Commit,
    Compare,
    CompareResult,
    Contact,
    Data,
    End,
    Entries,
    EntriesResult,
    EntriesUnder,
    Error,
    Gone,
    Guard,
    Hello,
    Put,
    Read,
    Refresh,
    RefreshResult,
    Remember,
    Request,
    Result,
    Root,
    RootResult,
    Write,
    WriteResult,
    display,
)
from merklesync.protocol.session import Negotiated, ServerEvent, ServerSession

READ_SIZE = 1 << 20
FLUSH_AT = 256 << 10  # buffered output bytes that trigger a write
PROGRESS_EVERY = 0.25  # seconds between progress frames of a scan
SOFTWARE = f"merklesync {__version__}"


class Agent:
    """Serve one client on two file descriptors."""

    def __init__(
        self,
        root: Path,
        opened: LocalPeer | MerklesyncError,
        *,
        in_fd: int = 0,
        out_fd: int = 1,
        report: Callable[[str], None] = lambda message: None,
    ) -> None:
        """``opened``: the replica at ``root`` (the serve command opens it and
        starts its scan first), or why it could not be opened (said in
        answer to every request)."""
        self.in_fd = in_fd
        self.out_fd = out_fd
        for fd in (in_fd, out_fd):
            widen_pipe(fd)
        self.report = report  # one line for the operator (the CLI puts it on stderr)
        self.peer: LocalPeer | None = None
        self.failure: MerklesyncError | None = None
        if isinstance(opened, MerklesyncError):
            self.failure = opened
        else:
            self.peer = opened
        replica_id = self.peer.replica_id if self.peer is not None else ""
        root_name = display(str(self.peer.replica.root if self.peer is not None else root))
        read_only = (READ_ONLY,) if self.peer and self.peer.read_only else ()
        caps = (INLINE_PUT, GUARD, CONTACT, LOCAL_COPY, *read_only)
        hello = Hello(PROTOCOL_VERSIONS, caps, replica_id, SOFTWARE, root_name)
        self.session = ServerSession(hello)
        self._out = bytearray()
        self._events: deque[ServerEvent] = deque()
        self._eof = False
        self._progress_due = 0.0
        self._progress_amount = 0

    # -- the loop --------------------------------------------------------

    def run(self) -> int:
        """Answer until bye or end of input; the exit status of ``serve``."""
        try:
            self._send(self.session.greeting())
            while True:
                event = self._event()
                if event is None:
                    return EXIT_OK
                if isinstance(event, Negotiated):
                    continue
                if isinstance(event, Bye):
                    self.close()  # release the lock before the client hears we are done
                    self._send(self.session.respond(ByeResult()))
                    self._flush()
                    return EXIT_OK
                if isinstance(event, Put | Data | End | Gone | Commit):
                    raise ProtocolError(f"client sent '{event.TAG}' outside a write stream")
                self._answer(event)
        except ProtocolError as exc:
            self.report(f"protocol error: {exc.message}")
            self._last_word(exc)
            return EXIT_PROTOCOL
        except (BrokenPipeError, ConnectionResetError):
            return EXIT_CONNECTION  # the client is gone: nobody to tell
        except OSError as exc:
            self.report(f"connection: {exc.strerror or exc}")
            return EXIT_CONNECTION
        except Exception as exc:  # a bug: the traceback goes to stderr, never on the wire
            self.report(_bug_text(exc))
            return EXIT_USAGE
        except BaseException:  # SIGINT, SIGTERM: cut anywhere (see Index.close)
            self.close(commit=False)
            raise
        finally:
            self.close()

    def close(self, *, commit: bool = True) -> None:
        if self.peer is not None:
            peer, self.peer = self.peer, None
            self.failure = MerklesyncError("the replica was closed")
            peer.close(commit=commit)

    def _answer(self, request: Request) -> None:
        if isinstance(request, Write):
            self._write()
        elif isinstance(request, Read):
            self._read(request)
        else:
            try:
                result = self._result(request)
            except ProtocolError:
                raise
            except Exception as exc:
                self._send(self.session.error_from(self._failure(exc)))
                return
            self._send(self.session.respond(result))

    def _failure(self, exc: Exception) -> MerklesyncError:
        """What the client is told of a request that failed. Anything but
        a MerklesyncError is a bug: said on stderr, and the request fails."""
        if isinstance(exc, MerklesyncError):
            return exc
        self.report(_bug_text(exc))
        return MerklesyncError(f"internal error in the agent: {exc!r}")

    def _replica(self) -> LocalPeer:
        if self.peer is None:
            assert self.failure is not None
            raise self.failure
        return self.peer

    def _result(self, request: Request) -> Result:
        peer = self._replica()
        if isinstance(request, Refresh):
            self._progress_due = time.monotonic() + PROGRESS_EVERY
            self._progress_amount = 0
            report = peer.refresh(checksum=request.checksum, progress=self._progress)
            return RefreshResult.of(report)
        if isinstance(request, Root):
            node = peer.root()
            return RootResult(node.fingerprint, node.count)
        if isinstance(request, Children):
            kids = peer.children(request.nodes, request.salt)
            return ChildrenResult([[(n.fingerprint, n.count) for n in ns] for ns in kids])
        if isinstance(request, Compare):
            return CompareResult(*peer.compare(request.salt, request.groups))
        if isinstance(request, Entries):
            return EntriesResult(peer.entries(request.keys))
        if isinstance(request, Remember):
            peer.remember(request.replica_id)
            retention.maybe_collect(peer.replica)
            return ByeResult()
        if isinstance(request, Guard):
            peer.check_not_stale(request.replica_id)
            return ByeResult()
        if isinstance(request, Contact):
            peer.contact(request.replica_id)
            retention.maybe_collect(peer.replica)
            return ByeResult()
        assert isinstance(request, EntriesUnder), request
        return EntriesResult(peer.entries_under(request.nodes, limit=MAX_RESULT_ITEMS))

    def _progress(self, amount: int) -> None:
        self._progress_amount += amount
        now = time.monotonic()
        if now >= self._progress_due:
            self._send(self.session.progress(self._progress_amount))
            self._flush()
            self._progress_amount = 0
            self._progress_due = now + PROGRESS_EVERY

    # -- read: stream files ----------------------------------------------

    def _read(self, request: Read) -> None:
        try:
            peer = self._replica()
            for entry, chunks in peer.read(request.entries):
                self._send_file(peer, entry, chunks)
        except ProtocolError:
            raise
        except Exception as exc:
            self._send(self.session.error_from(self._failure(exc)))
            return
        self._send(self.session.read_done())

    def _send_file(
        self, peer: LocalPeer, entry: Entry, chunks: Iterator[bytes] | Unreadable
    ) -> None:
        if isinstance(chunks, Unreadable):
            self._send(self.session.file_gone(chunks.reason))
            return
        if not _indexed(peer, entry):
            _close(chunks)
            self._send(self.session.file_gone(GONE.reason))
            return
        hasher = blake3.blake3()
        sent = 0
        try:
            for chunk in chunks:
                if sent + len(chunk) > entry.size:
                    self._send(self.session.file_gone("changed during the transfer"))
                    return
                hasher.update(chunk)
                self._send(self.session.file_data(chunk))
                sent += len(chunk)
        except OSError as exc:
            self._send(self.session.file_gone(f"cannot read: {exc.strerror or exc}"))
            return
        finally:
            _close(chunks)
        if sent != entry.size or hasher.digest() != entry.digest:
            # Never end a file with content that does not match its digest:
            # the client takes that for a hostile peer.
            self._send(self.session.file_gone("changed during the transfer"))
        else:
            self._send(self.session.file_end())

    # -- write: apply a stream of items ----------------------------------

    def _write(self) -> None:
        items = _Items(self)
        failure = self.failure if self.peer is None else None
        outcomes = []
        if self.peer is not None:
            try:
                outcomes = self.peer.write(items)
            except ProtocolError:
                raise
            except Exception as exc:
                failure = self._failure(exc)
        items.drain()  # whatever happened, read the stream to its commit
        if failure is not None:
            self._send(self.session.error_from(failure))
        else:
            result = WriteResult([(o.path, o.ok, o.reason) for o in outcomes])
            self._send(self.session.respond(result))

    # -- bytes -----------------------------------------------------------

    def _event(self) -> ServerEvent | None:
        while not self._events:
            if self._eof:
                return None
            self._flush()
            data = os.read(self.in_fd, READ_SIZE)
            if not data:
                self._eof = True
                self.session.eof()
                return None
            self._events.extend(self.session.receive(data))
        return self._events.popleft()

    def _send(self, data: bytes) -> None:
        if len(data) >= FLUSH_AT:  # file data: no copy into the buffer
            self._flush()
            self._write_all(data)
            return
        self._out += data
        if len(self._out) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            try:
                self._write_all(self._out)
            finally:
                self._out.clear()

    def _write_all(self, data: bytes | bytearray) -> None:
        with memoryview(data) as view:
            while view:
                view = view[os.write(self.out_fd, view) :]

    def _last_word(self, exc: MerklesyncError) -> None:
        """After a protocol error from the client, tell it why (its request
        is outstanding as far as it knows), unless inside a write stream
        where it would not listen."""
        if self.session.answering is not None and isinstance(self.session.answering, Write):
            return
        try:
            self._send(encode_frame(Error.of(exc).to_wire()))
            self._flush()
        except OSError:
            pass


class _Items:
    """The items of a write stream as the client sends them, up to its
    commit; each item's data is read from the stream as it is consumed."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.current: _Incoming | None = None
        self.committed = False

    def __iter__(self) -> _Items:
        return self

    def __next__(self) -> WriteItem:
        if self.current is not None:
            self.current.drain()
            self.current = None
        if self.committed:
            raise StopIteration
        event = self.agent._event()
        if isinstance(event, Commit):
            self.committed = True
            raise StopIteration
        if not isinstance(event, Put):  # the session lets nothing else through
            raise ProtocolError("connection closed in the middle of a write")
        if event.inline is not None:
            return WriteItem(event.entry, event.expect, (event.inline,))
        if event.copy_of is not None:
            return WriteItem(event.entry, event.expect, None, event.copy_of)
        if not event.has_data:
            return WriteItem(event.entry, event.expect, None)
        self.current = _Incoming(self.agent)
        return WriteItem(event.entry, event.expect, self.current)

    def drain(self) -> None:
        for _ in self:
            pass


class GivenUp(OSError):
    """The client gave an item up while sending it (its source changed, or
    could not be read): an error reading the item's content, which fails
    that item alone, with the client's reason."""


class _Incoming:
    """The data of one put, read from the stream as it is consumed; when the
    client gives the item up (``gone``) it fails like a source that cannot
    be read (GivenUp), so the item is refused with the client's reason."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.done = False

    def __iter__(self) -> _Incoming:
        return self

    def __next__(self) -> bytes:
        if self.done:
            raise StopIteration
        event = self.agent._event()
        if isinstance(event, Data):
            return event.chunk
        self.done = True  # end or gone; the session allows nothing else here
        if event is None:
            raise ProtocolError("connection closed in the middle of a write")
        if isinstance(event, Gone):  # the writer fails the item with the client's reason
            raise GivenUp(display(event.reason) or "given up by the client")
        raise StopIteration

    def drain(self) -> None:
        for _ in self:
            pass


def _indexed(peer: LocalPeer, entry: Entry) -> bool:
    """Only files the last scan saw are served. Neither the scan nor the
    read goes through a symlink (the read opens the file from the root one
    directory at a time, none followed: DirectorySource.read), so what is
    served is a file inside the replica, at the path the scan saw."""
    cached = peer.replica.index.get(entry.path)
    if cached is None:
        return False
    known = cached.entry
    return not known.deleted and known.kind is EntryKind.FILE and known.digest == entry.digest


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _bug_text(exc: BaseException) -> str:
    """A bug in the agent: the whole traceback, for the operator's log."""
    return "internal error:\n" + "".join(traceback.format_exception(exc)).rstrip()
