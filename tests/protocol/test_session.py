from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merklesync.errors import ConnectionFailed, ProtocolError, ReplicaLocked
from merklesync.model import key_of
from merklesync.protocol.framing import encode_frame
from merklesync.protocol.messages import (
    INLINE_PUT,
    LOCAL_COPY,
    MAX_ANSWER_FRAMES,
    PROTOCOL_VERSIONS,
    ByeResult,
    Children,
    ChildrenResult,
    Commit,
    Data,
    End,
    Entries,
    EntriesResult,
    Gone,
    Hello,
    Put,
    Read,
    Refresh,
    RefreshResult,
    RootResult,
    Write,
    WriteResult,
)
from merklesync.protocol.session import (
    Answered,
    ClientSession,
    Failed,
    FileData,
    FileEnd,
    FileGone,
    Negotiated,
    Progressed,
    ReadDone,
    ServerSession,
)

from .strategies import file_entry, hello

A = file_entry("a.txt", 5)
B = file_entry("dir/b.bin", 3)
KIDS = [[(bytes([i]) * 8, i) for i in range(16)]]
SALT = b"\x05" * 16


def frame(*obj: object) -> bytes:
    return encode_frame(list(obj))


def connected() -> tuple[ClientSession, ServerSession]:
    client, server = ClientSession(hello("client")), ServerSession(hello("server"))
    assert server.receive(client.greeting()) == [Negotiated(client.hello, PROTOCOL_VERSIONS[1])]
    assert client.receive(server.greeting()) == [Negotiated(server.hello, PROTOCOL_VERSIONS[1])]
    return client, server


def test_handshake_in_any_split() -> None:
    client, server = ClientSession(hello("client")), ServerSession(hello("server"))
    greeting = client.greeting()
    assert server.receive(greeting[:3]) == []
    assert server.receive(greeting[3:]) == [Negotiated(client.hello, PROTOCOL_VERSIONS[1])]
    assert server.version == PROTOCOL_VERSIONS[1] and server.peer == client.hello


def test_version_mismatch_fails_the_handshake() -> None:
    client = ClientSession(hello("client", versions=(1, 2)))
    server = ServerSession(hello("merklesync 9", versions=(3, 4)))
    with pytest.raises(ProtocolError, match="speaks protocol 3-4, this merklesync speaks 1-2"):
        client.receive(server.greeting())
    with pytest.raises(ProtocolError):  # stays failed
        client.receive(b"")


def test_first_message_must_be_hello() -> None:
    server = ServerSession(hello())
    with pytest.raises(ProtocolError, match="did not start with a merklesync hello"):
        server.receive(frame("refresh", False))


def test_no_request_before_negotiation() -> None:
    client = ClientSession(hello())
    client.greeting()
    with pytest.raises(RuntimeError):
        client.root()


def test_pipelined_requests_answered_in_order() -> None:
    client, server = connected()
    wire = client.refresh(checksum=True) + client.root() + client.children([(0, 0)], SALT)
    wire += client.entries([A.key])
    assert client.pending == 4
    events = server.receive(wire)
    assert [type(e) for e in events] == [Refresh, type(events[1]), Children, Entries]
    assert server.answering == Refresh(True)
    out = server.progress(7) + server.respond(RefreshResult(2, 1, ["a.txt"], [], [], []))
    out += server.respond(RootResult(b"\x01" * 16, 2))
    out += server.respond(ChildrenResult(KIDS))
    out += server.respond(EntriesResult([A]))
    events2 = client.receive(out)
    assert events2 == [
        Progressed("refresh", 7),
        Answered("refresh", RefreshResult(2, 1, ["a.txt"], [], [], [])),
        Answered("root", RootResult(b"\x01" * 16, 2)),
        Answered("children", ChildrenResult(KIDS)),
        Answered("entries", EntriesResult([A])),
    ]
    assert client.pending == 0


def test_large_answer_comes_in_parts() -> None:
    client, server = connected()
    entries = [file_entry(f"d/{i:06d}-" + "x" * 200, i) for i in range(20_000)]
    server.receive(client.entries([e.key for e in entries]))
    out = server.respond(EntriesResult(entries))
    assert len(out) > 2 << 20  # several frames
    events: list[object] = []
    for i in range(0, len(out), 65536):
        events += client.receive(out[i : i + 65536])
    assert events == [Answered("entries", EntriesResult(entries))]


