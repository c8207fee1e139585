"""The same scenarios against three kinds of peer.

``side`` (parametrized) says where the replicas of a test live and how the
CLI reaches them:

- ``local``: both sides are local paths (the reference);
- ``pipe-to`` / ``pipe-from``: the destination / the source is reached
  through ``merklesync serve --stdio`` run as a local subprocess (the CLI's
  ``--rsh`` with ``rsh.py``, which runs the command here instead of on a host);
- ``ssh-to`` / ``ssh-from``: the same through the loopback sshd of
  ``tests/sshd.py`` (OpenSSH when installed), the CLI run as a subprocess with
  the test HOME and ``--remote-cmd``; ``ssh-paramiko-to`` uses paramiko's
  server side.

On loopback a "remote" replica is a local directory, so the oracles of
``tests/treegen.py`` check it directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sshd import Daemon, SSHServer, start_daemon

from tests.clirun import Result, ms

HERE = Path(__file__).resolve().parent
RSH = f"{sys.executable} {HERE / 'rsh.py'}"
REMOTE_CMD = f"{sys.executable} -m merklesync"
REMOTE_COMMANDS = {"diff", "push", "pull", "repair", "status", "sync"}
PIPE_HOST = "pipehost"


@pytest.fixture(scope="session")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Daemon]]:
    """Start an SSH server of a kind on first use; stop them all at the end."""
    started: dict[str, Daemon] = {}

    def get(kind: str) -> Daemon:
        if kind not in started:
            started[kind] = start_daemon(kind, tmp_path_factory.mktemp(f"sshd-{kind}"))
        return started[kind]

    try:
        yield get
    finally:
        for daemon in started.values():
            daemon.stop()


@dataclass
class Side:
    """How one test reaches its replicas."""

    kind: str  # local | pipe | ssh
    direction: str  # "to": the destination is remote; "from": the source is
    server: SSHServer | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return self.kind != "local"

    def addr(self, path: Path | str) -> str:
        """The address of a replica as the remote kind names it."""
        if self.kind == "local":
            return str(path)
        host = PIPE_HOST if self.kind == "pipe" else self.server.host  # type: ignore[union-attr]
        return f"{host}:{path}"

    def src(self, path: Path | str) -> str:
        return self.addr(path) if self.direction == "from" else str(path)

    def dst(self, path: Path | str) -> str:
        return self.addr(path) if self.direction == "to" else str(path)

    def ms(self, *args: str | Path, cwd: Path | None = None) -> Result:
        """Run the CLI as a user would for this kind."""
        argv = [str(a) for a in args]
        if self.kind != "local" and argv and argv[0] in REMOTE_COMMANDS:
            argv += ["--remote-cmd", REMOTE_CMD]
            if self.kind == "pipe":
                argv += ["--rsh", RSH]
        if self.kind == "ssh":
            return run_cli(argv, self.env, cwd)
        if cwd is None:
            return ms(*argv)
        old = os.getcwd()
        os.chdir(cwd)
        try:
            return ms(*argv)
        finally:
            os.chdir(old)


def run_cli(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "merklesync", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def make_side(name: str, daemons: Callable[[str], Daemon], tmp_path: Path) -> Side:
    kind, _, rest = name.partition("-")
    direction = rest.rpartition("-")[2] or "to"
    if kind != "ssh":
        return Side(kind, direction)
    daemon = daemons("paramiko" if "paramiko" in rest else "openssh")
    server = SSHServer(daemon=daemon, home=tmp_path / "home")
    env = dict(server.env)
    env.pop("MERKLESYNC_RSH", None)
    return Side("ssh", direction, server, env)


SIDES = ["local", "pipe-to", "pipe-from", "ssh-to", "ssh-from", "ssh-paramiko-to"]


@pytest.fixture(params=SIDES)
def side(request: pytest.FixtureRequest, daemons: Callable[[str], Daemon], tmp_path: Path) -> Side:
    return make_side(request.param, daemons, tmp_path)


@pytest.fixture(params=["pipe-to", "ssh-to"])
def remote_side(
    request: pytest.FixtureRequest, daemons: Callable[[str], Daemon], tmp_path: Path
) -> Side:
    """A remote kind only (for tests that make no sense locally)."""
    return make_side(request.param, daemons, tmp_path)
