"""merklesync push, merklesync pull"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import click

from merklesync import retention
from merklesync.cli.common import (
    F,
    Output,
    allow_stale_option,
    change_json,
    checksum_option,
    exclude_option,
    handle_errors,
    output_options,
    plural,
    print_stats,
    remote_options,
    stats_option,
)
from merklesync.errors import EXIT_DIFFERENT, EXIT_OK
from merklesync.model import Action, Change, ChangeKind, Stats
from merklesync.peer.local import Included
from merklesync.peer.open import (
    RemoteOptions,
    check_writable,
    combined_stats,
    opened_pair,
    refresh_all,
)
from merklesync.transfer import TransferResult
from merklesync.transfer import push as push_peers


def transfer_options(func: F) -> F:
    for option in reversed(
        [
            click.option(
                "-n", "--dry-run", is_flag=True, help="Show what would change; write nothing."
            ),
            click.option(
                "-v",
                "--verbose",
                is_flag=True,
                help="List every change made (a run stopped midway: those made so far).",
            ),
            click.option(
                "--force",
                is_flag=True,
                help="Also overwrite newer or concurrent versions on the destination "
                "(each one discarded is listed).",
            ),
            allow_stale_option,
            checksum_option,
            exclude_option,
            stats_option,
            output_options,
            remote_options,
        ]
    ):
        func = option(func)
    return func


def run_transfer(
    src_spec: str | None,
    dst_spec: str | None,
    *,
    dry_run: bool,
    verbose: bool,
    force: bool,
    allow_stale: bool,
    checksum: bool,
    excludes: tuple[str, ...],
    stats: bool,
    quiet: bool,
    as_json: bool,
    remote: RemoteOptions,
) -> None:
    out = Output(quiet, as_json, verbose)
    pair = opened_pair(
        src_spec,
        dst_spec,
        create_b=True,
        preview_b=dry_run,
        excludes=excludes,
        remote=remote,
        checksum=checksum,
    )
    with pair as (src, dst):
        check_writable(dst, "nothing can be copied into it")
        retention.guard(src, dst, allow_stale=allow_stale)
        with out.progress("scanning", "files") as progress:
            warnings = refresh_all([src, dst], checksum=checksum, progress=progress)
        include = Included(excludes, (src, dst))
        result = TransferResult()
        try:
            with out.progress("transferring", "B", scale=True) as progress:
                push_peers(
                    src,
                    dst,
                    dry_run=dry_run,
                    include=include,
                    progress=progress,
                    force=force,
                    keep_done=out.verbose or as_json,  # where each change is listed
                    result=result,
                )
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: -v still lists what was done
            if out.verbose and not dry_run:
                _list(out, sorted(result.applied(), key=lambda c: c.path))
            raise
        totals = combined_stats(result.stats, src, dst)
        left = result.left_alone()
        # A partial run (--exclude, a path a replica ignores, files
        # skipped) is not proof the peer has everything.
        partial = excludes or include.left_out or warnings or left or result.ignored()
        if not dry_run:
            retention.after_run(src, dst, complete=not partial, one_way=True)
    report(
        out,
        result,
        left,
        totals,
        warnings,
        dry_run=dry_run,
        stats=stats,
        src=src.name,
        dst=dst.name,
    )


def report(
    out: Output,
    result: TransferResult,
    left: list[tuple[Change, str]],
    totals: Stats,
    warnings: list[str],
    *,
    dry_run: bool,
    stats: bool,
    src: str,
    dst: str,
) -> None:
    """``left``: what the run left alone (result.left_alone())."""
    for warning in warnings:
        out.warn(warning)
    reasons = {c.path: reason for c, reason in left}
    ignored = result.ignored()
    if dry_run or out.verbose:
        not_made = reasons.keys() | set(ignored)
        _list(out, (c for c in result.changes if c.path not in not_made))
    for change, reason in left:
        out.warn(f"left alone: {change.path}: {reason}")
    if out.verbose:
        for path in ignored:
            out.note(f"not copied: {path}: {dst} ignores it")
    for change in result.changes:
        lost = _discarded(change, result, dry_run)
        if lost is not None and dry_run:
            out.note(f"would overwrite {change.path}: {lost} would be lost")
        elif lost is not None:
            out.note(f"overwrote {change.path}: discarded {lost}")
    done = [c for c in result.changes if c.path not in reasons] if dry_run else result.applied()
    # A change of version only moved no data.
    same = sum(1 for c in done if c.kind is ChangeKind.NONE) + result.forgotten_same
    copied = len(done) + result.forgotten - same
    verb = "would copy" if dry_run else "copied"
    line = f"{verb} {plural(copied, 'entry')} from {src} to {dst}"
    if totals.files_copied:  # a dry run copies nothing
        line += f" ({totals.files_copied} moved: made there from its own files)"
    if same:
        updated = "to update" if dry_run else "updated"
        line += f"; {plural(same, 'entry')} already the same there (versions {updated})"
    if ignored:
        line += f"; {plural(len(ignored), 'entry')} left out by its ignore rules"
    out.info(f"{line}; {len(left)} left alone")
    if stats:
        print_stats(out, totals)
    out.emit_json(
        {
            "source": src,
            "destination": dst,
            "dry_run": dry_run,
            "changes": (_change_json(c, result, reasons, dry_run) for c in result.changes),
            "left_alone": [{"path": c.path, "reason": why} for c, why in left],
            "ignored": ignored,
            "warnings": warnings,
            "stats": totals.as_dict(),
        }
    )
    # Files a scan skipped or could not read did not travel: not a success.
    sys.exit(EXIT_DIFFERENT if left or warnings else EXIT_OK)


def _list(out: Output, changes: Iterable[Change]) -> None:
    """One line per change, as diff says them (a change of version only: none)."""
    for change in changes:
        if change.kind is not ChangeKind.NONE:
            out.line(f"{change.kind.value} {change.path}")


def _change_json(
    c: Change, result: TransferResult, reasons: dict[str, str], dry_run: bool
) -> dict[str, Any]:
    outcome = result.outcomes.get(c.path)
    item = change_json(
        c, None if dry_run else outcome is not None and outcome.ok, reasons.get(c.path, "")
    )
    lost = _discarded(c, result, dry_run)
    if lost is not None:
        item["discarded"] = lost
    return item


def _discarded(c: Change, result: TransferResult, dry_run: bool) -> str | None:
    """Whose version a forced change overwrote (or would): None where it
    is no forced change, or its write failed and nothing was lost."""
    outcome = result.outcomes.get(c.path)
    if c.action is not Action.FORCE:
        return None
    # A dry run knows of no outcome, unless it foresaw the write fail.
    if (outcome is not None and not outcome.ok) or (outcome is None and not dry_run):
        return None
    return result.discarded.get(c.path, "the destination's version")


@click.command(short_help="Copy what SRC has newer into DST (fast-forward only).")
@click.argument("replicas", nargs=-1, required=True, metavar="[SRC] DST")
@transfer_options
@handle_errors
def push(replicas: tuple[str, ...], **options: object) -> None:
    """Copy to DST whatever SRC (default: the replica around the current
    directory) has newer. Only fast-forwards: where DST has a newer or a
    concurrent version, it is left alone, listed, and the exit code is 1;
    so is a path only DST has (a push never deletes what SRC never had).
    Where both hold the same content, no data moves: both take the newer
    or merged version (SRC's index too), so the next run has nothing to
    compare there. DST is initialised when it is not a replica yet (made
    when missing, but not its parent, as rsync does).

    SRC and DST may be local paths, remote addresses (HOST:PATH,
    USER@HOST:PATH, ssh://USER@HOST:PORT/PATH) or names of remotes (see
    merklesync-remote(1)); from one remote to another, the data is relayed
    through this machine."""
    if len(replicas) > 2:
        raise click.UsageError("push takes at most two replicas: [SRC] DST")
    src, dst = (None, replicas[0]) if len(replicas) == 1 else replicas
    run_transfer(src, dst, **options)  # type: ignore[arg-type]


@click.command(short_help="Copy what SRC has newer into DST, here by default.")
@click.argument("replicas", nargs=-1, required=True, metavar="SRC [DST]")
@transfer_options
@handle_errors
def pull(replicas: tuple[str, ...], **options: object) -> None:
    """Copy from SRC whatever it has newer into DST (default: the replica
    around the current directory). Only fast-forwards, as push; either side
    may be remote, as for push."""
    if len(replicas) > 2:
        raise click.UsageError("pull takes at most two replicas: SRC [DST]")
    src, dst = (replicas[0], None) if len(replicas) == 1 else replicas
    run_transfer(src, dst, **options)  # type: ignore[arg-type]
