"""merklesync status"""

from __future__ import annotations

import sys

import click

from merklesync.cli.common import (
    Output,
    checksum_option,
    handle_errors,
    output_options,
    print_stats,
    remote_options,
    stats_option,
)
from merklesync.errors import EXIT_DIFFERENT
from merklesync.model import Stats
from merklesync.peer.open import RemoteOptions, closing, combined_stats, open_peer


@click.command(short_help="Scan a replica; show its root and what changed.")
@click.argument("replica", required=False)
@checksum_option
@stats_option
@output_options
@remote_options
@handle_errors
def status(
    replica: str | None,
    checksum: bool,
    stats: bool,
    quiet: bool,
    as_json: bool,
    remote: RemoteOptions,
) -> None:
    """Scan REPLICA (default: the one around the current directory) and print
    its root fingerprint, its entry count (the leaves of its tree: deletions
    still kept as tombstones count too) and what changed since the last
    scan. REPLICA may be remote (HOST:PATH, or the name of a remote)."""
    out = Output(quiet, as_json)
    with closing(open_peer(replica, remote=remote)) as peer:
        with out.progress("scanning", "files") as progress:
            report = peer.refresh(checksum=checksum, progress=progress)
        root = peer.root()
    totals = combined_stats(Stats(), peer)
    for warning in report.warnings:
        out.warn(warning)
    out.line(f"replica {peer.replica_id} at {peer.name}")
    out.line(f"root {root.fingerprint.hex()}  entries {root.count}")
    added, modified, deleted = sorted(report.added), sorted(report.modified), sorted(report.deleted)
    for mark, paths in (("A", added), ("M", modified), ("D", deleted)):
        for path in paths:
            out.line(f"{mark} {path}")
    out.emit_json(
        {
            "replica_id": peer.replica_id,
            "replica": peer.name,
            "fingerprint": root.fingerprint.hex(),
            "entries": root.count,
            "added": added,
            "modified": modified,
            "deleted": deleted,
            "scanned": report.scanned,
            "hashed": report.hashed,
            "warnings": report.warnings,
            "stats": totals.as_dict(),
        }
    )
    if stats:
        print_stats(out, totals)
    if report.skipped:  # files skipped or unreadable, each named: see the exit codes
        sys.exit(EXIT_DIFFERENT)
