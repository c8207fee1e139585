"""RemotePeer over the SSH transport in this process: bulk data both ways
across paramiko re-keys, with the local scan in the foreground (paramiko
runs threads, so refresh_all must not fork)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from sshd import Daemon

from merklesync.peer import remote as remote_mod
from merklesync.peer.local import LocalPeer
from merklesync.peer.open import RemoteOptions, open_peer, refresh_all
from merklesync.replica import Replica
from merklesync.transfer import push
from tests.clirun import ms
from tests.remote.conftest import REMOTE_CMD, make_side
from tests.treegen import assert_same_tree, make_tree


def test_bulk_both_ways_across_rekeys(
    daemons: Callable[[str], Daemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = make_side("ssh-to", daemons, tmp_path)
    assert side.server is not None
    side.server.use(monkeypatch)
    monkeypatch.setattr(paramiko.packet.Packetizer, "REKEY_BYTES", 8 << 20)
    kex: list[int] = []
    original = paramiko.Transport._activate_outbound  # type: ignore[attr-defined]

    def counting(self: paramiko.Transport) -> None:
        kex.append(1)
        original(self)

    monkeypatch.setattr(paramiko.Transport, "_activate_outbound", counting)
    forks: list[int] = []
    monkeypatch.setattr(Replica, "start_scan", lambda *a, **k: forks.append(1))
    src, far_root, back = tmp_path / "src", tmp_path / "far", tmp_path / "back"
    make_tree(src, files=12, dirs=2, min_size=2 << 20, max_size=4 << 20, seed=13)
    ms("init", src)
    options = RemoteOptions(remote_cmd=REMOTE_CMD)
    far = open_peer(side.addr(far_root), create=True, remote=options)
    local = LocalPeer.open(src)
    try:
        assert isinstance(far, remote_mod.RemotePeer) and threading.active_count() > 1
        refresh_all([local, far])
        result = push(local, far)
        assert result.outcomes and all(o.ok for o in result.outcomes.values())
    finally:
        local.close()
        far.close()
    assert_same_tree(src, far_root)
    sent_kex = len(kex)
    assert sent_kex >= 4  # the first exchange and re-keys along the way
    far = open_peer(side.addr(far_root), remote=options)
    mine = LocalPeer.open(back, create=True)
    other = LocalPeer.open(tmp_path / "other", create=True)
    try:
        refresh_all([far, mine, other])  # two local peers, threads running: no fork
        push(far, mine)
    finally:
        other.close()
        mine.close()
        far.close()
    assert_same_tree(src, back)
    # Received, the bytes are counted as they come: the far side goes on
    # sending while a re-key this side asked for is under way, so a loaded
    # machine sees fewer of them than the bytes over REKEY_BYTES say.
    assert len(kex) >= sent_kex + 2
    assert forks == []
