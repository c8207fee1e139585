"""The command line: a thin shell over the library."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from merklesync.cli.app import main as run

        run()
    except KeyboardInterrupt:  # before a command's own handler is in place
        sys.stderr.write("merklesync: interrupted\n")
        sys.exit(130)
