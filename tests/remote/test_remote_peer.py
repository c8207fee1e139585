"""RemotePeer against `merklesync serve --stdio` over subprocess pipes, through
the library API: batching, splitting, streaming, locking, errors."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from merklesync import merkle
from merklesync.errors import ConnectionFailed, MerklesyncError, NotAReplica, ReplicaLocked
from merklesync.merkle import ROOT, NodeId
from merklesync.model import Entry, Unreadable, key_of, leaf_of
from merklesync.peer import WriteItem
from merklesync.peer import remote as remote_mod
from merklesync.peer.local import LocalPeer, TooManyEntries
from merklesync.peer.open import refresh_all
from merklesync.peer.remote import RemotePeer
from merklesync.protocol.session import ClientSession
from merklesync.replica import Replica
from merklesync.sources.directory import DirectorySource
from merklesync.transfer import push
from merklesync.transport.pipes import SubprocessTransport
from tests.clirun import ms
from tests.protocol.strategies import file_entry_of
from tests.treegen import assert_same_tree, make_tree

SALT = b"\x03" * merkle.SALT_BYTES


def serve_argv(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "merklesync", "serve", "--stdio", *extra, str(root)]


def agent(root: Path, *extra: str, env: dict[str, str] | None = None) -> RemotePeer:
    transport = SubprocessTransport(serve_argv(root, *extra), env=env)
    return RemotePeer(transport, f"pipe:{root}", where="pipe")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    make_tree(root, files=40, dirs=5, seed=5)
    assert ms("init", root).code == 0
    return root


@pytest.fixture
def remote(tree: Path) -> Iterator[RemotePeer]:
    peer = agent(tree)
    try:
        yield peer
    finally:
        peer.close()


def test_remote_answers_like_the_local_replica(tree: Path) -> None:
    peer = agent(tree)
    try:
        report = peer.refresh()
        assert report.scanned == 45 and report.hashed == 0
        everything = peer.entries_under([ROOT])
        remote_answers = (
            peer.replica_id,
            peer.root(),
            peer.children([ROOT], SALT),
            peer.compare(SALT, _groups(everything)),
            sorted(e.path for e in everything),
        )
        keys = [e.key for e in everything]
        remote_entries = peer.entries(keys)
    finally:
        peer.close()
    local = LocalPeer.open(tree)  # the agent released the lock when close() returned
    try:
        assert remote_answers == (
            local.replica_id,
            local.root(),
            local.children([ROOT], SALT),
            local.compare(SALT, _groups(local.entries_under([ROOT]))),
            sorted(e.path for e in local.entries_under([ROOT])),
        )
        assert remote_entries == local.entries(keys)
    finally:
        local.close()


def _groups(entries: list[Entry]) -> list[tuple[NodeId, list[bytes]]]:
    """What the other side sends: all of node (1, 3) but one entry, a
    stranger in (1, 7), nothing for (1, 9)."""

    def record(e: Entry) -> bytes:
        return merkle.short_record(SALT, e.key, e.leaf_hash())

    under_3 = sorted(record(e) for e in entries if merkle.prefix_of(e.key, 1) == 3)
    assert len(under_3) > 1
    return [((1, 3), under_3[1:]), ((1, 7), [b"stranger"]), ((1, 9), [])]


def test_compare_answers_what_differs(remote: RemotePeer) -> None:
    everything = remote.entries_under([ROOT])
    theirs, lacking = remote.compare(SALT, _groups(everything))
    assert lacking == [b"stranger"]
    expected = {e.path for e in everything if merkle.prefix_of(e.key, 1) in (7, 9)}
    first_of_3 = min(
        (e for e in everything if merkle.prefix_of(e.key, 1) == 3),
        key=lambda e: merkle.short_record(SALT, e.key, e.leaf_hash()),
    )
    assert {e.path for e in theirs} == expected | {first_of_3.path}


def test_round_trips_and_bytes_are_counted(remote: RemotePeer) -> None:
    remote.refresh()
    assert remote.stats.round_trips == 0  # the scan is overlapped, not counted
    remote.children([ROOT], SALT)
    remote.compare(SALT, [((1, 0), [])])
    assert remote.stats.round_trips == 2
    assert remote.stats.bytes_received == remote.transport.bytes_received > 256
    assert remote.stats.bytes_sent == remote.transport.bytes_sent


def test_requests_over_a_cap_are_split_and_pipelined(
    remote: RemotePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [e.key for e in remote.entries_under([ROOT])]
    want = remote.entries(keys)
    monkeypatch.setattr(remote_mod, "MAX_KEYS", 7)
    before = remote.stats.round_trips
    assert remote.entries(keys) == want
    assert remote.stats.round_trips == before + 1  # 7 small requests, one wait
    monkeypatch.setattr(remote_mod, "PIPELINE_BYTES", 1)  # no pipelining at all
    assert remote.entries(keys) == want
    assert remote.stats.round_trips == before + 1 + 7


def test_read_streams_and_splits_by_count_and_size(
    remote: RemotePeer, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [e for e in remote.entries_under([ROOT]) if e.kind == 0 and not e.deleted]
    monkeypatch.setattr(remote_mod, "MAX_READ", 3)
    before = remote.stats.round_trips
    got = {e.path: b"".join(chunks or []) for e, chunks in remote.read(entries)}
    assert got == {e.path: (tree / e.path).read_bytes() for e in entries}
    assert remote.stats.round_trips - before == -(-len(entries) // 3)
    monkeypatch.setattr(remote_mod, "MAX_READ", 4096)
    monkeypatch.setattr(remote_mod, "READ_BUDGET", 400)  # ~3 entries per request
    batches = list(remote_mod._read_batches(entries))
    assert len(batches) > 5 and sum(map(len, batches)) == len(entries)
    got = {e.path: b"".join(chunks or []) for e, chunks in remote.read(entries)}
    assert len(got) == len(entries)


def test_an_abandoned_read_does_not_derail_the_next_request(remote: RemotePeer) -> None:
    entries = [e for e in remote.entries_under([ROOT]) if e.kind == 0 and not e.deleted]
    stream = remote.read(entries)
    _first, chunks = next(stream)
    assert chunks is not None
    next(chunks)
    del stream, chunks  # the rest of the answer is still on the wire
    assert remote.children([ROOT], SALT) == remote.children([ROOT], SALT)
    # and a file the consumer skips is skipped, not mixed into the next one
    sizes = [(e.size, sum(map(len, c or []))) for e, c in remote.read(entries) if e.size % 2]
    assert all(a == b for a, b in sizes)


def test_file_changed_on_the_agent_side_ends_as_gone(remote: RemotePeer, tree: Path) -> None:
    remote.refresh()
    entries = sorted(
        (e for e in remote.entries_under([ROOT]) if e.kind == 0 and not e.deleted),
        key=lambda e: e.path,
    )[:2]
    victim = entries[0]
    (tree / victim.path).write_bytes(b"x" * victim.size)  # same size, other bytes
    got = [(e, None if c is None else b"".join(c)) for e, c in remote.read(entries)]
    # The agent hashed what it sent and said "gone" instead of "end": no
    # protocol error here, and the receiver's digest check refuses the bytes.
    assert got[0][0] == victim and got[0][1] in (None, b"x" * victim.size)
    assert got[1][1] == (tree / entries[1].path).read_bytes()


def test_the_agent_never_reads_through_a_directory_swapped_for_a_symlink(
    remote: RemotePeer, tree: Path, tmp_path: Path
) -> None:
    """A directory of the replica swapped for a link to one outside it
    after the scan: the agent says its files are gone and sends no byte
    read from outside."""
    remote.refresh()
    files = [e for e in remote.entries_under([ROOT]) if e.kind == 0 and not e.deleted]
    victim = next(e for e in files if "/" in e.path and e.size > 0)
    directory = victim.path.rpartition("/")[0]
    outside = tmp_path / "outside"
    for e in files:
        if e.path.startswith(directory + "/"):
            (outside / e.path).parent.mkdir(parents=True, exist_ok=True)
            (outside / e.path).write_bytes(b"S" * e.size)  # the same sizes
    os.rename(tree / directory, tmp_path / "moved")
    os.symlink(outside / directory, tree / directory)
    got = {
        e.path: None if isinstance(c, Unreadable) else b"".join(c) for e, c in remote.read(files)
    }
    under = [e.path for e in files if e.path.startswith(directory + "/")]
    assert victim.path in under and all(got[p] is None for p in under)
    assert all(got[e.path] == (tree / e.path).read_bytes() for e in files if e.path not in under)


def test_large_write_and_read_do_not_deadlock(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=30, dirs=3, min_size=1 << 20, max_size=3 << 20, seed=8)
    (src / "empty").write_bytes(b"")
    ms("init", src)
    local = LocalPeer.open(src)
    far = agent(dst, "--create")
    try:
        refresh_all([local, far])
        result = push(local, far)
        assert all(o.ok for o in result.outcomes.values())
        assert far.stats.files_transferred == 31
        assert far.stats.round_trips <= 4
    finally:
        far.close()
        local.close()
    assert_same_tree(src, dst)
    # and back: the agent streams while the local side writes
    back = tmp_path / "back"
    far = agent(dst)
    mine = LocalPeer.open(back, create=True)
    try:
        refresh_all([far, mine])
        push(far, mine)
    finally:
        mine.close()
        far.close()
    assert_same_tree(src, back)


@pytest.mark.parametrize("change", ["grows", "shrinks", "same size"])
def test_a_small_file_changed_before_it_is_sent_whole_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Small files travel inside their put (the agent takes them); one that
    changed since the scan is given up, or refused by its digest, and the
    others arrive in one frame each."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=12, dirs=2, seed=4, min_size=10, max_size=4000)
    ms("init", src)
    victim = sorted(p for p in src.rglob("f*") if p.is_file())[0]
    rel = victim.relative_to(src).as_posix()
    size = victim.stat().st_size
    real_read = DirectorySource.read

    def read_then_change(self: DirectorySource, entry: Entry):  # type: ignore[no-untyped-def]
        chunks = real_read(self, entry)  # opened, its size checked: changed in place now
        if entry.path == rel:
            with open(victim, "r+b") as f:
                if change == "grows":
                    f.seek(0, os.SEEK_END)
                    f.write(b"x")
                elif change == "shrinks":
                    f.truncate(size - 1)
                else:
                    f.write(b"x" * size)
        return chunks

    monkeypatch.setattr(DirectorySource, "read", read_then_change)
    inline: list[str] = []
    real_put = ClientSession.put_inline

    def counted(self: ClientSession, entry: Entry, *args: Any) -> bytes:
        inline.append(entry.path)
        return real_put(self, entry, *args)

    monkeypatch.setattr(ClientSession, "put_inline", counted)
    local, far = LocalPeer.open(src), agent(dst, "--create")
    try:
        refresh_all([local, far])
        assert far.session.inline_puts
        result = push(local, far)
    finally:
        far.close()
        local.close()
    failed = {p: o.reason for p, o in result.outcomes.items() if not o.ok}
    said = {"grows": "larger than when scanned", "shrinks": "shorter than when scanned"}
    assert list(failed) == [rel]
    assert said.get(change, "does not match its digest") in failed[rel]
    assert not (dst / rel).exists()
    monkeypatch.undo()
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)
    files = [p for p in src.rglob("f*") if p.is_file()]
    assert len(inline) == len(files) - (change != "same size")  # the rest went whole


@pytest.mark.parametrize("size", [3000, 300_000], ids=["inside-its-put", "streamed"])
def test_a_source_file_unreadable_on_the_way_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """As on a local replica: the file is reported with its error, nothing
    of it is written, and every other file arrives."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=10, dirs=2, seed=7, min_size=10, max_size=2000)
    (src / "victim").write_bytes(os.urandom(size))
    ms("init", src)
    real_read = DirectorySource.read

    def read(self: DirectorySource, entry: Entry) -> Iterator[bytes] | None:
        chunks = real_read(self, entry)
        if entry.path != "victim" or chunks is None:
            return chunks

        def failing() -> Iterator[bytes]:
            yield next(iter(chunks))[:100]
            raise OSError(errno.EIO, "Input/output error")

        return failing()

    monkeypatch.setattr(DirectorySource, "read", read)
    local, far = LocalPeer.open(src), agent(dst, "--create")
    try:
        refresh_all([local, far])
        result = push(local, far)
    finally:
        far.close()
        local.close()
    failed = {p: o.reason for p, o in result.outcomes.items() if not o.ok}
    assert failed == {"victim": "Input/output error"}
    assert not (dst / "victim").exists()
    monkeypatch.undo()
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)


