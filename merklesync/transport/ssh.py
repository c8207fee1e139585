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

The configuration, the host keys and the authentication are each a module
of their own (ssh_config.py, known_hosts.py, ssh_auth.py); this one connects
(through proxies and jumps) and runs the command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn

from merklesync.errors import ConnectionFailed, RemoteCommandMissing
from merklesync.transport import StderrTail, command_missing, error_line, silent_for
from merklesync.transport.known_hosts import check_host_key, host_key_algorithms, known_keys
from merklesync.transport.lazy_invoke import defer_invoke
from merklesync.transport.ssh_auth import authenticate
from merklesync.transport.ssh_config import Target, parse_jump, resolve

defer_invoke()  # before paramiko is imported
import paramiko  # noqa: E402

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

_MAX_JUMPS = 8
_EXIT_WAIT = 5.0
_CLOSE_WAIT = 1.0
_EOF_STATUS_WAIT = 2.0
_FIRST_WORDS_NAP = 0.002  # between looks for a command's first output
# In the order they are taken (a named remote's stored command outranks the variable).
_HINT = (
    "set the command that starts merklesync there: --remote-cmd, "
    "else the named remote's remote-cmd, else MERKLESYNC_REMOTE_CMD"
)


# -- connecting -------------------------------------------------------------------------

_Sock = socket.socket | paramiko.Channel | paramiko.ProxyCommand


def _open_socket(target: Target, timeout: float) -> socket.socket:
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


def _connect(target: Target, accept_new: bool, timeout: float, depth: int = 0) -> _Hop:
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
        host, user, port = parse_jump(jumps[-1])
        jump_target = resolve(host, user, port)
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
        authenticate(hop.transport, target)
    except BaseException:
        hop.close()
        raise
    return hop


def _handshake(t: paramiko.Transport, target: Target, accept_new: bool, timeout: float) -> None:
    opts = t.get_security_options()
    opts.ciphers = [c for c in PREFERRED_CIPHERS if c in opts.ciphers] + [
        c for c in opts.ciphers if c not in PREFERRED_CIPHERS
    ]
    known = known_keys([*target.known_hosts, *target.global_known_hosts], target.known_hosts_name)
    opts.key_types = host_key_algorithms(
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
        check_host_key(target, t.get_remote_server_key(), accept_new)
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
            # Each send waits at most this long for room in the channel's
            # window: a command that stopped reading is given up as one
            # that stopped answering is (recv).
            chan.settimeout(self.timeout)
            while offset < total:
                sent = chan.send(view[offset : offset + chunk])
                if sent <= 0:
                    break
                offset += sent
        except TimeoutError:
            self.bytes_sent += offset
            assert self.timeout is not None
            raise ConnectionFailed(silent_for(self.label, self.timeout)) from None
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
        if status > 0 and command_missing(status, line):
            raise RemoteCommandMissing(
                f"cannot run {self.command!r} on {self.label} (exit status {status}): "
                f"{line or 'no error message'}; {_HINT}"
            )
        raise ConnectionFailed(
            f"{self.command!r} on {self.label} {_exit_text(status)} before answering"
            + (f": {line}" if line else "")
        )

    def _fail(self, what: str) -> NoReturn:
        if self.bytes_received == 0:
            self._check_started()
        status = self._wait_exit()
        if status is not None and (status >= 0 or self._hop.transport.is_active()):
            line = error_line(self.stderr_text())
            raise ConnectionFailed(
                f"{what}: {self.command!r} on {self.label} {_exit_text(status)}"
                + (f": {line}" if line else "")
            )
        cause = self._hop.transport.get_exception()
        raise ConnectionFailed(
            f"{what}: SSH connection to {self.label} lost" + (f" ({cause})" if cause else "")
        )


def _exit_text(status: int) -> str:
    """How a command ended, by its exit status: paramiko says -1 for a
    channel closed without one (the command was killed by a signal: OpenSSH
    then sends exit-signal, which paramiko does not read)."""
    return "was killed by a signal" if status < 0 else f"exited with status {status}"


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
        self.target = resolve(host, user, port)
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
