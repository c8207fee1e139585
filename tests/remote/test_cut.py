"""The connection cut at a random byte in the middle of a transfer: the run
fails with a connection error, no temp or partial file is left, and the
next run completes with nothing lost."""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import pytest

from merklesync.errors import ConnectionFailed, MerklesyncError
from merklesync.peer.local import LocalPeer
from merklesync.peer.open import refresh_all
from merklesync.peer.remote import RemotePeer
from merklesync.transfer import push
from merklesync.transport.pipes import SubprocessTransport
from tests.clirun import ms
from tests.remote.conftest import REMOTE_CMD, RSH
from tests.treegen import assert_same_tree, make_tree, snapshot

CUTS = 5
NEVER = 1 << 62


class CutTransport:
    """Pipes to `merklesync serve` that break after a number of bytes sent
    (``send_limit``) or received (``recv_limit``), as a dropped link would:
    the agent sees its input end (``kill``: it is killed outright, as when
    the remote machine goes down), this side sees the connection gone."""

    def __init__(
        self, root: Path, send_limit: int, recv_limit: int, *extra: str, kill: bool = False
    ) -> None:
        argv = [sys.executable, "-m", "merklesync", "serve", "--stdio", *extra, str(root)]
        self.inner = SubprocessTransport(argv)
        self.timeout: float | None = None
        self.send_limit, self.recv_limit = send_limit, recv_limit
        self.bytes_sent = self.bytes_received = 0
        self.cut = False
        self.kill = kill

    def _cut(self) -> None:
        self.cut = True
        if self.kill:
            os.kill(self.inner.pid, signal.SIGKILL)
            self.inner._proc.wait()
        else:
            self.inner.close_write()

    def send(self, data: bytes) -> None:
        if self.cut:
            raise ConnectionFailed("link cut")
        room = self.send_limit - self.bytes_sent
        if len(data) > room:
            self.inner.send(data[: max(room, 0)])
            self.bytes_sent += max(room, 0)
            self._cut()
            raise ConnectionFailed("link cut while sending")
        self.inner.send(data)
        self.bytes_sent += len(data)

    def recv(self, n: int) -> bytes:
        if self.cut:
            return b""
        room = self.recv_limit - self.bytes_received
        if room <= 0:
            self._cut()
            if self.kill:
                raise ConnectionFailed("link cut while receiving")
            return b""
        data = self.inner.recv(min(n, room))
        self.bytes_received += len(data)
        return data

    def close(self, *, ended: bool = False) -> None:
        self.inner.close(ended=ended)  # waits for the agent to exit

    def stderr_text(self) -> str:
        return self.inner.stderr_text()

    def exit_status(self) -> int | None:
        return self.inner.exit_status()

    @property
    def relayed(self) -> bool:
        return self.inner.relayed


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".merklesync-tmp-")]


def partial_files(root: Path, src: Path) -> list[str]:
    """Files in root whose content is not the source's (a half-written file)."""
    want = snapshot(src)
    got = snapshot(root)
    return [p for p, v in got.items() if p in want and v[0] == "file" and v != want[p]]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(root, files=24, dirs=4, min_size=1, max_size=600_000, seed=21)
    assert ms("init", root).code == 0
    return root


def total_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_cut_at_random_bytes(direction: str, src: Path, tmp_path: Path) -> None:
    rng = random.Random(f"cut-{direction}")
    size = total_bytes(src)
    for n in range(CUTS):
        remote_root = tmp_path / f"remote{n}"
        local_root = tmp_path / f"local{n}"
        cut_at = rng.randrange(200, size)
        kill = n % 2 == 1
        if direction == "push":  # local src -> remote dst, cut in what we send
            far_root = remote_root
            transport = CutTransport(far_root, cut_at, NEVER, "--create", kill=kill)
        else:  # remote src -> local dst, cut in what we receive
            ms("push", src, remote_root)
            far_root = remote_root
            transport = CutTransport(far_root, NEVER, cut_at, kill=kill)
        far = RemotePeer(transport, f"cut:{far_root}", where="cut")
        near = LocalPeer.open(src if direction == "push" else local_root, create=True)
        a, b = (near, far) if direction == "push" else (far, near)
        try:
            refresh_all([a, b])
            with pytest.raises(MerklesyncError) as info:
                push(a, b)
            assert info.value.exit_code in (6, 7), info.value
        finally:
            near.close()
            far.close()
        dst = remote_root if direction == "push" else local_root
        if not (kill and direction == "push"):  # a killed agent leaves its temp file...
            assert temp_files(dst) == [], f"cut at {cut_at}"
        assert partial_files(dst, src) == [], f"cut at {cut_at}"
        # the next run completes and nothing is lost
        if direction == "push":
            r = ms("push", src, f"h:{dst}", "--rsh", RSH, "--remote-cmd", REMOTE_CMD)
        else:
            r = ms("pull", f"h:{remote_root}", local_root, "--rsh", RSH, "--remote-cmd", REMOTE_CMD)
        assert r.code == 0, (cut_at, r.err)
        assert_same_tree(src, dst)
        assert temp_files(dst) == []  # ...which the next scan removes
