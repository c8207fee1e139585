"""A file over 2 GiB, pushed and pulled over a real OpenSSH server: past
paramiko's 512 MiB re-key threshold several times, and past any 32-bit size."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from sshd import Daemon

from tests.clirun import ms
from tests.remote.conftest import Side, make_side

SIZE = (2 << 30) + 12345  # just over 2 GiB


@pytest.fixture
def roomy() -> Iterator[Path]:
    """A directory in memory (tmpfs) when the machine has one, else on disk."""
    base = "/dev/shm" if shutil.disk_usage("/dev/shm").free > 6 * SIZE else None
    path = Path(tempfile.mkdtemp(prefix="merklesync-large-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _make(path: Path) -> bytes:
    """A 2 GiB file that is not all zeros, made quickly, and its digest."""
    block = os.urandom(1 << 20)
    hasher = blake3.blake3()
    with open(path, "wb") as f:
        written = 0
        while written < SIZE:
            chunk = block[: min(len(block), SIZE - written)]
            # Vary each MiB a little, so misplaced blocks would be noticed.
            chunk = written.to_bytes(8, "big") + chunk[8:]
            f.write(chunk)
            hasher.update(chunk)
            written += len(chunk)
    return hasher.digest()


def _digest(path: Path) -> bytes:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.digest()


@pytest.mark.slow
def test_over_2_gib_both_ways(
    daemons: Callable[[str], Daemon], tmp_path: Path, roomy: Path
) -> None:
    side: Side = make_side("ssh-to", daemons, tmp_path)
    src, remote, back = roomy / "src", roomy / "remote", roomy / "back"
    src.mkdir()
    digest = _make(src / "big.bin")
    assert ms("init", src).code == 0
    r = side.ms("push", src, side.addr(remote), "--json", "--stats")
    assert r.code == 0, r.err
    assert r.json()["stats"]["bytes_transferred"] == SIZE
    assert _digest(remote / "big.bin") == digest
    (src / "big.bin").unlink()
    r = side.ms("pull", side.addr(remote), back, "--json", "--stats")
    assert r.code == 0, r.err
    assert r.json()["stats"]["bytes_transferred"] == SIZE
    assert (back / "big.bin").stat().st_size == SIZE
    assert _digest(back / "big.bin") == digest
