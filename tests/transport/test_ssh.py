"""The SSH transport against a real sshd and paramiko's server (both kinds, see conftest)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
import sshd
from sshd import SSHServer, generate_key

from merklesync.errors import (
    EXIT_CONNECTION,
    EXIT_HOSTKEY,
    ConnectionFailed,
    HostKeyError,
    RemoteCommandMissing,
)
from merklesync.transport import Transport
from merklesync.transport.ssh import SSHTransport, open_ssh


@pytest.fixture
def srv(ssh_server: SSHServer, monkeypatch: pytest.MonkeyPatch) -> SSHServer:
    ssh_server.use(monkeypatch)
    return ssh_server


def connect(srv: SSHServer, command: str = "cat", **kw: object) -> SSHTransport:
    return open_ssh(srv.host, None, None, command, connect_timeout=10.0, **kw)  # type: ignore[arg-type]


def echo(t: SSHTransport, payload: bytes) -> bytes:
    """Send ``payload`` from a thread, half-close, and read until EOF."""
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            view = memoryview(payload)
            for i in range(0, len(view), 1 << 20):
                t.send(bytes(view[i : i + (1 << 20)]))
            t.close_write()
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=feed)
    th.start()
    out = bytearray()
    while data := t.recv(1 << 16):
        out += data
    th.join(timeout=60)
    assert not errors, errors
    return bytes(out)


def read_all(t: SSHTransport) -> bytes:
    out = b""
    while data := t.recv(1 << 16):
        out += data
    return out


def host_fingerprint(srv: SSHServer) -> str:
    blob = base64.b64decode(srv.daemon.host_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# -- data path --------------------------------------------------------------------------


def test_echo_small(srv: SSHServer) -> None:
    with connect(srv) as t:
        assert isinstance(t, Transport)
        t.send(b"hello\0world\n")
        got = b""
        while len(got) < 12:
            got += t.recv(100)
        assert got == b"hello\0world\n"
    assert t.exit_status() == 0
    assert (t.bytes_sent, t.bytes_received) == (12, 12)
    t.close()  # idempotent


def test_echo_multi_mib(srv: SSHServer) -> None:
    payload = random.Random(7).randbytes(6 * 1024 * 1024 + 123)
    with connect(srv) as t:
        assert echo(t, payload) == payload
        assert t.bytes_sent == t.bytes_received == len(payload)


def test_recv_small_reads_of_big_buffer(srv: SSHServer) -> None:
    n = 3 * 1024 * 1024
    with connect(srv, f"head -c {n} /dev/zero") as t:
        got = 0
        while data := t.recv(1000):
            assert len(data) <= 1000
            got += len(data)
        assert got == n == t.bytes_received


def test_a_command_that_says_nothing_is_given_up_after_the_timeout(srv: SSHServer) -> None:
    with connect(srv, "cat >/dev/null") as t:
        t.timeout = 0.3
        with pytest.raises(ConnectionFailed, match=r"no answer for 0.3 s \(--timeout\)"):
            t.recv(10)
    with connect(srv, "sleep 0.2; echo late") as t:
        t.timeout = 30.0  # a slow answer within the limit is an answer
        assert read_all(t) == b"late\n"


def test_a_command_that_stops_reading_is_given_up_after_the_timeout(srv: SSHServer) -> None:
    """It takes nothing, and the channel's window stays shut: the send
    fails after the timeout, said as for a silent peer (not as a lost
    connection, seconds later)."""
    with connect(srv, "exec sleep 10") as t:
        t.timeout = 0.5
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match=r"no answer for 0.5 s \(--timeout\)"):
            for _ in range(128):  # beyond any window (the paramiko server's: 64 MiB)
                t.send(b"x" * (1 << 20))
        assert time.monotonic() - started < 10


def test_a_command_killed_by_a_signal_is_said_to_be(srv: SSHServer) -> None:
    """No exit status comes (OpenSSH sends exit-signal): not "status -1"."""
    killed = "was killed by a signal before answering"
    with connect(srv, "kill -9 $$") as t, pytest.raises(ConnectionFailed, match=killed):
        t.recv(10)
    marker = f"sleep 29.{random.randrange(10**6):06d}"  # this test's own
    with connect(srv, f"echo up; exec {marker}") as t:
        assert t.recv(3) == b"up\n"
        # "up" comes before the shell has made itself the sleep: wait for it (5 s at most).
        for _ in range(100):
            if subprocess.run(["pkill", "-9", "-f", f"^{marker}$"], check=False).returncode == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"no process {marker!r} to kill")
        with pytest.raises(ConnectionFailed) as info:
            for _ in range(128):
                t.send(b"x" * (1 << 20))
        assert "was killed by a signal" in info.value.message, info.value.message
        assert "-1" not in info.value.message


def test_stderr_and_exit_status(srv: SSHServer) -> None:
    with connect(srv, "echo out; echo warn >&2; exit 0") as t:
        assert read_all(t) == b"out\n"
        assert "warn" in t.stderr_text()
        assert t.exit_status() == 0


def test_command_failing_before_answering_is_not_missing(srv: SSHServer) -> None:
    with connect(srv, "echo 'merklesync: not a replica: /x' >&2; exit 3") as t:
        with pytest.raises(ConnectionFailed) as info:
            t.recv(10)
        assert not isinstance(info.value, RemoteCommandMissing)
        assert "status 3" in info.value.message
        assert "not a replica: /x" in info.value.message


def test_missing_remote_command(srv: SSHServer) -> None:
    with connect(srv, "merklesync-no-such-cmd serve --stdio /tmp/x") as t:
        t.send(b"hello")
        with pytest.raises(RemoteCommandMissing) as info:
            t.recv(10)
    msg = info.value.message
    assert "merklesync-no-such-cmd" in msg and "not found" in msg  # the remote's own line
    assert "--remote-cmd, else the named remote's remote-cmd, else MERKLESYNC_REMOTE_CMD" in msg
    assert "\n" not in msg
    assert info.value.exit_code == EXIT_CONNECTION


def test_missing_python_module(srv: SSHServer) -> None:
    t = connect(srv, f"{sys.executable} -m merklesync_no_such_module")
    with t, pytest.raises(RemoteCommandMissing, match="No module named"):
        t.recv(10)


def test_remote_side_imports_the_merklesync_under_test(srv: SSHServer) -> None:
    """The far side runs this checkout's code (see tests/sshd.py REMOTE_CMD)."""
    import merklesync

    probe = "import merklesync; print(merklesync.__file__)"
    with connect(srv, f"{srv.remote_cmd.rsplit(' -m ', 1)[0]} -c {shlex.quote(probe)}") as t:
        assert read_all(t).decode().strip() == merklesync.__file__


