"""Byte pipes to a peer: a local subprocess or an SSH exec channel.

A transport moves opaque bytes; framing lives in `merklesync.protocol`.
`pipes.SubprocessTransport` runs a local command; `ssh.open_ssh` runs one on a
remote host through paramiko (the only place paramiko is imported).

Contract shared by every transport:

- `send` writes all the bytes or raises `ConnectionFailed`.
- `recv(n)` blocks until it has 1..n bytes, or returns ``b""`` at end of
  stream.  If the peer command could not be started (it was not found, or it
  exited with an error before writing anything), `recv` and `send` raise
  `RemoteCommandMissing` carrying the command's own error line.
- `send` and `recv` may be called from two different threads (one each).
- `recv` raises `ConnectionFailed` after ``timeout`` seconds without a byte,
  and `send` after ``timeout`` seconds in which the peer took none (it stopped
  reading: stopped, or hung).
- `close` is idempotent; `stderr_text` and `exit_status` work after it
  (``exit_status`` may be ``None`` after ``close(ended=True)``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = [
    "STDERR_LIMIT",
    "StderrTail",
    "Transport",
    "command_missing",
    "error_line",
    "silent_for",
]

#: How much of the peer's stderr is kept (the last bytes win).
STDERR_LIMIT = 64 * 1024


@runtime_checkable
class Transport(Protocol):
    """A bidirectional byte stream to a peer command."""

    #: Payload bytes handed to `send` so far.
    bytes_sent: int
    #: Payload bytes returned by `recv` so far.
    bytes_received: int
    #: Seconds `recv` waits for a byte before it raises `ConnectionFailed`
    #: (None: for ever). A peer that says nothing for that long is taken
    #: for gone: a hung run must not hold its replicas locked for ever.
    timeout: float | None
    #: A session a keeper relays (relay.py): the agent's exit status and
    #: stderr stay with the keeper, so an end of stream here is the session
    #: lost, whatever was under way.
    relayed: bool

    def send(self, data: bytes) -> None:
        """Send all of ``data``."""
        ...

    def recv(self, n: int) -> bytes:
        """Return up to ``n`` bytes (at least one), or ``b""`` at end of stream."""
        ...

    def close(self, *, ended: bool = False) -> None:
        """Release the connection; safe to call more than once. ``ended``:
        the peer command has said its last word, so the connection need not
        be held open until it exits."""
        ...

    def stderr_text(self) -> str:
        """What the peer command wrote on stderr so far (the last 64 KiB)."""
        ...

    def exit_status(self) -> int | None:
        """The peer command's exit status, or ``None`` while it runs."""
        ...


def how_it_ended(status: int | None) -> str:
    """`` (exit status 3)``, `` (killed by signal 9)``: a peer command's end,
    for a message ("" while it runs). paramiko gives -1 for a command ended
    by a signal (exit-signal), a subprocess minus the signal's number."""
    if status is None:
        return ""
    if status == -1:
        return " (killed by a signal)"
    if status < 0:
        return f" (killed by signal {-status})"
    return f" (exit status {status})"


def silent_for(label: str, timeout: float) -> str:
    """What a transport says of a peer that stopped talking."""
    return f"{label}: no answer for {timeout:g} s (--timeout); giving up"


_MISSING_HINTS = re.compile(
    r"not found|no such file|no module named|cannot execute|permission denied|not recognized",
    re.IGNORECASE,
)


_NOT_STARTED = re.compile(r"not found|no module named", re.IGNORECASE)


def command_missing(status: int, stderr_line: str) -> bool:
    """Whether a command that ended before a word of the protocol failed to
    start at all (the shell's 126/127, or its error line says so), rather
    than started and failed."""
    return status in (126, 127) or bool(_NOT_STARTED.search(stderr_line))


class StderrTail(threading.Thread):
    """A peer command's error output, read as it comes (so the command never
    blocks on it), keeping the last STDERR_LIMIT bytes."""

    def __init__(self, read: Callable[[int], bytes], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._read = read
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.start()

    def run(self) -> None:
        try:
            while chunk := self._read(1 << 16):
                with self._lock:
                    self._buf += chunk
                    del self._buf[: max(0, len(self._buf) - STDERR_LIMIT)]
        except Exception:  # the stream broke (an OSError, paramiko's): it has ended
            return

    def text(self) -> str:
        with self._lock:
            return self._buf.decode("utf-8", "replace")


def error_line(stderr: str) -> str:
    """The most telling line of a failed command's stderr, for a one-line error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    for line in reversed(lines):
        if _MISSING_HINTS.search(line):
            return line
    return lines[-1]
