"""Open a peer from what the user typed: a local path, a remote address
(``host:path``, ``user@host:path``, ``ssh://user@host:port/path``) or the
name of a remote recorded with ``merklesync remote add``."""

from __future__ import annotations

import contextlib
import os
import posixpath
import random
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from merklesync import remotes
from merklesync.address import Address, parse_address
from merklesync.errors import (
    ConnectionFailed,
    LocalIOError,
    MerklesyncError,
    NotAReplica,
    ReadOnlyReplica,
    ReplicaLocked,
    SameReplicaId,
    UsageError,
)
from merklesync.model import Stats
from merklesync.peer import Peer, Progress, ScanReport
from merklesync.peer.local import LocalPeer
from merklesync.replica import find_root, is_replica, owned_here
from merklesync.transport import Transport
from merklesync.transport.agent_call import AgentCall
from merklesync.transport.relay import attach

REMOTE_CMD_ENV = "MERKLESYNC_REMOTE_CMD"
RSH_ENV = "MERKLESYNC_RSH"
DEFAULT_REMOTE_CMD = "merklesync"
# How often a pair is opened whose second replica is locked (see opened_pair).
PAIR_ATTEMPTS = 3
# Seconds without a word from the agent before a run gives up: far longer
# than it is ever silent (a scan reports progress every second; an answer
# is bounded), short enough that a hung run does not hold locks for ever.
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """How to reach remote replicas.

    ``remote_cmd``: the command that starts merklesync on the remote side
    (default: the named remote's ``remote-cmd``, then ``$MERKLESYNC_REMOTE_CMD``,
    then ``merklesync``). ``rsh``: run ``RSH [-l USER] [-p PORT] HOST COMMAND``
    as a local command instead of connecting with the built-in SSH client
    (as rsync's ``-e``; default ``$MERKLESYNC_RSH``). ``timeout``: seconds
    without a byte from the agent before the run fails (None: no limit).
    """

    remote_cmd: str | None = None
    rsh: str | None = None
    accept_new_host_key: bool = False
    connect_timeout: float = 15.0
    timeout: float | None = DEFAULT_TIMEOUT


def open_peer(
    spec: str | None,
    *,
    create: bool = False,
    preview: bool = False,
    excludes: Sequence[str] = (),
    remote: RemoteOptions | None = None,
    near: str | None = None,
) -> Peer:
    """``None`` means the replica around the current directory. A bare
    name is a remote of ``near`` (the other replica of the command, when
    local) or of the replica around the current directory, if it has one
    by that name; otherwise it is a path. ``preview`` (with ``create``):
    a dry run's view of what would be created, nothing written there."""
    if spec is None:
        return LocalPeer.open(find_root(Path.cwd()), excludes=excludes)
    options = remote or RemoteOptions()
    address, remote_cmd = resolve(spec, options, near)
    preview = preview and create
    if not address.is_remote:
        return LocalPeer.open(
            Path(address.path), create=create and not preview, preview=preview, excludes=excludes
        )
    call = AgentCall(remote_cmd, address.path, create, tuple(excludes), preview)
    assert address.host is not None
    try:
        return _remote_peer(connect(address, call, options), spec, address.host)
    except ConnectionFailed as exc:
        if not (call.preview and "--preview" in exc.message):
            raise
    # A merklesync there from before `serve --preview`: a replica that
    # exists is served as it is; one that does not is reported missing.
    plain = call._replace(create=False, preview=False)
    return _remote_peer(connect(address, plain, options), spec, address.host)


def _remote_peer(transport: Transport, spec: str, host: str) -> Peer:
    """The replica at the far end of ``transport``, its errors named by the
    address given (with the host, for a remote's name): two replicas on one
    host are told apart. The protocol (for remote replicas only) loads
    here, once the connection is made: while the agent starts there."""
    from merklesync.peer.remote import RemotePeer

    return RemotePeer(transport, spec, where=spec if ":" in spec else f"{spec} ({host})")


def resolve(spec: str, options: RemoteOptions, near: str | None = None) -> tuple[Address, str]:
    """The address ``spec`` names (a remote's name, or an address) and the
    command that starts merklesync there."""
    named = find_remote(spec, near)
    remote_cmd = options.remote_cmd
    if named is not None:
        if remote_cmd is None:
            remote_cmd = named.remote_cmd
        address = parse_address(named.url)
    else:
        address = parse_address(spec)
    return address, remote_cmd or os.environ.get(REMOTE_CMD_ENV) or DEFAULT_REMOTE_CMD