# -- host keys --------------------------------------------------------------------------


def test_unknown_host_key_rejected(srv: SSHServer) -> None:
    srv.known_hosts.write_text("")
    with pytest.raises(HostKeyError) as info:
        connect(srv)
    msg = info.value.message
    assert f"ED25519 key fingerprint is {host_fingerprint(srv)}" in msg
    assert "--accept-new-host-key" in msg
    assert f"[127.0.0.1]:{srv.port}" in msg
    assert "\n" not in msg
    assert info.value.exit_code == EXIT_HOSTKEY
    assert srv.known_hosts.read_text() == ""


def test_unknown_host_key_rejected_without_known_hosts_file(srv: SSHServer) -> None:
    srv.known_hosts.unlink()
    with pytest.raises(HostKeyError, match="not known"):
        connect(srv)


def test_accept_new_host_key_records_it(srv: SSHServer) -> None:
    srv.known_hosts.unlink()
    with connect(srv, accept_new_host_key=True) as t:
        t.send(b"x")
        assert t.recv(1) == b"x"
    assert srv.known_hosts.read_text() == srv.known_hosts_line() + "\n"
    with connect(srv) as t:  # now known, no flag needed
        t.send(b"y")
        assert t.recv(1) == b"y"


def test_accept_new_hashed(srv: SSHServer) -> None:
    srv.write_config("HashKnownHosts yes")
    srv.known_hosts.write_text("# comment, no newline at end")
    connect(srv, accept_new_host_key=True).close()
    lines = srv.known_hosts.read_text().splitlines()
    assert lines[0].startswith("# comment")
    assert lines[1].startswith("|1|") and f"{srv.port}" not in lines[1]
    assert lines[1].split()[1:] == srv.daemon.host_key_line.split()
    connect(srv).close()


