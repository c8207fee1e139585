"""A hostile agent (tests/remote/fake_agent.py) lies in its answers: every
lie is one clear line and exit status 7, and nothing is written outside the
destination root."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.clirun import ms
from tests.remote.conftest import HERE, RSH

FAKE = f"{sys.executable} {HERE / 'fake_agent.py'}"

ESCAPES = [Path("/tmp/escaped-absolute"), Path("/tmp/escaped-link")]


def run(scenario: str, *args: str) -> tuple[int, str]:
    r = ms(*args, "--rsh", RSH, "--remote-cmd", f"{FAKE} {scenario}")
    return r.code, r.err


def escaped(tmp_path: Path) -> list[Path]:
    inside = [p for p in tmp_path.parent.rglob("escaped*")]
    return inside + [p for p in ESCAPES if p.exists() or p.is_symlink()]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("dotdot", "'..' component in path: '../../escaped'"),
        ("absolute", "absolute path: '/tmp/escaped-absolute'"),
        ("oversized", "peer sent a frame of 1073741824 bytes, over the limit"),
        ("truncated", "connection closed in the middle of a frame"),
        ("unknown-op", "unknown message from the server: 'exec'"),
        ("wrong-digest", "the content sent for 'f.txt' does not match its digest"),
        ("text", "over the limit"),
        ("future", "speaks protocol 5-6, this merklesync speaks 4; upgrade merklesync here"),
        ("nested-state", "path inside a .merklesync state directory: 'sub/.merklesync/config'"),
        ("bigstamp", "entry stamp out of range"),
        ("bigsize", "entry size or modification time out of range"),
        ("fanout", "children of node [1, 0] hold 16000000000000 entries, the node 1000000000000"),
    ],
)
def test_hostile_source(scenario: str, message: str, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    code, err = run(scenario, "pull", "evilhost:/fake", str(dst))
    assert code == 7, err
    assert err.startswith("merklesync: error: evilhost") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err
    assert escaped(tmp_path) == []
    if dst.exists():
        assert [p.name for p in dst.iterdir()] == [".merklesync"]


def test_an_agent_that_falls_silent_is_given_up_after_the_timeout(tmp_path: Path) -> None:
    # Else a hung agent (or link) would keep the run, and its replica's
    # lock, for ever: cron's next runs would all find the replica in use.
    dst = tmp_path / "dst"
    code, err = run("silent", "pull", "--timeout", "0.5", "evilhost:/fake", str(dst))
    assert code == 6, err
    assert err.count("\n") == 1 and "no answer for 0.5 s (--timeout); giving up" in err, err


def test_an_agent_that_stops_reading_is_given_up_after_the_timeout(tmp_path: Path) -> None:
    # A push whose agent takes nothing more (stopped, hung): the run's send
    # waits no longer than --timeout either, and says so as for silence.
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(b"x" * (8 << 20))  # more than a pipe holds
    assert ms("init", src).code == 0
    started = time.monotonic()
    code, err = run("deaf", "push", "--timeout", "0.5", str(src), "evilhost:/fake")
    assert code == 6, err
    assert err.count("\n") == 1 and "no answer for 0.5 s (--timeout); giving up" in err, err
    assert time.monotonic() - started < 15


def test_a_peer_never_gives_a_file_setuid_or_setgid(tmp_path: Path) -> None:
    # Pulling as root from a replica someone else controls must not plant
    # a setuid program here: those bits are never taken from a peer.
    dst = tmp_path / "dst"
    code, err = run("setuid", "pull", "evilhost:/fake", str(dst))
    assert code == 0, err
    assert (dst / "prog").read_bytes() == b"the honest content\n"
    assert (dst / "prog").stat().st_mode & 0o7777 == 0o755


def test_hostile_write_answer(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("mine")
    ms("init", src)
    code, err = run("bad-outcome", "push", str(src), "evilhost:/fake")
    assert code == 7, err
    assert "write: outcome for '../../f' where 'f' was sent" in err
    assert err.count("\n") == 1


def test_a_link_never_carries_a_write_outside(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    code, err = run("symlink", "pull", "evilhost:/fake", str(dst))
    assert code == 1, err  # the link is fine; the file under it is refused
    assert "left alone: evil/escaped-link: parent" in err and "is not a directory" in err
    assert escaped(tmp_path) == []
    assert (dst / "evil").is_symlink()
