"""The command line: a thin shell over the library."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from merklesync.errors import EXIT_INTERRUPTED, EXIT_TERMINATED

# SIGTERM or SIGHUP came (its number): the run ends as a Ctrl-C does, then
# dies of it.
_terminated = 0
ENDING = (signal.SIGTERM, signal.SIGHUP)
# The command's JSON document has begun on stdout: an error after that (a
# Ctrl-C while a reader is slow to take it) adds no second document.
json_begun = False


Handler = Callable[[int, FrameType | None], None]


def this_process_only(handler: Handler) -> Handler:
    """``handler``, for the process that installs it; a process forked from
    it (a scan) dies of the signal instead, as by default."""
    me = os.getpid()

    def handle(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != me:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        handler(signum, frame)

    return handle


def _terminate(signum: int, frame: FrameType | None) -> None:
    global _terminated
    _terminated = signum
    raise KeyboardInterrupt


def _raise_again(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _held_up_in_a_finalizer(
    default: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], None]:
    """An unraisable-exception hook: a Ctrl-C or SIGTERM whose
    KeyboardInterrupt was raised in a finalizer (a ``__del__``, a generator
    closed by the collector), where Python prints it and drops it, is
    raised again a moment later (SIGALRM), in the code the finalizer
    interrupted; the run would go on as if never told. Anything else goes
    to ``default``."""

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
        default(unraisable)

    return hook


def main() -> None:
    # SIGTERM (systemd, timeout, kill) and SIGHUP (the terminal or SSH
    # session gone) end a run as a Ctrl-C does: the file being written is
    # finished or removed, the lock released, one line; then it dies of the
    # signal (see interrupted). One ignored (nohup) stays ignored.
    installed = [s for s in ENDING if signal.getsignal(s) is signal.SIG_DFL]
    for signum in installed:
        signal.signal(signum, this_process_only(_terminate))
    unraisable_hook = sys.unraisablehook
    if signal.getsignal(signal.SIGALRM) is signal.SIG_DFL:  # not a caller's (a test's timeout)
        installed.append(signal.SIGALRM)
        signal.signal(signal.SIGALRM, this_process_only(_raise_again))
        sys.unraisablehook = _held_up_in_a_finalizer(unraisable_hook)
    try:
        from merklesync.cli.app import main as run

        run()
    except KeyboardInterrupt:  # before a command's own handler is in place
        interrupted()
    finally:
        if signal.SIGALRM in installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.unraisablehook = unraisable_hook
        for signum in installed:  # for a caller that goes on (a test, a script calling main)
            signal.signal(signum, signal.SIG_DFL)
        # What is left (modules, the objects of the run) is freed as the
        # interpreter ends, without the collector's last pass over all of it
        # first: about 15 ms of every run, more after a large one.
        gc.freeze()


def interrupted() -> NoReturn:
    """Ctrl-C, wherever it lands: one line, exit 130 (with --json, the same
    as an object on stdout, as any error). SIGTERM or SIGHUP: the same line,
    then the process dies of the signal, as git and rsync do (a shell says
    143 or 129; a service manager sees a clean stop)."""
    word, code = (
        ("terminated", EXIT_TERMINATED - signal.SIGTERM + _terminated)
        if _terminated
        else ("interrupted", EXIT_INTERRUPTED)
    )
    with contextlib.suppress(OSError):  # a hang-up: nobody may be reading any more
        sys.stderr.write(f"merklesync: {word}\n")
    if "--json" in sys.argv[1:] and not json_begun:
        with contextlib.suppress(OSError):
            sys.stdout.write(error_json(word, code) + "\n")
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    if _terminated:
        signal.signal(_terminated, signal.SIG_DFL)
        os.kill(os.getpid(), _terminated)
    sys.exit(code)


# What would make a line of plain output read as two lines (the line and
# paragraph separators, where str.splitlines breaks), or in another order
# than it was written (bidirectional controls): such a character in a name
# is shown as an escape, ``\u2028``. Control characters never get this far
# (no index holds a name with one). --json output is exact.
_UNSEEN = re.compile("[\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def plain(text: str) -> str:
    """``text`` as a line of plain output shows it (see _UNSEEN)."""
    if text.isascii():
        return text
    return _UNSEEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def error_line(message: str) -> str:
    """An error as every command prints it on stderr: one line (a control
    character from a name typed shown as an escape, ``\\n``)."""
    shown = _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)
    return f"merklesync: error: {plain(shown)}"


def error_json(message: str, code: int) -> str:
    """An error as --json prints it on stdout, for scripts."""
    return json.dumps({"error": message, "exit_code": code}, sort_keys=True)
