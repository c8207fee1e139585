"""Shared pieces of the side-by-side benchmarks: run a command and measure it, keep the
best of several runs, and print the comparison as a Markdown table.

Peak RSS is ``ru_maxrss`` (KiB on Linux) of the measured child as reaped by ``wait4``:
the largest single process among the child and the descendants it waited for, not their
sum (rsync runs 2-3 processes, merklesync one), and never a process on the far side of
ssh. Linux carries the *parent's* high-water RSS into a child across fork/vfork + exec, so
a child spawned straight from this (large) Python process would report at least our own
size. ``run_measured`` therefore starts the command under GNU ``/usr/bin/time`` (Debian
package ``time``), a small C process, and reads the child's ``%M`` from it; without GNU
time it falls back to ``os.wait4`` on the direct child and marks the result
``rss_exact=False`` (an upper bound that includes this process's own peak).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "MISSING",
    "BenchFailure",
    "Column",
    "Measured",
    "Result",
    "Row",
    "Run",
    "Watched",
    "checked",
    "fmt_bytes",
    "fmt_mb",
    "fmt_ratio",
    "fmt_seconds",
    "gnu_time",
    "init_replica",
    "interleaved",
    "markdown_table",
    "merklesync_argv",
    "merklesync_stats",
    "no_setup",
    "ratio",
    "ratio_check",
    "render_rows",
    "rss_note",
    "rsync_wire_bytes",
    "run_measured",
    "side_by_side",
    "verdict",
    "verify_copies",
    "watching",
    "write_report",
]

MISSING = "-"


@dataclass(frozen=True)
class Measured:
    """One finished process."""

    wall_s: float
    max_rss_kib: int
    returncode: int
    stdout: str
    stderr: str
    rss_exact: bool = True  # False: wait4 fallback, includes the parent's own peak

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe_failure(self, argv: Sequence[str | os.PathLike[str]]) -> str:
        tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-15:])
        return f"{' '.join(os.fspath(a) for a in argv)} exited {self.returncode}:\n{tail}"


#: One run of a tool: the process, and the counters it reported.
Run = tuple[Measured, Mapping[str, int]]


class BenchFailure(Exception):
    """A tool failed, or a replica differs from what the oracle expects."""


def checked(argv: Sequence[str | os.PathLike[str]], m: Measured) -> Measured:
    """``m`` if the command succeeded; else raise `BenchFailure` with its output."""
    if not m.ok:
        raise BenchFailure(m.describe_failure(argv))
    return m


def merklesync_argv(spec: str | None, work: Path) -> list[str]:
    """How to start merklesync: ``spec`` split as a shell would, or by default
    merklesync as a user has it: this checkout installed with pip into a fresh
    virtual environment under ``work``, run as ``python -m merklesync`` (a
    console script behind a pyenv shim would add its own start-up time). An
    installed package has its byte code compiled and loads no editable-install
    hook; a development checkout run in place may compile changed modules at
    every start (PYTHONDONTWRITEBYTECODE) and runs the .pth hooks of this
    interpreter's site-packages: some 20-80 ms of every run, on both sides of
    an SSH run."""
    if spec:
        return shlex.split(spec)
    # Built from a copy of what the package is made of: a build in the checkout
    # itself would leave a build/ there, whose stale files a later one takes in.
    source = work / "merklesync-source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "merklesync", source / "merklesync", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = work / "venv"
    print(f"installing merklesync into {venv}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(source)], check=True)
    return [str(python), "-m", "merklesync"]


_GNU_TIME = "/usr/bin/time"
_RSS_MARK = "merklesync-bench-maxrss-kib="


@functools.cache
def gnu_time() -> str | None:
    """Path of GNU time if installed (BSD/busybox ``time`` lack ``-f``/``-o``)."""
    if not os.access(_GNU_TIME, os.X_OK):
        return None
    probe = subprocess.run([_GNU_TIME, "--version"], capture_output=True, text=True, check=False)
    return _GNU_TIME if "GNU" in probe.stdout + probe.stderr else None


def rss_note() -> str:
    """One sentence saying how peak RSS was measured, for the report header."""
    if gnu_time() is not None:
        return "Peak RSS: ru_maxrss of the largest local process, via GNU time."
    return (
        "Peak RSS: os.wait4 ru_maxrss WITHOUT GNU time: an upper bound that includes "
        "the benchmark's own size (apt-get install time)."
    )


def run_measured(
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Measured:
    """Run ``argv`` to completion; wall time, peak RSS (KiB), exit code and output.

    Output goes to temporary files (no pipe to drain while waiting); stdin is
    /dev/null. See the module docstring for how peak RSS is read.
    """
    command = [os.fspath(a) for a in argv]
    timer = gnu_time()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file,
    ):
        if timer is not None:
            command = [timer, "-f", _RSS_MARK + "%M", "-o", rss_file.name, *command]
        start = time.perf_counter()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen from waiting
        rss, exact = int(usage.ru_maxrss), False
        if timer is not None:
            for line in rss_file.read().splitlines():
                if line.startswith(_RSS_MARK):
                    rss, exact = int(line[len(_RSS_MARK) :]), True
        out.seek(0)
        err.seek(0)
        return Measured(
            wall_s=wall,
            max_rss_kib=rss,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            rss_exact=exact,
        )


@dataclass(frozen=True)
class Result:
    """One tool on one case: best wall time and largest peak RSS over ``runs`` runs.

    ``stats`` holds counters the tool reported (merklesync's JSON ``stats``, or
    rsync's ``--stats`` bytes), from the run whose time is kept.
    """

    tool: str
    wall_s: float
    max_rss_kib: int
    runs: int = 1
    stats: Mapping[str, int] = field(default_factory=dict)

    def stat(self, key: str) -> str:
        """A counter formatted with thousands separators, or ``-`` if not reported."""
        value = self.stats.get(key)
        return MISSING if value is None else f"{value:,}"

    @classmethod
    def combine(cls, tool: str, runs: Sequence[Run]) -> Result:
        """Best wall time (and its stats) and largest peak RSS over several runs."""
        if not runs:
            raise ValueError("no runs to combine")
        best, best_stats = min(runs, key=lambda r: r[0].wall_s)
        peak = max(m.max_rss_kib for m, _ in runs)
        return cls(tool, best.wall_s, peak, len(runs), dict(best_stats))

    @classmethod
    def chain(cls, tool: str, steps: Sequence[Run]) -> Result:
        """Steps run one after the other (e.g. ``init`` then ``push``) as one result:
        times added, peak RSS the largest, stats from the last step."""
        if not steps:
            raise ValueError("no steps to chain")
        return cls(
            tool,
            sum(m.wall_s for m, _ in steps),
            max(m.max_rss_kib for m, _ in steps),
            1,
            dict(steps[-1][1]),
        )


@dataclass(frozen=True)
class Row:
    """One case: the baseline tool (rsync, Unison) against merklesync (``None`` when
    merklesync was not run)."""

    case: str
    baseline: Result
    candidate: Result | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.candidate is None:
            return None
        return ratio(self.candidate.wall_s, self.baseline.wall_s)


@dataclass(frozen=True)
class Column:
    """An extra column: a header and how to fill it from a row."""

    header: str
    cell: Callable[[Row], str]


def interleaved(
    n: int,
    setup: Callable[[int], None],
    baseline: Callable[[], Run],
    candidate: Callable[[], Run] | None,
) -> tuple[list[Run], list[Run]]:
    """``n`` rounds of: ``setup(round)`` (recreate the state), then both tools, the
    baseline first in even rounds and second in odd ones. Gives (baseline runs,
    candidate runs), ready for :meth:`Result.combine`."""
    base_runs: list[Run] = []
    cand_runs: list[Run] = []
    for i in range(n):
        setup(i)
        steps: list[tuple[Callable[[], Run], list[Run]]] = [(baseline, base_runs)]
        if candidate is not None:
            steps.append((candidate, cand_runs))
        for run, runs in steps if i % 2 == 0 else reversed(steps):
            runs.append(run())
    return base_runs, cand_runs


def first_copies(
    n: int,
    baseline: tuple[str, Callable[[], Run]],
    candidate: Callable[[], Sequence[Run]] | None,
    emptied: Sequence[Path],
) -> tuple[Result, Result | None]:
    """``n`` first copies of each tool, in turns (:func:`interleaved`);
    before each round after the first, the ``emptied`` paths are removed (the
    destinations, and the source's ``.merklesync``: each copy starts from nothing).
    ``candidate`` gives the steps of one copy (``init``, then ``push``), timed as one.
    The best copy of each is kept: on a disk whose speed swings with what was just
    removed, one copy each says more about the disk than about the tools."""
    chained: list[Result] = []

    def empty(round_no: int) -> None:
        if round_no:
            for path in emptied:
                shutil.rmtree(path, ignore_errors=True)

    def one_copy() -> Run:
        assert candidate is not None
        steps = candidate()
        chained.append(Result.chain("merklesync", steps))
        return steps[-1]  # timed above, as one with the steps before it

    base_runs, _ = interleaved(n, empty, baseline[1], one_copy if candidate else None)
    best = None
    if chained:
        fastest = min(chained, key=lambda r: r.wall_s)
        peak = max(r.max_rss_kib for r in chained)
        best = Result(fastest.tool, fastest.wall_s, peak, len(chained), dict(fastest.stats))
    return Result.combine(baseline[0], base_runs), best


def no_setup(round_no: int) -> None:
    """Setup for cases whose state needs no recreating (e.g. nothing changed)."""


# --------------------------------------------------------------------------- parsing


def merklesync_stats(stdout: str) -> dict[str, int]:
    """The integer fields of ``stats`` in the JSON object merklesync printed
    (the whole output, or else its last line that parses as a JSON object)."""
    candidates = [stdout, *reversed(stdout.strip().splitlines())]
    for text in candidates:
        try:
            doc: Any = json.loads(text)
        except ValueError:
            continue
        if isinstance(doc, dict):
            stats = doc.get("stats")
            if isinstance(stats, dict):
                return {
                    k: int(v)
                    for k, v in stats.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            return {}
    return {}


_RSYNC_TOTAL = re.compile(r"^Total bytes (sent|received):\s*([\d,.]+)", re.MULTILINE)


def rsync_wire_bytes(stdout: str) -> dict[str, int]:
    """``bytes_sent`` / ``bytes_received`` from rsync ``--stats`` output
    ("Total bytes sent: 1,234"): what crossed the wire, from the client's side."""
    out: dict[str, int] = {}
    for which, number in _RSYNC_TOTAL.findall(stdout):
        out[f"bytes_{which}"] = int(number.replace(",", "").replace(".", ""))
    return out


# --------------------------------------------------------------------------- formatting


def ratio(candidate: float, baseline: float) -> float | None:
    return candidate / baseline if baseline > 0 else None


def fmt_ratio(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}x"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_mb(kib: int | None) -> str:
    """KiB (as ``ru_maxrss``) shown as decimal MB."""
    return MISSING if kib is None else f"{kib * 1024 / 1e6:.1f}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return MISSING
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded so it also reads as plain text."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row}")
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def render_rows(
    rows: Sequence[Row],
    extra: Sequence[Column] = (),
    baseline_name: str | None = None,
    candidate_name: str = "merklesync",
) -> str:
    """The standard comparison: case, runs, both wall times, ratio, both peak RSS,
    then ``extra`` columns, then the note."""
    base = baseline_name or (rows[0].baseline.tool if rows else "baseline")
    cand = candidate_name
    headers = [
        "case",
        "runs",
        f"{base} s",
        f"{cand} s",
        f"{cand}/{base}",
        f"{base} RSS MB",
        f"{cand} RSS MB",
        *(c.header for c in extra),
        "note",
    ]
    body = []
    for r in rows:
        c = r.candidate
        runs = str(r.baseline.runs) if c is None else f"{r.baseline.runs}/{c.runs}"
        body.append(
            [
                r.case,
                runs,
                fmt_seconds(r.baseline.wall_s),
                fmt_seconds(c.wall_s) if c else MISSING,
                fmt_ratio(r.ratio),
                fmt_mb(r.baseline.max_rss_kib),
                fmt_mb(c.max_rss_kib) if c else MISSING,
                *(col.cell(r) for col in extra),
                r.note,
            ]
        )
    return markdown_table(headers, body)


def write_report(text: str, out: Path | None) -> None:
    """Print ``text``; also write it to ``out`` when given."""
    print(text)
    if out is not None:
        out.write_text(text + "\n")


def side_by_side(
    baseline: str, case: str, base_runs: list[Run], m_runs: list[Run], note: str
) -> Row:
    """A row: the other tool's runs against merklesync's (absent: not measured)."""
    return Row(
        case,
        Result.combine(baseline, base_runs),
        Result.combine("merklesync", m_runs) if m_runs else None,
        note,
    )


def init_replica(merklesync: Sequence[str], root: Path, cwd: Path, *options: str) -> list[Run]:
    """``merklesync init ROOT`` when ROOT is not a replica yet (push needs one)."""
    if (root / ".merklesync").exists():
        return []
    argv = [*merklesync, "init", *options, str(root), "--quiet"]
    return [(checked(argv, run_measured(argv, cwd=cwd)), {})]


def verify_copies(case: str, src: Path, dests: Sequence[tuple[str, Path]]) -> None:
    """The oracle of the one-way cases: every destination equals the source
    (kind, mode, bytes, links), by treegen's snapshot, never merklesync's code."""
    from tests.treegen import assert_same_tree, snapshot

    t = time.perf_counter()
    want = snapshot(src)
    for name, dst in dests:
        if not dst.is_dir():
            raise BenchFailure(f"after '{case}', the {name} destination {dst} does not exist")
        try:
            assert_same_tree(want, snapshot(dst), names=("source", name))
        except AssertionError as e:
            raise BenchFailure(f"after '{case}', the {name} destination differs:\n{e}") from e
    print(f"  verified '{case}' ({time.perf_counter() - t:.1f} s)", file=sys.stderr)


@contextlib.contextmanager
def watching(
    merklesync: Sequence[str],
    roots: Sequence[Path],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    extra: Mapping[Path, Sequence[str]] | None = None,
) -> Iterator[None]:
    """``merklesync watch`` on each root (all on this machine: for the SSH
    benchmarks the remote replica is a loopback one), with ``extra``
    arguments for some, stopped on exit."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for root in roots:
            argv = [*merklesync, "watch", str(root), *(extra or {}).get(root, ())]
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stderr is not None
            line = proc.stderr.readline()  # "watching ROOT" once the watches are in place
            while line.startswith("keeping a connection"):
                line = proc.stderr.readline()
            if not line.startswith("watching"):
                raise BenchFailure(f"merklesync watch {root} did not start: {line.strip()}")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Watched:
    """The repeatable cases run again with `merklesync watch` on both
    replicas, and (``kept``: their names) again with the local watcher
    keeping the connection to the remote one open."""

    baseline: str  # the other tool's name
    nothing: str  # the two case names
    changed: str
    note: str
    kept: tuple[str, str] | None = None

    def rows(
        self,
        merklesync: Sequence[str],
        roots: Sequence[Path],
        cwd: Path,
        runs: int,
        tools: tuple[Callable[[], Run], Callable[[], Run]],
        change: Callable[[int], None],
        verify: Callable[[str], None],
        *,
        env: Mapping[str, str] | None = None,
        keep_open: tuple[Path, str] | None = None,
    ) -> list[Row]:
        """``tools``: (baseline, merklesync); ``change``: the setup of the
        changed case; ``keep_open``: (the local root, the remote's address)."""
        baseline, candidate = tools
        variants: list[tuple[tuple[str, str], dict[Path, list[str]], str]] = [
            ((self.nothing, self.changed), {}, self.note)
        ]
        if keep_open is not None and self.kept is not None:
            root, address = keep_open
            note = f"{self.note}, the local one with --keep-open"
            variants.append((self.kept, {root: ["--keep-open", address]}, note))
        out = []
        for names, extra, note in variants:
            with watching(merklesync, roots, cwd, env=env, extra=extra):
                candidate()  # the scans take the watchers' first answers
                for case, setup in zip(names, (no_setup, change), strict=True):
                    print(f"case: {case}", file=sys.stderr)
                    base_runs, m_runs = interleaved(runs, setup, baseline, candidate)
                    note_runs = f"best of {runs}; {note}"
                    out.append(side_by_side(self.baseline, case, base_runs, m_runs, note_runs))
                    verify(case)
        return out


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ratio_check(rows: Sequence[Row], case: str, limit: float) -> str:
    """The wall-time ratio of a case against its target: "0.53x met"."""
    row = next((r for r in rows if r.case == case), None)
    if row is None or row.ratio is None:
        return "n/a"
    return f"{row.ratio:.2f}x {verdict(row.ratio <= limit)}"
