from __future__ import annotations

import os
import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from merklesync.errors import ProtocolError, UnsafePath
from merklesync.protocol.paths import check_relpath, is_state_dir

from .strategies import paths


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "a/b/c.txt",
        ".hidden",
        "..foo",
        "foo..",
        "a/.../b",
        ".merklesyncx/a",
        "back\\slash",  # an ordinary character in POSIX names
        "mailbox:2,S",
        "ünïcödé/文件",
        "x" * 255,
        "é" * 127 + "x",  # 255 bytes
        "/".join(["y" * 255] * 16),
        "/".join(["z" * 240] * 17),  # 4096 bytes: the limit itself
    ],
)
def test_accepted(path: str) -> None:
    assert check_relpath(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("..", "'..'"),
        ("/abs", "absolute"),
        ("/", "absolute"),
        ("a//b", "empty component"),
        ("a/", "empty component"),
        ("a/./b", "'.'"),
        ("./a", "'.'"),
        (".", "'.'"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x1b[31mred", "control"),
        ("a\x7f", "control"),
        ("a\x9b", "control"),
        ("a\udcffb", "UTF-8"),
        (".merklesync", "state directory"),
        (".merklesync/index.db", "state directory"),
        (".MerkleSync/index.db", "state directory"),
        (".merklesync./index.db", "state directory"),
        (".merkle\u200csync/index.db", "state directory"),
        ("dir/.merklesync", "state directory"),  # a replica planted in a subdirectory
        ("sub/.merklesync/config", "state directory"),
        ("a/b/.MerkleSync./index.db", "state directory"),
        # Names some file systems take for .merklesync (ignorable code points, a BOM):
        ("\u200c.merklesync/index.db", "state directory"),
        ("\ufeff.merklesync/index.db", "state directory"),
        (".merkle\u200dsync/index.db", "state directory"),
        ("x" * 256, "longer than 255"),
        ("é" * 128, "longer than 255"),
        ("/".join(["y" * 255] * 17), "longer than 4096"),
        ("/".join(["z" * 240] * 16 + ["z" * 241]), "longer than 4096"),  # 4097 bytes
    ],
)
def test_rejected(path: str, why: str) -> None:
    with pytest.raises(UnsafePath, match=why) as info:
        check_relpath(path)
    assert isinstance(info.value, ProtocolError)
    assert "\n" not in info.value.message and "\x00" not in info.value.message


@pytest.mark.parametrize("value", [None, 3, b"a/b", ["a"], ("a",)])
def test_non_strings(value: object) -> None:
    with pytest.raises(UnsafePath, match="must be a string"):
        check_relpath(value)


def test_state_dir_spellings() -> None:
    assert is_state_dir(".merklesync")
    assert is_state_dir(".MERKLESYNC ")
    assert not is_state_dir("merklesync")


@given(paths)
def test_generated_paths_are_accepted(path: str) -> None:
    assert check_relpath(path) == path


@given(st.text(max_size=30) | st.binary(max_size=10) | st.integers())
def test_anything_else_is_safe_or_unsafe_path(value: object) -> None:
    try:
        path = check_relpath(value)
    except UnsafePath:
        return
    assert isinstance(path, str)
    assert not path.startswith("/")
    assert posixpath.normpath(path) == path
    assert ".." not in path.split("/")
    assert "\x00" not in path
    assert not is_state_dir(path.split("/")[0])


def test_a_component_of_four_byte_characters_is_measured_in_bytes() -> None:
    check_relpath("d/" + "\U0001f600" * 63)  # 252 bytes
    with pytest.raises(UnsafePath, match="longer than 255 bytes"):
        check_relpath("d/" + "\U0001f600" * 64)  # 64 characters, 256 bytes


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"caf\xe9.txt", r"'caf\xe9.txt'"),
        (b"\xff\xfe", r"'\xff\xfe'"),
        (b"a\\udce9\xe9", r"'a\\udce9\xe9'"),  # a backslash of the name stays one
        (b"a\\\xe9", r"'a\\\xe9'"),
    ],
)
def test_a_name_that_is_not_utf8_is_shown_with_its_bytes(raw: bytes, shown: str) -> None:
    with pytest.raises(UnsafePath) as caught:
        check_relpath(os.fsdecode(raw))
    assert caught.value.message == f"path is not valid UTF-8: {shown}"
