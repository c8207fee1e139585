"""The examples in examples/ run as documented."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run an example as a user would, with the installed merklesync on PATH."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    if shutil.which("merklesync") is None:
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", str(EXAMPLES / script)], capture_output=True, text=True, env=env, timeout=120
    )


def test_quickstart_runs(tmp_path: Path) -> None:
    proc = run_example("quickstart.sh", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "M todo.md" in proc.stdout
    assert "conflict: both sides changed it" in proc.stderr


def test_watch_example_runs(tmp_path: Path) -> None:
    proc = run_example("watch.sh", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "- water the basil" in proc.stdout
    assert "files scanned: 0" in proc.stdout


def test_three_sites_example_runs(tmp_path: Path) -> None:
    proc = run_example("three-sites.sh", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "- fix the bike" in proc.stdout and "- book the ferry" in proc.stdout
    assert "rye.txt" in proc.stdout
    assert "identical: True changes: 0" in proc.stdout
    assert "3 replicas identical" in proc.stderr
