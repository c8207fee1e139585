"""Sessions through an SSH connection that `merklesync watch --keep-open`
holds open, as OpenSSH's ControlMaster does.

The keeper listens on a Unix socket named after the SSH address (user,
host, port as written) in ``~/.cache/merklesync/`` (mode 0700; a directory
of its own under /tmp when that path is too long for a socket). A client
sends one request: a 4-byte length and a msgpack list ``[1, remote_cmd,
path, create, excludes]``, what it would have run on the remote side.
The keeper answers one byte, 0x01, and from then on the socket carries the
agent's standard input and output; any other answer (or none) means "not
here", and the client connects by itself. A relayed session costs neither
the SSH handshake nor the agent's start-up: the keeper has an agent
started and waiting (``serve --standby``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from pathlib import Path

import blake3

from merklesync.errors import ConnectionFailed
from merklesync.transport import silent_for
from merklesync.transport.agent_call import AgentCall

__all__ = ["ACCEPTED", "RelayTransport", "attach", "socket_path"]

ACCEPTED = b"\x01"
MAX_REQUEST = 64 * 1024
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; keep a margin
_LENGTH = struct.Struct(">I")
SEND_CHUNK = 1 << 20  # sent at a time (see RelayTransport.send)


def socket_path(user: str | None, host: str, port: int | None) -> Path:
    """Where the keeper of connections to this address listens."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg if os.path.isabs(xdg) else Path.home() / ".cache") / "merklesync"
    key = f"{cache}\0{user or ''}\0{host}\0{port or 0}".encode("utf-8", "surrogateescape")
    name = blake3.blake3(key).hexdigest()
    path = cache / f"keep-{name[:20]}"
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    return Path(f"/tmp/merklesync-{os.getuid()}") / f"keep-{name[:20]}"


def is_private(path: Path) -> bool:
    """A directory that is ours, and only ours (as ssh checks ControlPath's)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    )


def pack_request(call: AgentCall) -> bytes:
    body = call.request()
    return _LENGTH.pack(len(body)) + body


def attach(
    user: str | None,
    host: str,
    port: int | None,
    agent: AgentCall,
    *,
    label: str,
    timeout: float = 15.0,
) -> RelayTransport | None:
    """A session through a kept-open connection, or None when there is
    none (nothing listening, not ours, it declined, or ``agent`` cannot
    travel in a request)."""
    try:
        request = pack_request(agent)
    except (UnicodeEncodeError, ValueError, TypeError):
        return None  # e.g. a path that is not UTF-8: the direct way copes
    path = socket_path(user, host, port)
    if not is_private(path.parent):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(request)
        answer = sock.recv(1)
        if answer != ACCEPTED:
            sock.close()
            return None
        sock.settimeout(None)
    except OSError:
        sock.close()
        return None
    return RelayTransport(sock, label)


class RelayTransport:
    """A session relayed by a keeper, as a `Transport`."""

    relayed = True

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self.timeout: float | None = None
        self.label = label
        self._sock = sock
        self._closed = False

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            # One send at a time, each waiting at most the timeout for room
            # (sendall's would bound the whole of it, however large).
            self._sock.settimeout(self.timeout)
            while view:
                sent = self._sock.send(view[:SEND_CHUNK])
                self.bytes_sent += sent
                view = view[sent:]
        except TimeoutError:
            assert self.timeout is not None
            raise ConnectionFailed(silent_for(self.label, self.timeout)) from None
        except OSError as exc:
            raise self._lost(exc) from None

    def recv(self, n: int) -> bytes:
        if self._closed:
            return b""
        try:
            self._sock.settimeout(self.timeout)
            data = self._sock.recv(n)
        except TimeoutError:
            assert self.timeout is not None
            raise ConnectionFailed(silent_for(self.label, self.timeout)) from None
        except OSError as exc:
            raise self._lost(exc) from None
        self.bytes_received += len(data)
        return data

    def close(self, *, ended: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def stderr_text(self) -> str:
        return ""  # the keeper keeps the agent's

    def exit_status(self) -> int | None:
        return None

    def _lost(self, exc: OSError) -> ConnectionFailed:
        return ConnectionFailed(
            f"the session to {self.label} kept open by `merklesync watch` was lost: "
            f"{exc.strerror or exc}"
        )
