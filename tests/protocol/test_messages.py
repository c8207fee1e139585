from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merklesync import merkle
from merklesync.clock import VersionVector
from merklesync.errors import (
    LocalIOError,
    MerklesyncError,
    NotAReplica,
    ProtocolError,
    ReplicaLocked,
    UnsafePath,
)
from merklesync.model import Entry, EntryKind, ScanReport, key_of
from merklesync.protocol.framing import FrameDecoder, encode_frame
from merklesync.protocol.messages import (
    MAX_REPORT_ITEMS,
    OPS,
    REPORT_BYTES,
    Assembly,
    Bye,
    ByeResult,
    Children,
    ChildrenResult,
    ClientMessage,
    Commit,
    Compare,
    CompareResult,
    Data,
    Done,
    End,
    Entries,
    EntriesResult,
    EntriesUnder,
    Error,
    Gone,
    Guard,
    More,
    Ok,
    Progress,
    Put,
    Read,
    Refresh,
    RefreshResult,
    Remember,
    Result,
    Root,
    RootResult,
    ServerMessage,
    Write,
    WriteResult,
    error_code,
    negotiate,
    parse_client_message,
    parse_server_message,
    split_result,
)

from .strategies import entries, file_entry, hello, wire_values

E = file_entry()
SALT = b"\x07" * 16
LINK = Entry(
    "l", EntryKind.LINK, VersionVector.of({"r": 1}), b"\x02" * 32, 0, 0, 0, "../t", False, 3
)

CLIENT: list[ClientMessage] = [
    hello(),
    Refresh(True),
    Root(),
    Children(SALT, ((1, 0), (2, 255))),
    Compare(SALT, (((1, 3), (b"r" * 8, b"s" * 8)), ((2, 9), ()))),
    EntriesUnder(((0, 0),)),
    Entries((b"12345678", b"abcdefgh")),
    Read((E,)),
    Write(),
    Put(E, None, True),
    Put(E, None, False, b"x" * E.size),  # its content inline
    Put(E, None, False, None, "old/name.bin"),  # a copy of the server's own file
    Put(LINK, LINK.tombstone(VersionVector.of({"r": 2}), 4).leaf_hash(), False),
    Data(b"chunk"),
    End(),
    Gone("changed while read"),
    Commit(),
    Remember("0123456789abcdef"),
    Guard("0123456789abcdef"),
    Bye(),
]
SERVER: list[ServerMessage] = [
    hello(),
    Ok(None),
    Ok([1, [b"x"]]),
    More([]),
    Error("locked", "replica locked by pid 12"),
    Progress(10),
    Data(b"chunk"),
    End(),
    Gone("vanished"),
    Done(),
]


def wire(msg: ClientMessage | ServerMessage) -> object:
    """As it comes out of the decoder: through msgpack and back."""
    return FrameDecoder().feed(encode_frame(msg.to_wire()))[0]


@pytest.mark.parametrize("msg", CLIENT, ids=lambda m: type(m).__name__)
def test_client_messages_round_trip(msg: ClientMessage) -> None:
    assert parse_client_message(wire(msg)) == msg


@pytest.mark.parametrize("msg", SERVER, ids=lambda m: type(m).__name__)
def test_server_messages_round_trip(msg: ServerMessage) -> None:
    assert parse_server_message(wire(msg)) == msg


def test_ops_allowlist() -> None:
    assert {
        "refresh",
        "root",
        "children",
        "compare",
        "entries",
        "entries_under",
        "read",
        "contact",
        "write",
        "remember",
        "guard",
        "bye",
    } == OPS


