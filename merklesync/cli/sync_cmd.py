"""merklesync sync"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import click

from merklesync import merge, retention
from merklesync.cli.common import (
    Output,
    allow_stale_option,
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
from merklesync.peer.open import (
    RemoteOptions,
    check_writable,
    combined_stats,
    opened_pair,
    refresh_all,
)
from merklesync.policy import Policy
from merklesync.sync import Event, SyncResult
from merklesync.sync_run import rules_for, sync_pair

F = TypeVar("F", bound=Callable[..., Any])


def sync_options(func: F) -> F:
    """The options of sync and repair: the conflict policy, and how much to say."""
    for option in reversed(
        [
            click.option(
                "--on-conflict",
                type=click.Choice([p.value for p in Policy]),
                default=Policy.KEEP_BOTH.value,
                show_default=True,
                help="What to do when both sides changed an entry: keep-both (the other "
                "version becomes NAME.conflict-REPLICA-TIME.EXT), lww (the later write wins), "
                "local (A wins), remote (B wins), union (merge text lines or JSON sets), "
                "merge-cmd (run --merge-cmd). Patterns in .merklesyncattributes "
                "(PATTERN conflict=POLICY) override it where the replicas' files agree.",
            ),
            click.option(
                "--merge-cmd",
                metavar="CMD",
                help="Merge command for merge-cmd, as git merge drivers: %A ours (the result), "
                "%B theirs, %O the ancestor (an empty file: no ancestor is kept), %P the path. "
                "It runs in a temporary directory (name a script by its full path) and is "
                "stopped after 60 s; when it fails, both versions are kept. One the shell "
                "cannot read, or whose program is not found, is refused before the run.",
            ),
            click.option(
                "-n", "--dry-run", is_flag=True, help="Show what would change; write nothing."
            ),
            click.option(
                "-v",
                "--verbose",
                is_flag=True,
                help="List every change made: which way (a->b or b->a; repair names the two "
                "replicas), what it is there (A, D, M or T, as diff prints it), the path "
                "(a run stopped midway: the copies made so far).",
            ),
            checksum_option,
            allow_stale_option,
            remote_options,
            exclude_option,
            stats_option,
            output_options,
        ]
    ):
        func = option(func)
    return func


def check_policy(on_conflict: str, merge_cmd: str | None) -> None:
    """Refuse, before any work, a merge-cmd policy without a command, and
    a command that cannot run (see merge.check_command)."""
    if on_conflict == Policy.MERGE_CMD.value and not merge_cmd:
        raise click.UsageError("--on-conflict merge-cmd needs --merge-cmd CMD")
    if merge_cmd:
        merge.check_command(merge_cmd)


def print_result(
    out: Output, result: SyncResult, *, listed: bool, arrows: tuple[str, str] = ("a->b", "b->a")
) -> None:
    """What a sync did, on stderr (conflicts, what it left alone) and, when
    ``listed`` (-v, --dry-run), every change on stdout: ``a->b M path``
    (``arrows`` name the two directions)."""
    for warning in result.warnings:
        out.warn(warning)
    named = dict(zip(("a->b", "b->a"), arrows, strict=True))
    undone = result.undone()  # listed as left alone, below
    for event in result.events:
        if event.what in ("conflict", "modify-delete"):
            out.note(f"{event.what}: {event.path}: {event.detail}")
        elif listed and event.what != "merge-version" and event.path not in undone:
            _list(out, event, named)
    for failure in result.failures():
        out.warn(f"left alone: {failure.path}: {failure.reason}")
    if listed:
        for path, side in result.ignored():
            to = named["a->b" if side == "b" else "b->a"]
            out.note(f"not copied {to}: {path}: ignored there")


def _list(out: Output, event: Event, named: dict[str, str]) -> None:
    """a->b M path: copied from a to b, a modification there (as diff says
    it). "=" (only the version moves: a deletion to a replica that never had
    the path, say) is not listed, as push lists it: not at all."""
    if event.detail == "=":
        return
    if event.what in named:
        out.line(f"{named[event.what]} {event.detail} {event.path}")
    else:
        out.line(f"{event.what} {event.path}")


def list_copies_made(
    out: Output, result: SyncResult, arrows: tuple[str, str] = ("a->b", "b->a")
) -> None:
    """Under -v, the copies a run stopped midway (Ctrl-C, SIGTERM) made."""
    if out.verbose:
        named = dict(zip(("a->b", "b->a"), arrows, strict=True))
        for event in result.copies_made():
            _list(out, event, named)


def counts(result: SyncResult, moved: int = 0) -> str:
    """``3 copied, 1 conflict settled, 0 left alone``; ``moved``: of those
    copied, the files made from one the side written to had at another
    path (``3 copied (2 moved)``)."""
    undone = result.undone()
    kinds = Counter(e.what for e in result.events if e.detail != "=" and e.path not in undone)
    of_them = f" ({moved} moved)" if moved else ""
    line = (
        f"{kinds['a->b'] + kinds['b->a'] + result.forgotten_copies} copied{of_them}, "
        f"{plural(kinds['conflict'] + kinds['modify-delete'], 'conflict')} settled, "
        f"{len(result.failures()) + len(result.unresolved)} left alone"
    )
    ignored = result.ignored()
    return f"{line}, {len(ignored)} ignored by the side written to" if ignored else line


def result_json(result: SyncResult, dry_run: bool) -> dict[str, Any]:
    """A sync's events (after a run, each with whether its writes went),
    what it left alone and what no policy settled, for --json (the lists as
    iterators: see Output.emit_json)."""

    undone = result.undone()

    def event(e: Event) -> dict[str, Any]:
        item: dict[str, Any] = {"path": e.path, "what": e.what, "detail": e.detail}
        if not dry_run:
            item["ok"] = e.path not in undone
        return item

    return {
        "events": (event(e) for e in result.events),
        "left_alone": ({"path": f.path, "reason": f.reason} for f in result.failures()),
        "ignored": [{"path": path, "on": side} for path, side in result.ignored()],
        "unresolved": [{"path": path, "reason": why} for path, why in result.unresolved],
        "merges_failed": [{"path": path, "reason": why} for path, why in result.merges_failed],
    }


@click.command(short_help="Two-way sync; settle conflicts by policy.")
@click.argument("replicas", nargs=-1, required=True, metavar="[A] B")
@sync_options
@handle_errors
def sync(
    replicas: tuple[str, ...],
    on_conflict: str,
    merge_cmd: str | None,
    dry_run: bool,
    verbose: bool,
    checksum: bool,
    allow_stale: bool,
    remote: RemoteOptions,
    excludes: tuple[str, ...],
    stats: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Two-way sync of replicas A (default: the one around the current
    directory) and B: whatever changed on one side is copied to the other;
    what changed on both is settled by the conflict policy, never silently
    overwritten. B is initialised when it is not a replica yet (made when
    missing, not its parent). Either may be remote (HOST:PATH,
    USER@HOST:PATH, ssh://USER@HOST:PORT/PATH, or the name of a remote).
    For more than two replicas, see `merklesync repair`.

    A modification and a deletion of the same entry: the modification wins
    (unless the policy is lww, local or remote), and the event is listed.
    The same content with other permission bits on each side: the later
    change of mode wins (or the side local or remote names), with no
    conflict copy, and the event is listed."""
    if len(replicas) > 2:
        raise click.UsageError(
            "sync takes at most two replicas: [A] B (`merklesync repair` takes any number)"
        )
    check_policy(on_conflict, merge_cmd)
    a_spec, b_spec = (None, replicas[0]) if len(replicas) == 1 else replicas
    out = Output(quiet, as_json, verbose)
    pair = opened_pair(
        a_spec,
        b_spec,
        create_b=True,
        preview_b=dry_run,
        excludes=excludes,
        remote=remote,
        checksum=checksum,
    )
    with pair as (a, b):
        for peer in (a, b):
            check_writable(peer, "sync writes to both replicas")
        retention.guard(a, b, allow_stale=allow_stale)
        with out.progress("scanning", "files") as progress:
            skipped = refresh_all([a, b], checksum=checksum, progress=progress)
        result = SyncResult()
        try:
            with out.progress("syncing", "B", scale=True) as progress:
                result = sync_pair(
                    a,
                    b,
                    rules=rules_for([a, b], on_conflict, merge_cmd),
                    excludes=excludes,
                    dry_run=dry_run,
                    scan_complete=not skipped,
                    progress=progress,
                    keep_done=verbose or as_json,  # where each event is listed
                    result=result,
                )
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: -v still lists what was done
            if not dry_run:
                list_copies_made(out, result)
            raise
        totals = combined_stats(result.stats, a, b)
    for warning in skipped:
        out.warn(warning)
    print_result(out, result, listed=dry_run or verbose)
    line = counts(result, totals.files_copied)
    out.info(f"{'would sync' if dry_run else 'synced'} {a.name} and {b.name}: {line}")
    if stats:
        print_stats(out, totals)
    out.emit_json(
        {
            "a": a.name,
            "b": b.name,
            "dry_run": dry_run,
            **result_json(result, dry_run),
            "warnings": skipped + result.warnings,
            "stats": totals.as_dict(),
        }
    )
    sys.exit(EXIT_DIFFERENT if result.incomplete() or skipped else EXIT_OK)
