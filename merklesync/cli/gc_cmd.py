"""merklesync gc"""

from __future__ import annotations

from pathlib import Path

import click

from merklesync import retention
from merklesync.cli.common import Output, handle_errors, output_options
from merklesync.replica import Replica, find_root


@click.command()
@click.argument("replica", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    help="Keep tombstones this many days at most (saved in the replica; default 90). "
    "Replicas away longer are refused by sync, push and pull.",
)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be collected.")
@output_options
@handle_errors
def gc(
    replica: Path | None, retention_days: int | None, dry_run: bool, quiet: bool, as_json: bool
) -> None:
    """Collect the tombstones of REPLICA (default: the one around the current
    directory) that every replica it knows of has seen, or that are older
    than the retention. sync, push and pull also do this once a day."""
    out = Output(quiet, as_json)
    with Replica.open(find_root(replica or Path.cwd())) as r:
        if retention_days is not None:
            retention.set_retention_days(r, retention_days)
        dropped = retention.collect(r, dry_run=dry_run)
        days = retention.retention_days(r)
    for path in dropped if dry_run else []:
        out.line(f"D {path}")
    verb = "would collect" if dry_run else "collected"
    out.line(f"{verb} {len(dropped)} tombstones (retention {days} days)")
    out.emit_json({"collected": dropped, "dry_run": dry_run, "retention_days": days})
