"""The command line: a thin shell over the library."""

from __future__ import annotations

import contextlib
import gc
import json
import sys
from typing import NoReturn

from merklesync.errors import EXIT_INTERRUPTED


def main() -> None:
    try:
        from merklesync.cli.app import main as run

        run()
    except KeyboardInterrupt:  # before a command's own handler is in place
        interrupted()
    finally:
        # What is left (modules, the objects of the run) is freed as the
        # interpreter ends, without the collector's last pass over all of it
        # first: about 15 ms of every run, more after a large one.
        gc.freeze()


def interrupted() -> NoReturn:
    """Ctrl-C, wherever it lands: one line, exit 130 (with --json, the
    same as an object on stdout, as any error)."""
    sys.stderr.write("merklesync: interrupted\n")
    if "--json" in sys.argv[1:]:
        with contextlib.suppress(OSError):
            sys.stdout.write(error_json("interrupted", EXIT_INTERRUPTED) + "\n")
            sys.stdout.flush()
    sys.exit(EXIT_INTERRUPTED)


def error_json(message: str, code: int) -> str:
    """An error as --json prints it on stdout, for scripts."""
    return json.dumps({"error": message, "exit_code": code}, sort_keys=True)
