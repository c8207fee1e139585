"""The command line: a thin shell over the library."""

from __future__ import annotations


def main() -> None:
    from merklesync.cli.app import main as run

    run()
