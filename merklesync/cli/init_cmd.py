"""merklesync init"""

from __future__ import annotations

from pathlib import Path

import click

from merklesync.cli.common import Output, handle_errors, output_options
from merklesync.errors import UsageError
from merklesync.replica import Replica, is_replica


@click.command(short_help="Make a directory a replica (or rebuild its index).")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--rebuild",
    is_flag=True,
    help="Set a corrupt or unreadable index aside and build a new one from the files "
    "(the replica gets a new id; versions restart).",
)
@output_options
@handle_errors
def init(directory: Path, rebuild: bool, quiet: bool, as_json: bool) -> None:
    """Make DIRECTORY a replica: create DIRECTORY/.merklesync/ and scan it."""
    out = Output(quiet, as_json)
    moved = None
    if rebuild:
        replica, moved = Replica.rebuild(directory)
    elif is_replica(directory):
        raise UsageError(f"{directory.resolve()} is already a replica (use --rebuild to rebuild)")
    else:
        replica = Replica.open(directory, create=True)
    with replica:
        with out.progress("scanning", "files") as progress:
            report = replica.source.scan(
                replica.index, replica.replica_id, replica.clock, progress=progress
            )
        root, count = replica.index.root()
        for warning in report.warnings:
            out.warn(warning)
        if moved is not None:
            out.info(f"the old index was kept as {moved}")
        if not quiet:
            out.line(
                f"Initialised replica {replica.replica_id} in {replica.root} "
                f"({report.scanned} entries, root {root.hex()})"
            )
        out.emit_json(
            {
                "root": replica.root.as_posix(),
                "replica_id": replica.replica_id,
                "entries": count,
                "fingerprint": root.hex(),
                "warnings": report.warnings,
            }
        )
