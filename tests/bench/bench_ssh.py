"""One-way copy over SSH, side by side: ``rsync -a -e ssh`` against
``merklesync push SRC HOST:DST``, through a loopback sshd that this script starts.

    python tests/bench/bench_ssh.py [--files 100000] [--dirs 1000] [--out table.md]

Cases: first copy; nothing changed; 10 files changed; then the series "d changed among
N" (d = 1, 10, 100) with round trips and bytes on the wire. Bytes on the wire: rsync's
``--stats`` "Total bytes sent/received"; merklesync's JSON ``stats`` bytes_sent +
bytes_received. After every case both destinations are checked against the source with
the treegen oracle (on loopback the "remote" directories are local paths).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from merklesync import merkle  # noqa: E402
from merklesync.model import KEY_BYTES  # noqa: E402
from tests.bench.table import (  # noqa: E402
    MISSING,
    BenchFailure,
    Column,
    Result,
    Row,
    Run,
    Watched,
    checked,
    first_copies,
    fmt_bytes,
    init_replica,
    interleaved,
    merklesync_argv,
    merklesync_stats,
    no_setup,
    ratio_check,
    render_rows,
    rss_note,
    rsync_wire_bytes,
    run_measured,
    side_by_side,
    verdict,
    verify_copies,
    write_report,
)
from tests.treegen import make_tree, mutate  # noqa: E402

DIGEST_BYTES = 32  # blake3

# --------------------------------------------------------------------------- the sshd


@dataclass(frozen=True)
class SshEndpoint:
    """What the benchmarks need from the loopback sshd of the test suite."""

    host: str  # the Host alias in home/.ssh/config
    port: int
    home: Path  # client HOME, with .ssh/config, the key and known_hosts
    env: Mapping[str, str]  # os.environ + HOME=home (+ MERKLESYNC_REMOTE_CMD)
    ssh_options: Sequence[str]  # "ssh -F config -i key -o ..." without host and command
    remote_cmd: str | None = None  # how the far side starts merklesync
    kind: str = "openssh"

    @property
    def ssh_command(self) -> str:
        """For ``rsync -e`` (OpenSSH reads ~ from the password database, not $HOME, so
        the config, key and known_hosts are named explicitly)."""
        return shlex.join(self.ssh_options)


@contextmanager
def loopback_sshd(
    work: Path, kind: str = "openssh", merklesync: Sequence[str] | None = None
) -> Iterator[SshEndpoint]:
    """Start the test suite's loopback sshd (tests/sshd.py) under ``work``; stop it
    after. ``merklesync``: the command that starts merklesync, on the far side too."""
    sshd = importlib.import_module("tests.sshd")
    workdir = work / "sshd"
    workdir.mkdir()
    daemon = sshd.start_daemon(kind, workdir)
    try:
        home = work / "ssh-home"
        server = (
            sshd.SSHServer(daemon, home)
            if merklesync is None
            else sshd.SSHServer(daemon, home, remote_cmd=shlex.join(merklesync))
        )
        yield SshEndpoint(
            host=str(server.host),
            port=int(server.port),
            home=Path(server.home),
            env=dict(server.env),
            ssh_options=list(server.ssh_argv("true")[:-2]),
            remote_cmd=str(server.remote_cmd),
            kind=str(server.kind),
        )
    finally:
        daemon.stop()


def session_floor(ssh: SshEndpoint, runs: int) -> float:
    """Best wall time of a bare SSH session, ``ssh HOST true`` with OpenSSH's
    client: what every run that starts a command on the far side pays (rsync,
    Unison and merklesync alike) before that command does anything."""
    argv = [*ssh.ssh_options, ssh.host, "true"]
    return min(checked(argv, run_measured(argv, env=ssh.env)).wall_s for _ in range(runs))


def floor_line(floor: float, rows: Sequence[Row], case: str, baseline: str) -> str:
    """The session floor, as a share of the baseline tool's time for ``case``."""
    row = next((r for r in rows if r.case == case), None)
    share = ""
    if row is not None and row.baseline.wall_s:
        share = f", {floor / row.baseline.wall_s:.2f}x {baseline}'s '{case}'"
    return (
        f"A bare SSH session (`ssh HOST true`, OpenSSH, best of 5): {floor:.3f} s{share}: "
        "the least any run pays that starts its command on the far side afresh."
    )


