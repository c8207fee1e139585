"""merklesync diff"""

from __future__ import annotations

import sys

import click

from merklesync.cli.common import (
    Output,
    change_json,
    checksum_option,
    handle_errors,
    output_options,
    print_stats,
    remote_options,
    stats_option,
)
from merklesync.errors import EXIT_DIFFERENT, EXIT_OK
from merklesync.model import Stats
from merklesync.peer.local import Included
from merklesync.peer.open import RemoteOptions, combined_stats, opened_pair, refresh_all
from merklesync.reconcile import diff as diff_peers


@click.command(short_help="Show how two replicas differ.")
@click.argument("a")
@click.argument("b", required=False)
@checksum_option
@stats_option
@output_options
@remote_options
@handle_errors
def diff(
    a: str,
    b: str | None,
    checksum: bool,
    stats: bool,
    quiet: bool,
    as_json: bool,
    remote: RemoteOptions,
) -> None:
    """Show how replica A differs from replica B (with one argument: how the
    replica around the current directory differs from A).

    One line per path: `A path` only in the first (A; with one argument,
    the replica around the current directory), `D path` only in the other
    (or deleted in the first), `M path` different content, `T path` type changed. Exit 0 when the
    content is the same, 1 when it differs, 2 or more on error, as diff(1).

    With --json, each change also says which side is ahead (``action``):
    ``copy`` (A's version is newer: a push from A would copy it),
    ``dest-newer`` (B's is newer) or ``conflict`` (both changed it since
    they last agreed). Entries whose content is the same are no change,
    whatever their versions (a push merges those without moving data).

    Paths a local replica's ignore rules leave out are not compared, as a
    run leaves them out (a remote replica's rules are not known here: a
    push there reports such paths as ignored by the side written to).

    A replica on a read-only file system is compared as any other, and a
    snapshot with the replica it was taken of (they share an id): what
    changed since.

    A replica may be a local path, a remote address (HOST:PATH,
    USER@HOST:PATH, ssh://USER@HOST:PORT/PATH) or the name of a remote
    (see merklesync-remote(1)); with two remote replicas, the comparison is
    relayed through this machine."""
    out = Output(quiet, as_json)
    left_spec, right_spec = (None, a) if b is None else (a, b)
    with opened_pair(
        left_spec, right_spec, remote=remote, checksum=checksum, compare_only=True
    ) as (left, right):
        with out.progress("scanning", "files") as progress:
            warnings = refresh_all([left, right], checksum=checksum, progress=progress)
        engine = Stats()
        # As a run between them: what a local replica ignores is left out.
        changes = diff_peers(left, right, engine, Included((), (left, right)))
        totals = combined_stats(engine, left, right)
    for warning in warnings:
        out.warn(warning)
    for change in changes:
        out.line(f"{change.kind.value} {change.path}")
    if stats:
        print_stats(out, totals)
    out.emit_json(
        {
            "a": left.name,
            "b": right.name,
            "identical": not changes and not warnings,
            "changes": (change_json(c) for c in changes),
            "warnings": warnings,
            "stats": totals.as_dict(),
        }
    )
    # What a scan skipped or could not read was not compared.
    sys.exit(EXIT_DIFFERENT if changes or warnings else EXIT_OK)