def find_remote(spec: str, near: str | None = None) -> remotes.Remote | None:
    """The remote named ``spec``, if ``spec`` is a name that one of the
    candidate replicas knows: ``near`` (when it is a local replica, even
    one named like a remote, e.g. ``push r1 origin``), then the replica
    around the current directory."""
    if not remotes.is_name(spec):
        return None
    roots: list[Path] = []
    if near is not None:
        with contextlib.suppress(UsageError):
            address = parse_address(near)
            if not address.is_remote and is_replica(Path(address.path)):
                roots.append(Path(address.path))
    with contextlib.suppress(NotAReplica):
        roots.append(find_root(Path.cwd()))  # only this user's (see replica.owned_here)
    for root in roots:
        found = remotes.load(root).get(spec)
        if found is not None and not owned_here(root):
            raise UsageError(
                f"{spec} is a remote of {root}, a replica of another user: its remotes "
                "(whose commands would run as you) are not used; give the address instead"
            )
        if found is not None:
            return found
    return None


def split_command(text: str, option: str) -> list[str]:
    """A command given as one string (split as a shell would), or a usage error."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"bad {option} command {text!r}: {exc}") from None
    if not argv:
        raise UsageError(f"{option} is empty")
    return argv


def connect(address: Address, call: AgentCall, options: RemoteOptions) -> Transport:
    """Start the agent on the address's host (with the run's timeout)."""
    transport = _started(address, call, options)
    transport.timeout = options.timeout
    return transport


def _started(address: Address, call: AgentCall, options: RemoteOptions) -> Transport:
    """Through the ``rsh`` command when one is set; else through the
    connection `merklesync watch --keep-open` may hold to that address
    (transport/relay.py); else through the built-in SSH client."""
    assert address.host is not None
    rsh = options.rsh if options.rsh is not None else os.environ.get(RSH_ENV)
    if rsh:
        from merklesync.transport.pipes import SubprocessTransport

        argv = split_command(rsh, "--rsh")
        if address.user:
            argv += ["-l", address.user]
        if address.port is not None:
            argv += ["-p", str(address.port)]
        return SubprocessTransport([*argv, address.host, call.command()])
    kept = attach(
        address.user,
        address.host,
        address.port,
        call,
        label=address.host,
        timeout=options.connect_timeout,
    )
    if kept is not None:
        return kept
    from merklesync.transport.ssh import open_ssh  # paramiko loads only when needed

    return open_ssh(
        address.host,
        address.user,
        address.port,
        call.command(),
        accept_new_host_key=options.accept_new_host_key,
        connect_timeout=options.connect_timeout,
    )


def combined_stats(engine: Stats, *peers: Peer) -> Stats:
    """One set of counters for a run over several peers: round trips are
    those of the busiest peer (requests to different peers overlap)."""
    out = Stats(
        nodes_compared=engine.nodes_compared,
        entries_compared=engine.entries_compared,
    )
    for p in peers:
        s = p.stats
        out.round_trips = max(out.round_trips, s.round_trips)
        out.bytes_sent += s.bytes_sent
        out.bytes_received += s.bytes_received
        out.files_scanned += s.files_scanned
        out.files_hashed += s.files_hashed
        out.files_transferred += s.files_transferred
        out.bytes_transferred += s.bytes_transferred
        out.files_copied += s.files_copied
    return out


def local_root(
    spec: str | None, remote: RemoteOptions | None = None, near: str | None = None
) -> Path | None:
    """The directory a replica spec opens on this machine, resolved (None:
    a remote one, or none around the current directory)."""
    if spec is None:
        with contextlib.suppress(NotAReplica):
            return find_root(Path.cwd())
        return None
    address, _ = resolve(spec, remote or RemoteOptions(), near)
    return None if address.is_remote else Path(address.path).resolve()


def check_apart(
    ra: PurePath | None,
    rb: PurePath | None,
    roles: tuple[str, str] = ("source", "destination"),
    shown: tuple[str, str] | None = None,
) -> None:
    """Two replicas must not be the same or nested in each other: local
    ones by their resolved paths, remote ones on one host by the paths
    given (see remote_path). ``shown``: how to name them."""
    if ra is None or rb is None:
        return
    sa, sb = shown or (str(ra), str(rb))
    if ra == rb:
        if roles[0] == roles[1]:
            raise UsageError(f"the same replica is named twice: {sa}")
        raise UsageError(f"{roles[0]} and {roles[1]} are the same replica: {sa}")
    if rb.is_relative_to(ra):
        raise UsageError(f"the {roles[1]} {sb} is inside the {roles[0]} {sa}")
    if ra.is_relative_to(rb):
        raise UsageError(f"the {roles[0]} {sa} is inside the {roles[1]} {sb}")


def remote_path(spec: str | None, options: RemoteOptions, near: str | None) -> PurePath | None:
    """Where a remote replica lives, as a path to compare with another one's
    on the same host (by the user, host and port given): under
    ``/user@host:port``, then ``root`` or ``home`` (a path from the root,
    or from the remote home), then the path. None for a local replica. Two spellings of one
    directory (a symlink, an alias of the host) are not seen as one: the
    agent's lock still stops two sessions on one replica."""
    if spec is None:
        return None
    address, _ = resolve(spec, options, near)
    if not address.is_remote:
        return None
    where = f"{address.user or ''}@{address.host}:{address.port or ''}"
    path = address.path
    if path in ("~", "~/"):  # as the agent is given it (AgentCall.command)
        path = "."
    elif path.startswith("~/"):
        path = path[2:]
    path = posixpath.normpath(path)
    base = "root" if path.startswith("/") else "home"
    return PurePosixPath("/", where, base, path.lstrip("/"))


