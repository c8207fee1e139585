"""merklesync watch"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

import click

from merklesync.cli.common import Output, handle_errors
from merklesync.peer.open import split_command
from merklesync.replica import find_root


@click.command()
@click.argument("replica", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--run",
    "command",
    metavar="CMD",
    help="Run CMD (split as a shell would, not run by one) once at start and again whenever "
    "changes have settled, e.g. --run 'merklesync push . backup:/srv/data'.",
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
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def watch(
    replica: Path | None, command: str | None, settle: float, rescan_interval: float, quiet: bool
) -> None:
    """Watch REPLICA (default: the one around the current directory) for
    changes until interrupted (SIGINT or SIGTERM). While it runs, status,
    diff, push, pull and sync on this replica, local or through `merklesync
    serve`, look only at the directories where something changed instead of
    walking the whole tree. With --run, keep another replica in step."""
    from merklesync.watcher import Watcher  # watchdog is needed here only

    out = Output(quiet)
    argv = split_command(command, "--run") if command else None
    root = find_root(replica or Path.cwd())

    def run_command() -> None:
        assert argv is not None
        out.info(f"running {shlex.join(argv)}")
        try:
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode
        except OSError as exc:
            out.warn(f"cannot run {argv[0]}: {exc.strerror}")
            return
        if code != 0:
            out.warn(f"{shlex.join(argv)} exited with status {code}")

    watcher = Watcher(
        root,
        rescan_every=rescan_interval,
        settle=settle,
        on_settled=run_command if argv else None,
        warn=out.warn,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        watcher.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    watcher.run(ready=lambda: out.info(f"watching {root}"))
    out.info(f"stopped watching {root}")
    sys.exit(0)
