"""Replica address parsing (scp/rsync forms and ssh:// URLs)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from merklesync.address import Address, parse_address
from merklesync.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("replica", Address("replica")),
        ("/abs/path", Address("/abs/path")),
        ("../up", Address("../up")),
        ("./x:y", Address("./x:y")),
        ("dir/x:y", Address("dir/x:y")),
        ("/a:b", Address("/a:b")),
        ("host:path", Address("path", host="host")),
        ("host:/abs", Address("/abs", host="host")),
        ("host:", Address(".", host="host")),
        ("host:~/x", Address("~/x", host="host")),
        ("host:a:b", Address("a:b", host="host")),
        ("user@host:path", Address("path", host="host", user="user")),
        ("me@corp@host.example.org:p", Address("p", host="host.example.org", user="me@corp")),
        ("192.168.0.1:data", Address("data", host="192.168.0.1")),
        ("[::1]:data", Address("data", host="::1")),
        ("u@[fe80::1%eth0]:d", Address("d", host="fe80::1%eth0", user="u")),
        ("ssh://host/abs", Address("/abs", host="host")),
        ("ssh://user@host:2222/abs/p", Address("/abs/p", host="host", user="user", port=2222)),
        ("ssh://host:22/~/rel", Address("rel", host="host", port=22)),
        ("ssh://host/~", Address(".", host="host")),
        ("ssh://host", Address(".", host="host")),
        ("ssh://[::1]:2200/x", Address("/x", host="::1", port=2200)),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    got = parse_address(text)
    assert got == expected
    assert got.is_remote == (expected.host is not None)
    assert parse_address(str(got)) == got
    assert Address.parse(text) == got


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("x"), "x"),
        (Address("p", host="h"), "h:p"),
        (Address("p", host="h", user="u"), "u@h:p"),
        (Address("/p", host="h", user="u", port=2222), "ssh://u@h:2222/p"),
        (Address("rel", host="h", port=2222), "ssh://h:2222/~/rel"),
        (Address(".", host="h", port=2222), "ssh://h:2222/~"),
        (Address("x", host="::1"), "[::1]:x"),
        (Address(":x", host="h"), "ssh://h/~/:x"),
    ],
)
def test_str_canonical(address: Address, text: str) -> None:
    assert str(address) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":path",
        "@host:path",
        "user@:path",
        "ssh://",
        "ssh:///path",
        "ssh://host:/p",
        "ssh://host:0/p",
        "ssh://host:65536/p",
        "ssh://host:22x/p",
        "ssh://host:-1/p",
        "ssh://user@:22/p",
        "ssh://[::1/p",
        "-oProxyCommand=evil:path",
        "host name:path",
        "[not-ipv6]:p",
        "host::module",
        "a\0b",
        "o'brien@host:p",  # shell metacharacters in a user name: refused, as OpenSSH does
        "a;b@host:p",
        "ssh://u$(x)@host/p",
        "bob\\@host:notes",  # a user name ending in a backslash
        "[1.2.3.4]:notes",  # brackets are for IPv6 addresses
        "ssh://[10.0.0.1]/srv",
    ],
)
def test_bad(text: str) -> None:
    with pytest.raises(UsageError):
        parse_address(text)


def test_frozen() -> None:
    a = parse_address("h:p")
    with pytest.raises(AttributeError):
        a.path = "q"  # type: ignore[misc]


_label = st.text("abcxyz019-_", min_size=1, max_size=8).filter(lambda s: not s.startswith("-"))
_path = st.text("abc/._-~: ", min_size=1, max_size=20)


@given(
    host=st.one_of(_label, st.just("::1"), st.just("10.0.0.1")),
    user=st.one_of(st.none(), _label),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=_path,
)
def test_round_trip(host: str, user: str | None, port: int | None, path: str) -> None:
    if path == "/~" or path.startswith("/~/"):
        path = "." + path  # in an ssh:// URL "/~" means the home directory
    a = Address(path, host=host, user=user, port=port)
    assert parse_address(str(a)) == a


@pytest.mark.parametrize(
    "user", ["svc$", "CORP\\alice", "first.last@corp", "user+tag", "J\u00fcrgen"]
)
def test_user_names_openssh_takes(user: str) -> None:
    assert parse_address(f"{user}@host:p").user == user


def test_the_remote_home_directory_in_a_url() -> None:
    for text in ("ssh://user@host/~", "ssh://user@host/~/"):
        address = parse_address(text)
        assert address.path == "."
        assert parse_address(str(address)) == address
