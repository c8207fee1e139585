"""merklesync conflicts, merklesync resolve"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from merklesync.cli.common import (
    LOCAL_REPLICA,
    Output,
    handle_errors,
    output_options,
    print_stats,
    scan_stats,
    stats_option,
)
from merklesync.conflicts import Take, list_conflicts, over_cap, resolve
from merklesync.errors import EXIT_DIFFERENT, EXIT_OK, reason_about
from merklesync.replica import Replica, find_root


def _open(replica: Path | None, *, read_only_ok: bool = False) -> Replica:
    return Replica.open(
        find_root(replica or Path.cwd(), named=replica is not None), read_only_ok=read_only_ok
    )


@click.command(short_help="List the conflict copies of a replica.")
@click.argument("replica", required=False, type=LOCAL_REPLICA)
@stats_option
@output_options
@handle_errors
def conflicts(replica: Path | None, stats: bool, quiet: bool, as_json: bool) -> None:
    """List the conflict copies in REPLICA (default: the one around the
    current directory): for each, the file it belongs to, the replica that
    wrote that version, and when. Exit 1 when there are any, or when the
    scan skipped a file (named on standard error)."""
    out = Output(quiet, as_json)
    with _open(replica, read_only_ok=True) as r:  # a snapshot's too
        report = r.scan()
        found = list_conflicts(r)
        me = r.replica_id
    for warning in report.warnings:
        out.warn(warning)
    for c in found:
        # The copy's own stamp is its making, after both versions: its
        # version's time is in its name.
        w = c.written
        when = f"{w[:4]}-{w[4:6]}-{w[6:8]} {w[9:11]}:{w[11:13]}:{w[13:15]}"
        who = f"{c.writer} (this replica)" if c.writer == me else c.writer
        out.line(f"{c.original}\t{c.copy.path}\twritten by {who} at {when} UTC")
    for path, n in over_cap(found).items():
        out.warn(f"{path} has {n} conflict copies; settle them with `merklesync resolve`")
    if stats:
        print_stats(out, scan_stats(report))
    out.emit_json(
        {
            "stats": scan_stats(report).as_dict(),
            "conflicts": [
                {
                    "path": c.original,
                    "copy": c.copy.path,
                    "writer": c.writer,
                    "this_replica": c.writer == me,
                    "written": c.written,  # the version's time, to the second (UTC)
                    "stamp_ns": c.copy.stamp,  # the copy's own: its making
                    "size": c.copy.size,
                }
                for c in found
            ],
            "warnings": report.warnings,
        }
    )
    # Files the scan skipped or could not read: see the exit codes, as status.
    sys.exit(EXIT_DIFFERENT if found or report.skipped else EXIT_OK)


@click.command(name="resolve", short_help="Settle conflicts: keep one side, both, or merge.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--take",
    type=click.Choice([t.value for t in Take]),
    required=True,
    help="local: keep the version this replica wrote; remote: keep the other one; both: keep "
    "both as ordinary files (NAME.REPLICA.EXT); union: merge them (text lines, JSON sets).",
)
@click.option("--all", "everything", is_flag=True, help="Settle every conflict in the replica.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be done; change nothing.")
@stats_option
@output_options
@handle_errors
def resolve_cmd(
    paths: tuple[Path, ...],
    take: str,
    everything: bool,
    dry_run: bool,
    stats: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Settle the conflicts of PATHS, in the replica that holds them (or of
    every file, with --all, in the replica around the current directory).
    The result is an ordinary local
    change: the next sync or push takes it to the other replicas. Keeping
    the name as it is counts as such a change too, so that another
    replica's different choice meets this one as a conflict instead of
    silently undoing it. A file
    that cannot be settled (no conflict copies, nothing to merge by union)
    is left as it was and named on standard error, the others are settled
    all the same, and the exit status is that failure's (1 or 2); else 1
    when the scan skipped a file (named on standard error).

    On a replica that wrote none of the versions (a third one the conflict
    reached), local keeps the version under the name and remote takes the
    newest copy: settle such a conflict with both or union there, or with
    local or remote on a replica that wrote one of them."""
    out = Output(quiet, as_json)
    if not paths and not everything:
        raise click.UsageError("name the conflicted PATHS, or use --all")
    if paths and everything:
        raise click.UsageError("name the conflicted PATHS or use --all, not both")
    # The replica around the first path's directory (the current one for a
    # bare name), as found from where that path is, not from where we are.
    around = paths[0].absolute().parent if paths else Path.cwd()
    with Replica.open(find_root(around)) as r:
        if everything:
            r.scan()
            originals = sorted({c.original for c in list_conflicts(r)})
        else:
            originals = [_in_replica(Path(p), r.root) for p in paths]
        resolved = resolve(r, originals, Take(take), dry_run=dry_run)
    for warning in resolved.report.warnings:
        out.warn(warning)
    for step in resolved.done:
        out.line(step.text(dry_run))
    for _original, failure in resolved.failed:
        out.warn(f"not resolved: {failure.message}")
    if stats:
        print_stats(out, scan_stats(resolved.report))
    out.emit_json(
        {
            "stats": scan_stats(resolved.report).as_dict(),
            "dry_run": dry_run,
            "done": [
                {
                    "action": step.action,
                    "path": step.path,
                    "target": step.target,
                    "deletion": step.gone,
                }
                for step in resolved.done
            ],
            "failed": [
                {"path": original, "reason": reason_about(original, failure.message)}
                for original, failure in resolved.failed
            ],
            "warnings": resolved.report.warnings,
        }
    )
    if resolved.failed:
        sys.exit(max(failure.exit_code for _original, failure in resolved.failed))
    if resolved.report.skipped:
        sys.exit(EXIT_DIFFERENT)


def _in_replica(path: Path, root: Path) -> str:
    """A path named on the command line, as the replica names it: the
    directories above it resolved, never the name itself (a symlink in
    conflict is that link, not the file it points at)."""
    here = path.resolve() if path.name in ("", ".", "..") else path.parent.resolve() / path.name
    return here.relative_to(root).as_posix() if here.is_relative_to(root) else path.as_posix()
