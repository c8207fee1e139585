"""The shell command that starts the agent on the far side: the path as the
user wrote it, ``~/`` and ``~user/`` as rsync and scp take them."""

from __future__ import annotations

import getpass
import os
import subprocess

import pytest

from merklesync.transport.agent_call import AgentCall


def _path_as_the_shell_gives_it(path: str) -> str:
    """What the agent receives as its path, through sh as sshd runs it."""
    command = AgentCall("printf '%s\\n'", path).command()
    words = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return words[-1]


@pytest.mark.parametrize(
    ("given", "received"),
    [
        ("data", "data"),
        ("~/data", "data"),  # from the home, where the command starts
        ("~", "."),
        ("a b/$(touch nope)'x", "a b/$(touch nope)'x"),  # quoted: no shell code
        ("~x$y/data", "~x$y/data"),  # not a user name: as it is
    ],
)
def test_remote_paths_reach_the_agent_as_written(given: str, received: str) -> None:
    assert _path_as_the_shell_gives_it(given) == received
    assert not os.path.exists("nope")


def test_a_user_home_is_expanded_by_the_remote_shell() -> None:
    me = getpass.getuser()
    home = os.path.expanduser(f"~{me}")
    assert _path_as_the_shell_gives_it(f"~{me}/a b") == f"{home}/a b"
    assert _path_as_the_shell_gives_it(f"~{me}") == f"{home}/"
