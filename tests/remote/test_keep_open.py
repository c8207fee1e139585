"""`merklesync watch --keep-open`: one SSH connection held open, agents
started ahead of need, and commands relayed through it, against the loopback
sshd (OpenSSH, and paramiko's server side). Whatever goes wrong with the
keeper, a command still works: it connects by itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SSHServer

from merklesync.errors import ConnectionFailed, HostKeyError, UsageError
from merklesync.keep_open import Keeper
from merklesync.transport.agent_call import AgentCall
from merklesync.transport.relay import pack_request, socket_path
from tests.clirun import Result
from tests.remote.conftest import run_cli
from tests.treegen import assert_same_tree, make_tree


@pytest.fixture
def server(ssh_server: SSHServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SSHServer]:
    """The server, with a cache directory short enough for a socket path."""
    ssh_server.use(monkeypatch)
    cache = tempfile.mkdtemp(prefix="ms-", dir="/tmp")
    monkeypatch.setenv("XDG_CACHE_HOME", cache)
    ssh_server.env["XDG_CACHE_HOME"] = cache
    yield ssh_server
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    make_tree(root, files=30, dirs=4, seed=8, max_size=4096)
    assert run_cli(["init", str(root)], {**os.environ}).code == 0
    return root


@pytest.fixture
def keeper(server: SSHServer, tmp_path: Path) -> Iterator[Keeper]:
    kept = Keeper(None, server.host, None, server.remote_cmd, str(tmp_path / "dst"))
    kept.start()
    try:
        yield kept
    finally:
        kept.stop()


def cli(server: SSHServer, *argv: str) -> Result:
    return run_cli(list(argv), server.env)


def test_commands_go_through_the_kept_connection(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path
) -> None:
    dst = f"{server.host}:{tmp_path / 'dst'}"
    r = cli(server, "push", str(tree), dst, "--stats", "--json")
    assert r.code == 0, r.err
    assert keeper.sessions == 1
    assert_same_tree(tree, tmp_path / "dst")
    assert cli(server, "diff", str(tree), dst).code == 0
    assert cli(server, "status", dst).code == 0
    (tree / "new.txt").write_text("one more")
    assert cli(server, "sync", str(tree), dst).code == 0
    assert keeper.sessions == 4  # every command, each with an agent of its own
    assert_same_tree(tree, tmp_path / "dst")


def test_the_same_bytes_travel_as_without_it(server: SSHServer, tree: Path, tmp_path: Path) -> None:
    direct = cli(server, "push", str(tree), f"{server.host}:{tmp_path / 'd1'}", "--json", "--stats")
    kept = Keeper(None, server.host, None, server.remote_cmd, str(tmp_path / "d2"))
    kept.start()
    try:
        relayed = cli(
            server, "push", str(tree), f"{server.host}:{tmp_path / 'd2'}", "--json", "--stats"
        )
    finally:
        kept.stop()
    assert direct.code == relayed.code == 0, relayed.err
    assert kept.sessions == 1
    a, b = direct.json()["stats"], relayed.json()["stats"]
    for key in ("round_trips", "bytes_sent", "files_transferred", "bytes_transferred"):
        assert a[key] == b[key], key


def test_a_client_killed_mid_push_loses_nothing(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path
) -> None:
    (tree / "big.bin").write_bytes(os.urandom(64 << 20))
    dst = tmp_path / "dst"
    argv = [sys.executable, "-m", "merklesync", "push", str(tree), f"{server.host}:{dst}", "-q"]
    proc = subprocess.Popen(argv, env=server.env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(dst.glob(".merklesync-tmp-*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    r = cli(server, "push", str(tree), f"{server.host}:{dst}")
    assert r.code == 0, r.err
    assert keeper.sessions == 2
    assert_same_tree(tree, dst)
    assert not list(dst.rglob(".merklesync-tmp-*"))


def test_a_lost_connection_is_made_again_for_the_next_client(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path
) -> None:
    dst = f"{server.host}:{tmp_path / 'dst'}"
    assert cli(server, "push", str(tree), dst).code == 0
    connection = keeper._connection
    assert connection is not None
    connection.close()  # as a network cut would: the standby agents go with it
    r = cli(server, "diff", str(tree), dst)
    assert r.code == 0, r.err  # declined at once: it connected by itself
    assert keeper.sessions == 1
    deadline = time.monotonic() + 30
    while keeper._connection in (None, connection) and time.monotonic() < deadline:
        time.sleep(0.05)  # made again in the background
    assert keeper._connection not in (None, connection)
    r = cli(server, "diff", str(tree), dst)
    assert r.code == 0, r.err
    assert keeper.sessions == 2


def test_a_stop_lets_the_running_session_finish(
    server: SSHServer, tree: Path, tmp_path: Path
) -> None:
    (tree / "big.bin").write_bytes(os.urandom(64 << 20))
    dst = tmp_path / "dst"
    kept = Keeper(None, server.host, None, server.remote_cmd, str(dst))
    kept.start()
    argv = [sys.executable, "-m", "merklesync", "push", str(tree), f"{server.host}:{dst}", "-q"]
    proc = subprocess.Popen(argv, env=server.env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(dst.glob(".merklesync-tmp-*")):
            time.sleep(0.01)
        kept.stop(grace=60)  # returns once the push's session has ended
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert kept.sessions == 1
    assert_same_tree(tree, dst)


def test_concurrent_clients_each_get_an_agent(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path
) -> None:
    dst = f"{server.host}:{tmp_path / 'dst'}"
    assert cli(server, "push", str(tree), dst).code == 0
    argv = [sys.executable, "-m", "merklesync", "diff", str(tree), dst]
    procs = [subprocess.Popen(argv, env=server.env) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert keeper.sessions == 4


def test_without_a_keeper_commands_connect_by_themselves(
    server: SSHServer, tree: Path, tmp_path: Path
) -> None:
    path = socket_path(None, server.host, None)
    path.parent.mkdir(mode=0o700, parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on
    r = cli(server, "push", str(tree), f"{server.host}:{tmp_path / 'dst'}")
    assert r.code == 0, r.err
    assert_same_tree(tree, tmp_path / "dst")


def test_a_socket_directory_others_can_enter_is_not_used(
    server: SSHServer, tree: Path, tmp_path: Path
) -> None:
    folder = socket_path(None, server.host, None).parent
    folder.mkdir(mode=0o755, parents=True)
    folder.chmod(0o755)
    kept = Keeper(None, server.host, None, server.remote_cmd, str(tmp_path / "dst"))
    with pytest.raises(UsageError, match="mode 0700"):
        kept.start()


def test_bad_requests_are_declined_and_the_keeper_goes_on(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path
) -> None:
    bad = [
        b"\x00\x00\x00\x05hello",
        b"\xff\xff\xff\xff",
        pack_request(AgentCall("merklesync", "/x", True, ("a",)))[:-3],
        b"\x00\x00\x00\x03" + b"\x93\x02\xa1x",  # another version
    ]
    for request in bad:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(str(keeper.socket))
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) in (b"\x00", b"")
    assert keeper.sessions == 0
    r = cli(server, "push", str(tree), f"{server.host}:{tmp_path / 'dst'}")
    assert r.code == 0, r.err
    assert keeper.sessions == 1


def test_a_second_keeper_for_the_same_address_is_refused(
    server: SSHServer, keeper: Keeper, tmp_path: Path
) -> None:
    other = Keeper(None, server.host, None, server.remote_cmd, str(tmp_path / "dst"))
    with pytest.raises(UsageError, match="already kept open"):
        other.start()
    assert keeper.socket.exists()


def test_an_unknown_host_key_is_refused(server: SSHServer, tmp_path: Path) -> None:
    server.known_hosts.write_text("")
    kept = Keeper(None, server.host, None, server.remote_cmd, str(tmp_path / "dst"))
    with pytest.raises(HostKeyError):
        kept.start()
    assert not kept.socket.exists()


def test_watch_keep_open_from_the_command_line(
    server: SSHServer, tree: Path, tmp_path: Path
) -> None:
    dst = f"{server.host}:{tmp_path / 'dst'}"
    assert cli(server, "remote", "add", "origin", dst, "--replica", str(tree)).code == 0
    watch = subprocess.Popen(
        [sys.executable, "-m", "merklesync", "watch", str(tree), "--keep-open", "origin"],
        env=server.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        path = socket_path(None, server.host, None)
        deadline = time.monotonic() + 30
        while not path.exists() and watch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.exists()
        r = cli(server, "push", str(tree), "origin", "--stats")
        assert r.code == 0, r.err
        assert_same_tree(tree, tmp_path / "dst")
    finally:
        watch.send_signal(signal.SIGTERM)
        _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "keeping a connection to" in err
    assert not path.exists()


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--rsh", "ssh"], 2, "not --rsh"),
        (["MERKLESYNC_RSH=ssh"], 2, "not --rsh or $MERKLESYNC_RSH"),
        (["--keep-open", "relative/local/path"], 2, "needs a remote replica"),
    ],
)
def test_watch_keep_open_usage_errors(
    server: SSHServer, tree: Path, extra: list[str], code: int, words: str
) -> None:
    env = dict(server.env)
    env.update(e.split("=", 1) for e in extra if "=" in e)  # type: ignore[arg-type]
    options = [e for e in extra if "=" not in e]
    argv = ["watch", str(tree), *options]
    if "--keep-open" not in options:
        argv += ["--keep-open", f"{server.host}:/tmp/x"]
    r = run_cli(argv, env)
    assert r.code == code, r.err
    assert words in r.err and r.err.count("\n") == 1


def test_a_socket_path_too_long_moves_to_a_private_tmp_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/" + "x" * 120)
    path = socket_path("u", "h", 22)
    assert path.parent == Path(f"/tmp/merklesync-{os.getuid()}")
    assert len(str(path)) < 100
    assert path != socket_path("u", "h", 2222)
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/" + "y" * 120)
    assert path != socket_path("u", "h", 22)  # another cache directory: another socket


@pytest.mark.parametrize(
    ("given", "code", "says_hello"),
    [(b"", 0, False), (b"\x01", 0, True), (b"x", 7, False)],
)
def test_a_standby_agent_waits_for_its_byte(
    tree: Path, given: bytes, code: int, says_hello: bool
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "merklesync", "serve", "--stdio", "--standby", str(tree)],
        input=given,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    assert (b"merklesync" in proc.stdout) is says_hello
    if not says_hello:
        assert proc.stdout == b""
    assert (b"standby start byte" in proc.stderr) is (code == 7)


def test_a_path_a_request_cannot_carry_goes_the_direct_way(
    server: SSHServer, keeper: Keeper, tmp_path: Path
) -> None:
    weird = os.fsdecode(os.fsencode(str(tmp_path)) + b"/not-utf8-\xff")
    r = cli(server, "status", f"{server.host}:{weird}")
    assert r.code == 5, r.err  # no such directory, said in one line by the far side
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert keeper.sessions == 0


def test_an_agent_that_says_nothing_gets_the_client_declined(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No client waits on a keeper whose agents hang: after AGENT_WAIT it
    is declined, connects by itself, and the keeper starts over."""
    dst = f"{server.host}:{tmp_path / 'dst'}"
    assert cli(server, "push", str(tree), dst).code == 0
    connection = keeper._connection
    assert connection is not None
    real_run = connection.run
    monkeypatch.setattr(keeper, "_standby", {})  # no agent waiting
    monkeypatch.setattr(connection, "run", lambda command, **kw: real_run("sleep 30", **kw))
    r = cli(server, "diff", str(tree), dst)
    assert r.code == 0, r.err
    assert keeper.sessions == 1  # the push only


