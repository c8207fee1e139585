"""The change journal a running `merklesync watch` keeps for a replica, and
how a scan asks it what changed.

A scan that finds a watcher asks it "what changed since token T?" (T is the
token the index stored at the end of its last scan). The question is a file
the scan creates in ``.merklesync/watch/``; the watcher sees that file's
creation event after every event that happened before it (inotify delivers
events in order), so its answer, written back as another file, covers every
change made before the question was asked. The answer lists directories to
re-list (``shallow``) and subtrees to walk (``deep``), or says ``everything``
when it cannot vouch for T (another watcher, lost events, first question).
The scan then looks only there, and stores the answer's token.

With no watcher, a watcher that does not answer in time, or an answer that
does not parse, the scan simply walks the whole tree, as it would anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack

from merklesync.ignore import STATE_DIR

WATCH_DIR = "watch"
WATCH_LOCK = "watch.lock"
QUESTION = "q-"
ANSWER = "a-"
ANSWER_WAIT = float(os.environ.get("MERKLESYNC_WATCH_WAIT", "5"))
NO_TOKEN = "none"


@dataclass(frozen=True, slots=True)
class Changes:
    """Where the tree may have changed since a token."""

    token: str
    everything: bool
    deep: tuple[str, ...] = ()
    shallow: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return msgpack.packb([self.token, self.everything, list(self.deep), list(self.shallow)])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Changes | None:
        """None for anything that is not a well-formed answer."""
        try:
            token, everything, deep, shallow = msgpack.unpackb(raw)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if not (isinstance(token, str) and isinstance(everything, bool)):
            return None
        paths = (deep, shallow)
        if not all(isinstance(ps, list) and all(isinstance(p, str) for p in ps) for ps in paths):
            return None
        return cls(token, everything, tuple(deep), tuple(shallow))


def question_name(nonce: str, token: str) -> str:
    return f"{QUESTION}{nonce}-{token}"


def parse_question(name: str) -> tuple[str, str] | None:
    """(nonce, token) of a question file's name."""
    if not name.startswith(QUESTION):
        return None
    nonce, sep, token = name[len(QUESTION) :].partition("-")
    if not sep or not nonce.isalnum() or not token:
        return None
    return nonce, token


def watcher_running(state: Path) -> bool:
    """True while a watcher holds the replica's watch lock."""
    try:
        fd = os.open(state / WATCH_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def ask(root: Path, token: str | None, wait: float = ANSWER_WAIT) -> Changes | None:
    """What changed under ``root`` since ``token``, from its watcher; None
    when there is no watcher or it gives no usable answer in time."""
    state = root / STATE_DIR
    if not watcher_running(state):
        return None
    folder = state / WATCH_DIR
    nonce = secrets.token_hex(8)
    question = folder / question_name(nonce, token or NO_TOKEN)
    answer = folder / f"{ANSWER}{nonce}"
    try:
        os.close(os.open(question, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError:
        return None
    try:
        deadline = time.monotonic() + wait
        pause = 0.0005
        while True:
            try:
                raw = answer.read_bytes()
                break
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            except OSError:
                return None
        return Changes.from_bytes(raw)
    finally:
        for leftover in (question, answer):
            with contextlib.suppress(OSError):
                leftover.unlink()