def check_remotes_apart(
    a_spec: str | None,
    b_spec: str | None,
    options: RemoteOptions,
    roles: tuple[str, str] = ("source", "destination"),
) -> None:
    """check_apart for two remote replicas on one host."""
    check_apart(
        remote_path(a_spec, options, b_spec),
        remote_path(b_spec, options, a_spec),
        roles,
        (str(a_spec), str(b_spec)),
    )


def check_writable(peer: Peer, why: str) -> None:
    """Refuse, before anything is written, a run that would write to a
    replica on a read-only file system (where it could not finish)."""
    if peer.read_only:
        raise ReadOnlyReplica(f"replica {peer.name} is on a read-only file system: {why}")


def check_distinct(a: Peer, b: Peer, *, compare_only: bool = False) -> None:
    """Two replicas must not share an id: each counts its own writes in the
    version vectors under its id, so the writes of one would pass for the
    other's, and an edit could be overwritten as if it were older. Save
    where one is read-only (a snapshot of the other, say) and the command
    writes to neither (``compare_only``): what its scan counts is thrown
    away with its copy of the index (Replica.open)."""
    if not a.replica_id or a.replica_id != b.replica_id:
        return
    frozen = next((p for p in (a, b) if p.read_only), None)
    if frozen is not None:
        if compare_only:
            return
        other = b if frozen is a else a
        raise SameReplicaId(
            f"{frozen.name} is on a read-only file system and has the replica id of "
            f"{other.name} ({a.replica_id}): a snapshot or read-only copy of it; `merklesync "
            "diff` compares the two; to copy from it, copy into another directory"
        )
    raise SameReplicaId(
        f"{a.name} and {b.name} have the same replica id {a.replica_id}: one is a copy "
        "of the other (copied with its .merklesync/, or restored from a backup); "
        "give the copy an id of its own with `merklesync init --new-id DIR` on it"
    )


def refresh_all(
    peers: Sequence[Peer],
    *,
    checksum: bool = False,
    progress: Progress | None = None,
    failed: dict[int, MerklesyncError] | None = None,
) -> list[str]:
    """Scan every peer at the same time; returns their warnings. A failure
    ends the scans, unless ``failed`` is given: then it is put there (by
    the peer's place in ``peers``) and the others go on.

    Remote peers are asked first, so they scan on their machines while this
    one scans the local peers. Local peers beyond the first scan in forked
    children, but only while this process runs no other thread (paramiko's
    transport and the pipe readers are threads, and fork does not mix with
    threads); otherwise they scan here, one after the other.
    """
    reports: dict[int, ScanReport] = {}
    finishers: dict[int, Callable[[Progress | None], ScanReport]] = {}

    def guarded(i: int, step: Callable[[int], None]) -> None:
        try:
            step(i)
        except MerklesyncError as exc:
            if failed is None:
                raise
            failed[i] = exc

    def start(i: int) -> None:
        finishers[i] = peers[i].start_refresh(checksum=checksum)

    def finish(i: int) -> None:
        reports[i] = finishers[i](progress)

    def scan_here(i: int) -> None:
        peer = peers[i]
        assert isinstance(peer, LocalPeer)
        reports[i] = peer.refresh(checksum=checksum, progress=progress, spread=len(local) == 1)

    for i, peer in enumerate(peers):
        if not isinstance(peer, LocalPeer):
            guarded(i, start)
    local = [i for i, peer in enumerate(peers) if isinstance(peer, LocalPeer)]
    if local:
        fork = threading.active_count() == 1
        if fork:
            for i in local[1:]:
                guarded(i, start)
        for i in local if not fork else local[:1]:
            guarded(i, scan_here)
    for i in list(finishers):
        guarded(i, finish)
    # Files skipped or unreadable; not what a remote answer left unlisted
    # (the paths found: nobody here lists them).
    return [w for i in range(len(peers)) if i in reports for w in reports[i].skipped]


