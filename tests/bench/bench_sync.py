"""Two-way sync over SSH, side by side: Unison against ``merklesync sync A HOST:B``,
through the loopback sshd of the test suite, in one run.

    python tests/bench/bench_sync.py [--files 100000] [--dirs 1000] [--out table.md]

Each tool gets its own pair of replicas made from the same seeded tree: A (local) and
B (an empty directory reached through ssh). Cases: first sync (A -> empty B); nothing
changed; 10 files changed on each side (different files). After every case A == B for
each tool, and both tools' replicas are equal to each other (treegen oracle).

Unison runs as ``unison A ssh://HOST//abs/B -batch -auto ...`` with its archives in
temporary UNISON directories on both sides (``-servercmd "env UNISON=... unison"``) and
``-sshargs`` naming the test server's config, key and known_hosts.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.bench.bench_ssh import SshEndpoint, floor_line, loopback_sshd, session_floor  # noqa: E402
from tests.bench.table import (  # noqa: E402
    MISSING,
    BenchFailure,
    Column,
    Result,
    Row,
    Run,
    Watched,
    checked,
    fmt_bytes,
    interleaved,
    merklesync_argv,
    merklesync_stats,
    no_setup,
    ratio_check,
    render_rows,
    rss_note,
    run_measured,
    side_by_side,
    write_report,
)
from tests.treegen import assert_same_tree, make_tree, mutate, snapshot  # noqa: E402


@dataclass
class Pair:
    """Two replicas of one tool: ``a`` local, ``b`` reached through ssh."""

    name: str
    a: Path
    b: Path


@dataclass
class SyncTools:
    ssh: SshEndpoint
    unison_pair: Pair
    merklesync_pair: Pair
    merklesync: list[str] | None  # None: Unison only
    unison_local: Path  # UNISON archive directories
    unison_remote: Path
    cwd: Path
    unison: str = "unison"
    sync_args: Sequence[str] = ()

    def run_unison(self) -> Run:
        pair = self.unison_pair
        argv = [
            self.unison,
            str(pair.a),
            f"ssh://{self.ssh.host}/{pair.b}",  # '/' + absolute path: ssh://host//abs
            "-batch",
            "-auto",
            "-silent",
            "-times",
            "-confirmbigdel=false",
            "-ignore",
            "Name .merklesync",
            "-sshargs",
            shlex.join(self.ssh.ssh_options[1:]),  # without the leading "ssh"
            "-servercmd",
            f"env UNISON={self.unison_remote} {self.unison}",
        ]
        env = {**self.ssh.env, "UNISON": str(self.unison_local)}
        return checked(argv, run_measured(argv, env=env, cwd=self.cwd)), {}

    def run_sync(self) -> Run:
        assert self.merklesync is not None
        pair = self.merklesync_pair
        argv = [*self.merklesync, "sync", str(pair.a), f"{self.ssh.host}:{pair.b}", *self.sync_args]
        m = run_measured([*argv, "--quiet", "--json", "--stats"], env=self.ssh.env, cwd=self.cwd)
        checked(argv, m)
        stray = self.cwd / f"{self.ssh.host}:"
        if stray.exists():
            raise BenchFailure(
                f"merklesync sync treated {self.ssh.host}:PATH as a local path "
                f"(made {stray}): no SSH support yet?"
            )
        return m, merklesync_stats(m.stdout)

    def init_a(self) -> list[Run]:
        assert self.merklesync is not None
        a = self.merklesync_pair.a
        if (a / ".merklesync").exists():
            return []
        argv = [*self.merklesync, "init", str(a), "--quiet"]
        return [(checked(argv, run_measured(argv, cwd=self.cwd)), {})]

    def pairs(self) -> list[Pair]:
        return [self.unison_pair, *([self.merklesync_pair] if self.merklesync else [])]


WATCHED = Watched(
    "unison",
    "nothing changed, watched",
    "10 changed on each side, watched",
    "`merklesync watch` on both (the remote one on the remote host)",
    kept=("nothing changed, watched + kept open", "10 changed on each side, watched + kept open"),
)


def verify(tools: SyncTools, case: str) -> None:
    """Each tool's A equals its B, and the tools agree with each other."""
    t = time.perf_counter()
    snaps = {}
    for pair in tools.pairs():
        for side, root in (("A", pair.a), ("B", pair.b)):
            if not root.is_dir():
                raise BenchFailure(
                    f"after '{case}', {pair.name} replica {side} ({root}) is missing"
                )
        a, b = snapshot(pair.a), snapshot(pair.b)
        try:
            assert_same_tree(a, b, names=(f"{pair.name} A", f"{pair.name} B"))
        except AssertionError as e:
            raise BenchFailure(f"after '{case}', {pair.name}'s replicas differ:\n{e}") from e
        snaps[pair.name] = a
    if len(snaps) == 2:
        try:
            assert_same_tree(snaps["unison"], snaps["merklesync"], names=("unison", "merklesync"))
        except AssertionError as e:
            raise BenchFailure(f"after '{case}', the two tools disagree:\n{e}") from e
    print(f"  verified '{case}' ({time.perf_counter() - t:.1f} s)", file=sys.stderr)


