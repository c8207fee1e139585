"""Replica addresses: where a replica lives, parsed from the command line.

Accepted forms (as in scp and rsync)::

    path/to/replica          local (absolute or relative)
    ./odd:name               local: a slash before the first colon
    host:path                remote, path relative to the remote home
    user@host:path           remote, with a user name
    [::1]:path               remote, IPv6 literal
    ssh://[user@]host[:port]/abs/path
    ssh://[user@]host[:port]/~/rel/path   (relative to the remote home)

``host:`` (empty path) means the remote home directory, written ``.``.
Parsing does no I/O; it only checks the syntax.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from merklesync.errors import UsageError

__all__ = ["Address", "parse_address", "safe_user"]

_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\Z")
_USER_RE = re.compile(r"[^\s:/@\[\]-][^\s:/\[\]]*\Z")
# What OpenSSH refuses in a user name given to it (a name reaches the
# shell lines of ProxyCommand, as %r): these, and a trailing backslash.
_USER_SHELL_CHARS = frozenset("'`\";&<>|(){}")


def safe_user(user: str) -> bool:
    """A user name OpenSSH would take: no blank, no shell metacharacter
    (``'`";&<>|(){}``), no trailing backslash, not an option (``-x``)."""
    return (
        bool(user)
        and not user.startswith("-")
        and not user.endswith("\\")
        and not any(c.isspace() or c in _USER_SHELL_CHARS for c in user)
    )


_SSH_URL = "ssh://"


@dataclass(frozen=True)
class Address:
    """A replica location; ``host`` is ``None`` for a local path."""

    path: str
    host: str | None = None
    user: str | None = None
    port: int | None = None

    @property
    def is_remote(self) -> bool:
        return self.host is not None

    def __str__(self) -> str:
        if self.host is None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        userhost = f"{self.user}@{host}" if self.user else host
        if self.port is None and not self.path.startswith(":"):
            return f"{userhost}:{self.path}"
        port = f":{self.port}" if self.port is not None else ""
        if self.path.startswith("/"):
            url_path = self.path
        elif self.path == ".":
            url_path = "/~"
        else:
            url_path = "/~/" + self.path
        return f"{_SSH_URL}{userhost}{port}{url_path}"

    @classmethod
    def parse(cls, text: str) -> Address:
        return parse_address(text)


def parse_address(text: str) -> Address:
    """Parse a replica address; raise `UsageError` if it is malformed."""
    if not text:
        raise UsageError("empty replica address")
    if "\0" in text:
        raise UsageError(f"replica address contains a NUL byte: {text!r}")
    if text.startswith(_SSH_URL):
        return _parse_url(text)
    if _is_local(text):
        return Address(path=text)
    return _parse_scp(text)


def _is_local(text: str) -> bool:
    if text.startswith("["):
        return "]:" not in text
    colon = text.find(":")
    if colon < 0:
        return True
    if "/" in text[:colon]:
        return True
    # A Windows drive letter ("C:\\x", "C:/x") is a local path there.
    return os.name == "nt" and colon == 1 and text[:1].isalpha() and text[2:3] in ("\\", "/")


def _parse_scp(text: str) -> Address:
    close = text.find("]:")
    if close >= 0 and (text.startswith("[") or "@[" in text[:close]):
        userhost, path = text[: close + 1], text[close + 2 :]
    else:
        userhost, _, path = text.partition(":")
    user, host = _split_user(userhost, text)
    if path.startswith(":"):
        raise UsageError(f"rsync daemon addresses (host::module) are not supported: {text!r}")
    return Address(path=path or ".", host=host, user=user)


def _parse_url(text: str) -> Address:
    rest = text[len(_SSH_URL) :]
    authority, slash, path = rest.partition("/")
    path = slash + path
    user_part, at, hostport = authority.rpartition("@")
    port: int | None = None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise UsageError(f"unclosed '[' in replica address {text!r}")
        host_text, port_text = hostport[: close + 1], hostport[close + 1 :]
        if port_text:
            if not port_text.startswith(":"):
                raise UsageError(f"bad host in replica address {text!r}")
            port = _parse_port(port_text[1:], text)
    else:
        host_text, colon, port_text = hostport.partition(":")
        if colon:
            port = _parse_port(port_text, text)
    user, host = _split_user(f"{user_part}{at}{host_text}", text)
    if path in ("", "/~", "/~/"):
        path = "."
    elif path.startswith("/~/"):
        path = path[3:]
    return Address(path=path, host=host, user=user, port=port)


def _parse_port(text: str, whole: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"bad port {text!r} in replica address {whole!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} out of range (1-65535) in replica address {whole!r}")
    return port


def _split_user(userhost: str, whole: str) -> tuple[str | None, str]:
    user_text, at, host_text = userhost.rpartition("@")
    user: str | None = None
    if at:
        if not _USER_RE.match(user_text) or not safe_user(user_text):
            raise UsageError(f"bad user name {user_text!r} in replica address {whole!r}")
        user = user_text
    if not host_text:
        raise UsageError(f"empty host in replica address {whole!r}")
    if host_text.startswith("["):
        inner = host_text[1:-1] if host_text.endswith("]") else ""
        if not inner or ":" not in inner or not _IPV6_RE.match(inner):
            raise UsageError(f"bad IPv6 host {host_text!r} in replica address {whole!r}")
        return user, inner
    if not _HOST_RE.match(host_text):
        raise UsageError(f"bad host {host_text!r} in replica address {whole!r}")
    return user, host_text
