"""merklesync watch"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from merklesync.cli import this_process_only
from merklesync.cli.common import LOCAL_REPLICA, Output, handle_errors, remote_options
from merklesync.errors import EXIT_CONNECTION, EXIT_DIFFERENT, EXIT_LOCKED, UsageError
from merklesync.peer.open import RSH_ENV, RemoteOptions, resolve, split_command
from merklesync.replica import find_root

COMMAND_GRACE = 2.0  # seconds a running --run command has to end of a stop before it is passed on
RETRY_FIRST = 10.0  # seconds before a --run that found a replica locked runs again
RETRY_MAX = 600.0


@click.command(short_help="Follow file events so scans look only where things changed.")
@click.argument("replica", required=False, type=LOCAL_REPLICA)
@click.option(
    "--run",
    "command",
    metavar="CMD",
    help="Run CMD (split as a shell would, not run by one) once at start and again whenever "
    "changes have settled, e.g. --run 'merklesync push . backup:/srv/data'. A run that fails "
    "is an error on stderr, under --quiet too; watch then exits 1 if the last one failed. "
    "One that exits 4 or 6 (merklesync's status when another run holds a replica, or a host "
    "cannot be reached) runs again, changes or not, after 10 s, then 20, 40... at most 10 min "
    "apart, until it does not.",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Quiet time after a change before --run's command runs.",
)
@click.option(
    "--rescan-interval",
    type=click.FloatRange(min=1),
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="Let the next scan walk the whole tree this often anyway, in case an event was missed.",
)
@click.option(
    "--keep-open",
    "keep_open",
    multiple=True,
    metavar="REMOTE",
    help="Hold an SSH connection to REMOTE (a remote's name or an address) open while "
    "watching, with an agent started ahead of need: commands run meanwhile reach REMOTE "
    "through it, without a new SSH handshake or agent start-up (as ssh's ControlMaster); "
    "repeatable.",
)
@remote_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
@handle_errors
def watch(
    replica: Path | None,
    command: str | None,
    settle: float,
    rescan_interval: float,
    keep_open: tuple[str, ...],
    remote: RemoteOptions,
    quiet: bool,
) -> None:
    """Watch REPLICA (default: the one around the current directory) for changes
    until stopped by SIGINT or SIGTERM (exit 0, or 1 when the last --run
    failed); a --run command under way stops with it (sent the same signal 2
    seconds later, unless it ended by then). While it runs, status, diff,
    push, pull, sync and repair on this replica, local or through `merklesync
    serve`, look only at the directories where something changed instead of
    walking the whole tree. With --run, keep another replica in step. With
    --keep-open, commands run meanwhile reach that remote through a connection
    held open here, with its agent already started: no SSH handshake and no
    agent start-up on each run (merklesync-protocol(7)). The connection sends
    SSH keepalives, is made again when lost, and at a stop the sessions
    running get up to 30 seconds to end."""
    from merklesync.watcher import Watcher  # watchdog is needed here only

    out = Output(quiet)
    argv = split_command(command, "--run") if command else None
    root = find_root(replica or Path.cwd(), named=replica is not None)
    if keep_open and (remote.rsh or (remote.rsh is None and os.environ.get(RSH_ENV))):
        raise UsageError(
            f"--keep-open holds connections of the built-in SSH client, not --rsh or ${RSH_ENV}"
        )

    running: list[subprocess.Popen[bytes]] = []  # the --run command under way
    failed = [False]  # the last --run command's outcome
    stopping = [False]  # a command cut short by the stop is no failure

    pause = [RETRY_FIRST]  # before a run that found a replica locked or a host down is retried

    def run_command() -> float | None:
        assert argv is not None
        out.info(f"running {shlex.join(argv)}")
        try:
            command = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        except OSError as exc:
            code = -1
            out.error(f"cannot run {argv[0]}: {exc.strerror}")
        else:
            running.append(command)
            try:
                code = command.wait()
            finally:
                running.remove(command)
            if stopping[0] and code != 0:  # cut short by the stop: no failure of its own
                return None
            if code != 0:
                out.error(f"{shlex.join(argv)} exited with status {code}")
        failed[0] = code != 0
        if code not in (EXIT_LOCKED, EXIT_CONNECTION):
            pause[0] = RETRY_FIRST
            return None
        # Another run held a replica, or a host was out of reach: what changed
        # is not yet where it goes. Again later, changes or not.
        again, pause[0] = pause[0], min(pause[0] * 2, RETRY_MAX)
        out.info(f"running it again in {again:g} s")
        return again

    watcher = Watcher(
        root,
        rescan_every=rescan_interval,
        settle=settle,
        on_settled=run_command if argv else None,
        warn=out.warn,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping[0] = True
        watcher.stop()
        for command in running:
            # Sent to watch alone (kill PID), the stop reaches the command
            # too; sent to the whole group (a terminal, a service manager),
            # the command has it already: a moment to end of it first.
            later = threading.Timer(COMMAND_GRACE, _pass_on, (command, signum))
            later.daemon = True
            later.start()

    stopper = this_process_only(stop)
    before = {s: signal.signal(s, stopper) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.ExitStack() as keepers:
            for spec in keep_open:
                keepers.enter_context(_kept_open(spec, root, remote, out))
            watcher.run(ready=lambda: out.info(f"watching {root}"))
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)
    out.info(f"stopped watching {root}")
    sys.exit(EXIT_DIFFERENT if failed[0] else 0)  # the last --run failed: cron hears of it


@contextlib.contextmanager
def _kept_open(spec: str, root: Path, remote: RemoteOptions, out: Output) -> Iterator[None]:
    from merklesync.keep_open import (  # paramiko is needed here only
        STOP_GRACE,
        AlreadyKept,
        Keeper,
    )

    address, remote_cmd = resolve(spec, remote, near=str(root))
    if not address.is_remote or address.host is None:
        raise UsageError(f"--keep-open needs a remote replica, not {spec!r}")
    keeper = Keeper(
        address.user,
        address.host,
        address.port,
        remote_cmd,
        address.path,
        accept_new_host_key=remote.accept_new_host_key,
        connect_timeout=remote.connect_timeout,
        warn=out.warn,
    )
    try:
        keeper.start()
    except AlreadyKept as exc:
        out.warn(f"{exc.message}: watching without --keep-open {spec}")
        yield
        return
    out.info(f"keeping a connection to {keeper.label} open ({keeper.socket})")
    try:
        yield
    finally:
        keeper.stop(grace=STOP_GRACE)


def _pass_on(command: subprocess.Popen[bytes], signum: int) -> None:
    """The stop, to the --run command, if it still runs."""
    if command.poll() is None:
        with contextlib.suppress(OSError):
            command.send_signal(signum)