@given(entries())
def test_entries_round_trip_in_put(entry: Entry) -> None:
    put = Put(entry, entry.leaf_hash(), False)
    assert parse_client_message(wire(put)) == put


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (["exec", "rm -rf /"], "unknown message"),
        (["__class__"], "unknown message"),
        ([], "non-empty array"),
        ({}, "non-empty array"),
        ("refresh", "non-empty array"),
        ([1], "tag is not a string"),
        (["ok", None], "unknown message"),  # an answer is not a request
        (["refresh"], "expected 1 fields"),
        (["refresh", 1], "boolean"),
        (["root", None], "expected 0 fields"),
        (["children", b"s" * 16, [[0, 1]]], "node id"),
        (["children", b"s" * 16, [[16, 0]]], "node id"),
        (["children", b"s" * 16, [[1, 16]]], "node id"),
        (["children", b"s" * 16, [[True, 0]]], "node id"),
        (["children", b"s" * 16, [[0, 0]] * 65_537], "over the limit"),
        # Work for one pass over what the nodes cover, never more.
        (["entries_under", [[0, 0]] * 2], "named twice"),
        (["entries_under", [[2, 17], [1, 1]]], "inside another node"),
        (["children", b"s" * 16, [[1, 3], [3, 0x3FF]]], "inside another node"),
        (["compare", b"s" * 16, [[2, 5], [0, 0]], [0, 0], b""], "inside another node"),
        (["entries", [b"short"]], "expected 8 bytes"),
        (["entries", ["12345678"]], "expected bytes"),
        (["entries", [b"12345678"] * 100_001], "over the limit"),
        (["read", [LINK.to_wire()]], "not a file"),
        (["read", [E.to_wire()] * 4097], "over the limit"),
        (["put", E.to_wire(), None, 1], "boolean"),
        (["put", LINK.to_wire(), None, True], "not a file"),
        (["put", E.to_wire(), b"\x01" * 31, False], "expected 32 bytes"),
        (["put", E.to_wire(), None, b"x" * (E.size + 1)], "not the file's content"),
        (["put", E.to_wire(), None, b""], "not the file's content"),
        (["put", LINK.to_wire(), None, b""], "not the file's content"),
        (["put", E.to_wire(), None, b"x" * ((128 << 10) + 1)], "over the limit"),
        (["data", b""], "empty data"),
        (["data", "text"], "expected bytes"),
        (["data", b"x" * ((1 << 20) + 1)], "over the limit"),
        (["gone", b"bytes"], "expected a string"),
        (["merklesync", [2, 1], [], "", "", ""], "not a range"),
        (["merklesync", [0, 1], [], "", "", ""], "not a range"),
        (["merklesync", [1], [], "", "", ""], "expected 2 items"),
        (["merklesync", [1, 1], ["has space"], "", "", ""], "capability"),
        (["merklesync", [1, 1], [], "\x1b[2J", "", ""], "replica id"),
        (["merklesync", [1, 1], [], "=0a1b", "", ""], "may not begin with '='"),
        (["remember", "=0a1b"], "may not begin with '='"),
    ],
)
def test_bad_client_messages(obj: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_client_message(obj)


def _entry_wire(**change: object) -> list[object]:
    w = E.to_wire()
    fields = [
        "path",
        "kind",
        "vv",
        "digest",
        "size",
        "mode",
        "mtime_ns",
        "target",
        "deleted",
        "stamp",
    ]
    for name, value in change.items():
        w[fields.index(name)] = value
    return w


@pytest.mark.parametrize(
    ("entry_wire", "error"),
    [
        (_entry_wire(path="../x"), UnsafePath),
        (_entry_wire(path="/abs"), UnsafePath),
        (_entry_wire(path="a//b"), UnsafePath),
        (_entry_wire(path="a/./b"), UnsafePath),
        (_entry_wire(path="a\x00b"), UnsafePath),
        (_entry_wire(path=".merklesync/index.db"), UnsafePath),
        (_entry_wire(path=b"bytes"), ProtocolError),
        (_entry_wire(kind=7), ProtocolError),
        (_entry_wire(kind=True), ProtocolError),
        (_entry_wire(size=-1), ProtocolError),
        (_entry_wire(size=1.5), ProtocolError),
        (_entry_wire(mode=0o10000), ProtocolError),
        (_entry_wire(digest=b"short"), ProtocolError),
        (_entry_wire(deleted=0), ProtocolError),
        (_entry_wire(vv=[["a", 1], ["a", 2]]), ProtocolError),
        (_entry_wire(vv=[["a", -1]]), ProtocolError),
        (_entry_wire(vv=[["a", 1]] * 1025), ProtocolError),
        # Numbers the index could not store, or that would overflow once
        # bumped or ticked: refused as the protocol error they are.
        (_entry_wire(size=1 << 63), ProtocolError),
        (_entry_wire(size=(1 << 64) - 1), ProtocolError),
        (_entry_wire(mtime_ns=1 << 63), ProtocolError),
        (_entry_wire(mtime_ns=-(1 << 63) - 1), ProtocolError),
        (_entry_wire(stamp=(1 << 62) + 1), ProtocolError),
        (_entry_wire(stamp=(1 << 63) - 1), ProtocolError),
        (_entry_wire(vv=[["a", (1 << 62) + 1]]), ProtocolError),
        (_entry_wire(vv=[["a", (1 << 64) - 1]]), ProtocolError),
        (_entry_wire(path="sub/.merklesync/config"), UnsafePath),
        (_entry_wire(vv="a"), ProtocolError),
        (_entry_wire(target="a\x00b"), ProtocolError),
        (E.to_wire()[:9], ProtocolError),
        (None, ProtocolError),
    ],
)
def test_bad_entries(entry_wire: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_client_message(["put", entry_wire, None, False])


def test_the_largest_numbers_an_entry_may_carry() -> None:
    wire = _entry_wire(size=(1 << 63) - 1, mtime_ns=-(1 << 63), stamp=1 << 62, vv=[["a", 1 << 62]])
    put = parse_client_message(["put", wire, None, False])
    assert isinstance(put, Put)
    assert (put.entry.size, put.entry.mtime_ns, put.entry.stamp) == (
        (1 << 63) - 1,
        -(1 << 63),
        1 << 62,
    )
    assert put.entry.vv.bump("a").get("a") == (1 << 62) + 1


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (["refresh", True], "unknown message"),  # a request is not an answer
        (["error", "Locked!", "x"], "error code"),
        (["error", "locked", 3], "expected a string"),
        (["progress", -1], "integer"),
        (["done", 1], "expected 0 fields"),
    ],
)
def test_bad_server_messages(obj: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_server_message(obj)


def test_display_text_is_made_one_line() -> None:
    msg = parse_server_message(["error", "io", "disk full\n\x1b[2Jgotcha"])
    assert isinstance(msg, Error)
    assert msg.message == "disk full\\n\\x1b[2Jgotcha"
    long = parse_server_message(["gone", "x" * 5000])
    assert isinstance(long, Gone) and len(long.reason) == 2000


# -- negotiation -----------------------------------------------------------


def test_negotiate_picks_highest_common_version() -> None:
    assert negotiate(hello(versions=(1, 3)), hello(versions=(2, 5))) == 3
    assert negotiate(hello(versions=(1, 1)), hello(versions=(1, 1))) == 1


def test_negotiate_peer_too_new() -> None:
    with pytest.raises(ProtocolError) as info:
        negotiate(hello(versions=(1, 2)), hello("merklesync 9.0", versions=(3, 4)))
    assert info.value.message == (
        "peer (merklesync 9.0) speaks protocol 3-4, this merklesync speaks 1-2; "
        "upgrade merklesync here"
    )
    assert info.value.exit_code == 7


def test_negotiate_peer_too_old() -> None:
    with pytest.raises(
        ProtocolError, match=r"speaks protocol 1, .* speaks 2-3; upgrade merklesync on the peer"
    ):
        negotiate(hello(versions=(2, 3)), hello(versions=(1, 1)))


# -- errors ----------------------------------------------------------------


def test_error_codes_map_to_exceptions() -> None:
    assert isinstance(Error("locked", "m").exception(), ReplicaLocked)
    assert isinstance(Error("io", "m").exception(), LocalIOError)
    assert isinstance(Error("unsafe-path", "m").exception(), UnsafePath)
    unknown = Error("from-the-future", "m").exception()
    assert type(unknown) is MerklesyncError and unknown.message == "m"
    assert error_code(NotAReplica()) == "not-a-replica"
    assert error_code(UnsafePath("x")) == "unsafe-path"
    assert error_code(ValueError()) == "error"
    err = Error.of(ReplicaLocked("locked by\npid 3"))
    assert (err.code, err.message) == ("locked", "locked by\\npid 3")


# -- results, split and merged ---------------------------------------------

NODES = ((1, 0), (1, 5))


def _records(n: int) -> tuple[bytes, ...]:
    return tuple(i.to_bytes(8, "big") for i in range(n))


UNDER_ROOT = Compare(SALT, (((0, 0), _records(900)),))


ENTRIES = [
    Entry(
        f"d/f{i:05d}",
        EntryKind.FILE,
        VersionVector.of({"r": i + 1}),
        b"\x03" * 32,
        i,
        0o600,
        i,
        "",
        False,
        i,
    )
    for i in range(400)
]
RESULTS: list[tuple[Result, object]] = [
    (RefreshResult(3, 2, ["a", "b/c"], ["m"] * 500, ["d"], ["skipped x: permission denied"]), None),
    (RootResult(b"\x05" * 16, 12), None),
    (
        ChildrenResult([[(bytes([i]) * 8, i) for i in range(16)]] * 8),
        Children(SALT, tuple((1, i) for i in range(8))),
    ),
    (CompareResult(ENTRIES, list(_records(500))), UNDER_ROOT),
    (EntriesResult(ENTRIES), Entries(tuple(e.key for e in ENTRIES))),
    (EntriesResult(ENTRIES), EntriesUnder(((0, 0),))),
    (
        WriteResult(
            [(e.path, i % 2 == 0, "" if i % 2 == 0 else "changed") for i, e in enumerate(ENTRIES)]
        ),
        None,
    ),
    (ByeResult(), None),
]


def _decode(result: Result, value: object, request: object) -> Result:
    if isinstance(result, ChildrenResult):
        assert isinstance(request, Children)
        return ChildrenResult.from_wire(value, request.nodes)
    if isinstance(result, CompareResult):
        assert isinstance(request, Compare)
        return CompareResult.from_wire(value, request)
    if isinstance(result, EntriesResult):
        assert isinstance(request, Entries | EntriesUnder)
        return EntriesResult.from_wire(value, request)
    if isinstance(result, WriteResult):
        return WriteResult.from_wire(value, [p for p, _, _ in result.outcomes])
    return type(result).from_wire(value)


@pytest.mark.parametrize("budget", [400, 2000, 1 << 20])
@pytest.mark.parametrize(("result", "request_"), RESULTS, ids=lambda r: type(r).__name__)
def test_results_split_and_merge(result: Result, request_: object, budget: int) -> None:
    parts = split_result(result, budget)
    if result.SHAPE is None:  # not splittable (and small): always one part
        assert len(parts) == 1
    assert isinstance(parts[-1], Ok) and all(isinstance(p, More) for p in parts[:-1])
    assembly = Assembly(result.SHAPE, 10**6)
    for part in parts:
        received = parse_server_message(wire(part))
        assert isinstance(received, Ok | More)
        assembly.add(received.value, final=isinstance(received, Ok))
        assert len(encode_frame(part.to_wire())) <= budget + 64
    assert _decode(result, assembly.value(), request_) == result
    if budget == 400 and result.SHAPE is not None:
        assert len(parts) > 1


def test_assembly_cap() -> None:
    assembly = Assembly("*", 3)
    assembly.add([1, 2], final=False)
    with pytest.raises(ProtocolError, match="too large"):
        assembly.add([3, 4], final=True)


def test_assembly_rejects_parts_of_the_wrong_shape() -> None:
    with pytest.raises(ProtocolError):
        Assembly(("l", "b40"), 100).add([[], b"x" * 39], final=True)
    with pytest.raises(ProtocolError):
        Assembly(("i", "l"), 100).add([True, []], final=True)
    with pytest.raises(ProtocolError, match="cannot come in parts"):
        Assembly(None, 100).add(None, final=False)


def test_children_result_checks() -> None:
    good = ChildrenResult([[(b"\x00" * 8, 0)] * 16]).to_wire()
    assert ChildrenResult.from_wire(good, [(0, 0)])
    with pytest.raises(ProtocolError):
        ChildrenResult.from_wire(good, [(0, 0), (1, 1)])  # one node short
    with pytest.raises(ProtocolError):
        ChildrenResult.from_wire([[b"\x00" * 7 * 16, [0] * 16]], [(0, 0)])


def test_compare_checks() -> None:
    key = key_of("x")
    node = (2, merkle.prefix_of(key, 2))
    request = Compare(SALT, ((node, (b"a" * 8, b"b" * 8)),))
    answer = CompareResult.from_wire([[file_entry("x").to_wire()], b"b" * 8], request)
    assert answer.lacking == [b"b" * 8] and [e.path for e in answer.entries] == ["x"]
    elsewhere = Compare(SALT, (((2, (node[1] + 1) % 256), (b"a" * 8,)),))
    with pytest.raises(ProtocolError, match="not under"):
        CompareResult.from_wire([[file_entry("x").to_wire()], b""], elsewhere)
    with pytest.raises(ProtocolError, match="not sent"):
        CompareResult.from_wire([[], b"c" * 8], request)
    with pytest.raises(ProtocolError, match="whole records"):
        CompareResult.from_wire([[], b"a" * 8 + b"b" * 4], request)
    with pytest.raises(ProtocolError):  # more lacking than was sent
        CompareResult.from_wire([[], b"a" * 8 * 3], request)
    # The request itself: counts must match the records, within the caps.
    wire_ = request.to_wire()
    assert Compare.from_wire(wire_) == request
    with pytest.raises(ProtocolError):
        Compare.from_wire([*wire_[:3], [3], wire_[4]])
    with pytest.raises(ProtocolError):
        Compare.from_wire([wire_[0], b"short salt", *wire_[2:]])


def test_entries_result_checks() -> None:
    request = Entries((key_of("wanted"),))
    assert EntriesResult.from_wire([file_entry("wanted").to_wire()], request)
    with pytest.raises(ProtocolError, match="not asked for"):
        EntriesResult.from_wire([file_entry("other").to_wire()], request)
    key = key_of("x")
    under = EntriesUnder(((2, merkle.prefix_of(key, 2)),))
    assert EntriesResult.from_wire([file_entry("x").to_wire()], under)
    other = EntriesUnder(((2, (merkle.prefix_of(key, 2) + 1) % 256),))
    with pytest.raises(ProtocolError, match="not under"):
        EntriesResult.from_wire([file_entry("x").to_wire()], other)


def test_write_result_checks() -> None:
    with pytest.raises(ProtocolError, match="where 'a' was sent"):
        WriteResult.from_wire([["b", True, ""]], ["a"])
    with pytest.raises(ProtocolError):
        WriteResult.from_wire([["a", 1, ""]], ["a"])


# -- fuzz -------------------------------------------------------------------


@settings(max_examples=200)
@given(wire_values)
def test_parsers_raise_only_protocol_error(value: object) -> None:
    for parse in (parse_client_message, parse_server_message):
        try:
            parse(value)
        except ProtocolError as exc:
            assert "\n" not in exc.message


@settings(max_examples=200)
@given(
    st.sampled_from(sorted(OPS | {"put", "data", "merklesync", "ok", "error"})),
    st.lists(wire_values, max_size=5),
)
def test_known_tags_with_junk_fields(tag: str, fields: list[object]) -> None:
    for parse in (parse_client_message, parse_server_message):
        with contextlib.suppress(ProtocolError):
            parse([tag, *fields])


@settings(max_examples=300)
@given(st.data())
def test_mutated_valid_frames_raise_only_protocol_error(data: st.DataObject) -> None:
    msg = data.draw(st.sampled_from(CLIENT + SERVER))
    stream = bytearray(encode_frame(msg.to_wire()))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(4, len(stream) - 1))
        stream[pos] = data.draw(st.integers(0, 255))
    try:
        for obj in FrameDecoder().feed(bytes(stream)):
            for parse in (parse_client_message, parse_server_message):
                with contextlib.suppress(ProtocolError):
                    parse(obj)
    except ProtocolError:
        pass