def test_error_answer() -> None:
    client, server = connected()
    server.receive(client.root())
    events = client.receive(server.error_from(ReplicaLocked("locked by pid 7 on host")))
    assert len(events) == 1 and isinstance(events[0], Failed)
    exc = events[0].error.exception()
    assert isinstance(exc, ReplicaLocked) and exc.message == "locked by pid 7 on host"


def test_read_stream() -> None:
    client, server = connected()
    assert server.receive(client.read([A, B])) == [Read((A, B))]
    assert server.current_file == A
    out = server.file_data(b"hel") + server.file_data(b"lo") + server.file_end()
    out += server.file_data(b"x") + server.file_gone("changed since the scan") + server.read_done()
    assert client.receive(out) == [
        FileData(A, b"hel"),
        FileData(A, b"lo"),
        FileEnd(A),
        FileData(B, b"x"),
        FileGone(B, "changed since the scan"),
        ReadDone(),
    ]


def test_big_file_is_sent_in_chunks() -> None:
    client, server = connected()
    big = file_entry("big", 3 << 20)
    server.receive(client.read([big]))
    out = server.file_data(b"z" * (3 << 20)) + server.file_end() + server.read_done()
    events = client.receive(out)
    chunks = [e for e in events if isinstance(e, FileData)]
    assert [len(c.chunk) for c in chunks] == [1 << 20] * 3
    assert events[-2:] == [FileEnd(big), ReadDone()]


def test_write_stream() -> None:
    client, server = connected()
    wire = client.write()
    wire += client.put(A, None, True) + client.data(b"hello") + client.end()
    wire += client.put(B, B.leaf_hash(), True) + client.data(b"ab") + client.gone("source changed")
    tomb = A.tombstone(A.vv.bump("r2"), 9)
    wire += client.put(tomb, A.leaf_hash(), False)
    with pytest.raises(RuntimeError):
        client.root()  # no request inside a write stream
    wire += client.commit() + client.bye()
    events = server.receive(wire)
    assert events[:1] == [Write()]
    assert events[1:-1] == [
        Put(A, None, True),
        Data(b"hello"),
        End(),
        Put(B, B.leaf_hash(), True),
        Data(b"ab"),
        Gone("source changed"),
        Put(tomb, A.leaf_hash(), False),
        Commit(),
    ]
    assert server.closing
    outcomes = [("a.txt", True, ""), ("dir/b.bin", False, "source changed"), ("a.txt", True, "")]
    out = server.respond(WriteResult(outcomes)) + server.respond(ByeResult())
    assert client.receive(out) == [
        Answered("write", WriteResult(outcomes)),
        Answered("bye", ByeResult()),
    ]
    client.eof()
    server.eof()


def test_small_files_travel_inside_their_put_where_the_server_takes_them() -> None:
    plain_client, plain_server = connected()  # no INLINE_PUT announced
    assert not plain_client.inline_puts
    wire = plain_client.write()
    with pytest.raises(RuntimeError, match="does not take"):
        plain_client.put_inline(A, None, b"hello")
    # A client that sends one all the same is refused: the server never said it takes it.
    wire += frame("put", A.to_wire(), None, b"hello")
    with pytest.raises(ProtocolError, match="not announced"):
        plain_server.receive(wire)

    client = ClientSession(hello("client"))
    server = ServerSession(Hello(PROTOCOL_VERSIONS, (INLINE_PUT,), "rs", "server", "root"))
    server.receive(client.greeting())
    client.receive(server.greeting())
    assert client.inline_puts
    wire = client.write() + client.put_inline(A, None, b"hello")
    with pytest.raises(ValueError, match="not the file's"):
        client.put_inline(B, None, b"toolong")
    wire += client.put(B, None, True) + client.data(b"abc") + client.end() + client.commit()
    assert server.receive(wire) == [
        Write(),
        Put(A, None, False, b"hello"),
        Put(B, None, True),
        Data(b"abc"),
        End(),
        Commit(),
    ]
    outcomes = [("a.txt", True, ""), ("dir/b.bin", True, "")]
    assert client.receive(server.respond(WriteResult(outcomes))) == [
        Answered("write", WriteResult(outcomes))
    ]