@contextlib.contextmanager
def opened_pair(
    a_spec: str | None,
    b_spec: str | None,
    *,
    create_b: bool = False,
    preview_b: bool = False,
    excludes: Sequence[str] = (),
    remote: RemoteOptions | None = None,
    checksum: bool = False,
    compare_only: bool = False,
) -> Iterator[tuple[Peer, Peer]]:
    """Open the two replicas of a command (each a remote of the other where
    a bare name says so), once they are known to be apart, and close both
    at the end. ``preview_b``: a dry run, B is not created (see open_peer).
    Two replicas with the same id are refused (see check_distinct; a
    command that writes to neither says ``compare_only``).

    A local replica opened before a remote one starts its scan at once
    (``checksum``: the scan refresh_all will ask for), so it scans while
    the remote one is reached; B is opened first for that when it is a
    local replica already (one still to be created waits until A is
    reached: a failed connection must not leave it behind)."""
    root_a, root_b = local_root(a_spec, remote, b_spec), local_root(b_spec, remote, a_spec)
    # Named and missing, where nothing is to be made: that, before how the
    # two paths lie (a mistyped name inside a replica is no nested replica).
    for root, spec in ((root_a, a_spec), (root_b, None if create_b else b_spec)):
        if spec is not None and root is not None and not root.exists():
            # A bare name that is no remote's either: say so (as git does).
            nor = " (nor remote)" if _bare_missing(spec, root) else ""
            raise LocalIOError(f"no such directory{nor}: {root}")
    try:
        check_apart(root_a, root_b)
    except UsageError as exc:
        if b_spec is None or root_b is None or not _bare_missing(b_spec, root_b):
            raise
        raise UsageError(f"{exc.message} (and no remote is named {b_spec!r})") from exc
    check_remotes_apart(a_spec, b_spec, remote or RemoteOptions())

    def open_a() -> Peer:
        return open_peer(a_spec, excludes=excludes, remote=remote, near=b_spec)

    def open_b() -> Peer:
        return open_peer(
            b_spec,
            create=create_b,
            preview=preview_b,
            excludes=excludes,
            remote=remote,
            near=a_spec,
        )

    a_remote, b_remote = (
        a_spec is not None and root_a is None,
        b_spec is not None and root_b is None,
    )
    b_first = a_remote and root_b is not None and is_replica(root_b)
    for attempt in range(1, PAIR_ATTEMPTS + 1):
        with closing(open_b() if b_first else open_a()) as first:
            if isinstance(first, LocalPeer) and (a_remote if b_first else b_remote):
                first.scan_ahead(checksum=checksum)
            try:
                opened = _second(open_a if b_first else open_b, first)
            except ReplicaLocked as exc:
                if attempt == PAIR_ATTEMPTS or _held_here(exc):
                    raise
            else:
                with closing(opened) as second:
                    check_distinct(first, second, compare_only=compare_only)
                    yield (second, first) if b_first else (first, second)
                return
        # The second one is locked, maybe by a run that holds it and waits
        # for the first (`sync A host:B` here while `sync B host:A` runs
        # there, from the same cron minute): let go of the first, so that one
        # of the two goes on, and try again a moment later.
        time.sleep(random.uniform(0.2, 2.0) * attempt)


