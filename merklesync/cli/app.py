"""The `merklesync` command group. A command's module is imported when the
command runs (or its help is asked for), so a run loads only what it uses."""

from __future__ import annotations

import importlib
import re
import sys

import click

from merklesync import __version__
from merklesync.cli import error_json, error_line, interrupted

# command name -> "module:attribute" under merklesync.cli, in help order
COMMANDS = {
    "init": "init_cmd:init",
    "status": "status_cmd:status",
    "diff": "diff_cmd:diff",
    "push": "push_cmd:push",
    "pull": "push_cmd:pull",
    "sync": "sync_cmd:sync",
    "repair": "repair_cmd:repair_cmd",
    "conflicts": "conflicts_cmd:conflicts",
    "resolve": "conflicts_cmd:resolve_cmd",
    "gc": "gc_cmd:gc",
    "remote": "remote_cmd:remote",
    "serve": "serve_cmd:serve",
    "watch": "watch_cmd:watch",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(f"merklesync.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="merklesync")
def cli() -> None:
    """Keep replicas of file trees in sync: Merkle trees find what differs,
    version vectors make sure nothing is silently overwritten."""


def main() -> None:
    try:
        cli(prog_name="merklesync", standalone_mode=False)
    except click.exceptions.Abort:  # click's word for Ctrl-C (or EOF at a prompt)
        interrupted()
    except click.ClickException as exc:  # before the command ran: its arguments
        message = re.sub(r"\s*\n\s*", " ", exc.format_message())  # click's lists: one line
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            message += f" (see `{exc.ctx.command_path} --help`)"
        click.echo(error_line(message), err=True)
        if "--json" in sys.argv[1:]:  # scripts get one JSON object, as from a command
            click.echo(error_json(exc.format_message(), exc.exit_code))
        sys.exit(exc.exit_code)