# --------------------------------------------------------------------------- the tools


@dataclass
class SshTools:
    ssh: SshEndpoint
    src: Path
    dst_r: Path  # "remote": on loopback, a local path reached through sshd
    dst_m: Path
    merklesync: list[str] | None  # None: rsync only
    cwd: Path  # every command runs here, so a stray relative path never lands elsewhere
    push_args: list[str] = field(default_factory=list)

    def rsync(self, *options: str) -> Run:
        argv = [
            "rsync",
            "-a",
            *options,
            "--stats",
            "-e",
            self.ssh.ssh_command,
            f"{self.src}/",
            f"{self.ssh.host}:{self.dst_r}/",
        ]
        m = checked(argv, run_measured(argv, env=self.ssh.env, cwd=self.cwd))
        return m, rsync_wire_bytes(m.stdout)

    def push(self) -> Run:
        assert self.merklesync is not None
        argv = [
            *self.merklesync,
            "push",
            str(self.src),
            f"{self.ssh.host}:{self.dst_m}",
            *self.push_args,
        ]
        m = run_measured([*argv, "--quiet", "--json", "--stats"], env=self.ssh.env, cwd=self.cwd)
        checked(argv, m)
        stray = self.cwd / f"{self.ssh.host}:"
        if stray.exists():
            raise BenchFailure(
                f"merklesync push treated {self.ssh.host}:PATH as a local path "
                f"(made {stray}): no SSH support yet?"
            )
        return m, merklesync_stats(m.stdout)

    def init_source(self) -> list[Run]:
        assert self.merklesync is not None
        return init_replica(self.merklesync, self.src, self.cwd)


WATCHED = Watched(
    "rsync",
    "nothing changed, watched",
    "10 files changed, watched",
    "`merklesync watch` on both (the remote one on the remote host)",
    kept=("nothing changed, watched + kept open", "10 files changed, watched + kept open"),
)

assert WATCHED.kept is not None
KEPT = WATCHED.kept


def verify(tools: SshTools, case: str) -> None:
    mine = [("merklesync", tools.dst_m)] if tools.merklesync is not None else []
    verify_copies(case, tools.src, [("rsync", tools.dst_r), *mine])


row = functools.partial(side_by_side, "rsync")


# --------------------------------------------------------------------------- columns


def wire_bytes(result: Result | None) -> int | None:
    """bytes_sent + bytes_received; None when the tool did not report them."""
    if result is None or (
        "bytes_sent" not in result.stats and "bytes_received" not in result.stats
    ):
        return None
    return int(result.stats.get("bytes_sent", 0)) + int(result.stats.get("bytes_received", 0))


def wire(result: Result | None) -> str:
    return MISSING if (n := wire_bytes(result)) is None else fmt_bytes(n)


def metadata(result: Result | None) -> int | None:
    """Wire bytes that are not file content: what the comparison costs."""
    n = wire_bytes(result)
    if n is None or result is None:
        return None
    return n - int(result.stats.get("bytes_transferred", 0))


def id_bound(d: int) -> str:
    """Lower bound to name d differences with 128-bit ids: d * (128 - log2 d) bits."""
    return fmt_bytes(math.ceil(d * (128 - math.log2(d)) / 8)) if d > 0 else MISSING


def cand_stat(key: str) -> Callable[[Row], str]:
    return lambda r: r.candidate.stat(key) if r.candidate else MISSING


COLUMNS = [
    Column("rsync wire", lambda r: wire(r.baseline)),
    Column("merklesync wire", lambda r: wire(r.candidate)),
    Column(
        "merklesync metadata",
        lambda r: MISSING if (m := metadata(r.candidate)) is None else fmt_bytes(m),
    ),
    Column("round trips", cand_stat("round_trips")),
    Column("files hashed", cand_stat("files_hashed")),
    Column("files sent", cand_stat("files_transferred")),
    Column("files copied there", cand_stat("files_copied")),
]


