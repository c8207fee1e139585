"""An SSH host as ``~/.ssh/config`` describes it (Include, HostName, Port,
User, IdentityFile, IdentitiesOnly, UserKnownHostsFile and
GlobalKnownHostsFile with their tokens, HostKeyAlias, HashKnownHosts,
ProxyCommand, ProxyJump, ConnectTimeout), for ssh.py."""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
import socket
from dataclasses import dataclass

from merklesync.address import safe_user
from merklesync.errors import ConnectionFailed
from merklesync.transport.lazy_invoke import defer_invoke

defer_invoke()  # before paramiko is imported
import paramiko  # noqa: E402

DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


@dataclass
class Target:
    """One SSH hop, resolved through ~/.ssh/config."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[str]
    identities_only: bool
    known_hosts: list[str]
    global_known_hosts: list[str]
    host_key_alias: str | None
    hash_known_hosts: bool
    proxy_command: str | None
    proxy_jump: str | None
    connect_timeout: float | None = None  # ConnectTimeout, seconds

    @property
    def label(self) -> str:
        where = self.alias if self.port == 22 else f"{self.alias}:{self.port}"
        if self.hostname != self.alias:
            where += f" ({self.hostname})"
        return f"{self.user}@{where}"

    @property
    def known_hosts_name(self) -> str:
        if self.host_key_alias:  # as OpenSSH: the alias alone, whatever the port
            return self.host_key_alias.lower()
        name = self.hostname.lower()
        return name if self.port == 22 else f"[{name}]:{self.port}"


def config_path() -> str:
    return os.path.expanduser("~/.ssh/config")


_SAFE_HOST = re.compile(r"[A-Za-z0-9_.%:-]+\Z")


def resolve(alias: str, user: str | None, port: int | None) -> Target:
    """Look ``alias`` up in ~/.ssh/config; explicit user/port win."""
    # These end up in ssh_config text and in ProxyCommand shell lines (%h, %r).
    if not _SAFE_HOST.match(alias) or alias.startswith("-"):
        raise ConnectionFailed(f"bad host name {alias!r}")
    if user is not None and not safe_user(user):
        raise ConnectionFailed(f"bad user name {user!r}")
    if port is not None and not 0 < port < 65536:
        raise ConnectionFailed(f"bad port {port}")
    path = config_path()
    text = read_config(path)
    # Explicit values go first: in ssh_config the first obtained value wins,
    # and tokens such as %p and %r in ProxyCommand then see them too.
    overrides = "".join(
        f"  {k} {v}\n" for k, v in (("Port", port), ("User", user)) if v is not None
    )
    if overrides:
        text = f"Host {alias}\n{overrides}\n" + text
    try:
        cfg = paramiko.SSHConfig.from_text(text).lookup(alias)
    except paramiko.SSHException as exc:
        raise ConnectionFailed(f"bad SSH configuration in {path}: {exc}") from exc
    raw: dict[str, object] = dict(cfg)

    def opt(key: str) -> str | None:
        value = raw.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None or str(value).lower() == "none":
            return None
        return str(value)

    def files(key: str) -> list[str]:
        value = raw.get(key)
        items = value if isinstance(value, list) else str(value or "").split()
        return [os.path.expanduser(str(v)) for v in items if str(v).lower() != "none"]

    try:
        resolved_port = int(opt("port") or 22)
    except ValueError as exc:
        raise ConnectionFailed(f"bad Port for host {alias!r} in {path}") from exc
    connect_timeout = seconds(opt("connecttimeout"))
    if connect_timeout is not None and not 0 < connect_timeout < 1e6:
        raise ConnectionFailed(f"bad ConnectTimeout for host {alias!r} in {path}")
    hostname = opt("hostname") or alias
    remote_user = opt("user") or getpass.getuser()
    tokens = {
        "%": "%",
        "d": os.path.expanduser("~"),
        "u": getpass.getuser(),
        "i": str(os.getuid()),
        "l": socket.gethostname(),
        "h": hostname,
        "n": alias,
        "p": str(resolved_port),
        "r": remote_user,
        "k": opt("hostkeyalias") or hostname,
    }

    def expanded(key: str, absolute: bool = True) -> list[str]:
        """Files named by ``key``, with their tokens expanded as OpenSSH does
        (those paramiko left: %n, %p, %i, %k, %%)."""
        out = []
        for name in files(key):
            try:
                name = re.sub(r"%(.)", lambda m: tokens[m.group(1)], name)
            except KeyError:
                raise ConnectionFailed(
                    f"{key} {name!r} in {path}: a token merklesync does not know"
                ) from None
            if absolute and not os.path.isabs(name):
                raise ConnectionFailed(f"{key} {name!r} in {path}: not an absolute path")
            out.append(name)
        return out

    known = expanded("userknownhostsfile") or [
        os.path.expanduser("~/.ssh/known_hosts"),
        os.path.expanduser("~/.ssh/known_hosts2"),
    ]
    global_known = expanded("globalknownhostsfile") or [
        "/etc/ssh/ssh_known_hosts",
        "/etc/ssh/ssh_known_hosts2",
    ]
    identity_files = expanded("identityfile", absolute=False) or [
        os.path.expanduser(f"~/.ssh/{name}") for name in DEFAULT_IDENTITIES
    ]
    return Target(
        alias=alias,
        hostname=hostname,
        port=resolved_port,
        user=remote_user,
        identity_files=identity_files,
        identities_only=(opt("identitiesonly") or "no").lower() == "yes",
        known_hosts=known,
        global_known_hosts=global_known,
        host_key_alias=opt("hostkeyalias"),
        hash_known_hosts=(opt("hashknownhosts") or "no").lower() == "yes",
        proxy_command=opt("proxycommand"),
        proxy_jump=opt("proxyjump"),
        connect_timeout=connect_timeout,
    )


_TIME_PART = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(text: str | None) -> float | None:
    """An ssh_config time (``30``, ``30s``, ``1m30s``) in seconds; None
    when not set or 0; -1 when it does not read as one."""
    if not text:
        return None
    parts = _TIME_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
        return -1.0
    total = sum(int(n) * _TIME_UNITS[u.lower()] for n, u in parts)
    return float(total) or None


_INCLUDE = re.compile(r"\s*include\s+(.*?)\s*$", re.IGNORECASE)
_BLOCK = re.compile(r"\s*(host|match)\s", re.IGNORECASE)
_MAX_INCLUDE_DEPTH = 16  # as OpenSSH's READCONF_MAX_DEPTH


def read_config(path: str, depth: int = 0) -> str:
    """The text of an ssh_config file, its ``Include`` lines replaced by the
    files they name (globs, ``~``, paths relative to ~/.ssh; as OpenSSH, in
    the Host or Match block where they stand). A byte that is not UTF-8 (a
    comment in Latin-1) is carried, not fatal."""
    if depth > _MAX_INCLUDE_DEPTH:
        raise ConnectionFailed(f"SSH configuration: Include nested too deeply at {path}")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConnectionFailed(f"cannot read {path}: {exc.strerror}") from exc
    out: list[str] = []
    block = "Host *"  # the block lines stand in: after an included file, it goes on
    for line in text.splitlines():
        if _BLOCK.match(line):
            block = line
        found = _INCLUDE.match(line)
        if found is None:
            out.append(line)
            continue
        for pattern in shlex.split(found.group(1)):
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
            for name in sorted(glob.glob(pattern)):
                included = read_config(name, depth + 1)
                out.append(included)
                if any(_BLOCK.match(x) for x in included.splitlines()):
                    out.append(block)
    return "\n".join(out) + "\n"


def parse_jump(spec: str) -> tuple[str, str | None, int | None]:
    """``[ssh://][user@]host[:port]`` -> (host, user, port)."""
    spec = spec.strip().removeprefix("ssh://").rstrip("/")
    user_part, at, hostport = spec.rpartition("@")
    port_text = ""
    if hostport.startswith("[") and "]" in hostport:
        host, _, rest = hostport[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = hostport.partition(":")
    if not host or (port_text and not port_text.isdigit()):
        raise ConnectionFailed(f"bad ProxyJump entry {spec!r}")
    return host, (user_part if at else None), (int(port_text) if port_text else None)