def test_hashed_and_wildcard_entries_match(srv: SSHServer) -> None:
    salt = os.urandom(20)
    name = f"[127.0.0.1]:{srv.port}".encode()
    digest = hmac.new(salt, name, hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    srv.known_hosts.write_text(f"{hashed} {srv.daemon.host_key_line}\n")
    connect(srv).close()
    srv.known_hosts.write_text(f"[127.0.0.?]:* {srv.daemon.host_key_line}\n")
    connect(srv).close()
    srv.known_hosts.write_text(f"[127.0.0.?]:*,![127.0.0.1]:* {srv.daemon.host_key_line}\n")
    with pytest.raises(HostKeyError, match="not known"):
        connect(srv)


def test_changed_host_key_rejected_even_with_flag(srv: SSHServer, tmp_path: Path) -> None:
    other = " ".join(generate_key(tmp_path / "other").split()[:2])
    content = f"# first line\n{srv.known_hosts_line(other)}\n"
    srv.known_hosts.write_text(content)
    for accept in (False, True):
        with pytest.raises(HostKeyError) as info:
            connect(srv, accept_new_host_key=accept)
        msg = info.value.message
        assert "CHANGED" in msg
        assert f"{srv.known_hosts}:2" in msg
        assert host_fingerprint(srv) in msg
        assert "\n" not in msg
    assert srv.known_hosts.read_text() == content


def test_other_key_type_known_is_rejected(srv: SSHServer) -> None:
    ecdsa = paramiko.ECDSAKey.generate()
    srv.known_hosts.write_text(f"[127.0.0.1]:{srv.port} {ecdsa.get_name()} {ecdsa.get_base64()}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        connect(srv, accept_new_host_key=True)


def test_revoked_host_key_rejected(srv: SSHServer) -> None:
    srv.known_hosts.write_text(f"@revoked * {srv.daemon.host_key_line}\n")
    with pytest.raises(HostKeyError, match="REVOKED"):
        connect(srv, accept_new_host_key=True)


# -- authentication and connection errors -----------------------------------------------


def test_wrong_key_is_auth_failure(srv: SSHServer) -> None:
    generate_key(srv.identity)
    with pytest.raises(ConnectionFailed) as info:
        connect(srv)
    assert not isinstance(info.value, HostKeyError)
    assert "authentication failed" in info.value.message
    assert str(srv.identity) in info.value.message
    assert info.value.exit_code == EXIT_CONNECTION


def test_no_key_at_all(srv: SSHServer) -> None:
    srv.identity.unlink()
    with pytest.raises(ConnectionFailed, match="no SSH key found"):
        connect(srv)


def test_default_identity_without_identityfile(srv: SSHServer) -> None:
    srv.write_config(identity=None)
    with connect(srv, "echo ok") as t:
        assert read_all(t) == b"ok\n"


def test_closed_port(srv: SSHServer) -> None:
    srv.write_config(port=sshd.free_port())
    with pytest.raises(ConnectionFailed, match="refused"):
        connect(srv)


def test_dns_failure(srv: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kw: object) -> socket.socket:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    with pytest.raises(ConnectionFailed, match="cannot resolve host name 'no-such-host"):
        open_ssh("no-such-host.invalid", None, None, "cat")


def test_handshake_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks
        port = silent.getsockname()[1]
        with pytest.raises(ConnectionFailed, match="timed out"):
            open_ssh("127.0.0.1", None, port, "cat", connect_timeout=0.5)


@pytest.mark.parametrize("given", ["1", "1s", "1S"])
def test_connect_timeout_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks
        port = silent.getsockname()[1]
        (tmp_path / ".ssh" / "config").write_text(
            f"Host silent\n  HostName 127.0.0.1\n  Port {port}\n  ConnectTimeout {given}\n"
        )
        with pytest.raises(ConnectionFailed, match="timed out after 1 s"):
            open_ssh("silent", None, None, "cat")  # not the 15 s given
        (tmp_path / ".ssh" / "config").write_text("Host silent\n  ConnectTimeout soon\n")
        with pytest.raises(ConnectionFailed, match="bad ConnectTimeout"):
            open_ssh("silent", None, None, "cat")


# -- ~/.ssh/config ----------------------------------------------------------------------


def test_config_alias_resolution(srv: SSHServer) -> None:
    with connect(srv, "echo $SSH_CONNECTION") as t:
        out = read_all(t).decode()
    if srv.kind == "openssh":
        assert out.split()[2:] == ["127.0.0.1", str(srv.port)]
    assert t.label.startswith(f"{srv.user}@{srv.host}:{srv.port} (127.0.0.1)")


def test_a_proxy_command_that_fails_at_once_says_so_at_once(srv: SSHServer) -> None:
    srv.write_config("ProxyCommand sh -c 'echo nosuchproxy: not found >&2; exit 127'")
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        open_ssh(srv.host, None, None, "cat", connect_timeout=30)
    assert time.monotonic() - started < 10
    assert "ProxyCommand exited with status 127: nosuchproxy: not found" in info.value.message


def test_explicit_user_and_port_override_config(srv: SSHServer) -> None:
    srv.write_config(port=sshd.free_port(), user="nobody-such")
    with open_ssh(srv.host, srv.user, srv.port, "echo ok") as t:
        assert read_all(t) == b"ok\n"


def test_plain_address_without_alias(srv: SSHServer) -> None:
    srv.ssh_config.unlink()
    with open_ssh("127.0.0.1", srv.user, srv.port, "echo ok") as t:
        assert read_all(t) == b"ok\n"


def test_user_known_hosts_file_option(srv: SSHServer, tmp_path: Path) -> None:
    custom = tmp_path / "custom_known_hosts"
    srv.known_hosts.rename(custom)
    srv.write_config(f"UserKnownHostsFile {custom}")
    connect(srv).close()


def test_proxy_command(srv: SSHServer) -> None:
    srv.write_config(f"ProxyCommand {sys.executable} {sshd.__file__} relay %h %p")
    payload = os.urandom(300_000)
    with connect(srv) as t:
        assert echo(t, payload) == payload


def test_proxy_jump(srv: SSHServer) -> None:
    # the jump host is the same server; it opens a direct-tcpip channel to itself
    srv.ssh_config.write_text(
        srv.config_block("ProxyJump jumphost") + srv.config_block(alias="jumphost")
    )
    with connect(srv, "echo via-jump") as t:
        assert read_all(t) == b"via-jump\n"


def test_proxy_jump_two_hops(srv: SSHServer) -> None:
    srv.ssh_config.write_text(
        srv.config_block("ProxyJump hop1,hop2")
        + srv.config_block(alias="hop1")
        + srv.config_block(alias="hop2")
    )
    with connect(srv, "echo two-hops") as t:
        assert read_all(t) == b"two-hops\n"


def test_proxy_jump_refused(srv: SSHServer) -> None:
    srv.ssh_config.write_text(
        srv.config_block("ProxyJump jumphost", port=sshd.free_port())
        + srv.config_block(alias="jumphost")
    )
    with pytest.raises(ConnectionFailed, match=r"jump host .* could not connect"):
        connect(srv)


@pytest.mark.parametrize("host", ["-oProxyCommand=x", "a b", "a\nProxyCommand x", "h;rm"])
def test_hostile_host_names_rejected(host: str) -> None:
    with pytest.raises(ConnectionFailed, match="bad host name"):
        open_ssh(host, None, None, "cat")


@contextlib.contextmanager
def ssh_agent(tmp_path: Path, key: Path) -> Iterator[Path]:
    """An ssh-agent of its own, holding ``key``; yields its socket."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
        yield sock
    finally:
        agent.terminate()
        agent.wait(timeout=10)


@pytest.mark.skipif(not shutil.which("ssh-agent"), reason="needs ssh-agent")
def test_ssh_agent_key(srv: SSHServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with ssh_agent(tmp_path, srv.identity) as sock:
        srv.identity.unlink()  # only the agent has the key now
        srv.write_config(identity=None)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with connect(srv, "echo agent") as t:
            assert read_all(t) == b"agent\n"


# -- re-keying in the middle of a stream ------------------------------------------------


def push_count(srv: SSHServer, total: int) -> int:
    """Push ``total`` bytes into ``head -c total | wc -c``; return what the remote counted."""
    with connect(srv, f"head -c {total} | wc -c") as t:
        block = b"\x5a" * (1 << 20)
        left = total
        while left:
            n = min(left, len(block))
            t.send(block[:n])
            left -= n
        out = read_all(t)
        assert t.exit_status() == 0, t.stderr_text()
        return int(out)


def count_kex(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = paramiko.Transport._activate_outbound  # type: ignore[attr-defined]

    def counting(self: paramiko.Transport) -> None:
        if not self.server_mode:
            calls.append(1)
        original(self)

    monkeypatch.setattr(paramiko.Transport, "_activate_outbound", counting)
    return calls


def test_rekey_mid_stream(srv: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # paramiko re-keys after Packetizer.REKEY_BYTES (512 MiB); lowered here to keep it fast.
    monkeypatch.setattr(paramiko.packet.Packetizer, "REKEY_BYTES", 8 * 1024 * 1024)
    kex = count_kex(monkeypatch)
    total = 40 * 1024 * 1024 + 17
    assert push_count(srv, total) == total
    assert len(kex) >= 3  # the first exchange plus re-keys


@pytest.mark.slow
def test_rekey_default_threshold(srv: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    kex = count_kex(monkeypatch)
    total = 600 * 1024 * 1024
    assert push_count(srv, total) == total
    assert len(kex) >= 2


# -- what OpenSSH users take for granted ------------------------------------------------


def test_an_encrypted_key_is_said_so_and_used_from_ssh_agent(
    srv: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The usual set-up with a passphrase: the file encrypted, the key in
    # ssh-agent; IdentitiesOnly still takes the agent's copy of that key.
    if shutil.which("ssh-agent") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-agent and ssh-keygen (openssh-client)")
    with ssh_agent(tmp_path, srv.identity) as sock:
        subprocess.run(
            ["ssh-keygen", "-q", "-p", "-N", "secret", "-f", str(srv.identity)],
            check=True,
            capture_output=True,
        )
        with pytest.raises(ConnectionFailed) as info:  # no agent here: said, no traceback
            connect(srv)
        assert f"{srv.identity} is encrypted (add it to ssh-agent)" in info.value.message
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with connect(srv, "echo ok") as t:  # IdentitiesOnly yes, as the fixture writes it
            assert read_all(t) == b"ok\n"


def test_include_in_the_ssh_config(srv: SSHServer) -> None:
    parts = srv.ssh_config.parent / "config.d"
    parts.mkdir()
    (parts / "50-test").write_text(srv.config_block())
    srv.ssh_config.write_text("# all in parts\nInclude config.d/*\n")
    with connect(srv, "echo ok") as t:
        assert read_all(t) == b"ok\n"


def test_a_config_with_a_byte_that_is_not_utf8(srv: SSHServer) -> None:
    srv.ssh_config.write_bytes(b"# caf\xe9 (Latin-1)\n" + srv.config_block().encode())
    with connect(srv, "echo ok") as t:
        assert read_all(t) == b"ok\n"


def test_tokens_in_the_known_hosts_file_option(srv: SSHServer) -> None:
    srv.known_hosts.rename(srv.known_hosts.with_name(f"kh_{srv.user}"))
    srv.write_config("UserKnownHostsFile %d/.ssh/kh_%r")
    with connect(srv, "echo ok") as t:
        assert read_all(t) == b"ok\n"
    srv.write_config("UserKnownHostsFile kh_relative")
    with pytest.raises(ConnectionFailed, match="not an absolute path"):
        connect(srv, accept_new_host_key=True)
    assert not Path("kh_relative").exists()


@pytest.mark.parametrize("name", ["k_%n", "k_%p", "k%%x", "k_%h_%r"])
def test_tokens_in_the_identity_file_option(srv: SSHServer, name: str) -> None:
    expanded = (
        name.replace("%n", srv.host)
        .replace("%p", str(srv.port))
        .replace("%%", "%")
        .replace("%h", srv.hostname)
        .replace("%r", srv.user)
    )
    srv.identity.rename(srv.identity.with_name(expanded))
    try:
        srv.write_config(identity=f"~/.ssh/{name}")
        with connect(srv, "echo ok") as t:
            assert read_all(t) == b"ok\n"
    finally:
        srv.identity.with_name(expanded).rename(srv.identity)


def test_host_key_alias_is_looked_up_as_it_is_whatever_the_port(srv: SSHServer) -> None:
    srv.known_hosts.write_text(f"test-alias {srv.daemon.host_key_line}\n")
    srv.write_config("HostKeyAlias test-alias")
    with connect(srv, "echo ok") as t:
        assert read_all(t) == b"ok\n"


def test_a_host_a_certificate_authority_vouches_for_is_never_trusted_on_first_use(
    srv: SSHServer,
) -> None:
    ca = generate_key(srv.home / "ca_key")
    srv.known_hosts.write_text(f"@cert-authority [{srv.hostname}]:* {ca}\n")
    before = srv.known_hosts.read_text()
    with pytest.raises(HostKeyError, match="certificate authority"):
        connect(srv, accept_new_host_key=True)
    assert srv.known_hosts.read_text() == before


def test_proxy_command_runs_in_a_shell_as_openssh_runs_it(srv: SSHServer) -> None:
    srv.write_config(f"ProxyCommand {sys.executable} {sshd.__file__} relay %h %p 2>/dev/null")
    with connect(srv, "echo ok") as t:
        assert read_all(t) == b"ok\n"