def test_many_items_use_several_pipelined_write_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=50, dirs=6, seed=11)
    ms("init", src)
    monkeypatch.setattr(remote_mod, "MAX_WRITE_ITEMS", 7)
    local, far = LocalPeer.open(src), agent(dst, "--create")
    try:
        refresh_all([local, far])
        result = push(local, far)
        assert result.outcomes and all(o.ok for o in result.outcomes.values())
    finally:
        far.close()
        local.close()
    assert_same_tree(src, dst)


def test_agent_errors_arrive_as_the_matching_error(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAReplica, match=r"^pipe: .*plain is not a merklesync replica"):
        agent(tmp_path / "plain")
    peer = agent(tmp_path / "made", "--create")
    peer.close()
    assert (tmp_path / "made/.merklesync/index.db").exists()


BUGGY_AGENT = """
import sys
from merklesync.peer.local import LocalPeer, TooManyEntries
def boom(*args, **kwargs):
    raise RuntimeError("boom")
setattr(LocalPeer, sys.argv.pop(1), boom)
from merklesync.cli import main
main()
"""


@pytest.mark.parametrize("broken", ["entries", "read", "write"])
def test_a_bug_in_the_agent_fails_the_request_not_the_session(tree: Path, broken: str) -> None:
    """A request that hits a bug in the agent (any exception that is not
    one of merklesync's) is answered with an error saying so, the traceback
    goes to the agent's stderr, and the session goes on."""
    with Replica.open(tree) as replica:
        entry = next(e for e in replica.index.iter_entries(live_only=True) if e.size)
    argv = [sys.executable, "-c", BUGGY_AGENT, broken, "serve", "--stdio", str(tree)]
    peer = RemotePeer(SubprocessTransport(argv), f"pipe:{tree}", where="pipe")
    try:
        with pytest.raises(MerklesyncError, match=r"internal error in the agent: RuntimeError"):
            if broken == "entries":
                peer.entries([key_of(entry.path)])
            elif broken == "read":
                list(peer.read([entry]))
            else:
                peer.write([WriteItem(entry, leaf_of(entry))])
        assert peer.root().count > 0  # the session goes on
        deadline = time.monotonic() + 10  # stderr is read by a thread of its own
        while "RuntimeError: boom" not in peer.transport.stderr_text():
            assert time.monotonic() < deadline, peer.transport.stderr_text()
            time.sleep(0.01)
        assert "internal error:" in peer.transport.stderr_text()
    finally:
        peer.close()


