"""A transport over the stdin/stdout pipes of a local subprocess.

Used to run ``merklesync serve --stdio ROOT`` as a local peer, and in tests.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
from collections.abc import Mapping
from types import TracebackType
from typing import NoReturn

from merklesync.errors import ConnectionFailed, HostKeyError, RemoteCommandMissing
from merklesync.pipe_room import widen_pipe
from merklesync.transport import StderrTail, error_line, how_it_ended, silent_for

__all__ = ["SubprocessTransport"]

_EXIT_WAIT = 5.0
_CLOSE_WAIT = 2.0
# What the OpenSSH client says of a host key it refuses (unknown, or changed).
_HOST_KEY_REFUSED = "Host key verification failed."


class SubprocessTransport:
    """Run ``argv`` locally and talk to it through its stdin and stdout."""

    relayed = False

    def __init__(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        if not argv:
            raise ValueError("empty command")
        self.argv = list(argv)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.timeout: float | None = None
        self._closed = False
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise RemoteCommandMissing(f"cannot run {self.argv[0]!r}: {reason}") from exc
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._stdin_fd = self._proc.stdin.fileno()
        widen_pipe(self._stdin_fd)  # file contents go this way
        # Written without blocking, so that a command that stopped reading
        # is given up after the timeout (see send).
        os.set_blocking(self._stdin_fd, False)
        self._stdin_room = select.poll()
        self._stdin_room.register(self._stdin_fd, select.POLLOUT)
        self._stdout_fd = self._proc.stdout.fileno()
        fd = self._proc.stderr.fileno()
        self._stderr = StderrTail(lambda n: os.read(fd, n), f"stderr-{self._proc.pid}")

    # -- Transport -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionFailed(f"{self.argv[0]}: connection already closed")
        view = memoryview(data)
        total = len(view)
        offset = 0
        wait_ms = None if self.timeout is None else int(self.timeout * 1000)
        try:
            while offset < total:
                try:
                    offset += os.write(self._stdin_fd, view[offset:])
                except BlockingIOError:  # the pipe is full: wait for room
                    if not self._stdin_room.poll(wait_ms):
                        assert self.timeout is not None
                        self.bytes_sent += offset
                        raise ConnectionFailed(silent_for(self.argv[0], self.timeout)) from None
        except OSError as exc:  # BrokenPipeError: the peer is gone
            self.bytes_sent += offset
            self._fail(f"cannot write to {self.argv[0]}: {exc.strerror or exc}")
        self.bytes_sent += total

    def recv(self, n: int) -> bytes:
        if self._closed:
            return b""
        if self.timeout is not None:
            ready, _, _ = select.select([self._stdout_fd], [], [], self.timeout)
            if not ready:
                raise ConnectionFailed(silent_for(self.argv[0], self.timeout))
        try:
            data = os.read(self._stdout_fd, n)
        except OSError as exc:
            self._fail(f"cannot read from {self.argv[0]}: {exc.strerror or exc}")
        if not data:
            if self.bytes_received == 0:
                self._check_started()
            return b""
        self.bytes_received += len(data)
        return data

    def close(self, *, ended: bool = False) -> None:
        # A child process is waited for all the same: it is ours to reap.
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # EOF tells the peer to finish
        try:
            proc.wait(timeout=_CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=_CLOSE_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        self._stderr.join(timeout=1.0)
        if proc.stderr is not None and not self._stderr.is_alive():
            proc.stderr.close()

    def stderr_text(self) -> str:
        return self._stderr.text()

    def exit_status(self) -> int | None:
        return self._proc.poll()

    # -- helpers -------------------------------------------------------------

    def close_write(self) -> None:
        """Close the command's stdin (it sees end of file)."""
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __enter__(self) -> SubprocessTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wait_exit(self) -> int | None:
        try:
            status = self._proc.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            return None
        self._stderr.join(timeout=1.0)
        return status

    def _check_started(self) -> None:
        """At EOF before any byte: did the command fail to start?"""
        status = self._wait_exit()
        if status is not None and status != 0:
            text = self.stderr_text()
            if status == 255 and _HOST_KEY_REFUSED in text:  # OpenSSH's client, as --rsh
                raise HostKeyError(f"{self.argv[0]}: {_HOST_KEY_REFUSED}")
            line = error_line(text) or "no error message"
            raise RemoteCommandMissing(
                f"{self.argv[0]} exited with status {status} before answering: {line}"
            )

    def _fail(self, what: str) -> NoReturn:
        if self.bytes_received == 0:
            self._check_started()
        status = self._wait_exit()
        line = error_line(self.stderr_text())
        raise ConnectionFailed(f"{what}{how_it_ended(status)}" + (f": {line}" if line else ""))