def test_a_file_is_copied_by_the_server_only_where_it_said_it_copies() -> None:
    plain_client, plain_server = connected()  # no LOCAL_COPY announced
    assert not plain_client.local_copies
    wire = plain_client.write()
    with pytest.raises(RuntimeError, match="does not copy"):
        plain_client.put_copy(A, None, "old.txt")
    # A client that asks all the same is refused: the server never said it copies.
    wire += frame("put", A.to_wire(), None, "old.txt")
    with pytest.raises(ProtocolError, match="not announced"):
        plain_server.receive(wire)

    client = ClientSession(hello("client"))
    server = ServerSession(Hello(PROTOCOL_VERSIONS, (LOCAL_COPY,), "rs", "server", "root"))
    server.receive(client.greeting())
    client.receive(server.greeting())
    assert client.local_copies
    wire = client.write() + client.put_copy(A, None, "old.txt")
    with pytest.raises(ValueError, match="not a file"):
        client.put_copy(B, None, B.path)
    wire += client.put(B, None, True) + client.data(b"abc") + client.end() + client.commit()
    assert server.receive(wire) == [
        Write(),
        Put(A, None, False, None, "old.txt"),
        Put(B, None, True),
        Data(b"abc"),
        End(),
        Commit(),
    ]


def test_client_refuses_more_data_than_the_size() -> None:
    client, _ = connected()
    client.write()
    client.put(A, None, True)
    assert client.put_remaining == 5
    with pytest.raises(ValueError):
        client.data(b"123456")


# -- a hostile client --------------------------------------------------------


def _server_in(state: str) -> tuple[ClientSession, ServerSession]:
    client, server = connected()
    if state in ("write", "item"):
        server.receive(client.write())
    if state == "item":
        server.receive(client.put(A, None, True))
    return client, server


@pytest.mark.parametrize(
    ("state", "wire", "match"),
    [
        ("idle", frame("data", b"x"), "outside a write stream"),
        ("idle", frame("put", A.to_wire(), None, False), "outside a write stream"),
        ("idle", frame("commit"), "outside a write stream"),
        ("idle", frame("end"), "outside a write stream"),
        ("idle", frame("merklesync", [1, 1], [], "", "", ""), "second hello"),
        ("idle", frame("ok", None), "unknown message"),
        ("idle", frame("shell", "id"), "unknown message"),
        ("write", frame("refresh", False), "inside a write stream"),
        ("write", frame("data", b"x"), "inside a write stream"),
        ("write", frame("end"), "inside a write stream"),
        ("item", frame("put", B.to_wire(), None, False), "inside the data of"),
        ("item", frame("commit"), "inside the data of"),
        ("item", frame("root"), "inside the data of"),
        ("item", frame("data", b"123456"), "more than 5 bytes"),
        ("item", frame("data", b"123") + frame("data", b"456"), "more than 5 bytes"),
    ],
)
def test_server_refuses_out_of_order(state: str, wire: bytes, match: str) -> None:
    _, server = _server_in(state)
    with pytest.raises(ProtocolError, match=match):
        server.receive(wire)
    with pytest.raises(ProtocolError):
        server.receive(frame("root"))  # the session stays failed


def test_server_refuses_anything_after_bye() -> None:
    client, server = connected()
    server.receive(client.bye())
    with pytest.raises(ProtocolError, match="after bye"):
        server.receive(frame("root"))


def test_server_eof_inside_a_write() -> None:
    _, server = _server_in("write")
    with pytest.raises(ProtocolError, match="middle of a write"):
        server.eof()


def test_server_cannot_answer_a_write_before_commit() -> None:
    _, server = _server_in("write")
    with pytest.raises(RuntimeError):
        server.respond(WriteResult([]))


def test_server_answer_must_match_request() -> None:
    client, server = connected()
    server.receive(client.root())
    with pytest.raises(RuntimeError):
        server.respond(ChildrenResult(KIDS))


# -- a hostile server --------------------------------------------------------


def _client_after(request: str) -> ClientSession:
    client, _ = connected()
    if request == "root":
        client.root()
    elif request == "refresh":
        client.refresh()
    elif request == "children":
        client.children([(0, 0)], SALT)
    elif request == "entries":
        client.entries([key_of("wanted")])
    elif request == "read":
        client.read([A])
    elif request == "write":
        client.write()
        client.put(A, None, False)
    return client


