"""A transport over an SSH exec channel (paramiko).

`open_ssh` resolves the host through ``~/.ssh/config`` (Include, HostName,
Port, User, IdentityFile, IdentitiesOnly, UserKnownHostsFile and
GlobalKnownHostsFile with their tokens, HostKeyAlias, HashKnownHosts,
ProxyCommand run by $SHELL, ProxyJump), verifies the host key against the
known_hosts files (a host a @cert-authority line covers is refused: host
certificates are not checked), authenticates with ssh-agent keys and key
files in OpenSSH's order, and runs one command whose stdin/stdout become
the byte stream.

Host keys: an unknown key is rejected unless ``accept_new_host_key`` is set
(then it is appended to the first UserKnownHostsFile, like OpenSSH's
``StrictHostKeyChecking accept-new``); a changed key is always rejected.
Passwords and keyboard-interactive authentication are not used: the CLI runs
unattended, use keys or an agent.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import glob
import hashlib
import hmac
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn

from merklesync.address import safe_user
from merklesync.errors import ConnectionFailed, HostKeyError, RemoteCommandMissing
from merklesync.transport import StderrTail, command_missing, error_line, silent_for
from merklesync.transport.lazy_invoke import defer_invoke

defer_invoke()  # before paramiko is imported
import paramiko  # noqa: E402
from paramiko.pkey import UnknownKeyType  # noqa: E402

__all__ = [
    "MAX_PACKET_SIZE",
    "PREFERRED_CIPHERS",
    "WINDOW_SIZE",
    "SSHConnection",
    "SSHTransport",
    "open_ssh",
]

# paramiko logs handshake failures with tracebacks; we report them ourselves.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

#: Flow-control window we grant the server (per channel).
WINDOW_SIZE = 16 * 1024 * 1024
#: Largest data packet we accept from the server.
MAX_PACKET_SIZE = 128 * 1024
#: Fast ciphers first (AES-NI through `cryptography`); paramiko's order follows.
PREFERRED_CIPHERS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes128-ctr",
    "aes256-gcm@openssh.com",
)

_DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
_MAX_JUMPS = 8
_EXIT_WAIT = 5.0
_CLOSE_WAIT = 1.0
_EOF_STATUS_WAIT = 2.0
_FIRST_WORDS_NAP = 0.002  # between looks for a command's first output
_HINT = "set the command that starts merklesync there with --remote-cmd or MERKLESYNC_REMOTE_CMD"


# -- configuration --------------------------------------------------------------------


@dataclass
class _Target:
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


def _config_path() -> str:
    return os.path.expanduser("~/.ssh/config")


_SAFE_HOST = re.compile(r"[A-Za-z0-9_.%:-]+\Z")


def _resolve(alias: str, user: str | None, port: int | None) -> _Target:
    """Look ``alias`` up in ~/.ssh/config; explicit user/port win."""
    # These end up in ssh_config text and in ProxyCommand shell lines (%h, %r).
    if not _SAFE_HOST.match(alias) or alias.startswith("-"):
        raise ConnectionFailed(f"bad host name {alias!r}")
    if user is not None and not safe_user(user):
        raise ConnectionFailed(f"bad user name {user!r}")
    if port is not None and not 0 < port < 65536:
        raise ConnectionFailed(f"bad port {port}")
    path = _config_path()
    text = _read_config(path)
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
    connect_timeout = _seconds(opt("connecttimeout"))
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
        os.path.expanduser(f"~/.ssh/{name}") for name in _DEFAULT_IDENTITIES
    ]
    return _Target(
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


def _seconds(text: str | None) -> float | None:
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


def _read_config(path: str, depth: int = 0) -> str:
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
                included = _read_config(name, depth + 1)
                out.append(included)
                if any(_BLOCK.match(x) for x in included.splitlines()):
                    out.append(block)
    return "\n".join(out) + "\n"


def _parse_jump(spec: str) -> tuple[str, str | None, int | None]:
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


# -- known_hosts ------------------------------------------------------------------------


@dataclass(frozen=True)
class _KnownKey:
    path: str
    lineno: int
    marker: str | None
    keytype: str
    blob: bytes

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt_b64, hash_b64 = pattern.split("|", 3)
            salt, expect = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        except (ValueError, TypeError):
            return False
        got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(got, expect)
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()
    )
    return re.fullmatch(regex, name) is not None


def _line_matches(hosts_field: str, name: str) -> bool:
    matched = False
    for pattern in hosts_field.split(","):
        negated = pattern.startswith("!")
        if _pattern_matches(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            matched = True
    return matched


def _known_keys(paths: Iterable[str], name: str) -> list[_KnownKey]:
    found: list[_KnownKey] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = None
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
            if len(fields) < 3 or not _line_matches(fields[0], name):
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except ValueError:
                continue
            found.append(_KnownKey(path, lineno, marker, fields[1], blob))
    return found


def _host_key_algorithms(preferred: Sequence[str], known_types: set[str]) -> list[str]:
    """Put the algorithms of the key types we already know first (as OpenSSH does)."""

    def known(alg: str) -> bool:
        if alg.startswith("rsa-sha2-"):
            return "ssh-rsa" in known_types
        return alg in known_types

    return [a for a in preferred if known(a)] + [a for a in preferred if not known(a)]


def _check_host_key(target: _Target, key: paramiko.PKey, accept_new: bool) -> None:
    name = target.known_hosts_name
    entries = _known_keys([*target.known_hosts, *target.global_known_hosts], name)
    blob, keytype = key.asbytes(), key.get_name()
    offered = f"{key.algorithm_name} key fingerprint is {key.fingerprint}"
    for e in entries:
        if e.marker == "@revoked" and e.blob == blob:
            raise HostKeyError(f"host key for {name} is REVOKED ({e.where}): {offered}")
    plain = [e for e in entries if e.marker is None]
    if any(e.blob == blob for e in plain):
        return
    authority = next((e for e in entries if e.marker == "@cert-authority"), None)
    if authority is not None:  # never trust on first use what a CA was to vouch for
        raise HostKeyError(
            f"host key for {name} is to be vouched for by a certificate authority "
            f"({authority.where}), and merklesync does not check host certificates: "
            f"add the host's own key ({offered}) to known_hosts to use it"
        )
    same_type = [e for e in plain if e.keytype == keytype]
    if same_type:
        raise HostKeyError(
            f"host key for {name} has CHANGED (possible man-in-the-middle attack): "
            f"{offered}, but {same_type[0].where} holds a different one; "
            f"if the change is expected, delete that line"
        )
    if plain:
        raise HostKeyError(
            f"host key for {name} has CHANGED: the server offered {offered}, but "
            f"{plain[0].where} holds a {plain[0].keytype} key for it; "
            f"if the change is expected, delete that line"
        )
    record_in = target.known_hosts[0] if target.known_hosts else None
    if not accept_new or record_in is None:
        raise HostKeyError(
            f"host key for {name} is not known: {offered}; if it is right, re-run "
            f"with --accept-new-host-key to record it in {record_in or 'known_hosts'}"
        )
    _record_host_key(record_in, name, key, target.hash_known_hosts)


def _record_host_key(path: str, name: str, key: paramiko.PKey, hashed: bool) -> None:
    if hashed:
        salt = os.urandom(20)
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        with open(path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode())
    except OSError as exc:
        raise HostKeyError(f"cannot record the host key in {path}: {exc.strerror}") from exc


# -- connecting -------------------------------------------------------------------------

_Sock = socket.socket | paramiko.Channel | paramiko.ProxyCommand


def _open_socket(target: _Target, timeout: float) -> socket.socket:
    where = f"{target.hostname} port {target.port}"
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=timeout)
    except socket.gaierror as exc:
        raise ConnectionFailed(
            f"cannot resolve host name {target.hostname!r}: {exc.strerror}"
        ) from exc
    except ConnectionRefusedError as exc:
        raise ConnectionFailed(f"connection to {where} refused (no SSH server there?)") from exc
    except TimeoutError as exc:
        raise ConnectionFailed(f"connection to {where} timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {where}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class _Hop:
    transport: paramiko.Transport
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in [self.transport.close, *reversed(self.closers)]:
            with contextlib.suppress(Exception):
                close()


def _connect(target: _Target, accept_new: bool, timeout: float, depth: int = 0) -> _Hop:
    """An authenticated paramiko transport to ``target`` (through its proxies),
    within ``timeout`` seconds (its ConnectTimeout where it has one)."""
    timeout = target.connect_timeout or timeout
    if depth > _MAX_JUMPS:
        raise ConnectionFailed(f"too many ProxyJump hops (loop?) reaching {target.alias}")
    closers: list[Callable[[], None]] = []
    sock: _Sock
    if target.proxy_command:
        shell = os.environ.get("SHELL") or "/bin/sh"  # as OpenSSH runs it: $SHELL -c
        try:
            sock = paramiko.ProxyCommand(
                f"{shell} -c {shlex.quote('exec ' + target.proxy_command)}"
            )
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectionFailed(f"ProxyCommand {target.proxy_command!r} failed: {exc}") from exc
    elif target.proxy_jump:
        jumps = [j for j in target.proxy_jump.split(",") if j.strip()]
        host, user, port = _parse_jump(jumps[-1])
        jump_target = _resolve(host, user, port)
        if len(jumps) > 1:
            jump_target.proxy_jump = ",".join(jumps[:-1])
        jump = _connect(jump_target, accept_new, timeout, depth + 1)
        closers.append(jump.close)
        try:
            sock = jump.transport.open_channel(
                "direct-tcpip",
                dest_addr=(target.hostname, target.port),
                src_addr=("127.0.0.1", 0),
                timeout=timeout,
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            jump.close()
            raise ConnectionFailed(
                f"jump host {jump_target.label} could not connect to "
                f"{target.hostname} port {target.port}: {exc}"
            ) from exc
    else:
        sock = _open_socket(target, timeout)
    try:
        transport = paramiko.Transport(
            sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE
        )
    except BaseException:
        sock.close()
        for close in closers:
            close()
        raise
    hop = _Hop(transport, closers)
    try:
        _handshake(hop.transport, target, accept_new, timeout)
        _authenticate(hop.transport, target)
    except BaseException:
        hop.close()
        raise
    return hop


def _handshake(t: paramiko.Transport, target: _Target, accept_new: bool, timeout: float) -> None:
    opts = t.get_security_options()
    opts.ciphers = [c for c in PREFERRED_CIPHERS if c in opts.ciphers] + [
        c for c in opts.ciphers if c not in PREFERRED_CIPHERS
    ]
    known = _known_keys([*target.known_hosts, *target.global_known_hosts], target.known_hosts_name)
    opts.key_types = _host_key_algorithms(
        opts.key_types, {k.keytype for k in known if k.marker is None}
    )
    # paramiko's own timers get a margin so that ``done.wait`` decides (clear message)
    t.banner_timeout = timeout + 5.0
    t.auth_timeout = timeout
    done = threading.Event()
    try:
        t.start_client(event=done)
    except (paramiko.SSHException, OSError) as exc:
        raise ConnectionFailed(f"SSH handshake with {target.label} failed: {exc}") from exc
    proxy = t.sock if isinstance(t.sock, paramiko.ProxyCommand) else None
    deadline = time.monotonic() + timeout
    ended: str | None = None  # how the ProxyCommand ended, once it has
    while not (finished := done.wait(min(0.1, max(0.0, deadline - time.monotonic())))):
        ended = _ended(proxy) if proxy is not None else None
        if ended is not None or time.monotonic() >= deadline:
            break
    if finished and t.is_active():
        _check_host_key(target, t.get_remote_server_key(), accept_new)
        return
    err = t.get_exception()
    via = f" (through ProxyCommand {target.proxy_command!r})" if target.proxy_command else ""
    if proxy is not None and ended is None and (finished or err is not None):
        for _ in range(10):  # broken pipe: the ProxyCommand is ending, its words matter
            if (ended := _ended(proxy)) is not None:
                break
            time.sleep(0.05)
    if proxy is not None and ended is not None:
        said = _last_words(proxy)
        why = f"ProxyCommand {ended}" + (f": {said}" if said else "")
        raise ConnectionFailed(f"SSH handshake with {target.label} failed: {why}")
    if not finished:
        why = f"timed out after {timeout:g} s"
    elif isinstance(err, paramiko.ProxyCommandFailure):
        why = f"ProxyCommand failed: {err}"
    elif err is None or isinstance(err, EOFError):
        why = "the server closed the connection"
    elif "banner" in str(err):
        why = f"{err} (is it an SSH server?)"
    else:
        why = str(err) or type(err).__name__
    raise ConnectionFailed(f"SSH handshake with {target.label} failed: {why}{via}")


def _ended(proxy: paramiko.ProxyCommand) -> str | None:
    """How a ProxyCommand ended (``exited with status 127``, ``was killed
    by signal 9``), once it has, else None; it is not reaped here (paramiko
    signals it by its pid when the transport closes)."""
    try:
        info = os.waitid(os.P_PID, proxy.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return f"exited with status {info.si_status}"
    return f"was killed by signal {info.si_status}"


def _last_words(proxy: paramiko.ProxyCommand) -> str:
    """The last line a ProxyCommand that ended wrote on its stderr (what is
    there within a moment: a child of it may hold the pipe open)."""
    stream = proxy.process.stderr
    if stream is None:
        return ""
    data = b""
    with contextlib.suppress(OSError, ValueError):
        while len(data) < 65536 and select.select([stream], [], [], 0.2)[0]:
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].strip() if lines else ""


@dataclass
class _Identity:
    """One IdentityFile: its key when it loads without a passphrase, else its
    public half (``.pub`` beside it), by which ssh-agent may hold it."""

    path: str
    key: paramiko.PKey | None
    public: bytes | None
    encrypted: bool = False


def _load_identities(target: _Target) -> tuple[list[_Identity], list[str]]:
    found: list[_Identity] = []
    notes: list[str] = []
    for path in target.identity_files:
        if not os.path.exists(path):
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError):  # TypeError: paramiko 4+
            found.append(_Identity(path, None, _public_half(path), encrypted=True))
            continue
        except (paramiko.SSHException, OSError, ValueError, UnknownKeyType) as exc:
            notes.append(f"cannot load {path}: {exc}")
            continue
        cert = path + "-cert.pub"
        if os.path.exists(cert):
            with contextlib.suppress(paramiko.SSHException, OSError, ValueError):
                key.load_certificate(cert)
        found.append(_Identity(path, key, key.asbytes()))
    return found, notes


def _public_half(path: str) -> bytes | None:
    """The key blob of ``path``.pub, if it reads."""
    try:
        with open(path + ".pub", encoding="ascii", errors="replace") as f:
            fields = f.read().split()
        return base64.b64decode(fields[1], validate=True) if len(fields) >= 2 else None
    except (OSError, ValueError):
        return None


def _key_order(
    identities: list[_Identity], agent_keys: list[paramiko.PKey], identities_only: bool
) -> tuple[list[tuple[str, paramiko.PKey]], list[str]]:
    """The keys to offer, as OpenSSH orders them: the IdentityFiles ssh-agent
    holds (an encrypted one is usable so), the agent's other keys unless
    IdentitiesOnly, then the IdentityFiles read from disk. A server counts
    the keys offered (MaxAuthTries): the configured ones come first. Also
    the notes on identities that cannot be used."""
    held = {k.asbytes(): k for k in agent_keys}
    order: list[tuple[str, paramiko.PKey]] = []
    used: set[bytes] = set()

    def offer(label: str, key: paramiko.PKey) -> None:
        if key.asbytes() not in used:
            used.add(key.asbytes())
            order.append((label, key))

    for ident in identities:
        if ident.public in held:
            offer(f"{ident.path} (from ssh-agent)", held[ident.public])
    if not identities_only:
        for key in held.values():
            offer(f"agent key {key.fingerprint}", key)
    notes: list[str] = []
    for ident in identities:
        if ident.key is not None:
            offer(ident.path, ident.key)
        elif ident.public not in held:
            notes.append(f"{ident.path} is encrypted (add it to ssh-agent)")
    return order, notes


def _authenticate(t: paramiko.Transport, target: _Target) -> None:
    identities, notes = _load_identities(target)
    agent: paramiko.Agent | None = None
    agent_keys: list[paramiko.PKey] = []
    try:
        agent = paramiko.Agent()
        agent_keys = list(agent.get_keys())
    except (paramiko.SSHException, OSError):
        agent = None
    candidates, unusable = _key_order(identities, agent_keys, target.identities_only)
    notes += unusable
    tried: list[str] = []
    try:
        for label, key in candidates:
            tried.append(label)
            try:
                remaining = t.auth_publickey(target.user, key)
            except paramiko.BadAuthenticationType as exc:
                raise ConnectionFailed(
                    f"{target.label} does not accept SSH keys (it allows: "
                    f"{', '.join(exc.allowed_types) or 'nothing'})"
                ) from exc
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectionFailed(
                    f"SSH connection to {target.label} lost during authentication: {exc}"
                ) from exc
            if t.is_authenticated():
                return
            raise ConnectionFailed(
                f"{target.label} asks for more authentication ({', '.join(remaining)}), "
                "which merklesync cannot provide"
            )
    finally:
        if agent is not None:
            agent.close()
    if not candidates:
        why = "no SSH key found (ssh-agent, IdentityFile, ~/.ssh/id_ed25519, id_ecdsa, id_rsa)"
    else:
        why = "server rejected " + ", ".join(tried)
    extra = f"; {'; '.join(notes)}" if notes else ""
    raise ConnectionFailed(f"authentication failed for {target.label}: {why}{extra}")


# -- the transport ----------------------------------------------------------------------


class SSHTransport:
    """A command running on an SSH server, as a `Transport`."""

    relayed = False

    def __init__(
        self,
        hop: _Hop,
        channel: paramiko.Channel,
        label: str,
        command: str,
        *,
        owns_connection: bool = True,
    ) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self.timeout: float | None = None
        self.label = label
        self.command = command
        self._hop = hop
        self._owns_connection = owns_connection  # closed with this channel
        self._chan = channel
        self._chunk = max(4096, channel.out_max_packet_size - 64)
        self._closed = False
        self._pending = b""
        self._offset = 0
        self._stderr = StderrTail(channel.recv_stderr, f"ssh-stderr-{label}")

    # -- Transport -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionFailed(f"SSH connection to {self.label} already closed")
        chan, chunk, total = self._chan, self._chunk, len(data)
        view = data if isinstance(data, bytes) else bytes(data)
        offset = 0
        try:
            while offset < total:
                sent = chan.send(view[offset : offset + chunk])
                if sent <= 0:
                    break
                offset += sent
        except (OSError, EOFError, paramiko.SSHException):
            pass
        self.bytes_sent += offset
        if offset < total:
            self._fail("cannot send")

    def recv(self, n: int) -> bytes:
        if self._pending:
            data = self._pending[self._offset : self._offset + n]
            self._offset += len(data)
            if self._offset >= len(self._pending):
                self._pending, self._offset = b"", 0
            self.bytes_received += len(data)
            return data
        if self._closed:
            return b""
        try:
            # Take everything paramiko has buffered: its buffer is an array
            # that memmoves its tail on every partial read, quadratic with a
            # large window.  The rest is served from ``_pending``.
            self._chan.settimeout(self.timeout)
            data = self._chan.recv(max(n, len(self._chan.in_buffer)))
        except TimeoutError:
            assert self.timeout is not None
            raise ConnectionFailed(silent_for(self.label, self.timeout)) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._fail(f"cannot receive ({exc})")
        if data:
            if len(data) > n:
                self._pending, self._offset = data, n
                data = data[:n]
            self.bytes_received += len(data)
            return data
        if self._closed:
            return b""
        # EOF closed stderr too: let the drain finish; the exit status follows EOF.
        self._stderr.join(timeout=1.0)
        self._chan.status_event.wait(_EOF_STATUS_WAIT)
        if self.bytes_received == 0:
            self._check_started()
        if not self._hop.transport.is_active() and not self._chan.exit_status_ready():
            self._fail("connection lost")
        return b""

    def close(self, *, ended: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        chan = self._chan
        with contextlib.suppress(Exception):
            if not chan.closed:
                chan.shutdown_write()
                if not ended:  # let it see the end of its input and go first
                    chan.status_event.wait(_CLOSE_WAIT)
        with contextlib.suppress(Exception):
            chan.close()
        if self._owns_connection:
            self._hop.close()
        self._stderr.join(timeout=1.0)

    def stderr_text(self) -> str:
        return self._stderr.text()

    def exit_status(self) -> int | None:
        if self._chan.exit_status_ready():
            return self._chan.exit_status
        return None

    # -- extras --------------------------------------------------------------

    def first_words(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` bytes of the command's output, if it says something
        within ``timeout`` seconds (empty: it did not, or it ended). What it
        writes on its error output is no answer."""
        deadline = time.monotonic() + timeout
        chan = self._chan
        while not (self._pending or chan.recv_ready()):
            left = deadline - time.monotonic()
            if self._closed or chan.eof_received or chan.closed or left <= 0:
                if chan.recv_ready():  # its last words came with its end
                    break
                return b""
            # Never the channel's descriptor (select, fileno): paramiko
            # then shares one event pipe between the output and the error
            # output, and two threads reading them (StderrTail is the other)
            # can both try to clear it: one blocks for ever, and with it
            # every lock of the connection, closing it too.
            time.sleep(min(left, _FIRST_WORDS_NAP))
        return self.recv(n)

    def close_write(self) -> None:
        """Send EOF to the remote command's stdin (half-close)."""
        with contextlib.suppress(Exception):
            self._chan.shutdown_write()

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------

    def _wait_exit(self) -> int | None:
        deadline = time.monotonic() + _EXIT_WAIT
        while not self._chan.exit_status_ready():
            if not self._hop.transport.is_active() or time.monotonic() > deadline:
                return None
            self._chan.status_event.wait(0.1)
        self._stderr.join(timeout=1.0)
        return self._chan.exit_status

    def _check_started(self) -> None:
        """Nothing was ever received: did the remote command fail to start?"""
        status = self._wait_exit()
        if status is None or status == 0:
            return
        line = error_line(self.stderr_text())
        if command_missing(status, line):
            raise RemoteCommandMissing(
                f"cannot run {self.command!r} on {self.label} (exit status {status}): "
                f"{line or 'no error message'}; {_HINT}"
            )
        raise ConnectionFailed(
            f"{self.command!r} on {self.label} exited with status {status} before answering"
            + (f": {line}" if line else "")
        )

    def _fail(self, what: str) -> NoReturn:
        if self.bytes_received == 0:
            self._check_started()
        status = self._wait_exit()
        if status is not None:
            line = error_line(self.stderr_text())
            raise ConnectionFailed(
                f"{what}: {self.command!r} on {self.label} exited with status {status}"
                + (f": {line}" if line else "")
            )
        cause = self._hop.transport.get_exception()
        raise ConnectionFailed(
            f"{what}: SSH connection to {self.label} lost" + (f" ({cause})" if cause else "")
        )