@contextlib.contextmanager
def opened_replicas(
    specs: Sequence[str | None],
    *,
    preview: bool = False,
    excludes: Sequence[str] = (),
    remote: RemoteOptions | None = None,
) -> Iterator[tuple[list[Peer], list[tuple[int, str, MerklesyncError]]]]:
    """Open any number of replicas, in order, and close them all at the
    end: those that open, and (place in ``specs``, name, error) for those
    that do not (cannot be reached, locked, corrupt, a copy of one already
    open), so that the others can go on. Every one after the first is
    created when it is not a replica yet (``preview``: shown as --dry-run
    would make it). Two that are the same or nested directories are a usage
    error, before anything opens; so is a missing first one, and one found
    locked by this very run (named twice: by an address and a path, say)."""
    options = remote or RemoteOptions()
    near = [specs[1] if i == 0 else specs[0] for i in range(len(specs))]
    roots = [local_root(spec, options, near[i]) for i, spec in enumerate(specs)]
    first, first_root = specs[0], roots[0]
    if first is not None and first_root is not None and not first_root.exists():
        raise LocalIOError(f"no such directory: {first_root}")
    for i, ri in enumerate(roots):
        for j in range(i + 1, len(specs)):
            check_apart(ri, roots[j], ("replica", "replica"))
            check_remotes_apart(specs[i], specs[j], options, ("replica", "replica"))
    peers: list[Peer] = []
    failed: list[tuple[int, str, MerklesyncError]] = []
    ended = False

    def opened(i: int) -> Peer:
        return open_peer(
            specs[i], create=i > 0, preview=preview, excludes=excludes, remote=options, near=near[i]
        )

    # Remote ones are reached at the same time (one connection after the
    # other would add up over a WAN), unless new host keys may be recorded.
    remote_ones = [i for i, spec in enumerate(specs) if spec is not None and roots[i] is None]
    parallel = len(remote_ones) > 1 and not options.accept_new_host_key
    pool = ThreadPoolExecutor(max_workers=min(8, len(remote_ones))) if parallel else None
    reaching = {i: pool.submit(opened, i) for i in remote_ones} if pool is not None else {}
    try:
        for i, spec in enumerate(specs):
            # As it would be named open: a local one by its resolved path.
            name = str(roots[i]) if roots[i] is not None else spec or "."
            try:
                peer = reaching.pop(i).result() if i in reaching else opened(i)
            except ReplicaLocked as exc:
                if _held_here(exc):
                    raise UsageError(
                        f"{name} is held by this very run: a replica named twice?"
                    ) from exc
                failed.append((i, name, exc))
                continue
            except UsageError:
                raise
            except MerklesyncError as exc:
                failed.append((i, name, exc))
                continue
            try:
                for other in peers:
                    check_distinct(other, peer)
            except MerklesyncError as exc:
                failed.append((i, peer.name, exc))
                with contextlib.suppress(Exception):
                    peer.close()
                continue
            peers.append(peer)
        yield peers, failed
        ended = True
    finally:
        if pool is not None:  # on the way out early: what is still being reached is left
            pool.shutdown(wait=False, cancel_futures=True)
            for future in reaching.values():
                future.add_done_callback(_close_reached)
        for peer in peers:
            with contextlib.suppress(Exception):
                peer.close(commit=ended)  # stopped midway: as closing() does


def _close_reached(future: Future[Peer]) -> None:
    if not future.cancelled() and future.exception() is None:
        with contextlib.suppress(Exception):
            future.result().close()


def _bare_missing(spec: str, root: Path) -> bool:
    """``spec``, a bare name, names a missing directory for want of a
    remote by that name (a mistyped one, say)."""
    return "/" not in spec and root == Path(spec).resolve() and not root.exists()


def _held_here(exc: ReplicaLocked) -> bool:
    """The lock is this process's own (its message names the holder's pid):
    the replica was opened already in this run, by another name."""
    return f"(pid {os.getpid()})" in exc.message


def _second(opener: Callable[[], Peer], first: Peer) -> Peer:
    """The second replica of a pair. Found locked by this very process (its
    lock names our pid): it is the first one, reached again by an address
    (`push a localhost:a`), and the agent could not open it to say its id."""
    try:
        return opener()
    except ReplicaLocked as exc:
        if isinstance(first, LocalPeer) and _held_here(exc):
            raise ReplicaLocked(
                f"{exc.message}; that is this run: the same replica as {first.name}?"
            ) from exc
        raise


@contextlib.contextmanager
def closing(peer: Peer) -> Iterator[Peer]:
    """Close ``peer`` at the end. When the body failed, that failure is the
    one reported: closing a peer in trouble often fails too (a corrupt
    index, a dead connection), and would hide why."""
    try:
        yield peer
    except BaseException:
        with contextlib.suppress(Exception):
            peer.close(commit=False)
        raise
    peer.close()
