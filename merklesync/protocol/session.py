"""Sans-io state machines for the two ends of a connection.

They do no I/O (after magic-wormhole and h11): the owner feeds received
bytes to ``receive()`` and gets events back, and calls a method per message
it wants to send, which returns the bytes to write. Each machine knows which
message is legal next, so a peer that sends something out of order gets a
ProtocolError (and the machine stays failed). Calling a send method at the
wrong time is a bug of the owner: RuntimeError; bad arguments: ValueError.

Requests may be pipelined: the client can send several before reading the
answers, which come back in request order.

Client (``RemotePeer``)::

    s = ClientSession(Hello(...))
    transport.write(s.greeting())
    ...feed s.receive(...) until it returns Negotiated
    transport.write(s.children([(0, 0)]))
    ...feed s.receive(...) until Answered(op="children", result=ChildrenResult)

Server (``serve``)::

    s = ServerSession(Hello(...))
    transport.write(s.greeting())
    for event in s.receive(chunk):
        Negotiated / a request message (Refresh, Children, ... Write, Put, Data,
        End, Gone, Commit, Bye) -> answer with s.respond(result), s.error(...),
        or for Read: s.file_data(), s.file_end() / s.file_gone(), s.read_done()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from merklesync.errors import ConnectionFailed, MerklesyncError, ProtocolError
from merklesync.model import Entry, EntryKind
from merklesync.protocol.framing import MAX_CHUNK, FrameDecoder, encode_frame
from merklesync.protocol.messages import (
    CONTACT,
    GUARD,
    INLINE_PUT,
    KEY_SLACK,
    LOCAL_COPY,
    MAX_COMPARE,
    MAX_INLINE,
    MAX_KEYS,
    MAX_NODES,
    MAX_READ,
    MAX_REPORT_ITEMS,
    MAX_RESULT_ITEMS,
    MAX_WRITE_ITEMS,
    RESULT_TYPES,
    Assembly,
    Bye,
    ByeResult,
    Children,
    ChildrenResult,
    ClientMessage,
    Commit,
    Compare,
    CompareResult,
    Contact,
    Data,
    Done,
    End,
    Entries,
    EntriesResult,
    EntriesUnder,
    Error,
    Gone,
    Guard,
    Hello,
    More,
    NodeId,
    Ok,
    Progress,
    Put,
    Read,
    Refresh,
    RefreshResult,
    Remember,
    Request,
    Result,
    Root,
    RootResult,
    ServerMessage,
    Write,
    WriteResult,
    negotiate,
    parse_client_message,
    parse_server_message,
    split_result,
)

# -- events --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The peer's hello arrived and a protocol version was agreed."""

    peer: Hello
    version: int


@dataclass(frozen=True, slots=True)
class Answered:
    """The result of the oldest outstanding request."""

    op: str
    result: Result


@dataclass(frozen=True, slots=True)
class Failed:
    """The oldest outstanding request failed on the server (for ``read``:
    possibly after some files); ``error.exception()`` is what to raise."""

    op: str
    error: Error


@dataclass(frozen=True, slots=True)
class Progressed:
    op: str
    amount: int


@dataclass(frozen=True, slots=True)
class FileData:
    entry: Entry
    chunk: bytes