@settings(max_examples=200)
@given(st.lists(wire_values, max_size=6), st.sampled_from(RESULTS))
def test_result_decoders_raise_only_protocol_error(
    value: list[object], case: tuple[Result, object]
) -> None:
    result, request = case
    with contextlib.suppress(ProtocolError):
        _decode(result, value, request)


def _replace_somewhere(obj: object, path: list[int], new: object) -> object:
    """``obj`` with the node at ``path`` (indexes into nested lists) replaced."""
    if not path or not isinstance(obj, list) or not obj:
        return new
    i = path[0] % len(obj)
    return [*obj[:i], _replace_somewhere(obj[i], path[1:], new), *obj[i + 1 :]]


@settings(max_examples=300)
@given(
    st.sampled_from(CLIENT + SERVER),
    st.lists(st.integers(0, 20), min_size=1, max_size=4),
    wire_values,
)
def test_messages_with_one_part_replaced(
    msg: ClientMessage | ServerMessage, path: list[int], new: object
) -> None:
    mutated = _replace_somewhere(wire(msg), path, new)
    for parse in (parse_client_message, parse_server_message):
        with contextlib.suppress(ProtocolError):
            parse(mutated)


@pytest.mark.parametrize("tag", ["remember", "guard"])
def test_remember_and_guard_take_a_replica_id_only(tag: str) -> None:
    for bad in ([], [""], ["x" * 65], ["bad id"], [7], ["0123456789abcdef", 1]):
        with pytest.raises(ProtocolError):
            parse_client_message([tag, *bad])


