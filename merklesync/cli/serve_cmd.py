"""merklesync serve"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from merklesync.errors import EXIT_OK, EXIT_PROTOCOL, MerklesyncError
from merklesync.peer.local import LocalPeer
from merklesync.transport.agent_call import STANDBY_GO


@click.command(short_help="Serve the protocol for one replica (the remote agent).")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--stdio",
    is_flag=True,
    required=True,
    help="Answer on standard input and output (the only mode).",
)
@click.option("--create", is_flag=True, help="Create and initialise ROOT if it is not a replica.")
@click.option(
    "--preview",
    is_flag=True,
    help="Where ROOT is not a replica, serve what --create would make of it, writing nothing "
    "there (for a client's --dry-run).",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="PATTERN",
    help="Leave out paths matching PATTERN (gitignore syntax) in this session; repeatable.",
)
@click.option(
    "--standby",
    is_flag=True,
    help="Start up, then wait for one byte (0x01) on standard input before opening ROOT "
    "and answering; end quietly at end of input. Used by `merklesync watch --keep-open`, "
    "so that a session finds its agent already started.",
)
def serve(
    root: Path,
    stdio: bool,
    create: bool,
    preview: bool,
    excludes: tuple[str, ...],
    standby: bool,
) -> None:
    """Answer the merklesync protocol for the replica at ROOT, for one
    client, on standard input and output: the agent that merklesync starts
    on the far side of SSH (see merklesync-protocol(7)). Nothing outside
    ROOT is read or written; the replica stays locked for the session.
    Failures travel to the client as protocol errors; the exit status is 0
    after a clean end, 6 when the client went away, 7 when it broke the
    protocol."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by accident goes to stderr, not the wire
    sys.stdout = sys.stderr

    def report(message: str) -> None:
        with contextlib.suppress(OSError):  # the client may have gone with our stderr
            click.echo(f"merklesync serve: {message}", err=True)

    if standby:
        go = _wait_for_go()
        if go != STANDBY_GO:
            if go:
                report(f"expected the standby start byte, got {go!r}")
            os.close(out_fd)
            sys.exit(EXIT_PROTOCOL if go else EXIT_OK)
    try:
        opened = _opened(root, create=create, preview=preview, excludes=excludes)
        from merklesync.serve import Agent  # the protocol loads while the replica scans

        code = Agent(root, opened, in_fd=0, out_fd=out_fd, report=report).run()
    finally:
        os.close(out_fd)
    sys.exit(code)


def _opened(
    root: Path, *, create: bool, preview: bool, excludes: tuple[str, ...]
) -> LocalPeer | MerklesyncError:
    """The replica, its scan started: a client's first request is a
    refresh, and the scan runs while the rest of the agent loads and the
    client's hello comes (see LocalPeer.scan_ahead). Or why it could not
    be opened: the agent says it in answer to every request."""
    try:
        peer = LocalPeer.open(root, create=create, preview=preview, excludes=excludes)
    except MerklesyncError as exc:
        return exc
    peer.scan_ahead()
    return peer


def _wait_for_go() -> bytes:
    try:
        return os.read(0, 1)  # retried on EINTR by Python itself (PEP 475)
    except OSError:
        return b""