@pytest.mark.parametrize(
    ("request_", "wire", "match"),
    [
        ("none", frame("ok", None), "no request outstanding"),
        ("root", frame("merklesync", [1, 1], [], "", "", ""), "second hello"),
        ("root", frame("more", [b"x" * 16, 1]), "cannot come in parts"),
        ("root", frame("data", b"x"), "in answer to 'root'"),
        ("root", frame("progress", 3), "in answer to 'root'"),
        ("root", frame("ok", [b"x", 1]), "expected 16 bytes"),
        ("children", frame("ok", []), "expected 1 items"),
        ("entries", frame("ok", [file_entry("other").to_wire()]), "not asked for"),
        ("entries", frame("ok", [file_entry("../etc/passwd").to_wire()]), "'..' component"),
        ("read", frame("done"), "after 0 of 1 files"),
        ("read", frame("data", b"123456"), "more than 5 bytes"),
        ("read", frame("data", b"123") + frame("end"), "3 of 5 bytes"),
        ("read", frame("ok", None), "in answer to 'read'"),
        ("read", frame("end") + frame("done"), "0 of 5 bytes"),
        ("write", frame("ok", []), "before the write was committed"),
        ("write", frame("error", "io", "disk full"), "before the write was committed"),
    ],
)
def test_client_refuses_hostile_answers(request_: str, wire: bytes, match: str) -> None:
    client = _client_after(request_)
    with pytest.raises(ProtocolError, match=match):
        client.receive(wire)
    with pytest.raises(ProtocolError):
        client.receive(b"")


def test_client_refuses_too_many_parts() -> None:
    client = _client_after("children")
    part = ChildrenResult(KIDS).to_wire()
    with pytest.raises(ProtocolError, match="too large"):
        client.receive(frame("more", part) + frame("ok", part))


def test_an_answer_in_more_frames_than_any_honest_one_is_refused() -> None:
    # Few items (under every item limit), each as large as a frame allows:
    # what a peer sends to make this side hold gigabytes. Refused once the
    # parts outnumber what the largest honest answer takes.
    client = _client_after("refresh")
    part = frame("more", [0, 0, ["a" * 60_000] * 16, [], [], []])
    for _ in range(MAX_ANSWER_FRAMES - 1):
        assert client.receive(part) == []
    with pytest.raises(ProtocolError, match=f"over {MAX_ANSWER_FRAMES} frames"):
        client.receive(part + part)


@pytest.mark.parametrize(
    ("request_", "part", "match"),
    [
        ("refresh", [0, 0, [], [], [], [[[]] * 100_000]], "not text"),
        ("entries", [[[]] * 100_000], "entry"),
        ("children", [[b"x" * 16 * 8, [[]] * 100_000]], "counts"),
        ("children", [[[[]] * 100_000, [0] * 16]], "fingerprints"),
        ("write", [["a", True, [[]] * 100_000]], "outcome: malformed"),
    ],
)
def test_an_item_of_the_wrong_shape_is_refused_in_its_first_part(
    request_: str, part: list[object], match: str
) -> None:
    """Nested empty arrays cost a byte each on the wire and some 60 in
    memory: a part holding them is refused as it arrives, not kept with
    hundreds of others until the answer ends."""
    client = _client_after(request_)
    if request_ == "write":
        client.commit()  # else any answer is refused, whatever it holds
    with pytest.raises(ProtocolError, match=match):
        client.receive(frame("more", part))


def test_client_eof_with_requests_pending() -> None:
    client = _client_after("root")
    with pytest.raises(ConnectionFailed, match="1 request"):
        client.eof()


def test_client_eof_in_a_frame() -> None:
    client = _client_after("root")
    client.receive(frame("ok", [b"x" * 16, 1])[:-3])
    with pytest.raises(ProtocolError, match="middle of a frame"):
        client.eof()


# -- fuzz: hostile bytes after the handshake -------------------------------


@settings(max_examples=300)
@given(st.sampled_from(["none", "root", "children", "entries", "read", "write"]), st.data())
def test_client_fed_junk_raises_only_protocol_error(request_: str, data: st.DataObject) -> None:
    client = _client_after(request_)
    valid = frame("ok", [b"x" * 16, 1]) + frame("data", b"12345") + frame("end") + frame("done")
    stream = bytearray(valid)
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    try:
        client.receive(bytes(stream))
        client.eof()
    except (ProtocolError, ConnectionFailed):
        pass


@settings(max_examples=300)
@given(st.sampled_from(["idle", "write", "item"]), st.data())
def test_server_fed_junk_raises_only_protocol_error(state: str, data: st.DataObject) -> None:
    _client, server = _server_in(state)
    stream = bytearray(frame("data", b"12") + frame("end") + frame("commit") + frame("root"))
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    try:
        server.receive(bytes(stream))
        server.eof()
    except ProtocolError:
        pass