def test_nodes_of_several_levels_are_fine_when_apart() -> None:
    request = parse_client_message(["entries_under", [[1, 1], [2, 0x20], [3, 0x2FF]]])
    assert isinstance(request, EntriesUnder)
    assert request.nodes == ((1, 1), (2, 0x20), (3, 0x2FF))


def test_a_refresh_answer_lists_what_fits_and_counts_the_rest() -> None:
    report = ScanReport(
        scanned=9,
        hashed=7,
        added=[f"dir/new{i}" for i in range(5)],
        modified=["m1", "m2"],
        deleted=["gone"],
        warnings=["w1: cannot read", "w2: cannot read"],
    )
    assert RefreshResult.of(report) == RefreshResult(
        9, 7, report.added, report.modified, report.deleted, report.warnings
    )
    room = sum(len(w) + 8 for w in report.warnings) + 3 * (len("dir/new0") + 8)
    answer = RefreshResult.of(report, budget=room)
    assert (answer.scanned, answer.hashed) == (9, 7)
    assert answer.added == ["dir/new0", "dir/new1", "dir/new2"]
    assert answer.modified == answer.deleted == []
    assert answer.warnings == [
        "w1: cannot read",
        "w2: cannot read",
        f"not listed here (over {room:,} bytes of paths and warnings): "
        "2 added, 2 modified, 1 deleted",
    ]


