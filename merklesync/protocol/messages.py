"""Protocol messages: small frozen dataclasses, each an array on the wire.

Every message is ``[tag, field, ...]``; bytes travel as msgpack bin. The
``from_wire`` side validates everything and raises only ProtocolError (or
its subclass UnsafePath for a bad path). Display text from the peer (error
messages, reasons, warnings, software name) is made one printable line
rather than rejected.

Client to server: ``Hello`` first, then requests, one per ``Peer`` method:
``refresh root children compare entries entries_under read write bye``
(the allowlist: anything else is a ProtocolError). ``write`` opens a stream
of ``put`` [``data``... ``end`` | ``gone``] items closed by ``commit``.

Server to client: ``Hello`` first, then one answer per request, in request
order: ``ok``, or ``error``; a list result too large for one frame comes as
``more`` frames then ``ok`` (the client merges them, see ``Assembly``); a
``refresh`` may be preceded by ``progress`` frames; a ``read`` is answered by
``data``... ``end`` (or ``gone``) per file, then ``done``.

Result values (``RefreshResult`` ... ``ByeResult``) are separate from the
messages because decoding them needs the request they answer.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn, Self

import msgpack

from merklesync import merkle
from merklesync.batches import batches
from merklesync.clock import FOUND_PREFIX, is_replica
from merklesync.errors import (
    CorruptIndex,
    LocalIOError,
    MerklesyncError,
    NewerFormat,
    NotAReplica,
    ProtocolError,
    ReadOnlyReplica,
    ReplicaError,
    ReplicaLocked,
    UnsafePath,
    UsageError,
)
from merklesync.model import KEY_BYTES, LEAF_BYTES, NOT_LISTED, Entry, EntryKind, ScanReport
from merklesync.protocol.framing import MAX_ARRAY, MAX_CHUNK, MAX_FRAME
from merklesync.protocol.paths import MAX_PATH_BYTES, check_relpath

NodeId = tuple[int, int]  # (level, prefix), as merkle and peer define it

# -- versions and caps ---------------------------------------------------

# Lowest and highest protocol this code speaks. 2: children and compare
# carry salted 8-byte fingerprints and leaf records (merkle.short). 3: an
# entry carries its origin (the replica whose write made it). 4: found
# versions (model.found_version), whose origin is where they were found: an
# earlier release would take their names for replicas that never run.
PROTOCOL_VERSIONS = (4, 4)

# Capabilities (optional features a hello announces):
# a server taking a small file's content inside its put (see Put).
INLINE_PUT = "put-inline"
MAX_INLINE = 128 << 10  # the most content a put may carry
# a server that checks, when asked, that a replica has not been away from
# its own longer than its tombstone retention (see Guard).
GUARD = "guard"
# a server whose replica is on a read-only file system: it refuses writes.
READ_ONLY = "read-only"
# a server that records, when asked, a run that left some paths out (see Contact).
CONTACT = "contact"
# a server that makes a file from one of its own, named in the put, that
# holds the same content (a file moved or renamed on the client's side: see Put).
LOCAL_COPY = "local-copy"

MAX_NODES = 65_536  # nodes per children / compare / entries_under request
MAX_COMPARE = 65_536  # leaf records per compare request
MAX_KEYS = 100_000  # keys per entries request
KEY_SLACK = 1_024  # entries beyond one per key an answer may hold (collisions)
MAX_READ = 4_096  # entries per read request (the request must also fit a frame)
MAX_WRITE_ITEMS = 100_000  # put items per write stream
MAX_RESULT_ITEMS = 1 << 18  # compare / entries_under answer, all frames together
MAX_REPORT_ITEMS = 1 << 21  # paths and warnings in one refresh answer
REPORT_BYTES = 4 << 20  # text of the paths and warnings an agent lists in one (RefreshResult.of)
# Frames in one answer, all parts together (each at most MAX_FRAME bytes):
# what an answer of the largest allowed item counts takes, and a bound on
# what a peer can make this side hold before it is caught lying.
MAX_ANSWER_FRAMES = 512
MAX_VV_PAIRS = 1_024  # replicas in one version vector
MAX_TEXT = 2_000  # characters of an error message, reason or warning
MAX_IDENT = 64  # replica id, capability, error code
MAX_CAPS = 64
MAX_SOFTWARE = 200
BUDGET = MAX_FRAME - 1_024  # payload a split answer frame aims at

FANOUT = merkle.FANOUT
FINGERPRINT_BYTES = merkle.FINGERPRINT_BYTES
SALT_BYTES = merkle.SALT_BYTES
SHORT_BYTES = merkle.SHORT_BYTES

# -- validation helpers --------------------------------------------------

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENT = re.compile(r"[!-~]*")  # printable ASCII without spaces
_CODE = re.compile(r"[a-z][a-z0-9-]*")
_MAX_U64 = (1 << 64) - 1


def _fail(message: str) -> NoReturn:
    raise ProtocolError(message)


def _list(
    value: object, what: str, *, length: int | None = None, limit: int | None = None
) -> list[object]:
    if not isinstance(value, list):
        _fail(f"{what}: expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        _fail(f"{what}: expected {length} items, got {len(value)}")
    if limit is not None and len(value) > limit:
        _fail(f"{what}: {len(value)} items, over the limit of {limit}")
    return value


def _int(value: object, what: str, hi: int = _MAX_U64) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        _fail(f"{what}: expected an integer in 0..{hi}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"{what}: expected a boolean")
    return value


def _bin(value: object, what: str, *, size: int | None = None, limit: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        _fail(f"{what}: expected bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        _fail(f"{what}: expected {size} bytes, got {len(value)}")
    if limit is not None and len(value) > limit:
        _fail(f"{what}: {len(value)} bytes, over the limit of {limit}")
    return value


def display(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` as one printable line: control characters escaped, cut at
    ``limit`` characters. For anything from the peer that a user will see."""
    if _CONTROL.search(text):
        text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    if _SURROGATE.search(text):  # a byte of a name that is not UTF-8: cannot travel as is
        text = _SURROGATE.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: object, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        _fail(f"{what}: expected a string, got {type(value).__name__}")
    return display(value, limit)


