"""Shared fixtures. SSH servers live in tests/sshd.py."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import Daemon, SSHServer, start_daemon


@pytest.fixture(scope="session", params=["openssh", "paramiko"])
def ssh_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """A running SSH server on 127.0.0.1 (real sshd, or paramiko's server side).

    ``MERKLESYNC_TEST_SSHD=paramiko`` (or no sshd installed) uses paramiko for both.
    """
    daemon = start_daemon(request.param, tmp_path_factory.mktemp(f"sshd-{request.param}"))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def ssh_server(ssh_daemon: Daemon, tmp_path: Path) -> SSHServer:
    """The server plus a fresh HOME (.ssh/config alias ``mstest``, known_hosts, key).

    Attributes: host, port, user, home, env, remote_cmd, kind; ``use(monkeypatch)``
    points this process's HOME at it.
    """
    return SSHServer(daemon=ssh_daemon, home=tmp_path / "home")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of the test's own for the runs it makes (in
    this process and in those it starts), to be checked empty after."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    monkeypatch.setenv("TMPDIR", str(where))
    return where