@dataclass(frozen=True, slots=True)
class FileEnd:
    """All of ``entry``'s content has arrived (exactly ``entry.size`` bytes;
    the receiver still checks the digest)."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class FileGone:
    """``entry`` vanished or changed on the server: drop what arrived of it."""

    entry: Entry
    reason: str


@dataclass(frozen=True, slots=True)
class ReadDone:
    pass


ClientEvent = Negotiated | Answered | Failed | Progressed | FileData | FileEnd | FileGone | ReadDone
ServerEvent = Negotiated | Request | Put | Data | End | Gone | Commit


def _chunks(data: bytes, tag: type[Data]) -> bytes:
    view = memoryview(data)
    return b"".join(
        encode_frame(tag(bytes(view[i : i + MAX_CHUNK])).to_wire())
        for i in range(0, len(data), MAX_CHUNK)
    )


class _Base:
    """What both ends share: the handshake, the decoder, the failed latch."""

    def __init__(self, hello: Hello) -> None:
        self.hello = hello
        self.peer: Hello | None = None
        self.version: int | None = None
        self._decoder = FrameDecoder()
        self._greeted = False
        self._failed: ProtocolError | None = None

    def greeting(self) -> bytes:
        """Our hello: send it first, without waiting for the peer's."""
        if self._greeted:
            raise RuntimeError("hello already sent")
        self._greeted = True
        return encode_frame(self.hello.to_wire())

    def _frames(self, data: bytes | bytearray | memoryview) -> list[object]:
        if self._failed is not None:
            raise self._failed
        try:
            return self._decoder.feed(data)
        except ProtocolError as exc:
            self._failed = exc
            raise

    def _die(self, message: str) -> ProtocolError:
        self._failed = ProtocolError(message)
        return self._failed

    def _negotiate(self, msg: ClientMessage | ServerMessage) -> Negotiated:
        if not isinstance(msg, Hello):
            raise self._die(f"peer did not start with a merklesync hello but with '{msg.TAG}'")
        try:
            version = negotiate(self.hello, msg)
        except ProtocolError as exc:
            self._failed = exc
            raise
        self.peer, self.version = msg, version
        return Negotiated(msg, version)

    def _ready(self) -> None:
        if self._failed is not None:
            raise RuntimeError(f"session failed: {self._failed.message}")
        if not self._greeted or self.version is None:
            raise RuntimeError("no request before both hellos")


# -- client --------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    op: str
    request: Request
    assembly: Assembly | None = None
    paths: list[str] = field(default_factory=list)  # write: one per put
    committed: bool = False  # write: commit sent
    index: int = 0  # read: current file
    received: int = 0  # read: bytes of the current file


