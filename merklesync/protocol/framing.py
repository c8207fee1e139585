"""Frames: a 4-byte big-endian payload length, then one msgpack object.

Pure: bytes in, objects out, and the reverse. Everything that arrives from
the peer goes through a *limited* unpacker (after borg's
``get_limited_unpacker``): bounded strings, binaries and arrays, no maps
with content, no extension types, no timestamps. Whatever is wrong with the
input, the only exception that leaves this module while decoding is
:class:`~merklesync.errors.ProtocolError`, with a one-line message.

Why the frame cap is small (1 MiB of file data plus 64 KiB of envelope):
unpacking msgpack into Python objects can take about 64 times the wire size
(an empty array is one byte on the wire and ~64 bytes in memory), so the
cap on a frame is what bounds the memory a hostile peer can make us spend.
Large results travel as several frames (see ``messages``).
"""

from __future__ import annotations

from typing import NoReturn

import msgpack

from merklesync.errors import ProtocolError

HEADER_BYTES = 4
MAX_CHUNK = 1 << 20  # file data travels in chunks of at most 1 MiB
MAX_FRAME = MAX_CHUNK + (64 << 10)  # payload bytes, header excluded
MAX_STR = 64 << 10  # any one string (paths are capped lower by check_relpath)
MAX_ARRAY = 1 << 17  # elements in any one array (131,072)
MAX_DEPTH_HINT = 1024  # the C unpacker's own nesting limit (StackError)


def _ext_hook(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"extension type {code} not allowed")


def _show(data: bytes | bytearray, limit: int = 60) -> str:
    """Bytes the peer sent, safe to put in a one-line message."""
    text = bytes(data[:limit]).decode("ascii", "replace")
    return repr(text) + ("..." if len(data) > limit else "")


def unpack(payload: bytes | bytearray | memoryview) -> object:
    """Decode exactly one msgpack object with the limits above."""
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_STR,
            max_bin_len=MAX_FRAME,
            max_array_len=MAX_ARRAY,
            max_map_len=0,
            max_ext_len=0,
            ext_hook=_ext_hook,
            timestamp=0,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError...
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ProtocolError(f"malformed message from peer: {detail}") from None


def encode_frame(obj: object) -> bytes:
    """The frame carrying ``obj``. A frame over :data:`MAX_FRAME` is a bug of
    the caller (messages split large results), so it raises ValueError."""
    payload = msgpack.packb(obj, use_bin_type=True, datetime=False)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


class FrameDecoder:
    """Incremental decoder: feed it the byte stream split anywhere.

    After it has raised once it stays broken: a stream that lost its framing
    cannot be resynchronised.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._frames = 0
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf)

    def _fail(self, message: str) -> NoReturn:
        self._failed = message
        self._buf.clear()
        raise ProtocolError(message)

    def feed(self, data: bytes | bytearray | memoryview) -> list[object]:
        """Add bytes; return the objects of every frame now complete."""
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("feed() takes bytes")
        buf = self._buf
        buf += data
        out: list[object] = []
        pos = 0
        while len(buf) - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos : pos + HEADER_BYTES], "big")
            if size > self._max or size == 0:
                self._fail(self._bad_header(size, pos))
            end = pos + HEADER_BYTES + size
            if end > len(buf):
                break
            try:
                out.append(unpack(buf[pos + HEADER_BYTES : end]))
            except ProtocolError as exc:
                self._fail(exc.message)
            pos = end
            self._frames += 1
        if pos:
            del buf[:pos]
        return out

    def _bad_header(self, size: int, pos: int) -> str:
        head = self._buf[pos : pos + HEADER_BYTES]
        if self._frames == 0 and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            return (
                "peer sent text instead of the merklesync protocol: "
                f"{_show(self._buf[pos:])} (does the remote shell print something at login?)"
            )
        if size == 0:
            return "peer sent an empty frame"
        return f"peer sent a frame of {size} bytes, over the limit of {self._max}"

    def eof(self) -> None:
        """The stream ended: fine between frames, an error inside one."""
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if self._buf:
            n = len(self._buf)
            self._fail(f"connection closed in the middle of a frame ({n} bytes pending)")