def both_sides(tools: SyncTools, n: int, seed: int) -> Callable[[int], None]:
    """Setup of a round: modify ``n`` files in A and ``n`` other files in B, the same
    ones in both tools' pairs (mutate is deterministic for a tree and a seed)."""

    def setup(round_no: int) -> None:
        s = seed + 2 * round_no
        in_a = [mutate(p.a, modify=n, seed=s) for p in tools.pairs()]
        if any(m.modified != in_a[0].modified for m in in_a):
            raise BenchFailure("the two tools' A replicas differ before mutating")
        in_b = [mutate(p.b, modify=n, seed=s + 1, exclude=in_a[0].modified) for p in tools.pairs()]
        if any(m.modified != in_b[0].modified for m in in_b):
            raise BenchFailure("the two tools' B replicas differ before mutating")

    return setup


def wire(result: Result | None) -> str:
    if result is None or (
        "bytes_sent" not in result.stats and "bytes_received" not in result.stats
    ):
        return MISSING
    return fmt_bytes(result.stats.get("bytes_sent", 0) + result.stats.get("bytes_received", 0))


def cand_stat(key: str) -> Callable[[Row], str]:
    return lambda r: r.candidate.stat(key) if r.candidate else MISSING


COLUMNS = [
    Column("merklesync wire", lambda r: wire(r.candidate)),
    Column("round trips", cand_stat("round_trips")),
    Column("files hashed", cand_stat("files_hashed")),
    Column("files sent", cand_stat("files_transferred")),
]


row = functools.partial(side_by_side, "unison")


def targets(rows: Sequence[Row]) -> str:
    """The aims of the two-way sync issue, each with the measured value."""
    assert WATCHED.kept is not None
    nothing = [WATCHED.nothing, WATCHED.kept[0]]
    return "\n".join(
        [
            "Targets: first sync <= 0.2x Unison; nothing changed <= 0.3x Unison.",
            f"Measured: first sync {ratio_check(rows, 'first sync', 0.2)}; nothing changed "
            f"{ratio_check(rows, 'nothing changed', 0.3)} "
            f"({ratio_check(rows, nothing[0], 0.3)} watched, "
            f"{ratio_check(rows, nothing[1], 0.3)} watched + kept open).",
        ]
    )