def targets(rows: Sequence[Row], depth: int, key_bytes: float) -> str:
    """The aims of the SSH issue, each with the measured value."""
    by_case = {r.case: r for r in rows}

    def ratio(case: str, limit: float) -> str:
        return ratio_check(rows, case, limit)

    lines = [
        "Targets: first copy <= 1.2x rsync; nothing changed and 10 changed <= 0.7x; wire when "
        "nothing changed <= 1% of rsync's; d changed: round trips <= depth + 2 "
        f"(= {depth + 2}), metadata <= 20 x d x (key + digest) + what nothing changed costs "
        f"(key: a path, {key_bytes:.0f} B on average here; digest: 32 B).",
        f"Measured: first copy {ratio('first copy', 1.2)}; "
        f"nothing changed {ratio('nothing changed', 0.7)} "
        f"({ratio(WATCHED.nothing, 0.7)} watched, {ratio(KEPT[0], 0.7)} watched + kept open); "
        f"10 changed {ratio('10 files changed', 0.7)} ({ratio(WATCHED.changed, 0.7)} watched, "
        f"{ratio(KEPT[1], 0.7)} watched + kept open).",
    ]
    same = by_case.get("nothing changed")
    constant = metadata(same.candidate) if same is not None else None
    theirs = wire_bytes(same.baseline) if same is not None else None
    if constant is not None and theirs:
        share = 100 * constant / theirs
        lines.append(f"Wire when nothing changed: {share:.3f}% of rsync's, {verdict(share <= 1)}.")
    for r in rows:
        d = _series_d(r.case)
        if d is None or r.candidate is None or constant is None:
            continue
        trips = int(r.candidate.stats.get("round_trips", 0))
        meta = metadata(r.candidate) or 0
        aim = round(20 * d * (key_bytes + DIGEST_BYTES)) + constant
        hashed = 20 * d * (KEY_BYTES + DIGEST_BYTES) + constant  # with the 8-byte hashed key
        lines.append(
            f"{r.case}: {trips} round trips {verdict(trips <= depth + 2)}; "
            f"metadata {fmt_bytes(meta)} of {fmt_bytes(aim)} {verdict(meta <= aim)} "
            f"(of {fmt_bytes(hashed)} with the {KEY_BYTES}-byte key hash instead of the "
            f"path: {verdict(meta <= hashed)})."
        )
    return "\n".join(lines)


def _series_d(case: str) -> int | None:
    head, _, tail = case.partition(" changed among ")
    return int(head) if tail and head.isdigit() else None


def run_cases(
    tools: SshTools, runs: int, seed: int, series: Sequence[int], n_files: int, copies: int
) -> list[Row]:
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
                f"best of {copies}, each into an empty DST; merklesync = init SRC (local) + push",
            )
        )
        verify(tools, "first copy")

        push = tools.push if tools.merklesync is not None else None
        print("case: nothing changed", file=sys.stderr)
        r, m = interleaved(runs, no_setup, tools.rsync, push)
        rows.append(row("nothing changed", r, m, f"best of {runs}"))
        verify(tools, "nothing changed")

        print("case: 10 files changed", file=sys.stderr)
        r, m = interleaved(runs, changes(tools.src, 10, seed + 100), tools.rsync, push)
        rows.append(row("10 files changed", r, m, f"best of {runs}; 10 other files each round"))
        verify(tools, "10 files changed")

        for d in series:
            case = f"{d} changed among {n_files:,}"
            print(f"case: {case}", file=sys.stderr)
            r, m = interleaved(1, changes(tools.src, d, seed + 1000 * d), tools.rsync, push)
            rows.append(row(case, r, m, f"single run; id lower bound {id_bound(d)}"))
            verify(tools, case)

        print("case: a directory renamed", file=sys.stderr)
        moved, files, size = biggest_directory(tools.src)
        r, m = interleaved(
            1, renames(tools.src, moved), functools.partial(tools.rsync, "--delete"), push
        )
        note = (
            f"single run; {moved} ({files:,} files, {fmt_bytes(size)}) renamed; rsync -a --delete"
        )
        rows.append(row("a directory renamed", r, m, note))
        verify(tools, "a directory renamed")

        if tools.merklesync is not None:
            rows += WATCHED.rows(
                tools.merklesync,
                [tools.src, tools.dst_m],
                tools.cwd,
                runs,
                (tools.rsync, tools.push),
                changes(tools.src, 10, seed + 300),
                functools.partial(verify, tools),
                env=tools.ssh.env,
                keep_open=(tools.src, f"{tools.ssh.host}:{tools.dst_m}"),
            )
    except BenchFailure:
        if rows:
            print(
                "\nPartial results before the failure:\n" + render_rows(rows, COLUMNS),
                file=sys.stderr,
            )
        raise
    return rows