def test_the_agent_holds_the_lock_for_the_session(tree: Path) -> None:
    peer = agent(tree)
    try:
        with pytest.raises(ReplicaLocked):
            Replica.open(tree).close()
    finally:
        peer.close()
    with Replica.open(tree):  # free as soon as close() returned
        env = dict(os.environ, MERKLESYNC_LOCK_WAIT="0.1")
        with pytest.raises(ReplicaLocked, match=r"^pipe: replica .* is in use"):
            agent(tree, env=env)


class _ClosingRecorded(SubprocessTransport):
    """Pipes to an agent that note how they were closed."""

    closed_with: list[bool] = []

    def close(self, *, ended: bool = False) -> None:
        self.closed_with.append(ended)
        super().close(ended=ended)


def test_close_waits_for_the_agent_only_when_it_did_not_say_goodbye(tree: Path) -> None:
    # Once the agent answered bye (its replica closed, its lock free), the
    # transport may let it exit on its own: ended=True. A session that broke
    # keeps the wait: the agent may still be putting things back.
    _ClosingRecorded.closed_with = []
    clean = RemotePeer(_ClosingRecorded(serve_argv(tree)), f"pipe:{tree}", where="pipe")
    clean.refresh()
    clean.close()
    broken = RemotePeer(_ClosingRecorded(serve_argv(tree)), f"pipe:{tree}", where="pipe")
    transport = broken.transport
    assert isinstance(transport, SubprocessTransport)
    os.kill(transport.pid, 9)
    with pytest.raises(ConnectionFailed):
        broken.root()
    broken.close()
    assert _ClosingRecorded.closed_with == [True, False]


