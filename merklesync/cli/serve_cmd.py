"""merklesync serve"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from merklesync.serve import serve_stdio


@click.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--stdio",
    is_flag=True,
    required=True,
    help="Answer on standard input and output (the only mode).",
)
@click.option("--create", is_flag=True, help="Create and initialise ROOT if it is not a replica.")
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="PATTERN",
    help="Leave out paths matching PATTERN (gitignore syntax) in this session; repeatable.",
)
def serve(root: Path, stdio: bool, create: bool, excludes: tuple[str, ...]) -> None:
    """Answer the merklesync protocol for the replica at ROOT, for one
    client, on standard input and output: the agent that merklesync starts
    on the far side of SSH (see merklesync-protocol(7)). Nothing outside
    ROOT is read or written; the replica stays locked for the session.
    Failures travel to the client as protocol errors; the exit status is 0
    after a clean end, 6 when the client went away, 7 when it broke the
    protocol."""
    sys.exit(serve_stdio(root, create=create, excludes=excludes))
