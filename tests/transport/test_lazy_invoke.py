"""paramiko's ``invoke`` import is deferred, and ``Match exec`` still works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
import merklesync.transport.ssh
from merklesync.transport import ssh_config
assert type(sys.modules["invoke"]).__name__ == "_Deferred", "invoke imported early"
target = ssh_config.resolve("far", None, None)
print(target.hostname)
assert type(sys.modules["invoke"]).__name__ == "module"
"""


@pytest.mark.parametrize(("condition", "hostname"), [("true", "127.0.0.9"), ("false", "far")])
def test_match_exec_runs_invoke_when_the_config_needs_it(
    tmp_path: Path, condition: str, hostname: str
) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(f'Match exec "{condition}"\n  HostName 127.0.0.9\n')
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hostname