def test_a_dead_agent_is_a_connection_error_with_its_stderr(remote: RemotePeer) -> None:
    transport = remote.transport
    assert isinstance(transport, SubprocessTransport)
    os.kill(transport.pid, 9)
    with pytest.raises(ConnectionFailed):
        remote.children([ROOT], SALT)
    with pytest.raises(ConnectionFailed):  # and stays failed
        remote.root()


def test_serve_needs_stdio_and_keeps_stdout_for_the_protocol(tree: Path) -> None:
    r = ms("serve", tree)
    assert r.code == 2 and "--stdio" in r.err
    proc = subprocess.run(
        serve_argv(tree), input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=30
    )
    assert proc.returncode == 7
    assert proc.stdout.startswith(b"\x00\x00")  # a hello frame, then the error frame
    assert b"Traceback" not in proc.stdout + proc.stderr
    assert b"protocol error" in proc.stderr and proc.stderr.count(b"\n") == 1


def test_big_write_answers_do_not_block_the_next_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes of a stream bigger than a pipe buffer, while the next stream
    is being sent: the client must take them before it goes on."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(900):
        (src / f"{i:04d}-{'x' * 200}").write_bytes(b"%d" % i)
    ms("init", src)
    monkeypatch.setattr(remote_mod, "MAX_WRITE_ITEMS", 400)  # ~90 kB of outcomes each
    local, far = LocalPeer.open(src), agent(dst, "--create")
    try:
        refresh_all([local, far])
        result = push(local, far)
        assert len(result.outcomes) == 900 and all(o.ok for o in result.outcomes.values())
    finally:
        far.close()
        local.close()
    assert_same_tree(src, dst)


