"""merklesync gc"""

from __future__ import annotations

from pathlib import Path

import click

from merklesync import retention
from merklesync.cli.common import LOCAL_REPLICA, Output, handle_errors, output_options, plural
from merklesync.replica import Replica, find_root

MAX_RETENTION_DAYS = 36_500  # a century: its nanoseconds fit the index's integers


@click.command(short_help="Collect the tombstones every replica has seen.")
@click.argument("replica", required=False, type=LOCAL_REPLICA)
@click.option(
    "--retention-days",
    type=click.IntRange(min=1, max=MAX_RETENTION_DAYS),
    help="Keep tombstones this many days at most (saved in the replica; default 90). "
    "Replicas away longer are refused by sync, repair, push and pull.",
)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be collected.")
@output_options
@handle_errors
def gc(
    replica: Path | None, retention_days: int | None, dry_run: bool, quiet: bool, as_json: bool
) -> None:
    """Collect the tombstones of REPLICA (default: the one around the current
    directory) that every replica it knows of has seen, or that are older
    than the retention (those a replica in contact within the retention,
    whose runs left paths out, has not been proven to have seen: older than
    twice the retention). sync, repair, push and pull also do this once a
    day."""
    out = Output(quiet, as_json)
    with Replica.open(find_root(replica or Path.cwd(), named=replica is not None)) as r:
        if retention_days is not None and not dry_run:
            retention.set_retention_days(r, retention_days)
        days = retention.retention_days(r) if retention_days is None else retention_days
        dropped = sorted(retention.collect(r, dry_run=dry_run, days=days))
    for path in dropped if dry_run else []:
        out.line(f"D {path}")
    verb = "would collect" if dry_run else "collected"
    out.line(f"{verb} {plural(len(dropped), 'tombstone')} (retention {retention.days_text(days)})")
    out.emit_json({"collected": dropped, "dry_run": dry_run, "retention_days": days})