def biggest_directory(src: Path) -> tuple[str, int, int]:
    """The top-level directory of ``src`` holding the most bytes: its name,
    its files and their bytes."""
    best = ("", 0, 0)
    for top in sorted(p for p in src.iterdir() if p.is_dir() and p.name != ".merklesync"):
        files = [p for p in top.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        if size > best[2]:
            best = (top.name, len(files), size)
    return best


def renames(src: Path, name: str) -> Callable[[int], None]:
    """Setup of a round: rename the directory ``name`` of ``src``."""

    def setup(round_no: int) -> None:
        (src / name).rename(src / f"{name}-renamed-{round_no}")

    return setup


def changes(src: Path, n: int, seed: int) -> Callable[[int], None]:
    """Setup of a round: modify ``n`` files, other ones each round (seed + round)."""

    def setup(round_no: int) -> None:
        mutate(src, modify=n, seed=seed + round_no)

    return setup


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=1000)
    p.add_argument("--min-size", type=int, default=1024)
    p.add_argument("--max-size", type=int, default=6800, help="default: 100k files ~390 MB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=3, help="runs of the repeatable cases (best kept)")
    p.add_argument("--copies", type=int, default=2, help="first copies of each tool (best kept)")
    p.add_argument(
        "--series",
        default="1,10,100",
        help="the d of the 'd changed among N' cases, comma-separated",
    )
    p.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    p.add_argument("--tmp", type=Path, help="where to make the trees (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the trees")
    p.add_argument("--merklesync", help="command to run merklesync (default: installed in a venv)")
    p.add_argument("--push-args", default="", help="extra arguments for merklesync push")
    p.add_argument("--rsync-only", action="store_true", help="measure rsync alone (the bar)")
    p.add_argument(
        "--sshd", choices=("openssh", "paramiko"), default="openssh", help="loopback server kind"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("rsync") is None or shutil.which("ssh") is None:
        print("rsync and ssh must be installed", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="merklesync-bench-ssh-", dir=args.tmp))
    try:
        t = time.perf_counter()
        info = make_tree(
            work / "src", args.files, args.dirs, args.min_size, args.max_size, args.seed
        )
        gen_s = time.perf_counter() - t
        header = (
            "# merklesync push vs rsync, over ssh (loopback sshd)\n\n"
            f"Tree: {info.file_count:,} files, {len(info.dirs):,} dirs, "
            f"{info.total_bytes / 1e6:.1f} MB (seed {args.seed}; generated in {gen_s:.1f} s).\n"
            f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; warm page cache. "
            f"{rss_note()} Remote-side processes are not measured. Wire bytes: rsync "
            "--stats totals; merklesync bytes_sent + bytes_received."
        )
        print(header + "\n", file=sys.stderr)
        merklesync = None if args.rsync_only else merklesync_argv(args.merklesync, work)
        with loopback_sshd(work, args.sshd, merklesync) as ssh:
            header += f" Server: {ssh.kind} on 127.0.0.1:{ssh.port}."
            tools = SshTools(
                ssh,
                work / "src",
                work / "dst-rsync",
                work / "dst-merklesync",
                merklesync,
                work,
                shlex.split(args.push_args),
            )
            series = [int(x) for x in args.series.split(",") if x.strip()]
            rows = run_cases(tools, args.runs, args.seed, series, info.file_count, args.copies)
            floor = session_floor(ssh, 5)
        depth = merkle.depth_for(info.file_count + len(info.dirs))
        report = [header, render_rows(rows, COLUMNS)]
        if not args.rsync_only:
            key_bytes = sum(len(p.encode()) for p in info.files) / max(1, len(info.files))
            report.append(targets(rows, depth, key_bytes))
        report.append(floor_line(floor, rows, "nothing changed", "rsync"))
        write_report("\n\n".join(report), args.out)
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
