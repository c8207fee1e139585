"""merklesync repair"""

from __future__ import annotations

import sys
from typing import Any

import click

from merklesync.cli.common import Output, handle_errors, plural, print_stats
from merklesync.cli.sync_cmd import (
    check_policy,
    counts,
    list_copies_made,
    print_result,
    result_json,
    sync_options,
)
from merklesync.errors import EXIT_DIFFERENT, EXIT_OK, MerklesyncError, ReadOnlyReplica
from merklesync.model import Stats
from merklesync.peer import Node
from merklesync.peer.open import (
    RemoteOptions,
    check_writable,
    combined_stats,
    opened_replicas,
    refresh_all,
)
from merklesync.sync_run import LeftOut, PairSync, repair, rules_for


@click.command("repair", short_help="Bring any number of replicas to the same state.")
@click.argument("replicas", nargs=-1, required=True, metavar="[A] B [C...]")
@sync_options
@handle_errors
def repair_cmd(
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
    """Bring every replica named to the same state, the anti-entropy round
    to run from cron: A (when only B is named, the one around the current
    directory; with several, name it `.`) syncs with B, then with C and
    each of the others in turn, gathering
    every change; then the replicas it met before the last one are synced
    with it once more, to take what arrived after their turn. Each sync is
    the two-way sync of `merklesync sync`, with its conflict policy (local:
    A wins; remote: the other replica wins). Replicas that are not replicas
    yet are initialised. Any of them may be remote.

    A replica that cannot take part (it cannot be reached, is locked, has
    been away longer than the tombstone retention, or fails on the way) is
    named and left out; the others go on, and the exit status is that
    failure's. When A cannot take part, none is synced: name the same
    replica first in every round (another one, whose spokes know only A,
    could bring back deletions they have forgotten). At the end the
    replicas' roots are compared: `identical` when they all hold the same
    tree. With --dry-run, each pair is shown as it stands now, once."""
    check_policy(on_conflict, merge_cmd)
    specs: list[str | None] = [None, *replicas] if len(replicas) == 1 else list(replicas)
    out = Output(quiet, as_json, verbose)
    with opened_replicas(specs, preview=dry_run, excludes=excludes, remote=remote) as (
        peers,
        unopened,
    ):
        if unopened and unopened[0][0] == 0:
            _, name, error = unopened[0]
            raise _hub_failed(name, error)
        left = [LeftOut(name, error) for _, name, error in unopened]
        failed: dict[int, MerklesyncError] = {}
        with out.progress("scanning", "files") as progress:
            skipped = refresh_all(peers, checksum=checksum, progress=progress, failed=failed)
        for i, peer in enumerate(peers):
            try:
                check_writable(peer, "repair writes to every replica")
            except ReadOnlyReplica as exc:
                failed.setdefault(i, exc)
        if 0 in failed:
            raise _hub_failed(peers[0].name, failed[0])
        left += [LeftOut(peers[i].name, error) for i, error in sorted(failed.items())]
        taking_part = [p for i, p in enumerate(peers) if i not in failed]
        ending = len(taking_part) < 2  # then the first one left out is the run's error
        for gone in left[1:] if ending else left:
            out.error(f"left out {gone.name}: {gone.error.message}")
        if ending:
            raise left[0].error if left else click.UsageError("repair needs two replicas")

        def arrows(done: PairSync) -> tuple[str, str]:
            return (f"{done.hub} -> {done.other}", f"{done.other} -> {done.hub}")

        def said(done: PairSync) -> None:
            if done.result is None:
                return  # named with the replicas left out
            print_result(out, done.result, listed=dry_run or verbose, arrows=arrows(done))
            word = "would sync" if dry_run else "synced again" if done.second else "synced"
            out.info(f"{word} {done.hub} and {done.other}: {counts(done.result)}")

        def stopped(done: PairSync) -> None:  # by Ctrl-C or SIGTERM: -v lists what it did
            if done.result is not None and not dry_run:
                list_copies_made(out, done.result, arrows(done))

        scanned_trips = max(p.stats.round_trips for p in taking_part)
        with out.progress("repairing", "B", scale=True) as progress:
            result = repair(
                taking_part,
                rules=rules_for(taking_part, on_conflict, merge_cmd),
                excludes=excludes,
                dry_run=dry_run,
                allow_stale=allow_stale,
                scans_complete=not skipped,
                progress=progress,
                on_sync=said,
                keep_done=verbose or as_json,  # where each event is listed
                on_stop=stopped,
            )
        engine = Stats()
        for done in result.syncs:
            if done.result is not None:
                engine.nodes_compared += done.result.stats.nodes_compared
                engine.entries_compared += done.result.stats.entries_compared
        totals = combined_stats(engine, *taking_part)
        # the scans overlap; the syncs come one after the other
        totals.round_trips = scanned_trips + result.round_trips
    left += result.left_out
    for gone in result.left_out:
        out.error(f"left out {gone.name}: {gone.error.message}")
    for warning in skipped:
        out.warn(warning)
    identical: bool | None = None
    if not dry_run and not excludes and result.roots:
        identical = result.identical() and not left
        if result.identical():
            node = next(iter(result.roots.values()))
            among = f" of {len(specs)}" if left else ""
            out.info(
                f"{len(result.roots)}{among} replicas identical: {plural(node.count, 'entry')}, "
                f"root {node.fingerprint.hex()[:16]}"
            )
        else:
            out.warn("the replicas still differ: " + ", ".join(_groups(result.roots)))
    if stats:
        print_stats(out, totals)
    out.emit_json(
        {
            "replicas": [p.name for p in taking_part if p.name not in {g.name for g in left}],
            "dry_run": dry_run,
            "syncs": [_sync_json(done, dry_run) for done in result.syncs],
            "left_out": [
                {"replica": g.name, "error": g.error.message, "exit_code": g.error.exit_code}
                for g in left
            ],
            "identical": identical,
            "roots": {name: node.fingerprint.hex() for name, node in result.roots.items()},
            "warnings": skipped,
            "stats": totals.as_dict(),
        }
    )
    if left:
        sys.exit(left[0].error.exit_code)
    unsettled = any(done.result is None or done.result.incomplete() for done in result.syncs)
    sys.exit(EXIT_DIFFERENT if unsettled or skipped or identical is False else EXIT_OK)


def _hub_failed(name: str, error: MerklesyncError) -> MerklesyncError:
    """The first replica cannot take part: nothing is synced (another hub
    could bring back deletions its spokes have forgotten: see README)."""
    failure = MerklesyncError(
        f"{name}: {error.message} (the first replica, through which the others sync: "
        "none was synced)"
    )
    failure.exit_code = error.exit_code
    return failure


def _groups(roots: dict[str, Node]) -> list[str]:
    """The replicas grouped by the tree they hold: ``a = b``, ``c``."""
    groups: dict[Node, list[str]] = {}
    for name, node in roots.items():
        groups.setdefault(node, []).append(name)
    return [" = ".join(names) for names in groups.values()]


def _sync_json(done: PairSync, dry_run: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"a": done.hub, "b": done.other, "second": done.second}
    if done.result is None:
        assert done.error is not None
        return {**body, "error": done.error.message, "exit_code": done.error.exit_code}
    listed = {key: list(value) for key, value in result_json(done.result, dry_run).items()}
    return {**body, **listed, "warnings": done.result.warnings}
