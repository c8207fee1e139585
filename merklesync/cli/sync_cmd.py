"""merklesync sync"""

from __future__ import annotations

import sys
from collections import Counter

import click

from merklesync import retention
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
from merklesync.conflicts import list_conflicts, over_cap
from merklesync.errors import EXIT_DIFFERENT, EXIT_OK
from merklesync.ignore import exclude_predicate
from merklesync.peer.local import local_replica
from merklesync.peer.open import (
    RemoteOptions,
    combined_stats,
    opened_pair,
    refresh_all,
)
from merklesync.policy import Policy, Rules, attributes_of, parse_attributes
from merklesync.sync import sync as sync_peers


@click.command(short_help="Two-way sync; settle conflicts by policy.")
@click.argument("replicas", nargs=-1, required=True, metavar="[A] B")
@click.option(
    "--on-conflict",
    type=click.Choice([p.value for p in Policy]),
    default=Policy.KEEP_BOTH.value,
    show_default=True,
    help="What to do when both sides changed an entry: keep-both (the other version becomes "
    "NAME.conflict-REPLICA-TIME.EXT), lww (the later write wins), local (A wins), remote "
    "(B wins), union (merge text lines or JSON sets), merge-cmd (run --merge-cmd). "
    "Patterns in .merklesyncattributes (PATTERN conflict=POLICY) override it.",
)
@click.option(
    "--merge-cmd",
    metavar="CMD",
    help="Merge command for merge-cmd, as git merge drivers: %A ours (the result), %B "
    "theirs, %O the ancestor (empty when unknown), %P the path.",
)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="List every change made: a->b or b->a, what it is there (A, D, M or T, as diff "
    "prints it), the path.",
)
@checksum_option
@allow_stale_option
@remote_options
@exclude_option
@stats_option
@output_options
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
    overwritten. B is initialised when it is not a replica yet. Either may
    be remote (HOST:PATH, USER@HOST:PATH, ssh://USER@HOST:PORT/PATH, or the
    name of a remote).

    A modification and a deletion of the same entry: the modification wins
    (unless the policy is lww, local or remote), and the event is listed."""
    if len(replicas) > 2:
        raise click.UsageError("sync takes at most two replicas: [A] B")
    if on_conflict == Policy.MERGE_CMD.value and not merge_cmd:
        raise click.UsageError("--on-conflict merge-cmd needs --merge-cmd CMD")
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
        retention.guard(a, b, allow_stale=allow_stale)
        with out.progress("scanning", "files") as progress:
            skipped = refresh_all([a, b], checksum=checksum, progress=progress)
        # The per-path policies of A (of B when A is remote): the file syncs,
        # so both sides normally hold the same one.
        here = local_replica(a) or local_replica(b)
        text = attributes_of(here.root) if here is not None else ""
        rules = Rules(Policy(on_conflict), merge_cmd, tuple(parse_attributes(text)))
        with out.progress("syncing", "B", scale=True) as progress:
            result = sync_peers(
                a,
                b,
                rules=rules,
                include=exclude_predicate(excludes),
                dry_run=dry_run,
                progress=progress,
            )
        totals = combined_stats(result.stats, a, b)
        made_copies = any(e.what == "conflict" for e in result.events)
        for replica in filter(None, (local_replica(a), local_replica(b)) if made_copies else ()):
            for path, n in over_cap(list_conflicts(replica)).items():
                result.warnings.append(
                    f"{path} has {n} conflict copies in {replica.root}; "
                    "settle them with `merklesync resolve`"
                )
        # A partial run (--exclude, files skipped) is not proof the peer
        # has everything.
        if not dry_run and not excludes and not skipped and not result.failures():
            retention.after_success(a, b)
    warnings = skipped + result.warnings
    failures = result.failures()
    for warning in warnings:
        out.warn(warning)
    for event in result.events:
        if event.what in ("conflict", "modify-delete"):
            out.warn(f"{event.what}: {event.path}: {event.detail}")
        elif (dry_run or verbose) and event.what != "merge-version" and event.detail != "=":
            # a->b M path: copied from a to b, a modification there (as diff
            # says it); "=": only the version moves (a deletion to a replica
            # that never had the path, say), as push lists it: not at all.
            kind = f" {event.detail}" if event.what in ("a->b", "b->a") else ""
            out.line(f"{event.what}{kind} {event.path}")
    for failure in failures:
        out.warn(f"left alone: {failure.path}: {failure.reason}")
    kinds = Counter(e.what for e in result.events if e.detail != "=")
    out.info(
        f"{'would sync' if dry_run else 'synced'} {a.name} and {b.name}: "
        f"{kinds['a->b'] + kinds['b->a']} copied, "
        f"{plural(kinds['conflict'] + kinds['modify-delete'], 'conflict')} settled, "
        f"{len(failures) + len(result.unresolved)} left alone"
    )
    if stats:
        print_stats(out, totals)
    out.emit_json(
        {
            "a": a.name,
            "b": b.name,
            "dry_run": dry_run,
            "events": ({"path": e.path, "what": e.what, "detail": e.detail} for e in result.events),
            "left_alone": ({"path": f.path, "reason": f.reason} for f in failures),
            "unresolved": result.unresolved,
            "warnings": warnings,
            "stats": totals.as_dict(),
        }
    )
    sys.exit(EXIT_DIFFERENT if failures or result.unresolved or skipped else EXIT_OK)