def test_a_far_side_without_standby_is_served_all_the_same(
    server: SSHServer, tree: Path, tmp_path: Path
) -> None:
    """An older merklesync over there (no `serve --standby`): each session
    starts its agent, and the keeper says so once."""
    older = tmp_path / "older-merklesync"
    older.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --standby "*)\n'
        '  echo "Error: No such option: --standby" >&2; exit 2;;\n'
        "esac\n"
        f'exec {server.remote_cmd} "$@"\n'
    )
    older.chmod(0o755)
    server.env["MERKLESYNC_REMOTE_CMD"] = str(older)
    warnings: list[str] = []
    kept = Keeper(None, server.host, None, str(older), str(tmp_path / "dst"), warn=warnings.append)
    kept.start()
    try:
        dst = f"{server.host}:{tmp_path / 'dst'}"
        for _ in range(3):
            r = cli(server, "push", str(tree), dst)
            assert r.code == 0, r.err
        assert kept.sessions == 3
    finally:
        kept.stop()
    assert len(warnings) == 1 and "no `serve --standby`" in warnings[0]
    assert_same_tree(tree, tmp_path / "dst")


def test_a_second_watch_for_the_same_host_warns_and_goes_on(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "merklesync", "watch", str(tree), "--keep-open"]
    watch = subprocess.Popen(
        [*argv, f"{server.host}:{tmp_path / 'other'}"],
        env=server.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stderr is not None
        first = watch.stderr.readline()
        assert "already kept open by another watch" in first
        assert watch.stderr.readline().startswith("watching")
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.communicate(timeout=30)
    assert watch.returncode == 0
    assert keeper.socket.exists()  # the first keeper's, untouched


def test_a_refused_channel_keeps_the_connection_and_its_sessions(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel the server refuses (MaxSessions, say) declines that client
    only: the connection, and whatever runs on it, stays."""
    dst = f"{server.host}:{tmp_path / 'dst'}"
    assert cli(server, "push", str(tree), dst).code == 0
    connection = keeper._connection
    assert connection is not None

    def refuse(command: str, **kw: object) -> None:
        raise ConnectionFailed("cannot run a command: administratively prohibited")

    monkeypatch.setattr(keeper, "_standby", {})
    monkeypatch.setattr(connection, "run", refuse)
    r = cli(server, "diff", str(tree), dst)
    assert r.code == 0, r.err  # declined: it connected by itself
    assert keeper._connection is connection and connection.is_active()
    monkeypatch.undo()
    r = cli(server, "diff", str(tree), dst)
    assert r.code == 0, r.err
    assert keeper.sessions == 2  # the push, and this diff: through the same connection


def test_error_output_before_the_first_bytes_does_not_hold_the_client(
    server: SSHServer, keeper: Keeper, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that writes on stderr but says nothing is declined after
    AGENT_WAIT, before the client's own patience (15 s) runs out. Waiting
    for its first words never takes the channel's descriptor: paramiko then
    shares one event pipe between the output and the error output, and the
    two threads reading them could both try to clear it, one for ever
    (every lock of the connection with it: a stop hung)."""
    import paramiko

    descriptors: list[object] = []
    real_fileno = paramiko.Channel.fileno

    def fileno(self: paramiko.Channel) -> int:
        descriptors.append(self)
        return real_fileno(self)

    monkeypatch.setattr(paramiko.Channel, "fileno", fileno)
    dst = f"{server.host}:{tmp_path / 'dst'}"
    assert cli(server, "push", str(tree), dst).code == 0
    connection = keeper._connection
    assert connection is not None
    real_run = connection.run
    monkeypatch.setattr(keeper, "_standby", {})
    monkeypatch.setattr(
        connection, "run", lambda command, **kw: real_run("echo a warning >&2; sleep 30", **kw)
    )
    started = time.monotonic()
    r = cli(server, "diff", str(tree), dst)
    assert r.code == 0, r.err
    assert time.monotonic() - started < 14  # declined by the keeper, not timed out by the client
    assert keeper.sessions == 1
    assert descriptors == []


def test_a_relayed_agent_that_fails_leaves_its_last_words(
    server: SSHServer, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []
    kept = Keeper(
        None, server.host, None, server.remote_cmd, str(tmp_path / "dst"), warn=warnings.append
    )
    kept.start()
    try:
        dst = f"{server.host}:{tmp_path / 'dst'}"
        assert cli(server, "push", str(tree), dst).code == 0
        connection = kept._connection
        assert connection is not None
        real_run = connection.run
        monkeypatch.setattr(kept, "_standby", {})
        monkeypatch.setattr(
            connection,
            "run",
            lambda command, **kw: real_run("printf x; echo boom >&2; exit 3", **kw),
        )
        r = cli(server, "diff", str(tree), dst)
        assert r.code != 0 and "Traceback" not in r.err
    finally:
        kept.stop()
    assert any("agent failed: boom" in w for w in warnings), warnings