class ClientSession(_Base):
    """The side that sends requests (``RemotePeer``)."""

    def __init__(self, hello: Hello) -> None:
        super().__init__(hello)
        self._pending: deque[_Pending] = deque()
        self._write: _Pending | None = None  # the write stream being sent
        self._put: Put | None = None  # the put whose data is being sent
        self._sent = 0  # bytes of that put's data sent so far
        self._bye = False

    @property
    def pending(self) -> int:
        """Requests sent and not yet (fully) answered."""
        return len(self._pending)

    @property
    def put_remaining(self) -> int:
        """Bytes the current put may still send (its entry's size)."""
        if self._put is None:
            raise RuntimeError("no put with data is open")
        return self._put.entry.size - self._sent

    # -- sending ---------------------------------------------------------

    def _request(self, request: Request, assembly: Assembly | None) -> bytes:
        self._ready()
        if self._write is not None:
            raise RuntimeError(f"cannot send {request.TAG} inside a write stream")
        if self._bye:
            raise RuntimeError("bye already sent")
        frame = encode_frame(request.to_wire())
        self._pending.append(_Pending(request.TAG, request, assembly))
        return frame

    def refresh(self, checksum: bool = False) -> bytes:
        return self._request(Refresh(checksum), Assembly.of(RefreshResult, MAX_REPORT_ITEMS))

    def root(self) -> bytes:
        return self._request(Root(), Assembly.of(RootResult, 0))

    @staticmethod
    def _check_nodes(nodes: Sequence[NodeId]) -> tuple[NodeId, ...]:
        if len(nodes) > MAX_NODES:
            raise ValueError(f"{len(nodes)} nodes in one request, over {MAX_NODES}")
        return tuple((int(level), int(prefix)) for level, prefix in nodes)

    def children(self, nodes: Sequence[NodeId], salt: bytes) -> bytes:
        request = Children(salt, self._check_nodes(nodes))
        return self._request(request, Assembly.of(ChildrenResult, len(request.nodes)))

    def compare(self, salt: bytes, groups: Sequence[tuple[NodeId, Sequence[bytes]]]) -> bytes:
        nodes = self._check_nodes([node for node, _ in groups])
        records = tuple(tuple(rs) for _, rs in groups)
        if sum(len(rs) for rs in records) > MAX_COMPARE:
            raise ValueError(f"over {MAX_COMPARE} records in one compare request")
        request = Compare(salt, tuple(zip(nodes, records, strict=True)))
        limit = MAX_RESULT_ITEMS + MAX_COMPARE
        return self._request(request, Assembly.of(CompareResult, limit))

    def entries_under(self, nodes: Sequence[NodeId]) -> bytes:
        request = EntriesUnder(self._check_nodes(nodes))
        return self._request(request, Assembly.of(EntriesResult, MAX_RESULT_ITEMS))

    def entries(self, keys: Sequence[bytes]) -> bytes:
        if len(keys) > MAX_KEYS:
            raise ValueError(f"{len(keys)} keys in one request, over {MAX_KEYS}")
        request = Entries(tuple(keys))
        return self._request(request, Assembly.of(EntriesResult, len(keys) + KEY_SLACK))

    def read(self, entries: Sequence[Entry]) -> bytes:
        """Ask for the content of live files. The request must fit one frame:
        at most MAX_READ entries, fewer if they are large (ValueError)."""
        if len(entries) > MAX_READ:
            raise ValueError(f"{len(entries)} entries in one read, over {MAX_READ}")
        for entry in entries:
            if entry.kind is not EntryKind.FILE or entry.deleted:
                raise ValueError(f"read: {entry.path!r} is not a live file")
        return self._request(Read(tuple(entries)), None)

    def write(self) -> bytes:
        """Open a write stream; then put()... and commit()."""
        frame = self._request(Write(), Assembly.of(WriteResult, MAX_WRITE_ITEMS))
        self._write = self._pending[-1]
        return frame

    @property
    def inline_puts(self) -> bool:
        """Whether the server takes a small file's content inside its put."""
        return self.peer is not None and INLINE_PUT in self.peer.capabilities

    def put_inline(self, entry: Entry, expect: bytes | None, content: bytes) -> bytes:
        """A whole item: a file with its content (at most MAX_INLINE bytes,
        exactly its size), to a server that takes it (``inline_puts``)."""
        stream = self._stream_with_room("put_inline")
        if not self.inline_puts:
            raise RuntimeError("the server does not take content inside a put")
        if entry.kind is not EntryKind.FILE or entry.deleted or len(content) != entry.size:
            raise ValueError(f"put {entry.path!r}: inline content that is not the file's")
        if len(content) > MAX_INLINE:
            raise ValueError(f"put {entry.path!r}: over {MAX_INLINE} bytes to send inline")
        frame = encode_frame(Put(entry, expect, False, content).to_wire())
        stream.paths.append(entry.path)
        return frame

    def _stream_with_room(self, what: str) -> _Pending:
        """The write stream an item begins in: one is open, between items,
        with room for one more."""
        if self._write is None or self._put is not None:
            raise RuntimeError(f"{what}() outside a write stream or inside an item")
        if len(self._write.paths) >= MAX_WRITE_ITEMS:
            raise ValueError(f"over {MAX_WRITE_ITEMS} items in one write; commit and start another")
        return self._write

    @property
    def local_copies(self) -> bool:
        """Whether the server makes a file from one of its own (put_copy)."""
        return self.peer is not None and LOCAL_COPY in self.peer.capabilities

    def put_copy(self, entry: Entry, expect: bytes | None, copy_of: str) -> bytes:
        """A whole item: a file whose content the server's replica holds at
        ``copy_of``, to a server that copies it from there (``local_copies``)."""
        stream = self._stream_with_room("put_copy")
        if not self.local_copies:
            raise RuntimeError("the server does not copy files of its own")
        if entry.kind is not EntryKind.FILE or entry.deleted or copy_of == entry.path:
            raise ValueError(
                f"put {entry.path!r}: a copy of itself, or for something that is not a file"
            )
        frame = encode_frame(Put(entry, expect, False, None, copy_of).to_wire())
        stream.paths.append(entry.path)
        return frame

    def put(self, entry: Entry, expect: bytes | None, has_data: bool) -> bytes:
        stream = self._stream_with_room("put")
        if has_data and (entry.kind is not EntryKind.FILE or entry.deleted):
            raise ValueError(f"put {entry.path!r}: data for something that is not a file")
        frame = encode_frame(Put(entry, expect, has_data).to_wire())
        stream.paths.append(entry.path)
        if has_data:
            self._put, self._sent = Put(entry, expect, has_data), 0
        return frame

    def data(self, chunk: bytes) -> bytes:
        """Frames for ``chunk`` (any length; split into 1 MiB frames)."""
        if self._put is None:
            raise RuntimeError("data() outside a put with data")
        if len(chunk) > self.put_remaining:
            raise ValueError(f"{self._put.entry.path!r}: more data than its size; send gone()")
        self._sent += len(chunk)
        return _chunks(bytes(chunk), Data)

    def end(self) -> bytes:
        if self._put is None:
            raise RuntimeError("end() outside a put with data")
        self._put = None
        return encode_frame(End().to_wire())

    def gone(self, reason: str) -> bytes:
        """Abandon the current item (the source changed while being sent)."""
        if self._put is None:
            raise RuntimeError("gone() outside a put with data")
        self._put = None
        return encode_frame(Gone(reason).to_wire())

    def commit(self) -> bytes:
        if self._write is None or self._put is not None:
            raise RuntimeError("commit() outside a write stream or inside an item")
        self._write.committed = True
        self._write = None
        return encode_frame(Commit().to_wire())

    def remember(self, replica_id: str) -> bytes:
        """Ask the agent to record a complete run with ``replica_id``."""
        return self._request(Remember(replica_id), Assembly.of(ByeResult, 0))

    @property
    def guards(self) -> bool:
        """Whether the server checks, when asked, that a replica is not stale."""
        return self.peer is not None and GUARD in self.peer.capabilities

    def guard(self, replica_id: str) -> bytes:
        """Ask the agent whether a run with ``replica_id`` may go on (see Guard)."""
        if not self.guards:
            raise RuntimeError("the server does not check replicas for staleness")
        return self._request(Guard(replica_id), Assembly.of(ByeResult, 0))

    @property
    def records_contact(self) -> bool:
        """Whether the server records, when asked, a run that left paths out."""
        return self.peer is not None and CONTACT in self.peer.capabilities

    def contact(self, replica_id: str) -> bytes:
        """Ask the agent to record a run with ``replica_id`` that left paths
        out (see Contact)."""
        if not self.records_contact:
            raise RuntimeError("the server does not record runs that left paths out")
        return self._request(Contact(replica_id), Assembly.of(ByeResult, 0))

    def bye(self) -> bytes:
        frame = self._request(Bye(), Assembly.of(ByeResult, 0))
        self._bye = True
        return frame

    # -- receiving -------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> list[ClientEvent]:
        """Events for the bytes received; ProtocolError if the server
        broke the protocol (the session is then unusable)."""
        events: list[ClientEvent] = []
        for obj in self._frames(data):
            try:
                event = self._handle(parse_server_message(obj))
            except ProtocolError as exc:
                self._failed = exc
                raise
            if event is not None:
                events.append(event)
        return events

    def eof(self) -> None:
        """The server closed the connection."""
        self._decoder.eof()
        if self._pending:
            raise ConnectionFailed(
                f"the peer closed the connection with {len(self._pending)} request(s) unanswered"
            )

    def _handle(self, msg: ServerMessage) -> ClientEvent | None:
        if self.version is None:
            return self._negotiate(msg)
        if isinstance(msg, Hello):
            raise ProtocolError("peer sent a second hello")
        if not self._pending:
            raise ProtocolError(f"peer sent '{msg.TAG}' with no request outstanding")
        head = self._pending[0]
        if head.op == Write.TAG and not head.committed:
            raise ProtocolError(f"peer sent '{msg.TAG}' before the write was committed")
        if isinstance(msg, Error):
            self._pending.popleft()
            return Failed(head.op, msg)
        if head.op == Read.TAG:
            return self._read_event(head, msg)
        if isinstance(msg, Progress) and head.op == Refresh.TAG:
            return Progressed(head.op, msg.amount)
        if isinstance(msg, More | Ok) and head.assembly is not None:
            head.assembly.add(msg.value, final=isinstance(msg, Ok))
            if isinstance(msg, More):
                return None  # a part: the event comes with the final ok
            self._pending.popleft()
            return Answered(head.op, self._decode(head, head.assembly.value()))
        raise ProtocolError(f"peer sent '{msg.TAG}' in answer to '{head.op}'")

    @staticmethod
    def _decode(head: _Pending, value: object) -> Result:
        request = head.request
        if isinstance(request, Refresh):
            return RefreshResult.from_wire(value)
        if isinstance(request, Root):
            return RootResult.from_wire(value)
        if isinstance(request, Children):
            return ChildrenResult.from_wire(value, request.nodes)
        if isinstance(request, Compare):
            return CompareResult.from_wire(value, request)
        if isinstance(request, Entries | EntriesUnder):
            return EntriesResult.from_wire(value, request)
        if isinstance(request, Write):
            return WriteResult.from_wire(value, head.paths)
        return ByeResult.from_wire(value)

    def _read_event(self, head: _Pending, msg: ServerMessage) -> ClientEvent:
        assert isinstance(head.request, Read)
        files = head.request.entries
        if isinstance(msg, Done):
            if head.index != len(files):
                raise ProtocolError(f"read answer ended after {head.index} of {len(files)} files")
            self._pending.popleft()
            return ReadDone()
        if head.index >= len(files) or not isinstance(msg, Data | End | Gone):
            raise ProtocolError(f"peer sent '{msg.TAG}' in answer to 'read'")
        entry = files[head.index]
        if isinstance(msg, Data):
            head.received += len(msg.chunk)
            if head.received > entry.size:
                raise ProtocolError(f"peer sent more than {entry.size} bytes for {entry.path!r}")
            return FileData(entry, msg.chunk)
        head.index += 1
        received, head.received = head.received, 0
        if isinstance(msg, Gone):
            return FileGone(entry, msg.reason)
        if received != entry.size:
            raise ProtocolError(f"peer sent {received} of {entry.size} bytes for {entry.path!r}")
        return FileEnd(entry)