def run_cases(tools: SyncTools, runs: int, seed: int) -> list[Row]:
    rows: list[Row] = []
    sync = tools.run_sync if tools.merklesync is not None else None
    try:
        print("case: first sync", file=sys.stderr)
        m_first = None
        if tools.merklesync is not None:
            m_first = Result.chain("merklesync", [*tools.init_a(), tools.run_sync()])
        rows.append(
            Row(
                "first sync",
                Result.combine("unison", [tools.run_unison()]),
                m_first,
                "single run; A full, B empty; merklesync = init A (local) + sync",
            )
        )
        verify(tools, "first sync")

        print("case: nothing changed", file=sys.stderr)
        u, m = interleaved(runs, no_setup, tools.run_unison, sync)
        rows.append(row("nothing changed", u, m, f"best of {runs}"))
        verify(tools, "nothing changed")

        print("case: 10 changed on each side", file=sys.stderr)
        u, m = interleaved(runs, both_sides(tools, 10, seed + 100), tools.run_unison, sync)
        rows.append(row("10 changed on each side", u, m, f"best of {runs}; other files each round"))
        verify(tools, "10 changed on each side")

        if tools.merklesync is not None:
            pair = tools.merklesync_pair
            rows += WATCHED.rows(
                tools.merklesync,
                [pair.a, pair.b],
                tools.cwd,
                runs,
                (tools.run_unison, tools.run_sync),
                both_sides(tools, 10, seed + 300),
                functools.partial(verify, tools),
                env=tools.ssh.env,
                keep_open=(pair.a, f"{tools.ssh.host}:{pair.b}"),
            )
    except BenchFailure:
        if rows:
            print("\nPartial results before the failure:\n" + render(rows), file=sys.stderr)
        raise
    return rows


def render(rows: Sequence[Row]) -> str:
    return render_rows(rows, COLUMNS, baseline_name="unison")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=1000)
    p.add_argument("--min-size", type=int, default=1024)
    p.add_argument("--max-size", type=int, default=6800, help="default: 100k files ~390 MB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=3, help="runs of the repeatable cases (best kept)")
    p.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    p.add_argument("--tmp", type=Path, help="where to make the trees (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the trees")
    p.add_argument("--merklesync", help="command to run merklesync (default: installed in a venv)")
    p.add_argument("--sync-args", default="", help="extra arguments for merklesync sync")
    p.add_argument("--unison-only", action="store_true", help="measure Unison alone (the bar)")
    p.add_argument(
        "--sshd", choices=("openssh", "paramiko"), default="openssh", help="loopback server kind"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unison = shutil.which("unison")
    if unison is None or shutil.which("ssh") is None:
        print("unison and ssh must be installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="merklesync-bench-sync-", dir=args.tmp))
    try:
        pairs = [
            Pair(name, work / f"{name}-a", work / f"{name}-b") for name in ("unison", "merklesync")
        ]
        t = time.perf_counter()
        for pair in pairs if not args.unison_only else pairs[:1]:
            info = make_tree(pair.a, args.files, args.dirs, args.min_size, args.max_size, args.seed)
            pair.b.mkdir()
        gen_s = time.perf_counter() - t
        for d in ("unison-local", "unison-remote"):
            (work / d).mkdir()
        header = (
            "# merklesync sync vs Unison, over ssh (loopback sshd)\n\n"
            f"Tree: {info.file_count:,} files, {len(info.dirs):,} dirs, "
            f"{info.total_bytes / 1e6:.1f} MB (seed {args.seed}; each tool's copy generated, "
            f"{gen_s:.1f} s in all).\n"
            f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; warm page cache. "
            f"{rss_note()} Remote-side processes (unison -server, merklesync serve) are not "
            "measured. Unison reports no wire bytes."
        )
        print(header + "\n", file=sys.stderr)
        merklesync = None if args.unison_only else merklesync_argv(args.merklesync, work)
        with loopback_sshd(work, args.sshd, merklesync) as ssh:
            header += f" Server: {ssh.kind} on 127.0.0.1:{ssh.port}."
            tools = SyncTools(
                ssh,
                pairs[0],
                pairs[1],
                merklesync,
                work / "unison-local",
                work / "unison-remote",
                work,
                unison,
                shlex.split(args.sync_args),
            )
            rows = run_cases(tools, args.runs, args.seed)
            floor = session_floor(ssh, 5)
        floor_text = floor_line(floor, rows, "nothing changed", "unison")
        write_report("\n\n".join([header, render(rows), targets(rows), floor_text]), args.out)
        return 0
    except BenchFailure as e:
        print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"trees kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
