"""The keeper behind `merklesync watch --keep-open ADDRESS`: one SSH
connection to ADDRESS held open, and agents on it started ahead of need.

Clients find it through a Unix socket (transport/relay.py has the client
side and the request format). For each client the keeper hands over an
agent that is already running (``serve --standby``: started, waiting for
one byte before it opens and locks its replica), relays bytes both ways
until either side ends, closes that agent's channel, and starts the next
standby agent for the same command. An agent serves one session and ends,
as it does when run directly: a client that dies mid-session is, to the
agent, a dropped connection, and the replica's lock is only held while a
session runs. A lost SSH connection is made again for the next client; a
client the keeper cannot serve is declined and connects by itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgpack

from merklesync.errors import MerklesyncError, UsageError
from merklesync.peer.open import agent_command
from merklesync.serve import STANDBY_GO
from merklesync.transport.relay import (
    ACCEPTED,
    MAX_REQUEST,
    REQUEST_VERSION,
    is_private,
    socket_path,
)
from merklesync.transport.ssh import SSHConnection, SSHTransport

__all__ = ["Keeper"]

RELAY_CHUNK = 256 * 1024
MAX_COMMANDS = 4  # standby agents kept: one per distinct command, the latest ones
MAX_EXCLUDES = 256
CLIENT_END_WAIT = 30.0  # for a client to go once its agent has ended
KEEPALIVE = 30  # seconds between SSH keepalives on the held connection
STOP_GRACE = 30.0  # seconds the sessions running at a stop get to end


class Keeper:
    """Holds the connection; ``start`` binds the socket and connects,
    ``stop`` ends everything (agents see end of input and exit)."""

    def __init__(
        self,
        user: str | None,
        host: str,
        port: int | None,
        remote_cmd: str,
        path: str,
        *,
        accept_new_host_key: bool = False,
        connect_timeout: float = 15.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.user, self.host, self.port = user, host, port
        self.label = f"{user}@{host}" if user else host
        self.socket = socket_path(user, host, port)
        self._accept_new = accept_new_host_key
        self._timeout = connect_timeout
        self._warn = warn or (lambda message: None)
        self._lock = threading.Lock()  # the connection and the standby agents
        self._connection: SSHConnection | None = None
        self._standby: OrderedDict[str, SSHTransport] = OrderedDict()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self.sessions = 0  # served so far
        self._active = 0  # running now
        self._idle = threading.Condition()
        self._remote_cmd, self._path = remote_cmd, path  # the agents started first

    # -- life ------------------------------------------------------------

    def start(self) -> None:
        """Connect and listen; raises the SSH errors (host key, auth...)."""
        self._listen()
        try:
            with self._lock:
                self._connection = self._connect()
            for create in (False, True):  # diff, status / push, pull, sync
                self._start_standby(*_commands(self._remote_cmd, self._path, create, []))
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._accept_loop, name="keep-open", daemon=True).start()

    def stop(self, grace: float = 0.0) -> None:
        """Take no more clients; let the sessions running end (for up to
        ``grace`` seconds), then close the connection."""
        with self._idle:
            self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.socket)
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=grace)
        with self._lock:
            for agent in self._standby.values():
                agent.close()
            self._standby.clear()
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _listen(self) -> None:
        folder = self.socket.parent
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, parents=True)
        if not is_private(folder):
            raise UsageError(f"{folder} must be a directory of this user's with mode 0700")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket))
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)  # left by a keeper that is gone
        else:
            raise UsageError(f"connections to {self.label} are already kept open by another watch")
        finally:
            probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.socket))
        finally:
            os.umask(old)
        listener.listen(16)
        self._listener = listener

    def _connect(self) -> SSHConnection:
        connection = SSHConnection(
            self.host,
            self.user,
            self.port,
            accept_new_host_key=self._accept_new,
            connect_timeout=self._timeout,
        )
        connection.keep_alive(KEEPALIVE)  # through idle-dropping firewalls; a dead one shows
        return connection

    # -- clients ---------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(self._timeout)
            commands = self._read_request(client)
            if commands is None:
                return
            agent, first = self._agent_for(*commands)
            if agent is None:
                client.sendall(b"\x00")
                return
            client.settimeout(None)
            with self._idle:
                stopping = self._stopping.is_set()  # then stop() may not wait for it
                if not stopping:
                    self.sessions += 1
                    self._active += 1
            if stopping:
                agent.close()
                client.sendall(b"\x00")
                return
            try:
                client.sendall(ACCEPTED + first)
                _relay(client, agent)
            finally:
                agent.close()
                with self._idle:
                    self._active -= 1
                    self._idle.notify_all()
        except OSError:
            pass  # the client went away
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _read_request(self, client: socket.socket) -> tuple[str, str] | None:
        """The agent command a client asks for, and its standby form (None:
        a bad request, declined)."""
        head = _recv_exactly(client, 4)
        size = int.from_bytes(head, "big") if len(head) == 4 else MAX_REQUEST + 1
        body = _recv_exactly(client, size) if size <= MAX_REQUEST else b""
        try:
            request: Any = msgpack.unpackb(body) if len(body) == size else None
        except (ValueError, msgpack.UnpackException):
            request = None
        if not (
            isinstance(request, list)
            and len(request) == 5
            and request[0] == REQUEST_VERSION
            and isinstance(request[1], str)
            and isinstance(request[2], str)
            and isinstance(request[3], bool)
            and isinstance(request[4], list)
            and len(request[4]) <= MAX_EXCLUDES
            and all(isinstance(p, str) for p in request[4])
        ):
            with contextlib.suppress(OSError):
                client.sendall(b"\x00")
            return None
        _, remote_cmd, path, create, excludes = request
        try:
            return _commands(remote_cmd, path, create, excludes)
        except UsageError:
            with contextlib.suppress(OSError):
                client.sendall(b"\x00")
            return None

    def _agent_for(self, command: str, standby: str) -> tuple[SSHTransport | None, bytes]:
        """An agent running ``command`` that has said its first bytes, and
        those bytes: the standby one if it is alive, else a new one (None
        when none starts: the client then connects by itself, and sees why)."""
        with self._lock:
            agent = self._standby.pop(command, None)
        first = _start(agent) if agent is not None else b""
        if not first:
            if agent is not None:
                agent.close()  # it died waiting
            try:
                with self._lock:
                    if self._connection is None or not self._connection.is_active():
                        if self._connection is not None:
                            self._connection.close()
                            self._connection = None
                        self._connection = self._connect()
                    agent = self._connection.run(command)
            except MerklesyncError as exc:
                self._warn(f"keep-open {self.label}: {exc.message}")
                return None, b""
            first = _first_bytes(agent)
            if not first:
                agent.close()
                return None, b""
        self._refill(command, standby)
        return agent, first

    def _refill(self, command: str, standby: str) -> None:
        threading.Thread(target=self._start_standby, args=(command, standby), daemon=True).start()

    def _start_standby(self, command: str, standby: str) -> None:
        connection = self._connection
        if connection is None or self._stopping.is_set():
            return
        try:
            agent = connection.run(standby)
        except MerklesyncError:
            return  # the next client makes the connection again
        with self._lock:
            old = self._standby.pop(command, None)
            self._standby[command] = agent
            while len(self._standby) > MAX_COMMANDS:
                _, oldest = self._standby.popitem(last=False)
                oldest.close()
        if old is not None:
            old.close()


def _commands(remote_cmd: str, path: str, create: bool, excludes: list[str]) -> tuple[str, str]:
    return (
        agent_command(remote_cmd, path, create=create, excludes=excludes),
        agent_command(remote_cmd, path, create=create, excludes=excludes, standby=True),
    )


def _start(agent: SSHTransport) -> bytes:
    """Wake a standby agent; its first bytes (empty: it is gone)."""
    try:
        agent.send(STANDBY_GO)
    except MerklesyncError:
        return b""
    return _first_bytes(agent)


def _first_bytes(agent: SSHTransport) -> bytes:
    try:
        return agent.recv(RELAY_CHUNK)
    except MerklesyncError:
        return b""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _relay(client: socket.socket, agent: SSHTransport) -> None:
    """Bytes both ways until the agent ends (then the client is told) or
    the client goes (then the agent's input ends)."""

    def upstream() -> None:
        try:
            while data := client.recv(RELAY_CHUNK):
                agent.send(data)
        except (OSError, MerklesyncError):
            pass
        agent.close_write()

    up = threading.Thread(target=upstream, daemon=True)
    up.start()
    try:
        while data := agent.recv(RELAY_CHUNK):
            client.sendall(data)
    except (OSError, MerklesyncError):
        pass
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_RDWR)
    up.join(CLIENT_END_WAIT)
