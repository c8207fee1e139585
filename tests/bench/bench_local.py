"""Local one-way copy, side by side: ``rsync -a SRC/ DST_R/`` against
``merklesync push SRC DST_M``, on one generated tree, in one run.

    python tests/bench/bench_local.py [--files 100000] [--dirs 1000] [--out table.md]

Cases (see tests/bench/README.md): first copy; nothing changed; 10 files changed;
1 file deleted. After every case both destinations are compared with the source by
the treegen oracle, and the script stops loudly if one differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.bench.table import (  # noqa: E402
    BenchFailure,
    Column,
    Result,
    Row,
    Run,
    Watched,
    checked,
    first_copies,
    init_replica,
    interleaved,
    merklesync_argv,
    merklesync_stats,
    no_setup,
    ratio_check,
    render_rows,
    rss_note,
    run_measured,
    side_by_side,
    verdict,
    verify_copies,
    write_report,
)
from tests.treegen import make_tree, mutate  # noqa: E402

RSS_TARGET_MB = 150
WATCHED = Watched(
    "rsync", "nothing changed, watched", "10 files changed, watched", "`merklesync watch` on both"
)


@dataclass
class Tools:
    src: Path
    dst_r: Path
    dst_m: Path
    merklesync: list[str] | None  # None: rsync only
    cwd: Path  # every command runs here, so a stray relative path never lands elsewhere

    def rsync(self, delete: bool = False) -> Run:
        argv = ["rsync", "-a", *(["--delete"] if delete else []), f"{self.src}/", f"{self.dst_r}/"]
        return checked(argv, run_measured(argv, cwd=self.cwd)), {}

    def push(self) -> Run:
        assert self.merklesync is not None
        argv = [*self.merklesync, "push", str(self.src), str(self.dst_m)]
        m = checked(argv, run_measured([*argv, "--quiet", "--json", "--stats"], cwd=self.cwd))
        return m, merklesync_stats(m.stdout)

    def init_source(self) -> list[Run]:
        assert self.merklesync is not None
        return init_replica(self.merklesync, self.src, self.cwd)


def verify(tools: Tools, case: str) -> None:
    mine = [("merklesync", tools.dst_m)] if tools.merklesync is not None else []
    verify_copies(case, tools.src, [("rsync", tools.dst_r), *mine])


row = functools.partial(side_by_side, "rsync")


def targets(rows: Sequence[Row]) -> str:
    def check(case: str, limit: float) -> str:
        return ratio_check(rows, case, limit)

    peaks = [r.candidate.max_rss_kib * 1024 / 1e6 for r in rows if r.candidate is not None]
    peak = "n/a"
    if peaks:
        peak = f"{max(peaks):.1f} MB {verdict(max(peaks) <= RSS_TARGET_MB)}"
    return (
        "Targets: nothing changed and 10 changed <= 1.0x rsync; first copy <= 1.5x rsync; "
        f"peak RSS <= {RSS_TARGET_MB} MB.\n"
        f"Measured: nothing changed {check('nothing changed', 1.0)}; "
        f"10 changed {check('10 files changed', 1.0)}; "
        f"first copy {check('first copy', 1.5)}; merklesync peak RSS {peak}.\n"
        f"With `merklesync watch` running: nothing changed {check(WATCHED.nothing, 1.0)}; "
        f"10 changed {check(WATCHED.changed, 1.0)}."
    )


def run_cases(tools: Tools, runs: int, seed: int, copies: int) -> list[Row]:
    rows: list[Row] = []
    try:
        print("case: first copy", file=sys.stderr)
        r_first, m_first = first_copies(
            copies,
            ("rsync", tools.rsync),
            (lambda: [*tools.init_source(), tools.push()]) if tools.merklesync else None,
            [tools.dst_r, tools.dst_m, tools.src / ".merklesync"],
        )
        rows.append(
            Row(
                "first copy",
                r_first,
                m_first,
                f"best of {copies}, each into an empty DST; merklesync = init SRC + push",
            )
        )
        verify(tools, "first copy")

        push = tools.push if tools.merklesync is not None else None
        print("case: nothing changed", file=sys.stderr)
        r, m = interleaved(runs, no_setup, tools.rsync, push)
        rows.append(row("nothing changed", r, m, f"best of {runs}"))
        verify(tools, "nothing changed")

        print("case: 10 files changed", file=sys.stderr)
        r, m = interleaved(runs, changes(tools.src, seed + 100, modify=10), tools.rsync, push)
        rows.append(
            row("10 files changed", r, m, f"best of {runs}; 10 other files modified each round")
        )
        verify(tools, "10 files changed")

        print("case: 1 file deleted", file=sys.stderr)
        r, m = interleaved(
            runs,
            changes(tools.src, seed + 200, delete=1),
            functools.partial(tools.rsync, delete=True),
            push,
        )
        rows.append(
            row(
                "1 file deleted",
                r,
                m,
                f"best of {runs}; rsync -a --delete; another file deleted each round",
            )
        )
        verify(tools, "1 file deleted")

        if tools.merklesync is not None:
            rows += made_apart(tools)
            rows += WATCHED.rows(
                tools.merklesync,
                [tools.src, tools.dst_m],
                tools.cwd,
                runs,
                (tools.rsync, tools.push),
                changes(tools.src, seed + 300, modify=10),
                functools.partial(verify, tools),
            )
    except BenchFailure:
        if rows:
            print("\nPartial results before the failure:\n" + render(rows), file=sys.stderr)
        raise
    return rows


def made_apart(tools: Tools) -> list[Row]:
    """Two copies made apart (a mirror kept by rsync until now): a copy of
    SRC's files made a replica of its own, then pushed to, once (every
    entry's versions to merge, no data to move) and again (nothing left to
    compare); then two such copies both made replicas with --as-copy, whose
    first push finds them equal. rsync, which keeps no state, does the
    same every time."""
    print("case: copies made apart", file=sys.stderr)
    apart = dataclasses.replace(
        tools, dst_r=tools.cwd / "apart-rsync", dst_m=tools.cwd / "apart-merklesync"
    )
    state = shutil.ignore_patterns(".merklesync")
    for copy in (apart.dst_r, apart.dst_m):
        shutil.copytree(tools.src, copy, symlinks=True, ignore=state)
    assert apart.merklesync is not None
    init_dst = init_replica(apart.merklesync, apart.dst_m, apart.cwd)
    rows = [
        Row(
            "copies made apart, first push",
            Result.combine("rsync", [apart.rsync()]),
            Result.chain("merklesync", [*init_dst, apart.push()]),
            "single run; DST a copy of SRC's files (copytree); merklesync = init DST + push",
        ),
        row("copies made apart, next push", [apart.rsync()], [apart.push()], "single run"),
    ]
    verify(apart, "copies made apart")
    for copy in (apart.dst_r, apart.dst_m):
        shutil.rmtree(copy)
    rows.append(_made_apart_as_copies(tools, state))
    return rows


def _made_apart_as_copies(tools: Tools, state: Callable[[str, list[str]], set[str]]) -> Row:
    """Copies made apart, each made a replica with init --as-copy (the source
    copy untimed, as SRC's own init is in the other rows)."""
    print("case: copies made apart, --as-copy", file=sys.stderr)
    src = tools.cwd / "apart-source"
    copies = dataclasses.replace(
        tools, src=src, dst_r=tools.cwd / "apart-rsync", dst_m=tools.cwd / "apart-merklesync"
    )
    for copy in (src, copies.dst_r, copies.dst_m):
        shutil.copytree(tools.src, copy, symlinks=True, ignore=state)
    assert copies.merklesync is not None
    init_replica(copies.merklesync, src, copies.cwd, "--as-copy")
    init_dst = init_replica(copies.merklesync, copies.dst_m, copies.cwd, "--as-copy")
    push = copies.push()
    row = Row(
        "copies made apart, --as-copy, first push",
        Result.combine("rsync", [copies.rsync()]),
        Result.chain("merklesync", [*init_dst, push]),
        "single run; both made replicas with init --as-copy; merklesync = init DST + push "
        f"(the push alone: {push[0].wall_s:.3f} s)",
    )
    verify(copies, "copies made apart, --as-copy")
    for copy in (src, copies.dst_r, copies.dst_m):
        shutil.rmtree(copy)
    return row


def changes(src: Path, seed: int, modify: int = 0, delete: int = 0) -> Callable[[int], None]:
    """Setup of a round: change other files each round (seed + round)."""

    def setup(round_no: int) -> None:
        mutate(src, modify=modify, delete=delete, seed=seed + round_no)

    return setup


def render(rows: Sequence[Row]) -> str:
    return render_rows(
        rows,
        extra=[
            Column(
                "files scanned", lambda r: r.candidate.stat("files_scanned") if r.candidate else "-"
            ),
            Column(
                "files hashed", lambda r: r.candidate.stat("files_hashed") if r.candidate else "-"
            ),
            Column(
                "files sent",
                lambda r: r.candidate.stat("files_transferred") if r.candidate else "-",
            ),
        ],
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=1000)
    p.add_argument("--min-size", type=int, default=1024)
    p.add_argument(
        "--max-size", type=int, default=6800, help="default: mean ~3.9 kB, 100k files ~390 MB"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=3, help="runs of the repeatable cases (best kept)")
    p.add_argument("--copies", type=int, default=2, help="first copies of each tool (best kept)")
    p.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    p.add_argument("--tmp", type=Path, help="where to make the trees (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the trees")
    p.add_argument("--merklesync", help="command to run merklesync (default: installed in a venv)")
    p.add_argument("--rsync-only", action="store_true", help="measure rsync alone (the bar)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("rsync",):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="merklesync-bench-", dir=args.tmp))
    tools = Tools(
        work / "src",
        work / "dst-rsync",
        work / "dst-merklesync",
        None if args.rsync_only else merklesync_argv(args.merklesync, work),
        work,
    )
    try:
        t = time.perf_counter()
        info = make_tree(
            tools.src, args.files, args.dirs, args.min_size, args.max_size, seed=args.seed
        )
        gen_s = time.perf_counter() - t
        rsync_version = subprocess.run(
            ["rsync", "--version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
        header = (
            f"# merklesync push vs rsync, local\n\n"
            f"Tree: {info.file_count:,} files, {len(info.dirs):,} dirs, "
            f"{info.total_bytes / 1e6:.1f} MB (seed {args.seed}, sizes "
            f"{args.min_size}-{args.max_size} B; generated in {gen_s:.1f} s) in {work}.\n"
            f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {rsync_version}; "
            f"warm page cache. {rss_note()}"
        )
        print(header + "\n", file=sys.stderr)
        try:
            rows = run_cases(tools, args.runs, args.seed, args.copies)
        except BenchFailure as e:
            print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr)
            return 1
        write_report("\n\n".join([header, render(rows), targets(rows)]), args.out)
        return 0
    finally:
        if args.keep:
            print(f"trees kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