def _ident(value: object, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > MAX_IDENT or not _IDENT.fullmatch(value):
        _fail(f"{what}: expected up to {MAX_IDENT} printable ASCII characters")
    if not value and not empty:
        _fail(f"{what}: empty")
    return value


def _replica_id(value: object, what: str, *, empty: bool = False) -> str:
    """An _ident that names a replica: never like a found content's version."""
    name = _ident(value, what, empty=empty)
    if not is_replica(name):
        _fail(f"{what}: may not begin with {FOUND_PREFIX!r}")
    return name


def node_from_wire(value: object) -> NodeId:
    """A node id from the peer: ``[level, prefix]`` with level < 16."""
    try:
        return merkle.check_node(value)
    except ValueError as exc:
        _fail(f"node id: {exc}")


def _nodes(value: object) -> tuple[NodeId, ...]:
    """Node ids of a request: none twice, none inside another, so that the
    work (and the answer) is at most one pass over what the nodes cover."""
    nodes = tuple(node_from_wire(n) for n in _list(value, "nodes", limit=MAX_NODES))
    given = set(nodes)
    if len(given) != len(nodes):
        _fail("nodes: a node is named twice")
    levels = {level for level, _ in given}
    if len(levels) > 1:
        shallower = sorted(levels)[:-1]
        for level, prefix in given:
            for up in shallower:
                if up >= level:
                    break
                if (up, prefix // merkle.FANOUT ** (level - up)) in given:
                    _fail(f"nodes: {[level, prefix]} is inside another node of the request")
    return nodes


def entry_from_wire(value: object) -> Entry:
    """An entry from the peer: ``Entry.from_wire`` plus a safe path, a bounded
    version vector without duplicate replicas, and a bounded link target.
    An Entry is one checked already, as its answer arrived (Assembly)."""
    if isinstance(value, Entry):  # never made by unpacking a frame
        return value
    if isinstance(value, list) and len(value) in (10, 11) and isinstance(value[2], list):
        _list(value[2], "version vector", limit=MAX_VV_PAIRS)
    try:
        entry = Entry.from_wire(value)
    except (ValueError, TypeError, OverflowError) as exc:
        _fail(f"{str(exc) or 'malformed entry'}")
    check_relpath(entry.path)
    pairs = entry.vv.pairs
    if len(pairs) > 1 and len({r for r, _ in pairs}) != len(pairs):
        _fail(f"entry {entry.path!r}: version vector names a replica twice")
    target = entry.target
    if target and ("\x00" in target or len(target.encode("utf-8", "replace")) > MAX_PATH_BYTES):
        _fail(f"entry {entry.path!r}: malformed link target")
    return entry


def _is_live_file(entry: Entry) -> bool:
    return entry.kind is EntryKind.FILE and not entry.deleted


def _fields(msg: list[object], count: int) -> list[object]:
    if len(msg) != count + 1:
        _fail(f"'{msg[0]}' message: expected {count} fields, got {len(msg) - 1}")
    return msg[1:]


# -- handshake -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent by both sides first. The tag doubles as the protocol's magic."""

    TAG: ClassVar[str] = "merklesync"
    versions: tuple[int, int]
    capabilities: tuple[str, ...]
    replica_id: str
    software: str
    root_name: str

    def to_wire(self) -> list[object]:
        return [
            self.TAG,
            list(self.versions),
            list(self.capabilities),
            self.replica_id,
            self.software,
            self.root_name,
        ]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Hello:
        versions, caps, replica_id, software, root_name = _fields(msg, 5)
        lo, hi = (
            _int(v, "protocol version", 0xFFFF) for v in _list(versions, "versions", length=2)
        )
        if not 1 <= lo <= hi:
            _fail(f"protocol versions: {lo}-{hi} is not a range")
        return cls(
            versions=(lo, hi),
            capabilities=tuple(
                _ident(c, "capability") for c in _list(caps, "capabilities", limit=MAX_CAPS)
            ),
            replica_id=_replica_id(replica_id, "replica id", empty=True),
            software=_text(software, "software", MAX_SOFTWARE),
            root_name=_text(root_name, "root name", MAX_PATH_BYTES),
        )


def _span(versions: tuple[int, int]) -> str:
    lo, hi = versions
    return str(lo) if lo == hi else f"{lo}-{hi}"


def negotiate(ours: Hello, theirs: Hello) -> int:
    """The highest protocol version both sides speak, or ProtocolError."""
    lo = max(ours.versions[0], theirs.versions[0])
    hi = min(ours.versions[1], theirs.versions[1])
    if lo <= hi:
        return hi
    where = "here" if theirs.versions[0] > ours.versions[1] else "on the peer"
    raise ProtocolError(
        f"peer ({display(theirs.software, 80)}) speaks protocol {_span(theirs.versions)}, "
        f"this merklesync speaks {_span(ours.versions)}; upgrade merklesync {where}"
    )


# -- requests: client to server ------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bare:
    """A message without fields."""

    TAG: ClassVar[str]

    def to_wire(self) -> list[object]:
        return [self.TAG]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Self:
        _fields(msg, 0)
        return cls()


@dataclass(frozen=True, slots=True)
class _Nodes:
    """A request about a batch of nodes."""

    TAG: ClassVar[str]
    nodes: tuple[NodeId, ...]

    def to_wire(self) -> list[object]:
        return [self.TAG, [list(n) for n in self.nodes]]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Self:
        (nodes,) = _fields(msg, 1)
        return cls(_nodes(nodes))


@dataclass(frozen=True, slots=True)
class Refresh:
    TAG: ClassVar[str] = "refresh"
    checksum: bool = False

    def to_wire(self) -> list[object]:
        return [self.TAG, self.checksum]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Refresh:
        (checksum,) = _fields(msg, 1)
        return cls(_bool(checksum, "checksum"))


@dataclass(frozen=True, slots=True)
class Root(_Bare):
    TAG: ClassVar[str] = "root"


@dataclass(frozen=True, slots=True)
class Children:
    """The children of these nodes, fingerprints shortened with ``salt``."""

    TAG: ClassVar[str] = "children"
    salt: bytes
    nodes: tuple[NodeId, ...]

    def to_wire(self) -> list[object]:
        return [self.TAG, self.salt, [list(n) for n in self.nodes]]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Children:
        salt, nodes = _fields(msg, 2)
        return cls(_bin(salt, "salt", size=SALT_BYTES), _nodes(nodes))


@dataclass(frozen=True, slots=True)
class Compare:
    """The client's leaves under some nodes, as short salted records (per
    node ``counts[i]`` records of ``records``): which of its entries under
    those nodes does the server hold otherwise, and which records does it
    lack? On the wire: ``[salt, [nodes], [counts], records concatenated]``."""

    TAG: ClassVar[str] = "compare"
    salt: bytes
    groups: tuple[tuple[NodeId, tuple[bytes, ...]], ...]

    def to_wire(self) -> list[object]:
        return [
            self.TAG,
            self.salt,
            [list(node) for node, _ in self.groups],
            [len(records) for _, records in self.groups],
            b"".join(r for _, records in self.groups for r in records),
        ]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Compare:
        salt, nodes_w, counts_w, blob_w = _fields(msg, 4)
        nodes = _nodes(nodes_w)
        counts = [
            _int(c, "record count", MAX_COMPARE)
            for c in _list(counts_w, "record counts", length=len(nodes))
        ]
        if sum(counts) > MAX_COMPARE:
            _fail(f"compare: {sum(counts)} records, over the limit of {MAX_COMPARE}")
        records = iter(_shorts(_bin(blob_w, "records", size=sum(counts) * SHORT_BYTES)))
        groups = tuple(
            (node, tuple(itertools.islice(records, count)))
            for node, count in zip(nodes, counts, strict=True)
        )
        return cls(_bin(salt, "salt", size=SALT_BYTES), groups)

    def records(self) -> set[bytes]:
        return {r for _, records in self.groups for r in records}


@dataclass(frozen=True, slots=True)
class EntriesUnder(_Nodes):
    TAG: ClassVar[str] = "entries_under"


@dataclass(frozen=True, slots=True)
class Entries:
    TAG: ClassVar[str] = "entries"
    keys: tuple[bytes, ...]

    def to_wire(self) -> list[object]:
        return [self.TAG, list(self.keys)]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Entries:
        (keys,) = _fields(msg, 1)
        return cls(
            tuple(_bin(k, "key", size=KEY_BYTES) for k in _list(keys, "keys", limit=MAX_KEYS))
        )


@dataclass(frozen=True, slots=True)
class Read:
    """Stream these files (live file entries, as the server's scan saw them)."""

    TAG: ClassVar[str] = "read"
    entries: tuple[Entry, ...]

    def to_wire(self) -> list[object]:
        return [self.TAG, [e.to_wire() for e in self.entries]]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Read:
        (entries,) = _fields(msg, 1)
        parsed = tuple(entry_from_wire(e) for e in _list(entries, "entries", limit=MAX_READ))
        for entry in parsed:
            if not _is_live_file(entry):
                _fail(f"read: {entry.path!r} is not a file")
        return cls(parsed)


@dataclass(frozen=True, slots=True)
class Write(_Bare):
    """Opens a write stream: ``put`` items, then ``commit``."""

    TAG: ClassVar[str] = "write"


@dataclass(frozen=True, slots=True)
class Put:
    """One write item: make ``entry`` current if the destination still holds
    the entry whose leaf hash is ``expect`` (nil: nothing). With
    ``has_data``, ``data`` frames then ``end`` (or ``gone``) follow; with
    ``inline`` (to a server announcing INLINE_PUT), the file's whole
    content is here, in place of ``has_data`` on the wire; with
    ``copy_of`` (to a server announcing LOCAL_COPY), the path of a file of
    the server's own replica that holds the content, in the same place:
    the server copies it from there; with none of them, the item is
    complete."""

    TAG: ClassVar[str] = "put"
    entry: Entry
    expect: bytes | None
    has_data: bool
    inline: bytes | None = None
    copy_of: str | None = None

    def to_wire(self) -> list[object]:
        data: object = self.has_data
        if self.inline is not None:
            data = self.inline
        elif self.copy_of is not None:
            data = self.copy_of
        return [self.TAG, self.entry.to_wire(), self.expect, data]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Put:
        entry_w, expect_w, data_w = _fields(msg, 3)
        entry = entry_from_wire(entry_w)
        expect = None if expect_w is None else _bin(expect_w, "expected leaf", size=LEAF_BYTES)
        if isinstance(data_w, bytes):
            inline = _bin(data_w, "inline data", limit=MAX_INLINE)
            if not _is_live_file(entry) or len(inline) != entry.size:
                _fail(f"put {entry.path!r}: inline data that is not the file's content")
            return cls(entry, expect, False, inline)
        if isinstance(data_w, str):
            copy_of = check_relpath(data_w)
            if not _is_live_file(entry) or copy_of == entry.path:
                _fail(f"put {entry.path!r}: a copy of itself, or for something that is not a file")
            return cls(entry, expect, False, None, copy_of)
        has_data = _bool(data_w, "has_data")
        if has_data and not _is_live_file(entry):
            _fail(f"put {entry.path!r}: data for something that is not a file")
        return cls(entry, expect, has_data)


@dataclass(frozen=True, slots=True)
class Data:
    """A chunk of file content (1 byte to 1 MiB), either direction."""

    TAG: ClassVar[str] = "data"
    chunk: bytes

    def to_wire(self) -> list[object]:
        return [self.TAG, self.chunk]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Data:
        (chunk,) = _fields(msg, 1)
        data = _bin(chunk, "data", limit=MAX_CHUNK)
        if not data:
            _fail("empty data frame")
        return cls(data)


@dataclass(frozen=True, slots=True)
class End(_Bare):
    """The current file is complete, either direction."""

    TAG: ClassVar[str] = "end"


@dataclass(frozen=True, slots=True)
class Gone:
    """The current file vanished or changed: discard what was sent of it."""

    TAG: ClassVar[str] = "gone"
    reason: str = ""

    def to_wire(self) -> list[object]:
        return [self.TAG, self.reason]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Gone:
        (reason,) = _fields(msg, 1)
        return cls(_text(reason, "reason"))


@dataclass(frozen=True, slots=True)
class Commit(_Bare):
    TAG: ClassVar[str] = "commit"


@dataclass(frozen=True, slots=True)
class Bye(_Bare):
    TAG: ClassVar[str] = "bye"


@dataclass(frozen=True, slots=True)
class _AboutReplica:
    """A request about one other replica, named by its id."""

    TAG: ClassVar[str]
    replica_id: str

    def to_wire(self) -> list[object]:
        return [self.TAG, self.replica_id]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Self:
        (replica_id,) = _fields(msg, 1)
        return cls(_replica_id(replica_id, f"{cls.TAG}: replica id"))


@dataclass(frozen=True, slots=True)
class Remember(_AboutReplica):
    """The client's replica and the agent's now agree (a complete run): the
    agent records it, for tombstone collection. Answered with nil."""

    TAG: ClassVar[str] = "remember"


@dataclass(frozen=True, slots=True)
class Guard(_AboutReplica):
    """Before a run with the client's other replica: the agent refuses it
    (a ``replica`` error) when that replica has been away from the agent's
    longer than the agent's tombstone retention; files deleted and
    forgotten there since could come back. Answered with nil."""

    TAG: ClassVar[str] = "guard"


@dataclass(frozen=True, slots=True)
class Contact(_AboutReplica):
    """The client's replica and the agent's met in a run that ended but
    left some paths out (excluded, ignored by one side, skipped, not
    written): no proof for tombstone collection, yet no absence either;
    the agent records it for its staleness check (see retention).
    Answered with nil."""

    TAG: ClassVar[str] = "contact"


# -- answers: server to client -------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok:
    """The (last part of the) result of the oldest unanswered request."""

    TAG: ClassVar[str] = "ok"
    value: object

    def to_wire(self) -> list[object]:
        return [self.TAG, self.value]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Ok:
        (value,) = _fields(msg, 1)
        return cls(value)


@dataclass(frozen=True, slots=True)
class More:
    """A leading part of a result that did not fit one frame."""

    TAG: ClassVar[str] = "more"
    value: object

    def to_wire(self) -> list[object]:
        return [self.TAG, self.value]

    @classmethod
    def from_wire(cls, msg: list[object]) -> More:
        (value,) = _fields(msg, 1)
        return cls(value)


ERROR_CODES: dict[str, type[MerklesyncError]] = {
    "error": MerklesyncError,
    "usage": UsageError,
    "replica": ReplicaError,
    "not-a-replica": NotAReplica,
    "corrupt-index": CorruptIndex,
    "newer-format": NewerFormat,
    "locked": ReplicaLocked,
    "io": LocalIOError,
    "read-only": ReadOnlyReplica,
    "protocol": ProtocolError,
    "unsafe-path": UnsafePath,
}
_CODE_OF = {cls: code for code, cls in ERROR_CODES.items()}


def error_code(exc: BaseException) -> str:
    """The wire code of an exception: its most specific class that has one."""
    for cls in type(exc).__mro__:
        code = _CODE_OF.get(cls)
        if code is not None:
            return code
    return "error"


@dataclass(frozen=True, slots=True)
class Error:
    """The request failed on the server; ``code`` picks the exception class
    the client raises (unknown codes: MerklesyncError), ``message`` is the
    server's one-line message."""

    TAG: ClassVar[str] = "error"
    code: str
    message: str

    def to_wire(self) -> list[object]:
        return [self.TAG, self.code, self.message]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Error:
        code, message = _fields(msg, 2)
        if not isinstance(code, str) or len(code) > MAX_IDENT or not _CODE.fullmatch(code):
            _fail("error code: expected a short lower-case word")
        return cls(code, _text(message, "error message"))

    @classmethod
    def of(cls, exc: MerklesyncError) -> Error:
        return cls(error_code(exc), display(exc.message))

    def exception(self) -> MerklesyncError:
        return ERROR_CODES.get(self.code, MerklesyncError)(self.message)


@dataclass(frozen=True, slots=True)
class Progress:
    """Work done so far on a refresh (files scanned since the last one)."""

    TAG: ClassVar[str] = "progress"
    amount: int

    def to_wire(self) -> list[object]:
        return [self.TAG, self.amount]

    @classmethod
    def from_wire(cls, msg: list[object]) -> Progress:
        (amount,) = _fields(msg, 1)
        return cls(_int(amount, "progress"))


@dataclass(frozen=True, slots=True)
class Done(_Bare):
    """The end of a read answer."""

    TAG: ClassVar[str] = "done"


Request = (
    Refresh
    | Root
    | Children
    | Compare
    | Entries
    | EntriesUnder
    | Read
    | Write
    | Remember
    | Guard
    | Contact
    | Bye
)
ClientMessage = Hello | Request | Put | Data | End | Gone | Commit
ServerMessage = Hello | Ok | More | Error | Progress | Data | End | Gone | Done

_REQUESTS: tuple[type[Request], ...] = (
    Refresh,
    Root,
    Children,
    Compare,
    Entries,
    EntriesUnder,
    Read,
    Write,
    Remember,
    Guard,
    Contact,
    Bye,
)
OPS: frozenset[str] = frozenset(cls.TAG for cls in _REQUESTS)  # the server's allowlist

_CLIENT: dict[str, type[ClientMessage]] = {
    cls.TAG: cls for cls in (Hello, *_REQUESTS, Put, Data, End, Gone, Commit)
}
_SERVER: dict[str, type[ServerMessage]] = {
    cls.TAG: cls for cls in (Hello, Ok, More, Error, Progress, Data, End, Gone, Done)
}


def _dispatch(
    obj: object, table: dict[str, type[ClientMessage]] | dict[str, type[ServerMessage]], side: str
) -> ClientMessage | ServerMessage:
    if not isinstance(obj, list) or not obj:
        _fail(f"malformed message from the {side}: expected a non-empty array")
    tag = obj[0]
    if not isinstance(tag, str):
        _fail(f"malformed message from the {side}: the tag is not a string")
    cls = table.get(tag)
    if cls is None:
        _fail(f"unknown message from the {side}: {display(tag, 40)!r}")
    return cls.from_wire(obj)


def parse_client_message(obj: object) -> ClientMessage:
    """What a server may receive; anything else is a ProtocolError."""
    return _dispatch(obj, _CLIENT, "client")  # type: ignore[return-value]


def parse_server_message(obj: object) -> ServerMessage:
    """What a client may receive; anything else is a ProtocolError."""
    return _dispatch(obj, _SERVER, "server")  # type: ignore[return-value]


# -- result values -------------------------------------------------------
#
# SHAPE says how a result may be split over ``more`` frames and merged:
# "*"   the result is an array; parts are concatenated;
# a tuple of per-field kinds: "i" integer (parts are summed), "l" array
#       (concatenated), "b<N>" bin of N-byte records (concatenated);
# None  never split.

Shape = str | tuple[str, ...] | None

# ITEM checks each item of a result's arrays as its part arrives, before
# the parts are kept until the end of the answer (Assembly): one nested
# array costs a byte on the wire and some 60 in memory, so an item of the
# wrong shape is caught in its first frame, not after hundreds of them.


def _as_is(value: object) -> object:
    return value


def _text_item(value: object) -> object:
    if not isinstance(value, str):
        _fail("answer part: an item that is not text")
    return value


def _node_children(value: object) -> list[tuple[bytes, int]]:
    """One node's children, from ``[16 short fingerprints concatenated, [16 counts]]``."""
    fps, counts = _list(value, "children of a node", length=2)
    blob = _bin(fps, "fingerprints", size=FANOUT * SHORT_BYTES)
    cs = [_int(c, "count") for c in _list(counts, "counts", length=FANOUT)]
    n = SHORT_BYTES
    return [(blob[i * n : (i + 1) * n], cs[i]) for i in range(FANOUT)]


def _children_item(value: object) -> object:
    _node_children(value)
    return value


def _outcome_item(value: object) -> object:
    for part in _list(value, "outcome", length=3):
        if isinstance(part, list | dict):
            _fail("outcome: malformed")
    return value


@dataclass(frozen=True, slots=True)
class RefreshResult:
    SHAPE: ClassVar[Shape] = ("i", "i", "l", "l", "l", "l")
    ITEM: ClassVar[Callable[[object], object]] = _text_item
    scanned: int = 0
    hashed: int = 0
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_wire(self) -> list[object]:
        return [self.scanned, self.hashed, self.added, self.modified, self.deleted, self.warnings]

    @classmethod
    def of(cls, report: ScanReport, budget: int = REPORT_BYTES) -> RefreshResult:
        """A scan report as an answer: its warnings, then the paths added,
        modified and deleted, as far as ``budget`` bytes of their text go;
        what is left out is counted in one more warning. The answer so stays
        a few frames, far inside the client's limits, even after a scan that
        found millions of changes (the first scan of a large tree), which
        the client of a push or a sync does not list anyway."""
        room = budget
        left: list[str] = []

        def listed(items: list[str], what: str) -> list[str]:
            nonlocal room
            for n, item in enumerate(items):
                size = len(item.encode("utf-8", "surrogateescape")) + 8
                if size > room:
                    room = 0
                    left.append(f"{len(items) - n:,} {what}")
                    return items[:n]
                room -= size
            return items

        warnings = listed(report.warnings, "warnings")
        added = listed(report.added, "added")
        modified = listed(report.modified, "modified")
        deleted = listed(report.deleted, "deleted")
        if left:
            warnings = [
                *warnings,
                f"{NOT_LISTED} (over {budget:,} bytes of paths and warnings): " + ", ".join(left),
            ]
        return cls(report.scanned, report.hashed, added, modified, deleted, warnings)

    @classmethod
    def from_wire(cls, value: object) -> RefreshResult:
        scanned, hashed, added, modified, deleted, warnings = _list(value, "scan report", length=6)

        def paths(v: object, what: str) -> list[str]:
            return [check_relpath(p) for p in _list(v, what, limit=MAX_REPORT_ITEMS)]

        return cls(
            scanned=_int(scanned, "scanned"),
            hashed=_int(hashed, "hashed"),
            added=paths(added, "added"),
            modified=paths(modified, "modified"),
            deleted=paths(deleted, "deleted"),
            warnings=[
                _text(w, "warning") for w in _list(warnings, "warnings", limit=MAX_REPORT_ITEMS)
            ],
        )


@dataclass(frozen=True, slots=True)
class RootResult:
    SHAPE: ClassVar[Shape] = None
    fingerprint: bytes
    count: int

    def to_wire(self) -> list[object]:
        return [self.fingerprint, self.count]

    @classmethod
    def from_wire(cls, value: object) -> RootResult:
        fp, count = _list(value, "root", length=2)
        return cls(_bin(fp, "fingerprint", size=FINGERPRINT_BYTES), _int(count, "count"))


@dataclass(frozen=True, slots=True)
class ChildrenResult:
    """Per node, its 16 children as (short fingerprint, count). On the wire
    a node is ``[16 short fingerprints concatenated, [16 counts]]``."""

    SHAPE: ClassVar[Shape] = "*"
    ITEM: ClassVar[Callable[[object], object]] = _children_item
    children: list[list[tuple[bytes, int]]]

    def to_wire(self) -> list[object]:
        return [[b"".join(fp for fp, _ in kids), [c for _, c in kids]] for kids in self.children]

    @classmethod
    def from_wire(cls, value: object, nodes: Sequence[NodeId]) -> ChildrenResult:
        return cls([_node_children(item) for item in _list(value, "children", length=len(nodes))])


@dataclass(frozen=True, slots=True)
class CompareResult:
    """The server's entries under the nodes that are not among the client's
    records, and the client's records the server lacks. On the wire:
    ``[[entries], lacking records concatenated]``."""

    SHAPE: ClassVar[Shape] = ("l", f"b{SHORT_BYTES}")
    ITEM: ClassVar[Callable[[object], object]] = entry_from_wire
    entries: list[Entry]
    lacking: list[bytes]

    def to_wire(self) -> list[object]:
        return [[e.to_wire() for e in self.entries], b"".join(self.lacking)]

    @classmethod
    def from_wire(cls, value: object, request: Compare) -> CompareResult:
        entries_w, blob_w = _list(value, "compare", length=2)
        nodes = {node for node, _ in request.groups}
        levels = {level for level, _ in nodes}
        entries = [entry_from_wire(e) for e in _list(entries_w, "entries", limit=MAX_RESULT_ITEMS)]
        for entry in entries:
            if not _under(entry.key, nodes, levels):
                _fail(f"compare: {entry.path!r} is not under the nodes asked for")
        sent = request.records()
        blob = _bin(blob_w, "lacking records", limit=len(sent) * SHORT_BYTES)
        if len(blob) % SHORT_BYTES:
            _fail("compare: lacking records are not whole records")
        lacking = _shorts(blob)
        for record in lacking:
            if record not in sent:
                _fail("compare: a lacking record that was not sent")
        return cls(entries, lacking)


def _shorts(blob: bytes) -> list[bytes]:
    """Records of SHORT_BYTES each, concatenated, one by one."""
    return [blob[i : i + SHORT_BYTES] for i in range(0, len(blob), SHORT_BYTES)]


def _under(key: bytes, nodes: set[NodeId], levels: set[int]) -> bool:
    return any((lv, merkle.prefix_of(key, lv)) in nodes for lv in levels)


@dataclass(frozen=True, slots=True)
class EntriesResult:
    """The answer to ``entries`` and to ``entries_under``."""

    SHAPE: ClassVar[Shape] = "*"
    ITEM: ClassVar[Callable[[object], object]] = entry_from_wire
    entries: list[Entry]

    def to_wire(self) -> list[object]:
        return [e.to_wire() for e in self.entries]

    @classmethod
    def from_wire(cls, value: object, request: Entries | EntriesUnder) -> EntriesResult:
        if isinstance(request, Entries):
            wanted = set(request.keys)
            limit = len(request.keys) + KEY_SLACK
            entries = [entry_from_wire(e) for e in _list(value, "entries", limit=limit)]
            for entry in entries:
                if entry.key not in wanted:
                    _fail(f"entries: {entry.path!r} was not asked for")
        else:
            nodes = set(request.nodes)
            levels = {lv for lv, _ in nodes}
            entries = [entry_from_wire(e) for e in _list(value, "entries", limit=MAX_RESULT_ITEMS)]
            for entry in entries:
                if not _under(entry.key, nodes, levels):
                    _fail(f"entries_under: {entry.path!r} is not under the nodes asked for")
        return cls(entries)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """One (path, ok, reason) per ``put``, in order."""

    SHAPE: ClassVar[Shape] = "*"
    ITEM: ClassVar[Callable[[object], object]] = _outcome_item
    outcomes: list[tuple[str, bool, str]]

    def to_wire(self) -> list[object]:
        return [[p, ok, reason] for p, ok, reason in self.outcomes]

    @classmethod
    def from_wire(cls, value: object, paths: Sequence[str]) -> WriteResult:
        out: list[tuple[str, bool, str]] = []
        for item, expected in zip(_list(value, "outcomes", length=len(paths)), paths, strict=True):
            path, ok, reason = _list(item, "outcome", length=3)
            if path != expected:
                _fail(f"write: outcome for {display(str(path), 80)!r} where {expected!r} was sent")
            out.append((expected, _bool(ok, "ok"), _text(reason, "reason")))
        return cls(out)


@dataclass(frozen=True, slots=True)
class ByeResult:
    SHAPE: ClassVar[Shape] = None

    def to_wire(self) -> None:
        return None

    @classmethod
    def from_wire(cls, value: object) -> ByeResult:
        if value is not None:
            _fail("bye: expected nil")
        return cls()


Result = (
    RefreshResult
    | RootResult
    | ChildrenResult
    | CompareResult
    | EntriesResult
    | WriteResult
    | ByeResult
)

RESULT_TYPES: dict[str, type[Result]] = {
    Refresh.TAG: RefreshResult,
    Root.TAG: RootResult,
    Children.TAG: ChildrenResult,
    Compare.TAG: CompareResult,
    Entries.TAG: EntriesResult,
    EntriesUnder.TAG: EntriesResult,
    Write.TAG: WriteResult,
    Remember.TAG: ByeResult,  # nil, as for bye
    Guard.TAG: ByeResult,
    Contact.TAG: ByeResult,
    Bye.TAG: ByeResult,
}  # read has no result value: it is answered by a stream


# -- splitting and merging answers ---------------------------------------


def _packed_len(obj: object) -> int:
    return len(msgpack.packb(obj, use_bin_type=True))


def _empty(shape: tuple[str, ...]) -> list[object]:
    return [0 if k == "i" else [] if k == "l" else b"" for k in shape]


def split_result(result: Result, budget: int = BUDGET) -> list[Ok | More]:
    """The answer frames for ``result``: ``more``... then ``ok``, each at most
    ``budget`` bytes of payload. Raises ValueError if one item cannot fit."""
    wire = result.to_wire()
    shape = result.SHAPE
    if _packed_len(wire) <= budget:
        return [Ok(wire)]
    if shape is None:
        raise ValueError(f"{type(result).__name__} does not fit a frame")
    parts: list[object] = []
    if isinstance(shape, str):
        assert isinstance(wire, list)

        def fitting(item: object) -> int:
            n = _packed_len(item)
            if n > budget:
                raise ValueError("one result item does not fit a frame")
            return n

        parts.extend(batches(wire, fitting, max_weight=budget, max_items=MAX_ARRAY))
    else:
        assert isinstance(wire, list)
        base = _packed_len(_empty(shape)) + 16
        fields = _empty(shape)
        size = base

        def flush() -> None:
            nonlocal fields, size
            parts.append(fields)
            fields, size = _empty(shape), base

        for i, kind in enumerate(shape):
            value = wire[i]
            if kind == "l":
                assert isinstance(value, list)
                for item in value:
                    n = _packed_len(item)
                    if n > budget - base:
                        raise ValueError("one result item does not fit a frame")
                    target = fields[i]
                    assert isinstance(target, list)
                    if size + n > budget or len(target) >= MAX_ARRAY:
                        flush()
                        target = fields[i]
                        assert isinstance(target, list)
                    target.append(item)
                    size += n
            elif kind.startswith("b"):
                assert isinstance(value, bytes)
                record = int(kind[1:])
                pos = 0
                while pos < len(value):
                    room = (budget - size - 8) // record * record
                    if room <= 0:
                        flush()
                        continue
                    take = min(room, len(value) - pos)
                    piece = fields[i]
                    assert isinstance(piece, bytes)
                    fields[i] = piece + value[pos : pos + take]
                    size += take
                    pos += take
        for i, kind in enumerate(shape):
            if kind == "i":
                fields[i] = wire[i]
        parts.append(fields)
    return [More(p) for p in parts[:-1]] + [Ok(parts[-1])]


class Assembly:
    """Merges the parts of one answer as they arrive, checking their shape,
    each item of their arrays (``item``: see ITEM), and that all of them
    together hold at most ``limit`` items in at most MAX_ANSWER_FRAMES
    frames."""

    def __init__(self, shape: Shape, limit: int, item: Callable[[object], object] = _as_is) -> None:
        self.shape = shape
        self.limit = limit
        self.item = item  # each item of an array part, checked (see ITEM)
        self.count = 0
        self.frames = 0
        self._items: list[object] = []
        self._fields: list[object] = [] if not isinstance(shape, tuple) else _empty(shape)
        self._blobs: dict[int, bytearray] = {}
        self._single: object = None

    @classmethod
    def of(cls, result: type[Result], limit: int) -> Assembly:
        """For the parts of an answer that is a ``result``."""
        return cls(result.SHAPE, limit, getattr(result, "ITEM", _as_is))

    def _grow(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            _fail(f"answer too large: over {self.limit} items")

    def add(self, value: object, *, final: bool) -> None:
        self.frames += 1
        if self.frames > MAX_ANSWER_FRAMES:
            _fail(f"answer too large: over {MAX_ANSWER_FRAMES} frames")
        shape = self.shape
        if shape is None:
            if not final:
                _fail("this answer cannot come in parts")
            self._single = value
        elif isinstance(shape, str):
            items = _list(value, "answer part")
            self._grow(len(items))
            self._items.extend(map(self.item, items))
        else:
            parts = _list(value, "answer part", length=len(shape))
            for i, (kind, part) in enumerate(zip(shape, parts, strict=True)):
                if kind == "i":
                    total = self._fields[i]
                    assert isinstance(total, int)
                    self._fields[i] = total + _int(part, "count")
                elif kind == "l":
                    items = _list(part, "answer part")
                    self._grow(len(items))
                    target = self._fields[i]
                    assert isinstance(target, list)
                    target.extend(map(self.item, items))
                else:
                    record = int(kind[1:])
                    blob = _bin(part, "answer part")
                    if len(blob) % record:
                        _fail(f"answer part: {len(blob)} bytes is not a whole number of records")
                    self._grow(len(blob) // record)
                    self._blobs.setdefault(i, bytearray()).extend(blob)

    def value(self) -> object:
        """The merged wire value, for the result's ``from_wire``."""
        if self.shape is None:
            return self._single
        if isinstance(self.shape, str):
            return self._items
        merged = list(self._fields)
        for i, blob in self._blobs.items():
            merged[i] = bytes(blob)
        return merged
