"""SubprocessTransport: a local command as a peer."""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import pytest

from merklesync.errors import ConnectionFailed, RemoteCommandMissing
from merklesync.transport import STDERR_LIMIT, Transport, error_line
from merklesync.transport.pipes import SubprocessTransport

PY = sys.executable


def read_all(t: SubprocessTransport) -> bytes:
    out = bytearray()
    while data := t.recv(1 << 16):
        out += data
    return bytes(out)


def test_cat_round_trip_multi_mib() -> None:
    payload = random.Random(1).randbytes(5 * 1024 * 1024 + 7)
    with SubprocessTransport(["cat"]) as t:
        assert isinstance(t, Transport)

        def feed() -> None:
            for i in range(0, len(payload), 1 << 20):
                t.send(payload[i : i + (1 << 20)])
            t.close_write()

        th = threading.Thread(target=feed)
        th.start()
        assert read_all(t) == payload
        th.join()
        assert t.bytes_sent == t.bytes_received == len(payload)
    assert t.exit_status() == 0


def test_missing_executable() -> None:
    with pytest.raises(RemoteCommandMissing, match=r"merklesync-no-such-binary.*No such file"):
        SubprocessTransport(["merklesync-no-such-binary", "serve", "--stdio", "."])


def test_command_exiting_immediately() -> None:
    argv = [PY, "-c", "import sys; sys.stderr.write('boom: bad root\\n'); sys.exit(2)"]
    with SubprocessTransport(argv) as t, pytest.raises(RemoteCommandMissing) as info:
        t.recv(10)
    assert "status 2" in info.value.message and "boom: bad root" in info.value.message


def test_missing_module_reports_its_line() -> None:
    t = SubprocessTransport([PY, "-m", "merklesync_no_such_module"])
    with t, pytest.raises(RemoteCommandMissing, match="No module named"):
        t.send(b"hello")  # raises if the peer is already gone, else recv does
        t.recv(10)


def test_send_to_dead_peer() -> None:
    argv = [PY, "-c", "import sys; sys.stdout.write('x'); sys.stdout.flush()"]
    with SubprocessTransport(argv) as t:
        assert t.recv(1) == b"x"
        while t.exit_status() is None:
            time.sleep(0.01)
        with pytest.raises(ConnectionFailed, match="cannot write"):
            for _ in range(100):
                t.send(b"\0" * 65536)


def test_stderr_is_bounded_and_keeps_the_end() -> None:
    code = "import sys; sys.stderr.write('a' * 200000 + 'THE END\\n'); print('ok')"
    with SubprocessTransport([PY, "-c", code]) as t:
        assert read_all(t) == b"ok\n"
    text = t.stderr_text()
    assert len(text) <= STDERR_LIMIT
    assert text.endswith("THE END\n")


def test_exit_status_and_close_idempotent() -> None:
    t = SubprocessTransport(["cat"])
    assert t.exit_status() is None
    t.close()
    t.close()
    assert t.exit_status() == 0
    assert t.recv(10) == b""
    with pytest.raises(ConnectionFailed):
        t.send(b"x")


def test_close_stops_a_peer_that_ignores_eof() -> None:
    t = SubprocessTransport([PY, "-c", "import time; time.sleep(60)"])
    start = time.monotonic()
    t.close()
    assert time.monotonic() - start < 10
    assert t.exit_status() not in (None, 0)


def test_env_and_cwd(tmp_path: Path) -> None:
    code = "import os; print(os.environ['MS_X'], os.getcwd())"
    with SubprocessTransport([PY, "-c", code], env={"MS_X": "42"}, cwd=str(tmp_path)) as t:
        assert read_all(t).decode().split() == ["42", str(tmp_path)]


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        ("", ""),
        ("one\ntwo\n", "two"),
        (
            "bash: line 1: merklesync: command not found\nmore\n",
            "bash: line 1: merklesync: command not found",
        ),
        (
            "Traceback...\nModuleNotFoundError: No module named 'x'\n",
            "ModuleNotFoundError: No module named 'x'",
        ),
    ],
)
def test_error_line(stderr: str, line: str) -> None:
    assert error_line(stderr) == line


def test_a_command_that_says_nothing_is_given_up_after_the_timeout() -> None:
    with SubprocessTransport(["cat"]) as t:
        t.timeout = 0.3
        with pytest.raises(ConnectionFailed, match=r"^cat: no answer for 0.3 s \(--timeout\)"):
            t.recv(10)
        t.send(b"here\n")  # within the limit, an answer is an answer
        assert t.recv(10) == b"here\n"


def test_a_command_that_stops_reading_is_given_up_after_the_timeout() -> None:
    """A peer that takes nothing (stopped, hung) fails a send as one that
    says nothing fails a recv, instead of holding the run for ever."""
    with SubprocessTransport(["sleep", "30"]) as t:
        t.timeout = 0.3
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match=r"^sleep: no answer for 0.3 s \(--timeout\)"):
            t.send(b"x" * (8 << 20))  # more than any pipe holds
        assert time.monotonic() - started < 10
        assert 0 < t.bytes_sent < 8 << 20  # what the pipe took


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are Linux's")
def test_file_contents_go_through_pipes_with_room_for_a_mebibyte(tmp_path: Path) -> None:
    """The command's stdin, and both ends of an agent's, hold 1 MiB: a
    writer streaming file contents waits less on a reader a moment late."""
    import fcntl
    import os

    from merklesync.pipe_room import PIPE_SIZE, widen_pipe
    from merklesync.serve import Agent

    script = "import fcntl; print(fcntl.fcntl(0, fcntl.F_GETPIPE_SZ))"
    with SubprocessTransport([PY, "-c", script]) as t:
        t.close_write()
        assert int(read_all(t)) == PIPE_SIZE
    read_fd, write_fd = os.pipe()
    out_r, out_w = os.pipe()
    try:
        assert fcntl.fcntl(read_fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE
        Agent(tmp_path, ConnectionFailed("none here"), in_fd=read_fd, out_fd=out_w)
        assert fcntl.fcntl(read_fd, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
        assert fcntl.fcntl(out_r, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
        with open(tmp_path / "f", "wb") as f:
            widen_pipe(f.fileno())  # no pipe: left as it is, quietly
    finally:
        for fd in (read_fd, write_fd, out_r, out_w):
            os.close(fd)
