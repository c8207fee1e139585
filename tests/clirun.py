"""Run the merklesync CLI in-process, as a user would type it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from merklesync.cli.app import cli
from tests.treegen import FIXED_PAST_TIME


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if line]


def ms(*args: str | Path) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


def run_python(
    script: str, *args: str | Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``script`` in an interpreter of its own (as a run would be), given
    ``args``; bounded by ``timeout``."""
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# What written_apart leaves in both replicas, found by their first scans.
FIRST_FOUND = "found-first.txt"


def written_apart(roots: tuple[Path, ...], make: Any) -> None:
    """Replicas that each wrote the same files (``make(root)`` makes them)
    after their first scan: the same content, every entry of a version of
    its own on each side, as replicas that met only later would hold (what
    a first scan finds is the version of its content, the same everywhere:
    model.found_version). Each holds FIRST_FOUND too, alike."""
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        first = root / FIRST_FOUND
        first.write_text("found by the first scan\n")
        os.utime(first, ns=(FIXED_PAST_TIME * 10**9,) * 2)  # not racy: read once
        assert ms("init", root).code == 0
        make(root)
        assert ms("status", root, "--quiet").code == 0
