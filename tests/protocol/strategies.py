"""Hypothesis strategies and sample values for the protocol tests."""

from __future__ import annotations

import blake3
from hypothesis import strategies as st

from merklesync.clock import MAX_STAMP, VersionVector, is_replica
from merklesync.model import Entry, EntryKind
from merklesync.protocol.messages import PROTOCOL_VERSIONS, Hello
from merklesync.protocol.paths import is_state_dir

NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="/")
names = st.text(NAME_CHARS, min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not is_state_dir(s)
)
paths = st.lists(names, min_size=1, max_size=4).map("/".join)
replica_ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=16)
vvs = st.dictionaries(replica_ids, st.integers(1, 2**40), max_size=4).map(VersionVector.of)
u63 = st.integers(0, 2**63 - 1)
stamps = st.integers(0, MAX_STAMP)


@st.composite
def entries(draw: st.DrawFn, live_file: bool = False) -> Entry:
    kind = EntryKind.FILE if live_file else draw(st.sampled_from(EntryKind))
    vv = draw(vvs)
    return Entry(
        path=draw(paths),
        kind=kind,
        vv=vv,
        digest=draw(st.sampled_from([b"", b"\x07" * 32])) if not live_file else b"\x09" * 32,
        size=draw(st.integers(0, 5000)),
        mode=draw(st.integers(0, 0o7777)),
        mtime_ns=draw(u63),
        target=draw(st.text(NAME_CHARS, max_size=20)) if kind is EntryKind.LINK else "",
        deleted=False if live_file else draw(st.booleans()),
        stamp=draw(stamps),
        # The writer: one of its vector's replicas, never a found content's name.
        origin=draw(st.sampled_from(["", *(r for r, _ in vv.pairs if is_replica(r))])),
    )


def hello(name: str = "merklesync test", versions: tuple[int, int] = PROTOCOL_VERSIONS) -> Hello:
    return Hello(versions, ("x-test",), "r" + name[:4].replace(" ", "-"), name, "root")


def file_entry(path: str = "dir/file.txt", size: int = 5) -> Entry:
    return Entry(
        path,
        EntryKind.FILE,
        VersionVector.of({"r1": 1}),
        b"\x01" * 32,
        size,
        0o644,
        1,
        "",
        False,
        1,
    )


def file_entry_of(path: str, content: bytes) -> Entry:
    """A live file's entry whose digest and size are those of ``content``."""
    return Entry(
        path,
        EntryKind.FILE,
        VersionVector.of({"0123456789abcdef": 1}),
        blake3.blake3(content).digest(),
        len(content),
        0o644,
        1_600_000_000 * 10**9,
    )


# Plain msgpack-able values, for fuzzing the parsers with well-formed but wrong data.
wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.sampled_from(["merklesync", "ok", "more", "put", "data", "end", "read", "children"]),
    lambda inner: st.lists(inner, max_size=12),
    max_leaves=40,
)