class SSHConnection:
    """One authenticated SSH connection that runs commands on its own
    channels (what `merklesync watch --keep-open` holds for its clients)."""

    def __init__(
        self,
        host: str,
        user: str | None,
        port: int | None,
        *,
        accept_new_host_key: bool = False,
        connect_timeout: float = 15.0,
    ) -> None:
        self.target = _resolve(host, user, port)
        self._timeout = connect_timeout
        self._hop = _connect(self.target, accept_new_host_key, connect_timeout)

    @property
    def label(self) -> str:
        return self.target.label

    def is_active(self) -> bool:
        return bool(self._hop.transport.is_active())

    def keep_alive(self, seconds: int) -> None:
        """Send an SSH keepalive after ``seconds`` of silence."""
        self._hop.transport.set_keepalive(seconds)

    def run(
        self, command: str, *, owns_connection: bool = False, timeout: float | None = None
    ) -> SSHTransport:
        """Run ``command`` on a new channel (opened within ``timeout``
        seconds, default the connect timeout); its stdin/stdout are the stream."""
        try:
            channel = self._hop.transport.open_session(
                window_size=WINDOW_SIZE,
                max_packet_size=MAX_PACKET_SIZE,
                timeout=self._timeout if timeout is None else timeout,
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectionFailed(f"cannot run a command on {self.label}: {exc}") from exc
        try:
            # Bytes, so that a path that is not UTF-8 reaches the far side as it is.
            channel.exec_command(command.encode("utf-8", "surrogateescape"))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()  # on a held connection, a leaked channel counts against MaxSessions
            raise ConnectionFailed(f"cannot run a command on {self.label}: {exc}") from exc
        return SSHTransport(
            self._hop, channel, self.label, command, owns_connection=owns_connection
        )

    def close(self) -> None:
        self._hop.close()


def open_ssh(
    host: str,
    user: str | None,
    port: int | None,
    command: str,
    *,
    accept_new_host_key: bool = False,
    connect_timeout: float = 15.0,
) -> SSHTransport:
    """Connect to ``host`` and run ``command`` there; its stdin/stdout are the stream.

    Raises `ConnectionFailed` (cannot connect or authenticate), `HostKeyError`
    (unknown or changed host key) and, on the first `send`/`recv` that sees the
    command die, `RemoteCommandMissing`.
    """
    connection = SSHConnection(
        host,
        user,
        port,
        accept_new_host_key=accept_new_host_key,
        connect_timeout=connect_timeout,
    )
    try:
        return connection.run(command, owns_connection=True)
    except BaseException:
        connection.close()
        raise
