"""The keeper behind `merklesync watch --keep-open ADDRESS`: one SSH
connection to ADDRESS held open, and agents on it started ahead of need.

Clients find it through a Unix socket (transport/relay.py has the client
side; transport/agent_call.py the request). For each client the keeper
hands over an agent that is already running (``serve --standby``: started,
waiting for one byte before it opens and locks its replica), starts the
next standby agent for the same command, and relays bytes both ways until
either side ends. An agent serves one session and ends, as it does when run
directly: a client that dies mid-session is, to the agent, a dropped
connection, and the replica's lock is only held while a session runs; an
agent that ends in failure leaves its last line in the keeper's log.

A client is never kept waiting on the keeper's troubles: when no agent
speaks within AGENT_WAIT (its error output does not count), or a channel is
refused, or the connection is down, the client is declined and connects by
itself, as without a keeper. Only a connection that is down is made again,
in the background: a refused or silent channel says nothing of the
sessions running on the same connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from merklesync.errors import MerklesyncError, UsageError
from merklesync.lock import DEFAULT_WAIT as LOCK_WAIT
from merklesync.transport import error_line
from merklesync.transport.agent_call import STANDBY_GO, AgentCall
from merklesync.transport.relay import (
    ACCEPTED,
    MAX_REQUEST,
    is_private,
    socket_path,
)
from merklesync.transport.ssh import SSHConnection, SSHTransport

__all__ = ["AlreadyKept", "Keeper"]


class AlreadyKept(UsageError):
    """Another process keeps connections to this address open already."""


RELAY_CHUNK = 256 * 1024
MAX_COMMANDS = 4  # standby agents kept: one per distinct command, the latest ones
CLIENT_END_WAIT = 30.0  # for a client to go once its agent has ended
KEEPALIVE = 30  # seconds between SSH keepalives on the held connection
# For an agent's first bytes, or a channel: longer than an agent waits for
# its replica's lock (so a busy replica is an answer, not a silence), well
# under a client's patience (15 s).
AGENT_WAIT = min(LOCK_WAIT + 3.0, 12.0)  # all a client waits for, standby and new agent together
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
        self._lock = threading.Lock()  # the connection, the agents, the commands
        self._connection: SSHConnection | None = None
        self._reconnecting = False
        self._standby: dict[str, SSHTransport] = {}
        # Commands asked for (command -> its standby form), the latest last:
        # each gets a standby agent, the first ones from the start.
        calls = (AgentCall(remote_cmd, path, create) for create in (False, True))
        self._commands: OrderedDict[str, str] = OrderedDict(
            (call.command(), call.command(standby=True)) for call in calls
        )
        self._standby_works = True  # until the far side's merklesync says otherwise
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._idle = threading.Condition()  # guards the two counters
        self.sessions = 0  # served so far
        self._active = 0  # clients being served now

    # -- life ------------------------------------------------------------

    def start(self) -> None:
        """Connect and listen; raises the SSH errors (host key, auth...)."""
        self._listen()
        try:
            connection = self._connect()
            with self._lock:
                self._connection = connection
            self._fill(connection)
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
            agents, self._standby = list(self._standby.values()), {}
            connection, self._connection = self._connection, None
        for agent in agents:
            agent.close()
        if connection is not None:
            connection.close()

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
            raise AlreadyKept(f"connections to {self.label} are already kept open by another watch")
        finally:
            probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket))
            os.chmod(self.socket, 0o600)  # in a 0700 directory: for this user alone anyway
            listener.listen(16)
        except OSError as exc:
            listener.close()
            raise UsageError(f"cannot listen on {self.socket}: {exc.strerror or exc}") from exc
        self._listener = listener

    def _connect(self) -> SSHConnection:
        connection = SSHConnection(
            self.host,
            self.user,
            self.port,
            accept_new_host_key=self._accept_new,
            connect_timeout=self._timeout,
        )
        connection.keep_alive(KEEPALIVE)  # through idle-dropping firewalls
        return connection

    def _reconnect_later(self, dead: SSHConnection | None) -> None:
        """Drop ``dead`` (if it is still the connection) and make a new one
        in the background, for the clients after this one."""
        with self._lock:
            if dead is not None and dead is self._connection:
                self._connection = None
                agents, self._standby = list(self._standby.values()), {}
            else:
                agents = []
            start = not self._reconnecting and self._connection is None
            self._reconnecting = self._reconnecting or start
        for agent in agents:
            agent.close()
        if dead is not None:
            dead.close()
        if start:
            threading.Thread(target=self._reconnect, daemon=True).start()

    def _reconnect(self) -> None:
        connection = None
        try:
            connection = None if self._stopping.is_set() else self._connect()
        except MerklesyncError as exc:
            self._warn(f"keep-open {self.label}: {exc.message}")
        except Exception as exc:  # never leave the keeper reconnecting forever
            self._warn(f"keep-open {self.label}: cannot connect: {exc}")
        with self._lock:
            self._reconnecting = False
            if connection is not None and not self._stopping.is_set():
                self._connection = connection
            elif connection is not None:
                connection.close()
                connection = None
        if connection is not None:
            self._fill(connection)

    # -- clients ---------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                # Out of descriptors, say: clients wait a little, not forever.
                self._warn(f"keep-open {self.label}: cannot accept a client: {exc}")
                self._stopping.wait(1.0)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._idle:
            stopping = self._stopping.is_set()
            if not stopping:
                self._active += 1  # from now on, a stop waits for this client
        try:
            if stopping:
                client.sendall(b"\x00")
                return
            client.settimeout(self._timeout)
            commands = self._read_request(client)
            if commands is None:
                return
            agent, first = self._agent_for(*commands)
            if agent is None:
                client.sendall(b"\x00")
                return
            client.settimeout(None)
            try:
                client.sendall(ACCEPTED + first)
                with self._idle:
                    self.sessions += 1
                _relay(client, agent)
            finally:
                agent.close()
                self._report_failure(agent)
        except OSError:
            pass  # the client went away
        finally:
            with contextlib.suppress(OSError):
                client.close()
            if not stopping:
                with self._idle:
                    self._active -= 1
                    self._idle.notify_all()

    def _read_request(self, client: socket.socket) -> tuple[str, str] | None:
        """The agent command a client asks for, and its standby form (None:
        a bad request, declined)."""
        head = _recv_exactly(client, 4)
        size = int.from_bytes(head, "big") if len(head) == 4 else MAX_REQUEST + 1
        body = _recv_exactly(client, size) if size <= MAX_REQUEST else b""
        call = AgentCall.from_request(body) if len(body) == size else None
        commands = None
        if call is not None:
            with contextlib.suppress(UsageError):
                commands = call.command(), call.command(standby=True)
        if commands is None:
            with contextlib.suppress(OSError):
                client.sendall(b"\x00")
        return commands

    def _report_failure(self, agent: SSHTransport) -> None:
        """An agent that ended in failure: its last words, for the log (its
        client heard only that the session ended)."""
        status = agent.exit_status()
        if status is not None and status > 0:  # -1: no status came (the channel was closed)
            detail = error_line(agent.stderr_text()) or f"exit status {status}"
            self._warn(f"keep-open {self.label}: a relayed session's agent failed: {detail}")

    def _agent_for(self, command: str, standby: str) -> tuple[SSHTransport | None, bytes]:
        """An agent running ``command`` that has said its first bytes, and
        those bytes: the standby one, else a new one. None (declined) when
        none speaks within AGENT_WAIT or the connection is down. Only a
        connection that is down is made again: one refused or silent channel
        says nothing of the sessions running on it."""
        deadline = time.monotonic() + AGENT_WAIT
        with self._lock:
            agent = self._standby.pop(command, None)
            connection = self._connection
            self._commands.pop(command, None)
            self._commands[command] = standby
            while len(self._commands) > MAX_COMMANDS:
                oldest, _ = self._commands.popitem(last=False)
                unused = self._standby.pop(oldest, None)
                if unused is not None:
                    threading.Thread(target=unused.close, daemon=True).start()
        if agent is not None:
            first = _start(agent, deadline)
            if first:
                self._refill(connection, command, standby)
                return agent, first
            self._standby_failed(agent)
        if self._stopping.is_set():
            return None, b""  # the sessions running keep their connection till the stop
        if connection is None or not connection.is_active():
            self._reconnect_later(connection)
            return None, b""
        try:
            agent = connection.run(command, timeout=max(0.1, deadline - time.monotonic()))
        except MerklesyncError:
            # Refused (MaxSessions, say) or slow: decline this client, and
            # make a new connection only if this one is down.
            if not connection.is_active():
                self._reconnect_later(connection)
            return None, b""
        first = _first_words(agent, deadline)
        if not first:
            agent.close()  # it failed (the client will see why by itself), or is stuck
            if not connection.is_active():
                self._reconnect_later(connection)
            return None, b""
        self._refill(connection, command, standby)
        return agent, first

    def _standby_failed(self, agent: SSHTransport) -> None:
        agent.close()
        if self._standby_works and "--standby" in agent.stderr_text():
            self._standby_works = False  # an older merklesync over there
            self._warn(
                f"keep-open {self.label}: the merklesync there has no `serve --standby`; "
                "each session starts its agent (upgrade it to save that)"
            )

    def _fill(self, connection: SSHConnection) -> None:
        """A standby agent for every command expected."""
        with self._lock:
            wanted = [(c, s) for c, s in self._commands.items() if c not in self._standby]
        for command, standby in wanted:
            self._start_standby(connection, command, standby)

    def _refill(self, connection: SSHConnection | None, command: str, standby: str) -> None:
        if connection is not None and self._standby_works:
            threading.Thread(
                target=self._start_standby, args=(connection, command, standby), daemon=True
            ).start()

    def _start_standby(self, connection: SSHConnection, command: str, standby: str) -> None:
        if self._stopping.is_set() or not self._standby_works:
            return
        try:
            agent = connection.run(standby, timeout=AGENT_WAIT)
        except MerklesyncError:
            return  # the next client finds the connection down, and it is made again
        with self._lock:
            keep = (
                connection is self._connection
                and command in self._commands
                and command not in self._standby
                and not self._stopping.is_set()
            )
            if keep:
                self._standby[command] = agent
        if not keep:
            agent.close()


def _start(agent: SSHTransport, deadline: float) -> bytes:
    """Wake a standby agent; its first bytes (empty: it is gone, or silent)."""
    try:
        agent.send(STANDBY_GO)
    except MerklesyncError:
        return b""
    return _first_words(agent, deadline)


def _first_words(agent: SSHTransport, deadline: float) -> bytes:
    """What an agent says first, if it says it by ``deadline`` (monotonic)."""
    try:
        return agent.first_words(RELAY_CHUNK, deadline - time.monotonic())
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