def test_a_refresh_answer_stays_a_few_frames_whatever_the_scan_found() -> None:
    # The first scan of a large tree finds every path: an agent that sent
    # them all would send more than the client takes (items, frames).
    deep = "/".join(["d" * 250] * 15)
    report = ScanReport(added=[f"{deep}/{i:06d}" for i in range(8_000)])
    answer = RefreshResult.of(report)
    parts = split_result(answer)
    assert len(parts) <= 6
    assembly = Assembly(RefreshResult.SHAPE, MAX_REPORT_ITEMS)
    for part in parts:
        assembly.add(part.value, final=isinstance(part, Ok))
    received = RefreshResult.from_wire(assembly.value())
    assert received.added == report.added[: len(received.added)]
    assert len(received.added) == REPORT_BYTES // (len(report.added[0]) + 8)
    assert received.warnings[-1].endswith(f"{8_000 - len(received.added):,} added")


@pytest.mark.parametrize(
    ("copy_of", "entry", "message"),
    [
        ("../outside", E, "'..'"),
        ("/etc/passwd", E, "absolute"),
        ("a\x00b", E, "control"),
        (E.path, E, "not a file"),  # itself
        ("old", E.tombstone(VersionVector.of({"r": 9}), 5), "not a file"),
        ("old", LINK, "not a file"),
    ],
)
def test_a_put_copying_a_file_names_a_safe_path_for_a_live_file(
    copy_of: str, entry: Entry, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_client_message(["put", entry.to_wire(), None, copy_of])