def test_the_agent_never_gathers_more_entries_than_an_answer_may_hold(tree: Path) -> None:
    # What serve asks of its replica for entries_under: the whole tree of
    # 45 entries fits under a limit of 45, not under 44, whether the nodes
    # are stored ones (their count is known before reading) or buckets.
    peer = LocalPeer.open(tree)
    try:
        every = [(1, p) for p in range(16)]
        assert len(peer.entries_under([ROOT], limit=45)) == 45
        assert len(peer.entries_under(every, limit=45)) == 45
        with pytest.raises(TooManyEntries, match="over 44 entries"):
            peer.entries_under([ROOT], limit=44)
        with pytest.raises(TooManyEntries):
            peer.entries_under(every, limit=44)
    finally:
        peer.close()


def test_a_keeper_that_ends_the_session_mid_answer_is_a_lost_connection() -> None:
    # Through `merklesync watch --keep-open` the agent's exit status stays
    # with the keeper: an answer cut short is a session lost (exit 6, worth
    # a retry), not a hostile peer (exit 7).
    import socket

    from merklesync.protocol.framing import encode_frame
    from merklesync.protocol.messages import PROTOCOL_VERSIONS, Hello
    from merklesync.transport.relay import RelayTransport

    ours, keeper = socket.socketpair()
    hello = Hello(PROTOCOL_VERSIONS, (), "fake0000", "merklesync 9", "/data")
    keeper.sendall(encode_frame(hello.to_wire())[:12])
    keeper.shutdown(socket.SHUT_WR)  # it says no more (it still takes in what is sent)
    try:
        with pytest.raises(ConnectionFailed) as info:
            RemotePeer(RelayTransport(ours, "far"), "far:/data", where="far")
    finally:
        keeper.close()
    assert info.value.message == (
        "far: the session kept open by `merklesync watch` ended in the middle of an answer"
    )
    assert info.value.exit_code == 6


