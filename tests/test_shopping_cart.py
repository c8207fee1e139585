"""examples/shopping-cart/run.sh: the Dynamo cart, merged by `sync --on-conflict union`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "shopping-cart" / "run.sh"


def test_shopping_cart_runs(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHON=sys.executable)
    bindir = Path(sys.executable).parent
    if shutil.which("merklesync") is None:
        env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: both carts hold coffee, MacBook and iPhone" in proc.stdout
    assert "ok: conflict copy cart.conflict-" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the script cleans up after itself
