"""The CLI over SSH (the loopback sshd of tests/sshd.py), as a subprocess with
the test HOME: errors of the SSH layer, named remotes, relays, exact counts."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sshd import Daemon

from merklesync.model import KEY_BYTES
from tests.clirun import Result, ms
from tests.remote.conftest import REMOTE_CMD, Side, make_side, run_cli
from tests.treegen import assert_same_tree, make_tree, mutate


@pytest.fixture
def ssh(remote_side: Side) -> Side:
    return remote_side


@pytest.fixture
def openssh(daemons: Callable[[str], Daemon], tmp_path: Path) -> Side:
    return make_side("ssh-to", daemons, tmp_path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    make_tree(root, files=20, dirs=3, seed=4)
    assert ms("init", root).code == 0
    return root


def test_missing_remote_command_is_one_line_exit_6(openssh: Side, tree: Path) -> None:
    assert openssh.server is not None
    r = run_cli(
        ["push", str(tree), openssh.addr(tree.parent / "dst"), "--remote-cmd", "merklesync-nope"],
        openssh.env,
    )
    assert r.code == 6, r.err
    assert r.err.count("\n") == 1 and r.err.startswith("merklesync: error: ")
    assert "merklesync-nope" in r.err and "not found" in r.err  # the remote shell's words
    assert not (tree.parent / "dst").exists()


def test_unknown_host_key_then_accept_new_host_key(openssh: Side, tree: Path) -> None:
    server = openssh.server
    assert server is not None
    server.known_hosts.write_text("")
    dst = tree.parent / "dst"
    argv = ["push", str(tree), openssh.addr(dst), "--remote-cmd", REMOTE_CMD]
    r = run_cli(argv, openssh.env)
    assert r.code == 8, r.err
    assert "key fingerprint is SHA256:" in r.err and r.err.count("\n") == 1
    assert not dst.exists()
    r = run_cli([*argv, "--accept-new-host-key"], openssh.env)
    assert r.code == 0, r.err
    assert server.known_hosts.read_text().strip() == server.known_hosts_line()
    r = run_cli(["diff", str(tree), openssh.addr(dst), "--remote-cmd", REMOTE_CMD], openssh.env)
    assert r.code == 0, r.err  # remembered: no flag needed now
    assert_same_tree(tree, dst)


def test_exact_counts_over_ssh(openssh: Side, tmp_path: Path) -> None:
    """1 changed file among 2,000: the same round trips as locally, and bytes
    far below a file list; nothing changed: 1 round trip, a few hundred bytes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=2000, dirs=40, min_size=10, max_size=100, seed=6)
    ms("init", src)
    assert ms("push", src, dst).code == 0

    def diff_stats(remote: bool, expect: int) -> dict[str, int]:
        b = openssh.addr(dst) if remote else str(dst)
        argv = ["diff", str(src), b, "--stats", "--json", "--remote-cmd", REMOTE_CMD]
        r = run_cli(argv, openssh.env)
        assert r.code == expect, r.err
        return r.json()["stats"]  # type: ignore[no-any-return]

    same = diff_stats(remote=True, expect=0)
    assert same["round_trips"] == 1
    constant = same["bytes_sent"] + same["bytes_received"]
    assert constant < 500
    mutate(src, modify=1, seed=2)
    local, remote = diff_stats(remote=False, expect=1), diff_stats(remote=True, expect=1)
    assert local["round_trips"] == remote["round_trips"] == 3  # depth 2, + 1
    wire = remote["bytes_sent"] + remote["bytes_received"]
    file_list = sum(len(p.name) + 20 for p in src.rglob("*"))  # what rsync would list, at least
    print(f"same: {same}\none change: local {local}\nremote {remote}\nfile list {file_list}")
    assert wire < 4000 < file_list / 10, (wire, file_list)
    # The aim: within 20x of d x (key + digest) plus what nothing costs.
    assert wire <= 20 * 1 * (KEY_BYTES + 32) + constant, wire
    # A push adds one round trip, the write: depth + 2.
    argv = ["push", str(src), openssh.addr(dst), "--json", "--remote-cmd", REMOTE_CMD]
    pushed = run_cli(argv, openssh.env)
    assert pushed.code == 0, pushed.err
    assert pushed.json()["stats"]["round_trips"] == 4


def test_named_remote_push_and_pull_as_in_git(ssh: Side, tree: Path, tmp_path: Path) -> None:
    far = tmp_path / "far"

    def run(*args: str) -> Result:
        return ssh.ms(*args, cwd=tree)

    r = run("remote", "add", "origin", ssh.addr(far))
    assert r.code == 0, r.err
    assert run("remote", "add", "origin", "elsewhere:x").code == 2
    assert run("remote", "add", "-bad", "x:y").code == 2
    r = run("remote", "list")
    assert r.lines() == [f"origin\t{ssh.addr(far)}"]
    r = run("push", "origin")
    assert r.code == 0, r.err
    assert_same_tree(tree, far)
    (far / "from-far.txt").write_text("made over there")
    r = run("pull", "origin")
    assert r.code == 0, r.err
    assert (tree / "from-far.txt").read_text() == "made over there"
    r = run("diff", "origin", "--json")
    assert r.code == 0 and r.json()["b"] == "origin"
    assert run("remote", "remove", "origin").code == 0
    assert run("remote", "remove", "origin").code == 2
    assert run("remote", "list").lines() == []


def test_remote_to_remote_is_relayed(ssh: Side, tree: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert ms("push", tree, a).code == 0
    r = ssh.ms("push", ssh.addr(a), ssh.addr(b), "--stats", "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_transferred"] == 20
    assert_same_tree(tree, b)
    mutate(a, modify=3, add=2, delete=1, seed=5)
    r = ssh.ms("diff", ssh.addr(a), ssh.addr(b))
    assert r.code == 1 and len(r.lines()) == 6, r.out + r.err
    assert ssh.ms("push", ssh.addr(a), ssh.addr(b)).code == 0
    assert_same_tree(a, b)


def test_rsh_runs_the_openssh_client(openssh: Side, tree: Path) -> None:
    server = openssh.server
    assert server is not None
    if shutil.which("ssh") is None:
        pytest.skip("no OpenSSH client")
    rsh = shlex.join(server.ssh_argv("true")[:-2])  # ssh -F ... without host and command
    dst = tree.parent / "dst"
    argv = ["push", str(tree), openssh.addr(dst), "--rsh", rsh, "--remote-cmd", REMOTE_CMD]
    r = run_cli([*argv, "--stats", "--json"], openssh.env)
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_transferred"] == 20
    assert_same_tree(tree, dst)


def test_rsh_whose_client_refuses_the_host_key_exits_as_a_host_key_refusal(
    openssh: Side, tree: Path
) -> None:
    """OpenSSH's own refusal (--rsh ssh) is exit 8, as the built-in client's."""
    server = openssh.server
    assert server is not None
    if shutil.which("ssh") is None:
        pytest.skip("no OpenSSH client")
    rsh = shlex.join(
        [
            "ssh",
            *("-F", str(server.ssh_config), "-i", str(server.identity)),
            *("-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null"),
            *("-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"),
        ]
    )
    dst = tree.parent / "dst"
    argv = ["push", str(tree), openssh.addr(dst), "--rsh", rsh, "--remote-cmd", REMOTE_CMD]
    r = run_cli(argv, openssh.env)
    assert r.code == 8, r.err
    assert r.err == "merklesync: error: ssh: Host key verification failed.\n", r.err
    assert not dst.exists()