def test_the_same_replica_named_again_by_an_address_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent finds it locked by this very run, and cannot say its id.
    from tests.remote.conftest import PIPE_HOST, REMOTE_CMD, RSH

    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_text("x")
    assert ms("init", a).code == 0
    monkeypatch.setenv("MERKLESYNC_LOCK_WAIT", "0.2")
    r = ms("push", a, f"{PIPE_HOST}:{a}", "--rsh", RSH, "--remote-cmd", REMOTE_CMD)
    assert r.code == 4, r.err
    assert f"that is this run: the same replica as {a.resolve()}?" in r.err


def test_an_agent_killed_midway_is_said_to_be(tree: Path) -> None:
    peer = agent(tree)
    try:
        peer.root()
        transport = peer.transport
        assert isinstance(transport, SubprocessTransport)
        os.kill(transport._proc.pid, signal.SIGKILL)
        transport._proc.wait(30)
        with pytest.raises(ConnectionFailed) as info:
            peer.refresh()
        assert info.value.message.startswith("pipe: "), info.value.message
        assert "(killed by signal 9)" in info.value.message
    finally:
        with contextlib.suppress(Exception):
            peer.close()


def test_the_agent_copies_only_from_a_file_its_index_holds_with_that_content(
    tmp_path: Path,
) -> None:
    """A client may name a path of the agent's replica to copy a file from
    (local-copy): the agent reads it only where its index holds a live file
    with the put's digest, never its state directory, a file behind a link,
    or another content; the others fail, and nothing is written for them."""
    root, outside = tmp_path / "r", tmp_path / "outside"
    (outside).mkdir()
    (outside / "secret.txt").write_text("secret")
    root.mkdir()
    (root / "a.txt").write_text("public")
    (root / "link").symlink_to(outside)
    assert ms("init", root).code == 0
    index_db = (root / ".merklesync" / "index.db").read_bytes()

    def item(path: str, content: bytes, copy_of: str) -> WriteItem:
        return WriteItem(file_entry_of(path, content), None, None, copy_of)

    peer = agent(root)
    try:
        assert peer.copies_locally
        peer.refresh()
        outcomes = peer.write(
            [
                item("x2", b"secret", "link/secret.txt"),
                item("x3", b"secret", "a.txt"),
                item("x4", b"public", "a.txt"),
            ]
        )
        assert peer.stats.files_copied == 1 and peer.stats.files_transferred == 0
    finally:
        peer.close()
    assert [o.ok for o in outcomes] == [False, False, True]
    assert "to copy it from" in outcomes[0].reason
    assert (root / "x4").read_text() == "public"
    # The state directory is no path of the protocol's: the agent ends the
    # session (its reason, on its stderr, may come after the end of input).
    peer = agent(root)
    try:
        with pytest.raises(MerklesyncError):
            peer.write([item("x1", index_db, ".merklesync/index.db")])
    finally:
        with contextlib.suppress(MerklesyncError):
            peer.close()
    assert not any((root / name).exists() for name in ("x1", "x2", "x3"))
