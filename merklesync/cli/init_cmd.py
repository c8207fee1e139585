"""merklesync init"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from merklesync.cli.common import (
    LOCAL_REPLICA,
    Output,
    handle_errors,
    output_options,
    plural,
    print_stats,
    scan_stats,
    stats_option,
)
from merklesync.errors import EXIT_DIFFERENT, NotAReplica
from merklesync.replica import Replica, is_replica


@click.command(short_help="Make a directory a replica (or rebuild its index).")
@click.argument("directory", default=".", type=LOCAL_REPLICA)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Set a corrupt or unreadable index aside and build a new one from the files "
    "(the replica gets a new id; versions restart). An index that reads well but whose "
    "tree does not match its entries (a run of an earlier release cut short) keeps its "
    "entries and versions: only its tree is made again.",
)
@click.option(
    "--new-id",
    is_flag=True,
    help="Give the replica DIRECTORY a new random id, keeping its entries and their versions: "
    "for a copy of another replica (copied with its .merklesync/, or restored from a backup), "
    "which merklesync refuses to compare with the original until one of them has a new id. "
    "Changes scanned from then on count as the copy's own.",
)
@stats_option
@output_options
@handle_errors
def init(
    directory: Path, rebuild: bool, new_id: bool, stats: bool, quiet: bool, as_json: bool
) -> None:
    """Make DIRECTORY a replica: create DIRECTORY/.merklesync/ and scan it."""
    out = Output(quiet, as_json)
    if rebuild and new_id:
        raise click.UsageError("--rebuild gives the replica a new id already: not with --new-id")
    moved = None
    healed = False
    old_id = None
    existing = not rebuild and is_replica(directory)  # then init is a scan, as git init
    if new_id and not existing:
        raise NotAReplica(f"{directory} is not a merklesync replica: --new-id is for one")
    if rebuild:
        replica, moved, healed = Replica.rebuild(directory)
    else:
        replica = Replica.open(directory, create=True)
    with replica:
        if new_id:
            old_id = replica.renew_id()  # before the scan: what changed since is this one's
        with out.progress("scanning", "files") as progress:
            report = replica.source.scan(
                replica.index, replica.replica_id, replica.clock, progress=progress
            )
        root, count = replica.index.root()
        for warning in report.warnings:
            out.warn(warning)
        if moved is not None:
            out.info(f"the old index was kept as {moved}")
        if healed:
            out.info(
                "the index's tree did not match its entries: made again from them, versions kept"
            )
        verb = "Replica {} already in" if existing else "Initialised replica {} in"
        if old_id is not None:
            verb = f"Replica {{}} (new id; it was {old_id}) in"
        out.line(
            f"{verb.format(replica.replica_id)} {replica.root} "
            f"({plural(count, 'entry')}, root {root.hex()})"
        )
        if stats:
            print_stats(out, scan_stats(report))
        out.emit_json(
            {
                "stats": scan_stats(report).as_dict(),
                "root": replica.root.as_posix(),
                "replica_id": replica.replica_id,
                **({"previous_replica_id": old_id} if old_id is not None else {}),
                **({"tree_rebuilt": True} if healed else {}),
                "entries": count,
                "fingerprint": root.hex(),
                "warnings": report.warnings,
            }
        )
    if report.skipped:  # files skipped or unreadable, each named: see the exit codes
        sys.exit(EXIT_DIFFERENT)
