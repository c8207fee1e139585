"""A push or a sync stopped at any point of the library's work, then run
again to its end: the replicas agree, no conflict nobody made is
reported, and each index's tree is the one its rows make. The points are
where Python raises a Ctrl-C or SIGTERM: the entry of a function, and
the return of a call into C (a system call during which the signal
came); a profile function raises it at the n-th of them."""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merklesync.replica import Replica
from tests.clirun import ms, run_python
from tests.treegen import assert_same_tree, make_tree, mutate

RSH = f"{sys.executable} {Path(__file__).resolve().parents[1] / 'remote' / 'rsh.py'}"
AGENT = f"{sys.executable} -m merklesync"

# A run in a process of its own, as a user's is (what a stopped run still
# held in its process, its lock and its index connection, goes with it),
# stopped at the n-th entry of a library function or return of a C call
# made by one (not the CLI's, nor a finalizer's: Python drops what those
# raise) by a KeyboardInterrupt ("interrupt") or SIGKILL ("kill"); n = 0:
# never. It writes how many such points it passed to a file.
_STOPPED_AT = """
import os, signal, sys
import merklesync
how, n, counted = sys.argv.pop(1), int(sys.argv.pop(1)), sys.argv.pop(1)
library = os.path.dirname(merklesync.__file__) + os.sep
cli = library + "cli" + os.sep
me = os.getpid()
passed = 0
def points(frame, event, arg):
    global passed
    code = frame.f_code
    if (
        event in ("call", "c_return")
        and code.co_filename.startswith(library)
        and not code.co_filename.startswith(cli)
        and code.co_name != "__del__"
        and os.getpid() == me
    ):
        passed += 1
        if passed == n:
            sys.setprofile(None)
            if how == "kill":
                os.kill(me, signal.SIGKILL)
            raise KeyboardInterrupt
from merklesync.cli import main
sys.setprofile(points)
try:
    main()
finally:
    sys.setprofile(None)
    if os.getpid() == me:
        with open(counted, "w") as f:
            f.write(str(passed))
"""


def _run(how: str, n: int, counted: Path, *args: str | Path) -> int:
    """The exit status of a run stopped at its ``n``-th point; the points
    it passed are written to ``counted``."""
    return run_python(_STOPPED_AT, how, str(n), counted, *args, timeout=120).returncode


def _changed(a: Path, b: Path, rng: random.Random, seed: int, two_way: bool) -> None:
    """Edits, additions and deletions on A, some files replaced by
    directories, some moved (copied there from their old paths); for a
    sync, new files on B too."""
    mutate(a, modify=5, add=4, delete=3, seed=seed, min_size=0, max_size=200)
    files = sorted(p for p in a.rglob("*") if p.is_file() and ".merklesync" not in p.parts)
    picked = rng.sample(files, 5 if rng.random() < 0.5 else 3)
    for p in picked[:2] if len(picked) == 5 else []:
        p.unlink()
        p.mkdir()
        (p / "in.txt").write_text("inside\n")
    for i, p in enumerate(picked[-3:]):
        (a / "moved").mkdir(exist_ok=True)
        p.rename(a / "moved" / f"{i}-{p.name}")
    if two_way:
        for i in range(3):
            (b / f"b-{i}.txt").write_text(f"written on b {i}\n")


@pytest.mark.parametrize("where", ["local", "agent"])
@pytest.mark.parametrize("how", ["interrupt", "kill"])
@pytest.mark.parametrize("command", ["push", "sync"])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10**6), at=st.floats(0, 1))
def test_a_run_stopped_anywhere_then_run_again_ends_as_one_run(
    command: str, how: str, where: str, seed: int, at: float
) -> None:
    """``where``: B is a local replica, or one reached through an agent
    (``--rsh``), which sees its client go."""
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp())
    try:
        a, b = tmp / "a", tmp / "b"
        make_tree(a, files=25, dirs=4, seed=seed, min_size=0, max_size=200)
        assert ms("init", a).code == 0

        def run(root_a: Path, root_b: Path) -> list[str | Path]:
            if where == "local":
                return [command, root_a, root_b]
            return [command, root_a, f"pipehost:{root_b}", "--rsh", RSH, "--remote-cmd", AGENT]

        assert ms(*run(a, b)).code == 0
        _changed(a, b, rng, seed + 1, command == "sync")
        # How many points the run passes, on a copy of both.
        probe = tmp / "probe"
        for root in (a, b):
            shutil.copytree(root, probe / root.name, symlinks=True)
        assert _run(how, 0, tmp / "points", *run(probe / "a", probe / "b")) == 0
        n = 1 + int(at * (int((tmp / "points").read_text()) - 1))
        code = _run(how, n, tmp / "points", *run(a, b))
        assert code in (0, 130 if how == "interrupt" else -9)
        again = ms(*run(a, b), "--json")
        assert again.code == 0, again.err
        if command == "sync":
            made = {e["what"] for e in again.json()["events"]}
            assert not made & {"conflict", "modify-delete"}, again.out
        assert_same_tree(a, b)
        for root in (a, b):
            with Replica.open(root) as replica:
                assert replica.index.tree_matches()
    finally:
        shutil.rmtree(tmp)
