from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merklesync.errors import ProtocolError
from merklesync.protocol.framing import (
    MAX_ARRAY,
    MAX_CHUNK,
    MAX_FRAME,
    FrameDecoder,
    encode_frame,
    unpack,
)

from .strategies import wire_values

SAMPLES: list[object] = [
    ["merklesync", [1, 1], [], "abc", "merklesync 0.1.0", "root"],
    ["children", [[0, 0], [1, 15]]],
    ["data", b"\x00" * 1000],
    ["ok", None],
    ["entries", [b"12345678"] * 3],
]


def frames(objs: list[object]) -> bytes:
    return b"".join(encode_frame(o) for o in objs)


def header(n: int) -> bytes:
    return n.to_bytes(4, "big")


def test_round_trip_in_one_feed() -> None:
    d = FrameDecoder()
    assert d.feed(frames(SAMPLES)) == SAMPLES
    d.eof()


def test_byte_by_byte() -> None:
    d = FrameDecoder()
    out: list[object] = []
    for b in frames(SAMPLES):
        out += d.feed(bytes([b]))
    assert out == SAMPLES
    assert d.buffered == 0


@given(st.lists(wire_values, min_size=1, max_size=8), st.data())
def test_any_split_yields_the_same_objects(objs: list[object], data: st.DataObject) -> None:
    stream = frames(objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    d = FrameDecoder()
    out: list[object] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += d.feed(stream[start:cut])
        start = cut
    d.eof()
    # msgpack turns tuples into lists and floats stay floats: compare re-packed
    assert msgpack.packb(out) == msgpack.packb(objs)


def test_data_chunk_of_max_size_fits() -> None:
    obj = ["data", b"x" * MAX_CHUNK]
    assert FrameDecoder().feed(encode_frame(obj)) == [obj]


def test_encoding_an_oversized_frame_is_a_bug() -> None:
    with pytest.raises(ValueError):
        encode_frame(["data", b"x" * (MAX_FRAME + 1)])


def test_oversized_frame_is_refused_from_its_header() -> None:
    d = FrameDecoder()
    with pytest.raises(ProtocolError, match="over the limit"):
        d.feed(header(MAX_FRAME + 1) + b"\x00")
    with pytest.raises(ProtocolError):  # stays failed
        d.feed(encode_frame(["ok", None]))


def test_empty_frame() -> None:
    with pytest.raises(ProtocolError, match="empty frame"):
        FrameDecoder().feed(encode_frame(["ok", None]) + header(0))


def test_truncated_frame_at_eof() -> None:
    d = FrameDecoder()
    data = encode_frame(["ok", "hello"])
    assert d.feed(data[:-2]) == []
    with pytest.raises(ProtocolError, match="middle of a frame"):
        d.eof()


def test_truncated_header_at_eof() -> None:
    d = FrameDecoder()
    d.feed(b"\x00\x00")
    with pytest.raises(ProtocolError):
        d.eof()


def test_login_banner_is_named() -> None:
    with pytest.raises(ProtocolError, match="text instead of the merklesync protocol") as info:
        FrameDecoder().feed(b"Welcome to Ubuntu 24.04 LTS\n")
    assert "Welcome" in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xc1", "never-used byte"),
        (b"\x92\x01", "truncated array"),
        (b"\x01\x02", "two objects in one frame"),
        (b"\x81\xa1a\x01", "map"),
        (b"\xd6\xff\x00\x00\x00\x00", "timestamp"),
        (b"\xc7\x00\x05", "empty ext"),
        (b"\xd4\x05\x00", "fixext"),
        (b"\xa2\xff\xfe", "invalid utf-8"),
        (b"\x91" * 5000 + b"\xc0", "too deep"),
        (b"\xdd" + (MAX_ARRAY + 1).to_bytes(4, "big"), "array too long"),
        (b"\xdb" + (1 << 20).to_bytes(4, "big") + b"a" * (1 << 20), "str too long"),
    ],
)
def test_limited_unpacker(payload: bytes, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(header(len(payload)) + payload)
    assert "\n" not in info.value.message, why


def test_unpack_accepts_empty_map_only_as_a_value() -> None:
    assert unpack(b"\x80") == {}  # the message parsers reject it as a wrong type


def test_feed_wants_bytes() -> None:
    with pytest.raises(TypeError):
        FrameDecoder().feed("text")  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    d = FrameDecoder()
    try:
        d.feed(data)
        d.eof()
    except ProtocolError as exc:
        assert exc.message and "\n" not in exc.message


@settings(max_examples=300)
@given(st.data())
def test_mutated_frames_raise_only_protocol_error(data: st.DataObject) -> None:
    stream = bytearray(frames(SAMPLES[:2] + SAMPLES[3:]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            stream[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del stream[pos : pos + data.draw(st.integers(1, 8))]
    d = FrameDecoder()
    try:
        d.feed(bytes(stream))
        d.eof()
    except ProtocolError:
        pass
