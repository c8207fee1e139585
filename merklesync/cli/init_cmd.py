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
@click.option(
    "--as-copy",
    is_flag=True,
    help="DIRECTORY is a copy of files other replicas hold too, made apart (an rsync mirror, "
    "a copy made with cp -a): what this first scan finds takes the version of its content, "
    "the same on every replica made --as-copy, so that they agree from their first run on "
    "all they hold alike (made without it, each merges a version for every such entry). A "
    "file held alike and changed since on one of them is a fast-forward to the others; one "
    "held differently is a conflict. Not for a copy that holds changes to keep (a backup "
    "restored to bring old versions back): those would be taken for the versions changed "
    "since, and brought up to date. For a new replica only (or one made so whose first scan "
    "was stopped: run it again).",
)
@click.option(
    "-n",
    "--dry-run",
    is_flag=True,
    help="Show what init would do (the entries it would find, what --rebuild would do with "
    "the index there); write nothing.",
)
@stats_option
@output_options
@handle_errors
def init(
    directory: Path,
    rebuild: bool,
    new_id: bool,
    as_copy: bool,
    dry_run: bool,
    stats: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Make DIRECTORY a replica: create DIRECTORY/.merklesync/ and scan it.
    What it finds counts as its writes, unless --as-copy."""
    out = Output(quiet, as_json)
    if rebuild and new_id:
        raise click.UsageError("--rebuild gives the replica a new id already: not with --new-id")
    moved = None
    healed = False
    old_id = None
    existing = not rebuild and is_replica(directory)  # then init is a scan, as git init
    if new_id and not existing:
        raise NotAReplica(f"{directory} is not a merklesync replica: --new-id is for one")
    if as_copy and rebuild:
        raise click.UsageError(f"{directory} is a replica already: --as-copy is for a new one")
    if dry_run:  # the same steps, on a copy of what is there
        replica, moved, healed = Replica.rehearsal(directory, rebuild=rebuild, as_copy=as_copy)
    elif rebuild:
        replica, moved, healed = Replica.rebuild(directory)
    else:
        replica = Replica.open(directory, create=True, as_copy=as_copy)
    with replica:
        if as_copy and existing and not replica.first_scan_as_copy:
            # (One made so whose first scan was stopped: init is run again.)
            raise click.UsageError(f"{directory} is a replica already: --as-copy is for a new one")
        if new_id:
            old_id = replica.renew_id()  # before the scan: what changed since is this one's
        with out.progress("scanning", "files") as progress:
            report = replica.source.scan(
                replica.index, replica.replica_id, replica.clock, progress=progress, listing=False
            )
        root, count = replica.index.root()
        for warning in report.warnings:
            out.warn(warning)
        if moved is not None:
            if dry_run:
                out.info(f"would set the unreadable index aside as {moved} and make a new one")
            else:
                out.info(f"the old index was kept as {moved}")
        if healed:
            out.info(
                "the index's tree does not match its entries: "
                + ("would make it again" if dry_run else "made again")
                + " from them, versions kept"
            )
        # The replica's id; in a dry run, one that would be new is not known yet.
        known_id = not dry_run or (existing and old_id is None) or healed
        if not dry_run:
            verb = "Replica {} already in" if existing else "Initialised replica {} in"
            if old_id is not None:
                verb = f"Replica {{}} (new id; it was {old_id}) in"
        elif old_id is not None:
            verb = f"Replica {old_id} would get a new id in"
        elif existing or healed:
            verb = "Replica {} already in" if existing else "Replica {} in"
        else:
            verb = "Would initialise a replica in"
        where = directory.resolve() if dry_run else replica.root
        out.line(
            f"{verb.format(replica.replica_id)} {where} "
            f"({plural(count, 'entry')}, root {root.hex()})"
        )
        if stats:
            print_stats(out, scan_stats(report))
        out.emit_json(
            {
                "stats": scan_stats(report).as_dict(),
                "root": where.as_posix(),
                "replica_id": replica.replica_id if known_id else None,
                **({"previous_replica_id": old_id} if old_id is not None else {}),
                **({"tree_rebuilt": True} if healed else {}),
                **({"index_set_aside": moved.as_posix()} if moved is not None else {}),
                "dry_run": dry_run,
                "entries": count,
                "fingerprint": root.hex(),
                "warnings": report.warnings,
            }
        )
    if report.skipped:  # files skipped or unreadable, each named: see the exit codes
        sys.exit(EXIT_DIFFERENT)
