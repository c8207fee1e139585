"""The agent a command wants on the far side: the shell command that starts
it there, and the request that asks a kept-open connection for one
(transport/relay.py): a msgpack list ``[1, remote_cmd, path, create,
excludes]``."""

from __future__ import annotations

import re
import shlex
from typing import Any, NamedTuple

import msgpack

from merklesync.errors import UsageError

REQUEST_VERSION = 1
MAX_EXCLUDES = 256
STANDBY_GO = b"\x01"  # what wakes an agent started with ``serve --standby``
# ``~user/`` (or ``~user``) at the start of a remote path: a portable user name
_USER_HOME = re.compile(r"(~[A-Za-z_][A-Za-z0-9_.-]*)(?:/|\Z)")


class AgentCall(NamedTuple):
    remote_cmd: str
    path: str
    create: bool = False
    excludes: tuple[str, ...] = ()
    preview: bool = False  # a dry run's create: nothing is written there (not relayed)

    def command(self, *, standby: bool = False) -> str:
        """The shell command that starts the agent. The path is quoted; a
        leading ``~/`` becomes a path relative to the remote home (where
        the command starts); a leading ``~user/``, that user's home, as the
        remote shell expands it (as with rsync and scp)."""
        if not self.remote_cmd.strip():
            raise UsageError("the remote command is empty (--remote-cmd or MERKLESYNC_REMOTE_CMD)")
        path = self.path
        home = ""
        if path in ("~", "~/"):
            path = "."
        elif path.startswith("~/"):
            path = path[2:]
        elif user_home := _USER_HOME.match(path):
            home, path = user_home.group(1), path[user_home.end() :]
        words = [self.remote_cmd, "serve", "--stdio"]
        if standby:
            words.append("--standby")
        if self.create:
            words.append("--preview" if self.preview else "--create")
        for pattern in self.excludes:
            words += ["--exclude", shlex.quote(pattern)]
        if home:  # ~user/ left unquoted for the shell to expand, the rest quoted
            words += ["--", f"{home}/{shlex.quote(path)}" if path else f"{home}/"]
        else:
            words += ["--", shlex.quote(path)]
        return " ".join(words)

    def request(self) -> bytes:
        """The request body for a keeper; ValueError (or UnicodeEncodeError)
        when this call cannot travel in one."""
        if self.preview or len(self.excludes) > MAX_EXCLUDES:
            raise ValueError("not relayed")
        return bytes(
            msgpack.packb(
                [REQUEST_VERSION, self.remote_cmd, self.path, self.create, list(self.excludes)]
            )
        )

    @classmethod
    def from_request(cls, body: bytes) -> AgentCall | None:
        """The call a request asks for (None: not one)."""
        try:
            request: Any = msgpack.unpackb(body)
        except (ValueError, msgpack.UnpackException):
            return None
        if (
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
            return cls(request[1], request[2], request[3], tuple(request[4]))
        return None
