"""merklesync remote add | list | remove"""

from __future__ import annotations

from pathlib import Path

import click

from merklesync import remotes
from merklesync.cli.common import LOCAL_REPLICA, Output, handle_errors, output_options
from merklesync.replica import find_root

replica_option = click.option(
    "--replica",
    type=LOCAL_REPLICA,
    help="The replica whose remotes to use (default: the one around the current directory).",
)


def _root(replica: Path | None) -> Path:
    return find_root(replica or Path.cwd(), named=replica is not None)


# The metavar as click 8.5 writes it for a group that runs alone too: the
# same usage line (and man page) whatever click is installed.
@click.group(invoke_without_command=True, subcommand_metavar="[COMMAND] [ARGS]...")
@click.pass_context
def remote(ctx: click.Context) -> None:
    """Name other replicas, as git remote does; alone, list them.

    After `merklesync remote add origin host:notes`, `merklesync push origin`
    and `merklesync pull origin` work from inside this replica. Names are
    kept in .merklesync/config and are never synced. A name is looked up in the other replica of the
    command, then in the replica around the current directory; a local
    directory of the same name must then be written ./NAME."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--remote-cmd",
    metavar="CMD",
    help="The command that starts merklesync on that host (kept with the remote).",
)
@replica_option
@output_options
@handle_errors
def add(
    name: str, url: str, remote_cmd: str | None, replica: Path | None, quiet: bool, as_json: bool
) -> None:
    """Record URL (HOST:PATH, USER@HOST:PATH, ssh://USER@HOST:PORT/PATH or a
    local path) under NAME."""
    out = Output(quiet, as_json)
    added = remotes.add(_root(replica), remotes.Remote(name, url, remote_cmd))
    out.info(f"added remote {added.name}: {added.url}")
    out.emit_json({"name": added.name, "url": added.url, "remote_cmd": added.remote_cmd})


@remote.command("list")
@replica_option
@output_options
@handle_errors
def list_(replica: Path | None, quiet: bool, as_json: bool) -> None:
    """Print each remote: NAME URL, one per line."""
    out = Output(quiet, as_json)
    found = remotes.load(_root(replica))
    for r in sorted(found.values(), key=lambda r: r.name):
        extra = f" (remote-cmd: {r.remote_cmd})" if r.remote_cmd else ""
        out.line(f"{r.name}\t{r.url}{extra}")
    out.emit_json(
        {
            "remotes": [
                {"name": r.name, "url": r.url, "remote_cmd": r.remote_cmd}
                for r in sorted(found.values(), key=lambda r: r.name)
            ]
        }
    )


@remote.command("remove")
@click.argument("name")
@replica_option
@output_options
@handle_errors
def remove(name: str, replica: Path | None, quiet: bool, as_json: bool) -> None:
    """Forget the remote NAME (nothing is deleted on its side)."""
    out = Output(quiet, as_json)
    remotes.remove(_root(replica), name)
    out.info(f"removed remote {name}")
    out.emit_json({"removed": name})
