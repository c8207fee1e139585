"""The `merklesync` command group."""

from __future__ import annotations

import click

from merklesync import __version__
from merklesync.cli import (
    conflicts_cmd,
    diff_cmd,
    gc_cmd,
    init_cmd,
    push_cmd,
    remote_cmd,
    serve_cmd,
    status_cmd,
    sync_cmd,
    watch_cmd,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="merklesync")
def cli() -> None:
    """Keep replicas of file trees in sync: Merkle trees find what differs,
    version vectors make sure nothing is silently overwritten."""


for command in (
    init_cmd.init,
    status_cmd.status,
    diff_cmd.diff,
    push_cmd.push,
    push_cmd.pull,
    sync_cmd.sync,
    conflicts_cmd.conflicts,
    conflicts_cmd.resolve_cmd,
    gc_cmd.gc,
    remote_cmd.remote,
    serve_cmd.serve,
    watch_cmd.watch,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="merklesync")