# -- server --------------------------------------------------------------


@dataclass(slots=True)
class _Awaiting:
    request: Request
    committed: bool = True  # a write can be answered once committed
    index: int = 0  # read: the file being sent
    sent: int = 0  # read: bytes of it sent


class ServerSession(_Base):
    """The side that answers (``merklesync serve``)."""

    def __init__(self, hello: Hello) -> None:
        super().__init__(hello)
        self._awaiting: deque[_Awaiting] = deque()
        self._write: _Awaiting | None = None  # a write stream is being received
        self._items = 0  # puts in it
        self._put: Put | None = None  # the put whose data is being received
        self._received = 0
        self._bye = False

    @property
    def closing(self) -> bool:
        """The client said bye: answer it, then close."""
        return self._bye

    # -- receiving -------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        for obj in self._frames(data):
            try:
                events.append(self._handle(parse_client_message(obj)))
            except ProtocolError as exc:
                self._failed = exc
                raise
        return events

    def eof(self) -> None:
        """The client closed the connection: fine between requests, a
        ProtocolError in the middle of a frame or a write stream."""
        self._decoder.eof()
        if self._write is not None:
            raise self._die("connection closed in the middle of a write")

    def _handle(self, msg: ClientMessage) -> ServerEvent:
        if self.version is None:
            return self._negotiate(msg)
        if self._bye:
            raise ProtocolError(f"client sent '{msg.TAG}' after bye")
        if isinstance(msg, Hello):
            raise ProtocolError("client sent a second hello")
        if self._put is not None:
            return self._item_event(msg)
        if self._write is not None:
            if isinstance(msg, Put):
                self._items += 1
                if self._items > MAX_WRITE_ITEMS:
                    raise ProtocolError(f"over {MAX_WRITE_ITEMS} items in one write")
                if msg.inline is not None and INLINE_PUT not in self.hello.capabilities:
                    raise ProtocolError("client sent content inside a put, not announced here")
                if msg.copy_of is not None and LOCAL_COPY not in self.hello.capabilities:
                    raise ProtocolError("client asked for a copy in a put, not announced here")
                if msg.has_data:
                    self._put, self._received = msg, 0
                return msg
            if isinstance(msg, Commit):
                self._write.committed = True
                self._write = None
                return msg
            raise ProtocolError(f"client sent '{msg.TAG}' inside a write stream")
        if isinstance(msg, Put | Data | End | Gone | Commit):
            raise ProtocolError(f"client sent '{msg.TAG}' outside a write stream")
        awaiting = _Awaiting(msg)
        if isinstance(msg, Write):
            awaiting.committed = False
            self._write, self._items = awaiting, 0
        elif isinstance(msg, Bye):
            self._bye = True
        self._awaiting.append(awaiting)
        return msg

    def _item_event(self, msg: ClientMessage) -> ServerEvent:
        assert self._put is not None
        if isinstance(msg, Data):
            self._received += len(msg.chunk)
            if self._received > self._put.entry.size:
                entry = self._put.entry
                raise ProtocolError(f"client sent more than {entry.size} bytes for {entry.path!r}")
            return msg
        if isinstance(msg, End | Gone):
            self._put = None
            return msg
        raise ProtocolError(f"client sent '{msg.TAG}' inside the data of {self._put.entry.path!r}")

    # -- answering -------------------------------------------------------

    def _head(self) -> _Awaiting:
        if not self._awaiting:
            raise RuntimeError("no request to answer")
        head = self._awaiting[0]
        if not head.committed:
            raise RuntimeError("a write is answered after its commit")
        return head

    @property
    def answering(self) -> Request | None:
        """The request the next answer is for."""
        return self._awaiting[0].request if self._awaiting else None

    def respond(self, result: Result) -> bytes:
        """The answer (one frame, or ``more`` frames then ``ok``)."""
        head = self._head()
        op = head.request.TAG
        expected = RESULT_TYPES.get(op)
        if expected is None or not isinstance(result, expected):
            raise RuntimeError(f"{type(result).__name__} does not answer '{op}'")
        frames = b"".join(encode_frame(m.to_wire()) for m in split_result(result))
        self._awaiting.popleft()
        return frames

    def error(self, code: str, message: str) -> bytes:
        """Fail the oldest request (a read: at any point of its stream)."""
        self._head()
        self._awaiting.popleft()
        return encode_frame(Error(code, message).to_wire())

    def error_from(self, exc: MerklesyncError) -> bytes:
        err = Error.of(exc)
        return self.error(err.code, err.message)

    def progress(self, amount: int) -> bytes:
        if self._head().request.TAG != Refresh.TAG:
            raise RuntimeError("progress only answers refresh")
        return encode_frame(Progress(amount).to_wire())

    def _reading(self) -> tuple[_Awaiting, Entry]:
        head = self._head()
        if not isinstance(head.request, Read) or head.index >= len(head.request.entries):
            raise RuntimeError("not in the middle of a read answer")
        return head, head.request.entries[head.index]

    @property
    def current_file(self) -> Entry | None:
        """The file the read answer is sending, if any."""
        if not self._awaiting or not isinstance(self._awaiting[0].request, Read):
            return None
        head = self._awaiting[0]
        assert isinstance(head.request, Read)
        entries = head.request.entries
        return entries[head.index] if head.index < len(entries) else None

    def file_data(self, chunk: bytes) -> bytes:
        """Frames for a piece of the current file (split into 1 MiB frames);
        ValueError past its size: send file_gone() instead."""
        head, entry = self._reading()
        if head.sent + len(chunk) > entry.size:
            raise ValueError(f"{entry.path!r} is larger than its entry; send file_gone()")
        head.sent += len(chunk)
        return _chunks(bytes(chunk), Data)

    def file_end(self) -> bytes:
        head, entry = self._reading()
        if head.sent != entry.size:
            raise ValueError(f"{entry.path!r}: {head.sent} of {entry.size} bytes sent")
        head.index, head.sent = head.index + 1, 0
        return encode_frame(End().to_wire())

    def file_gone(self, reason: str) -> bytes:
        head, _ = self._reading()
        head.index, head.sent = head.index + 1, 0
        return encode_frame(Gone(reason).to_wire())

    def read_done(self) -> bytes:
        head = self._head()
        if not isinstance(head.request, Read) or head.index != len(head.request.entries):
            raise RuntimeError("read_done() before every file was sent")
        self._awaiting.popleft()
        return encode_frame(Done().to_wire())
