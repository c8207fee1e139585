"""The examples in examples/ run as documented."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    bindir = Path(sys.executable).parent
    if shutil.which("merklesync") is None:
        env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "quickstart.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "M todo.md" in proc.stdout
    assert "conflict: both sides changed it" in proc.stderr


def test_watch_example_runs(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    bindir = Path(sys.executable).parent
    if shutil.which("merklesync") is None:
        env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "watch.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "- water the basil" in proc.stdout
    assert "files scanned: 0" in proc.stdout
