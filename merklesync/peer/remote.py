"""A replica at the other end of a transport (``merklesync serve`` over SSH
or a pipe), spoken to with the protocol's ``ClientSession``.

Each batched ``Peer`` method is one request (split when a protocol cap says
so, and then pipelined); ``read`` streams the files as they arrive, and
``write`` streams put/data/end items followed by a commit without waiting
for any answer, which all come after the commit. Nothing here starts a
thread: the client only ever blocks on a send while the server is reading
(requests in flight are kept under a pipe buffer's worth), so the two
sides can never wait on each other.

``round_trips`` counts the requests the client had to wait for, the way
``LocalPeer`` counts its batched calls (the handshake, the scan request and
``root`` are not counted), so the numbers compare across peer kinds.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import blake3
import msgpack

from merklesync import __version__
from merklesync.batches import batches
from merklesync.errors import ConnectionFailed, MerklesyncError, ProtocolError
from merklesync.merkle import NodeId
from merklesync.model import Entry, Stats, Unreadable
from merklesync.peer import Node, Outcome, Progress, ScanReport, WriteItem
from merklesync.protocol.messages import (
    BUDGET,
    MAX_COMPARE,
    MAX_INLINE,
    MAX_KEYS,
    MAX_NODES,
    MAX_READ,
    MAX_WRITE_ITEMS,
    PROTOCOL_VERSIONS,
    READ_ONLY,
    ByeResult,
    ChildrenResult,
    CompareResult,
    EntriesResult,
    Error,
    Hello,
    RefreshResult,
    Result,
    RootResult,
    WriteResult,
    error_code,
)
from merklesync.protocol.session import (
    Answered,
    ClientEvent,
    ClientSession,
    Failed,
    FileData,
    FileEnd,
    FileGone,
    Negotiated,
    Progressed,
    ReadDone,
)
from merklesync.transport import Transport, error_line, how_it_ended

SOFTWARE = f"merklesync {__version__}"
RECV_SIZE = 1 << 20
SEND_BUFFER = 256 << 10  # buffered request bytes that trigger a send
PIPELINE_BYTES = 32 << 10  # request bytes in flight beyond the one being answered
READ_BUDGET = BUDGET - 64  # bytes of entries in one read request
EXIT_WAIT = 0.5  # seconds to see whether an agent that cut a frame short died

T = TypeVar("T")
R = TypeVar("R", bound=Result)


class RemotePeer:
    """A ``Peer`` reached through a transport to ``merklesync serve``."""

    local = False

    def __init__(self, transport: Transport, name: str, *, where: str | None = None) -> None:
        self.transport = transport
        self.name = name
        self.where = where or name  # what error messages start with
        self.replica_id = ""
        self.read_only = False
        self.copies_locally = False  # see Peer; as the agent's hello says
        self.stats = Stats()
        self.session = ClientSession(Hello(PROTOCOL_VERSIONS, (), "", SOFTWARE, ""))
        self._events: deque[ClientEvent] = deque()
        self._tickets: deque[int] = deque()  # requests in flight, oldest first
        self._answers: dict[int, Answered | Failed] = {}
        # Guard requests whose answers are not yet looked at, each with the
        # name of the replica asked about.
        self._guards: list[tuple[int, str | None]] = []
        self._next_ticket = 0
        self._progress: Progress | None = None
        self._stream: _ReadStream | None = None
        self._broken: MerklesyncError | None = None
        self._closed = False
        self._out = bytearray()
        try:
            self._handshake()
        except BaseException:
            self._closed = True
            transport.close()
            raise

    def _handshake(self) -> None:
        self._send(self.session.greeting())
        event = self._event()
        assert isinstance(event, Negotiated)  # the session yields nothing else first
        self.replica_id = event.peer.replica_id
        self.read_only = READ_ONLY in event.peer.capabilities
        self.copies_locally = self.session.local_copies
        if not self.replica_id:
            # The agent could not open its replica: its answer to any request says why.
            self._call(self.session.root(), RootResult)
            raise self._fail(ProtocolError(f"{self.where}: the agent has no replica"))

    # -- Peer ------------------------------------------------------------

    def refresh(self, *, checksum: bool = False, progress: Progress | None = None) -> ScanReport:
        return self.start_refresh(checksum=checksum)(progress)

    def start_refresh(self, *, checksum: bool = False) -> Callable[[Progress | None], ScanReport]:
        """Send the scan request now; the remote machine scans while this
        one does other work. The result waits for the answer."""
        self._ready()
        ticket = self._request(self.session.refresh(checksum))

        def finish(progress: Progress | None) -> ScanReport:
            self._progress = progress
            try:
                r = self._result(ticket, RefreshResult)
            finally:
                self._progress = None
            self.stats.files_scanned += r.scanned
            self.stats.files_hashed += r.hashed
            return ScanReport(r.scanned, r.hashed, r.added, r.modified, r.deleted, r.warnings)

        return finish

    def remember(self, replica_id: str) -> None:
        self._ready()
        self._settle()
        self._call(self.session.remember(replica_id), ByeResult)

    def contact(self, replica_id: str) -> None:
        self._ready()
        if not self.session.records_contact:  # an agent of an earlier version: as before
            return
        self._settle()
        self._call(self.session.contact(replica_id), ByeResult)

    def check_not_stale(self, replica_id: str, name: str | None = None) -> None:
        """Asked without waiting: answers come in order, so the next result
        taken (the scan's, before anything is written) raises the refusal,
        and the scan request follows this one with no round trip between."""
        self._ready()
        if self.session.guards:  # an agent of an earlier version: not asked, as before
            self._guards.append((self._request(self.session.guard(replica_id)), name))

    def root(self) -> Node:
        self._ready()
        self._settle()
        r = self._call(self.session.root(), RootResult)
        return Node(r.fingerprint, r.count)

    def children(self, nodes: Sequence[NodeId], salt: bytes) -> list[list[Node]]:
        results = self._batched(
            lambda part: self.session.children(part, salt), nodes, MAX_NODES, ChildrenResult
        )
        return [[Node(fp, n) for fp, n in kids] for r in results for kids in r.children]

    def compare(
        self, salt: bytes, groups: Sequence[tuple[NodeId, Sequence[bytes]]]
    ) -> tuple[list[Entry], list[bytes]]:
        parts = list(
            batches(groups, lambda g: len(g[1]), max_weight=MAX_COMPARE, max_items=MAX_NODES)
        )
        results = self._batched(
            lambda part: self.session.compare(salt, part[0]), parts, 1, CompareResult
        )
        return [e for r in results for e in r.entries], [x for r in results for x in r.lacking]

    def entries(self, keys: Sequence[bytes]) -> list[Entry]:
        results = self._batched(self.session.entries, keys, MAX_KEYS, EntriesResult)
        return [e for r in results for e in r.entries]

    def entries_under(self, nodes: Sequence[NodeId]) -> list[Entry]:
        results = self._batched(self.session.entries_under, nodes, MAX_NODES, EntriesResult)
        return [e for r in results for e in r.entries]

    def read(
        self, entries: Sequence[Entry]
    ) -> Iterator[tuple[Entry, Iterator[bytes] | Unreadable]]:
        """Stream the files; each one's chunks must be taken before the next
        file (what is left of a file is skipped when the next one is asked
        for). A file that arrives whole but does not match its digest is a
        ProtocolError: the agent checks it before saying ``end``."""
        for batch in _read_batches(entries):
            self._ready()
            self._settle()  # earlier answers first: the stream's events come next
            self.stats.round_trips += 1
            self._send(self.session.read(batch))
            self._flush()
            stream = self._stream = _ReadStream(self)
            try:
                yield from stream.files()
            finally:
                stream.close()

    def write(self, items: Iterable[WriteItem], progress: Progress | None = None) -> list[Outcome]:
        """Stream every item, commit, then collect the outcomes: no answer
        is waited for before the commit. Past MAX_WRITE_ITEMS items the
        stream is committed and its outcomes taken (they may not fit a pipe
        buffer, so they are read before more is sent) before the next one."""
        self._ready()
        self._settle()
        self.stats.round_trips += 1
        outcomes: list[Outcome] = []
        streams: list[tuple[int, list[_Sent]]] = []  # answers not yet taken
        writer = _Writer(self)
        try:
            for item in items:
                if writer.puts is not None and len(writer.puts) >= MAX_WRITE_ITEMS:
                    writer.commit()
                    self._collect(streams, outcomes)
                if writer.puts is None:
                    streams.append(writer.open())
                writer.put(item)
                if progress is not None:
                    moved = item.data is not None or item.copy_of is not None
                    progress(item.entry.size if moved else 0)
            if writer.puts is None:  # no item at all: an empty stream
                streams.append(writer.open())
            writer.commit()
            self._flush()
        except BaseException as exc:
            writer.abandon(streams, graceful=isinstance(exc, Exception))
            raise
        self._collect(streams, outcomes)
        return outcomes

    def _collect(self, streams: list[tuple[int, list[_Sent]]], outcomes: list[Outcome]) -> None:
        while streams:
            ticket, puts = streams.pop(0)
            result = self._result(ticket, WriteResult)
            for (path, ok, reason), (size, how) in zip(result.outcomes, puts, strict=True):
                outcomes.append(Outcome(path, ok, reason))
                if ok and how is _How.SENT:
                    self.stats.files_transferred += 1
                    self.stats.bytes_transferred += size
                elif ok and how is _How.COPIED:
                    self.stats.files_copied += 1

    def close(self, *, commit: bool = True) -> None:
        """Say bye (the agent closes its replica first, so its lock is free
        when this returns) and close the transport: without waiting for the
        agent to exit, once it has answered (it has nothing left to say).
        The agent keeps what it finished (``commit`` is for a local replica,
        whose run may be cut anywhere)."""
        if self._closed:
            return
        self._closed = True
        ended = False
        try:
            if self._broken is None:
                if self._stream is not None:
                    self._stream.close()
                if not self._tickets and self._broken is None:
                    self._call(self.session.bye(), ByeResult)
                    ended = True
        except MerklesyncError:
            pass
        finally:
            self.transport.close(ended=ended)

    def __enter__(self) -> RemotePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests and answers --------------------------------------------

    def _ready(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._closed:
            raise ConnectionFailed(f"{self.where}: the connection is closed")
        if self._stream is not None:
            self._stream.close()  # a read left unfinished: skip the rest of it
            if self._broken is not None:
                raise self._broken

    def _request(self, frame: bytes) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets.append(ticket)
        self._send(frame)
        self._flush()
        return ticket

    def _call(self, frame: bytes, kind: type[R]) -> R:
        return self._result(self._request(frame), kind)

    def _batched(
        self,
        make: Callable[[Sequence[T]], bytes],
        items: Sequence[T],
        size: int,
        kind: type[R],
    ) -> list[R]:
        """One request per ``size`` items, pipelined while few bytes are in
        flight; the results in order."""
        if not items:
            return []
        self._ready()
        self._settle()  # only our own requests in flight: their answers are read in time
        flying: deque[tuple[int, int]] = deque()
        flying_bytes = 0
        tickets: list[int] = []
        for start in range(0, len(items), size):
            frame = make(items[start : start + size])
            while flying and flying_bytes + len(frame) > PIPELINE_BYTES:
                ticket, n = flying.popleft()
                flying_bytes -= n
                self._await(ticket)
            if not self._tickets:
                self.stats.round_trips += 1
            ticket = self._request(frame)
            tickets.append(ticket)
            flying.append((ticket, len(frame)))
            flying_bytes += len(frame)
        return [self._result(t, kind) for t in tickets]

    def _await(self, ticket: int) -> None:
        """Take answers until the one for ``ticket`` is in."""
        while ticket not in self._answers:
            event = self._event()
            if isinstance(event, Progressed):
                if self._progress is not None:
                    self._progress(event.amount)
            elif isinstance(event, Answered | Failed):
                self._answers[self._tickets.popleft()] = event
            else:
                raise self._fail(ProtocolError(f"{self.where}: unexpected {type(event).__name__}"))

    def _settle(self) -> None:
        """Take the answers of every request in flight (kept for later)."""
        if self._tickets:
            self._await(self._tickets[-1])

    def _result(self, ticket: int, kind: type[R]) -> R:
        self._await(ticket)
        while self._guards and self._guards[0][0] < ticket:  # answered before this one
            guard, name = self._guards.pop(0)
            guarded = self._answers.pop(guard)
            if isinstance(guarded, Failed):
                exc = guarded.error.exception()
                if error_code(exc) == "replica" and name is not None:
                    # The refusal as away (a "replica" error, see Guard): said
                    # of the replica refused, as a local one says it.
                    raise type(exc)(f"{name}: {exc.message}")
                raise self._remote_error(guarded.error)
        answer = self._answers.pop(ticket)
        if isinstance(answer, Failed):
            raise self._remote_error(answer.error)
        result = answer.result
        if not isinstance(result, kind):  # the session decodes by request: a bug
            raise self._fail(ProtocolError(f"{self.where}: answer of the wrong kind"))
        return result

    def _remote_error(self, error: Error) -> MerklesyncError:
        exc = error.exception()
        return type(exc)(f"{self.where}: {exc.message}")

    # -- bytes -----------------------------------------------------------

    def _event(self) -> ClientEvent:
        if self._broken is not None:
            raise self._broken
        try:
            while not self._events:
                self._flush()
                try:
                    data = self.transport.recv(RECV_SIZE)
                except MerklesyncError as exc:
                    raise self._fail(exc) from None
                finally:
                    self.stats.bytes_received = self.transport.bytes_received
                if not data:
                    raise self._fail(self._eof())
                try:
                    self._events.extend(self.session.receive(data))
                except ProtocolError as exc:
                    raise self._fail(type(exc)(f"{self.where}: {exc.message}")) from None
        except BaseException as exc:
            self._interrupted(exc)
            raise
        return self._events.popleft()

    def _eof(self) -> MerklesyncError:
        """End of stream: a protocol error in the middle of a frame (the
        agent cut its answer short), unless the agent died; a connection
        error otherwise, with the agent's last words. Through a keeper, whose
        agent's end this side cannot see: always the session lost."""
        try:
            self.session.eof()
            truncated: ProtocolError | None = None
        except ProtocolError as exc:
            truncated = type(exc)(f"{self.where}: {exc.message}")
        except ConnectionFailed:
            truncated = None
        if self.transport.relayed:  # the keeper ended the session: it died, or the agent did
            midway = " in the middle of an answer" if truncated is not None else ""
            return ConnectionFailed(
                f"{self.where}: the session kept open by `merklesync watch` ended{midway}"
            )
        status = self._exit_status(wait=truncated is not None)
        if truncated is not None and not status:
            return truncated
        line = error_line(self.transport.stderr_text())
        how = how_it_ended(status) if status else ""
        return ConnectionFailed(
            f"{self.where}: the agent closed the connection{how}" + (f": {line}" if line else "")
        )

    def _exit_status(self, *, wait: bool) -> int | None:
        status = self.transport.exit_status()
        deadline = time.monotonic() + (EXIT_WAIT if wait else 0)
        while status is None and time.monotonic() < deadline:
            time.sleep(0.02)
            status = self.transport.exit_status()
        return status

    def _send(self, data: bytes) -> None:
        if len(data) >= SEND_BUFFER:  # file data: no copy into the buffer
            self._flush()
            self._write(data)
            return
        self._out += data
        if len(self._out) >= SEND_BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data = bytes(self._out)
            self._out.clear()
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            self.transport.send(data)
        except MerklesyncError as exc:  # named by the replica: two may share a host
            raise self._fail(type(exc)(f"{self.where}: {exc.message}")) from None
        except BaseException as exc:
            self._interrupted(exc)
            raise
        finally:
            self.stats.bytes_sent = self.transport.bytes_sent

    def _interrupted(self, exc: BaseException) -> None:
        """A Ctrl-C or SIGTERM (not a failure) in the middle of an answer or
        a request: what was read of it is lost, or the agent has half of
        it. Nothing more is read or sent on this connection (a drain or a
        bye would wait for good), and the run that ends closes it."""
        if not isinstance(exc, Exception):
            self._fail(ConnectionFailed(f"{self.where}: interrupted"))

    def _fail(self, exc: MerklesyncError) -> MerklesyncError:
        """The connection is unusable from now on; every later call raises ``exc``."""
        if self._broken is None:
            self._broken = exc
        return exc


class _How(enum.Enum):
    """How an item's content went: none, sent, or copied by the agent."""

    NO_DATA = 0
    SENT = 1
    COPIED = 2


_Sent = tuple[int, _How]  # an item's size, and how its content went


class _Writer:
    """The client's half of write streams: put, data..., end/gone, commit."""

    def __init__(self, peer: RemotePeer) -> None:
        self.peer = peer
        self.session = peer.session
        self.puts: list[_Sent] | None = None  # the open stream's items
        self.in_put = False

    def open(self) -> tuple[int, list[_Sent]]:
        peer = self.peer
        ticket = peer._next_ticket
        peer._next_ticket += 1
        peer._tickets.append(ticket)
        peer._send(self.session.write())
        self.puts = []
        return ticket, self.puts

    def put(self, item: WriteItem) -> None:
        """Send one item. A source file that cannot be read to its end fails
        this item alone (its put is given up), as on a local replica."""
        assert self.puts is not None
        peer = self.peer
        entry = item.entry
        if item.copy_of is not None:  # only to an agent that copies (Peer.copies_locally)
            peer._send(self.session.put_copy(entry, item.expect, item.copy_of))
            self.puts.append((entry.size, _How.COPIED))
            return
        has_data = item.data is not None
        chunks = iter(item.data) if item.data is not None else None
        unreadable = ""
        if chunks is not None and entry.size <= MAX_INLINE and self.session.inline_puts:
            # A small file travels whole in its put: one frame, not three.
            try:
                content = _read_up_to(chunks, entry.size + 1)
            except OSError as exc:
                content, unreadable = b"", exc.strerror or str(exc)
            if len(content) == entry.size and not unreadable:
                peer._send(self.session.put_inline(entry, item.expect, content))
                self.puts.append((entry.size, _How.SENT))
                return
            chunks = iter((content,))  # sent as data, up to its size, then given up
        peer._send(self.session.put(entry, item.expect, has_data))
        self.puts.append((entry.size, _How.SENT if has_data else _How.NO_DATA))
        if chunks is None:
            return
        self.in_put = True
        gone = unreadable
        try:
            while not gone:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except OSError as exc:
                    gone = exc.strerror or str(exc)
                    break
                if len(chunk) > self.session.put_remaining:
                    gone = "changed during the transfer (larger than when scanned)"
                    break
                if chunk:
                    peer._send(self.session.data(chunk))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if not gone and self.session.put_remaining:
            gone = "changed during the transfer (shorter than when scanned)"
        peer._send(self.session.gone(gone) if gone else self.session.end())
        self.in_put = False

    def commit(self) -> None:
        if self.puts is not None:
            self.peer._send(self.session.commit())
            self.puts = None

    def abandon(self, streams: list[tuple[int, list[_Sent]]], *, graceful: bool) -> None:
        """The items failed (a source went away): close the stream cleanly
        so the connection stays usable, and drop the answers. Interrupted:
        just give the connection up."""
        peer = self.peer
        if peer._broken is not None:
            return
        if not graceful:
            peer._fail(ConnectionFailed(f"{peer.where}: write stream interrupted"))
            return
        try:
            if self.in_put:
                peer._send(self.session.gone("the source failed"))
                self.in_put = False
            self.commit()
            peer._flush()
            for ticket, _puts in streams:
                try:
                    peer._result(ticket, WriteResult)
                except MerklesyncError:
                    if peer._broken is not None:
                        return
        except (MerklesyncError, RuntimeError, ValueError) as exc:
            peer._fail(ConnectionFailed(f"{peer.where}: write stream abandoned: {exc}"))


class _ReadStream:
    """The answer to one read request, file by file."""

    def __init__(self, peer: RemotePeer) -> None:
        self.peer = peer
        self.done = False
        self.current: _FileChunks | None = None

    def files(self) -> Iterator[tuple[Entry, Iterator[bytes] | Unreadable]]:
        peer = self.peer
        while not self.done:
            if self.current is not None:
                self.current.drain()
                self.current = None
                if self.done:
                    return
            event = peer._event()
            if isinstance(event, ReadDone):
                self._finish()
            elif isinstance(event, Failed):
                self._finish()
                raise peer._remote_error(event.error)
            elif isinstance(event, FileGone):
                yield event.entry, Unreadable(event.reason)
            elif isinstance(event, FileData | FileEnd):
                self.current = _FileChunks(self, event)
                yield event.entry, self.current
            else:
                raise peer._fail(ProtocolError(f"{peer.where}: unexpected {type(event).__name__}"))

    def _finish(self) -> None:
        self.done = True
        if self.peer._stream is self:
            self.peer._stream = None

    def close(self) -> None:
        """Skip whatever the consumer did not take."""
        if self.done:
            return
        try:
            for _ in self.files():
                pass
        except MerklesyncError as exc:
            self.peer._fail(exc)
            self._finish()


class _FileChunks:
    """One file's content as it arrives, checked against its digest."""

    def __init__(self, stream: _ReadStream, first: FileData | FileEnd) -> None:
        self.stream = stream
        self.entry = first.entry
        self.first: ClientEvent | None = first
        self.hasher = blake3.blake3()
        self.finished = False
        self.verify = True

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        if self.finished:
            raise StopIteration
        peer = self.stream.peer
        event = self.first if self.first is not None else peer._event()
        self.first = None
        if isinstance(event, FileData):
            self.hasher.update(event.chunk)
            return event.chunk
        self.finished = True
        if isinstance(event, FileEnd):
            if self.verify and self.hasher.digest() != self.entry.digest:
                raise peer._fail(
                    ProtocolError(
                        f"{peer.where}: the content sent for {self.entry.path!r} "
                        "does not match its digest"
                    )
                )
            raise StopIteration
        if isinstance(event, FileGone):
            raise StopIteration  # short: the receiver's digest check refuses it
        self.stream._finish()
        if isinstance(event, Failed):
            raise peer._remote_error(event.error)
        raise peer._fail(ProtocolError(f"{peer.where}: unexpected {type(event).__name__}"))

    def drain(self) -> None:
        self.verify = False
        for _ in self:
            pass


def _read_batches(entries: Sequence[Entry]) -> Iterator[list[Entry]]:
    """Read requests within the caps: at most MAX_READ entries and one frame."""
    return batches(
        entries,
        lambda entry: len(msgpack.packb(entry.to_wire(), use_bin_type=True)),
        max_weight=READ_BUDGET,
        max_items=MAX_READ,
    )


def _read_up_to(chunks: Iterator[bytes], limit: int) -> bytes:
    """A file's content, read until its end or past ``limit`` bytes (then
    closed: the rest is not wanted)."""
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in chunks:
            parts.append(chunk)
            total += len(chunk)
            if total >= limit:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return b"".join(parts)
