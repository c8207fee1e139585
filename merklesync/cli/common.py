"""What every command shares: options, output, progress, error handling."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

import merklesync.cli as cli_state
from merklesync.address import parse_address
from merklesync.cli import error_json, error_line, interrupted, plain
from merklesync.errors import EXIT_IO, EXIT_USAGE, MerklesyncError
from merklesync.model import Change, ScanReport, Stats
from merklesync.peer import Progress
from merklesync.peer.open import DEFAULT_TIMEOUT, RemoteOptions, find_remote

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class LocalReplica(click.Path):
    """A replica on this machine, named by a directory (a missing one: exit
    5, as elsewhere; the replica around it is found as git finds a
    repository). What names a remote replica (``host:path``, a remote's
    name) is refused here, instead of taken as a local path: the command
    works on this machine only."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value:
            command = (
                ctx.command_path.partition(" ")[2] or str(ctx.info_name)
                if ctx is not None
                else "this command"
            )
            try:
                remote = parse_address(value).is_remote
            except MerklesyncError:
                remote = False
            if remote:
                made = "; a push or sync to it makes one there" if command == "init" else ""
                local = "" if value.startswith("ssh://") else f" (a local directory: ./{value})"
                self.fail(
                    f"{value} is a remote replica's address: {command} works on a replica on "
                    f"this machine{made}{local}",
                    param,
                    ctx,
                )
            if "/" not in value and not os.path.lexists(value) and _a_remote(value):
                self.fail(
                    f"{value} is the name of a remote: {command} works on a replica on "
                    "this machine",
                    param,
                    ctx,
                )
        return super().convert(value, param, ctx)


LOCAL_REPLICA = LocalReplica()


def _a_remote(name: str) -> bool:
    try:
        return find_remote(name) is not None
    except MerklesyncError:  # a remotes file that cannot be read: the command says why
        return False


def plural(n: int, word: str) -> str:
    """``1 entry``, ``2 entries``, ``0 tombstones``."""
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


_JSON_ITEMS = 4096  # items of a listed value encoded (and written) at a time
_JSON = json.JSONEncoder(sort_keys=True)  # as json.dumps(..., sort_keys=True), made once


class Output:
    """Where a command's words go: stdout for results, stderr for the rest."""

    def __init__(self, quiet: bool = False, as_json: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.json = as_json
        self.verbose = verbose
        self._bar: Any = None  # the progress bar on the terminal, while one is shown

    def line(self, text: str) -> None:
        """A result line (stdout); none under --quiet or --json."""
        if not self.json and not self.quiet:
            self._echo(plain(text), err=False)

    def info(self, text: str) -> None:
        if not self.quiet and not self.json:
            self._echo(plain(text))

    def warn(self, text: str) -> None:
        """A problem, under --quiet too (stderr): what a run skipped or left
        alone, what makes its exit status 1 (cron mails what is printed)."""
        self._echo(f"merklesync: {plain(text)}")

    def note(self, text: str) -> None:
        """Something worth a line that is no problem (a conflict settled by
        its policy, a version overwritten as --force asked); none under
        --quiet."""
        if not self.quiet:
            self._echo(f"merklesync: {plain(text)}")

    def error(self, text: str) -> None:
        """A failure the run goes on after (stderr), under --quiet too."""
        self._echo(error_line(text))

    def _echo(self, text: str, err: bool = True) -> None:
        """A line; one written while a progress bar shows goes above it."""
        if self._bar is None:
            click.echo(text, err=err)
            return
        self._bar.clear()
        click.echo(text, err=err)
        self._bar.refresh()

    def emit_json(self, payload: dict[str, Any]) -> None:
        """One line of JSON on stdout, as ``json.dumps(payload, sort_keys=True)``
        writes it. A value that is an iterator (a generator, not a list) is
        written as a list while it is read, a few thousand items at a time:
        a run of 100,000 changes never holds them all as objects."""
        if not self.json:
            return
        cli_state.json_begun = True
        parts: list[str] = ["{"]
        for n, (key, value) in enumerate(sorted(payload.items())):
            parts.append(f"{', ' if n else ''}{json.dumps(key)}: ")
            if not isinstance(value, Iterator):
                parts.append(_JSON.encode(value))
                continue
            parts.append("[")
            items: list[Any] = []
            first = True
            for item in value:
                items.append(item)
                if len(items) == _JSON_ITEMS:  # encoded together: one call, not one each
                    parts.append(("" if first else ", ") + _JSON.encode(items)[1:-1])
                    first = False
                    click.echo("".join(parts), nl=False)
                    parts.clear()
                    items.clear()
            if items:
                parts.append(("" if first else ", ") + _JSON.encode(items)[1:-1])
            parts.append("]")
        parts.append("}")
        click.echo("".join(parts))

    @contextmanager
    def progress(self, desc: str, unit: str = "it", scale: bool = False) -> Iterator[Progress]:
        """A tqdm bar on a terminal; nothing in cron, under --quiet or --json."""
        if self.quiet or self.json or not sys.stderr.isatty():
            yield lambda n: None
            return
        from tqdm import tqdm  # only on a terminal

        tqdm.monitor_interval = 0  # no monitor thread: scans fork child processes
        bar = tqdm(desc=desc, unit=unit, unit_scale=scale, leave=False, file=sys.stderr)

        def advance(n: int) -> None:
            bar.update(n)

        self._bar = bar
        try:
            yield advance
        finally:
            self._bar = None
            bar.close()


def output_options(func: F) -> F:
    func = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="Print nothing but errors and warnings (what was skipped or left alone).",
    )(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(
        func
    )
    return func


def stats_option(func: F) -> F:
    return click.option(
        "--stats",
        is_flag=True,
        help="Print on standard error round trips (those of the comparison and the transfer, "
        "after the scans), nodes and entries compared, bytes exchanged, and files scanned, "
        "hashed and transferred (a command that only scans: what it read and hashed).",
    )(func)


def checksum_option(func: F) -> F:
    return click.option(
        "--checksum", is_flag=True, help="Re-hash every file instead of trusting the stat cache."
    )(func)


def exclude_option(func: F) -> F:
    return click.option(
        "--exclude",
        "excludes",
        multiple=True,
        metavar="PATTERN",
        help="Leave out paths matching PATTERN (gitignore syntax) in this run; repeatable.",
    )(func)


def allow_stale_option(func: F) -> F:
    return click.option(
        "--allow-stale",
        is_flag=True,
        help="Go on with a replica that has not synced with this one for longer than the "
        "tombstone retention (deleted files may come back).",
    )(func)


MAX_TIMEOUT = 86_400.0 * 365  # seconds: a year; 0 waits for ever


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value):
        raise click.BadParameter("not a number")
    return value


def remote_options(func: F) -> F:
    """--remote-cmd, --rsh, --accept-new-host-key and --timeout, passed on to the
    command as one ``remote`` keyword argument (a RemoteOptions)."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        remote_cmd: str | None,
        rsh: str | None,
        accept_new_host_key: bool,
        timeout: float,
        **kw: Any,
    ) -> Any:
        kw["remote"] = RemoteOptions(
            remote_cmd=remote_cmd,
            rsh=rsh,
            accept_new_host_key=accept_new_host_key,
            timeout=timeout or None,
        )
        return func(*args, **kw)

    for option in (
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, max=MAX_TIMEOUT),
            callback=_finite,
            default=DEFAULT_TIMEOUT,
            show_default=True,
            metavar="SECONDS",
            help="Give up (exit 6) when a remote replica says nothing, or takes nothing "
            "of what is sent, for this long; 0: wait for ever.",
        ),
        click.option(
            "--accept-new-host-key",
            is_flag=True,
            help="Trust an SSH host key seen for the first time and add it to known_hosts "
            "(a changed key is always refused).",
        ),
        click.option(
            "--rsh",
            metavar="CMD",
            help="Reach remote replicas by running `CMD [-l USER] [-p PORT] HOST COMMAND` "
            "instead of the built-in SSH client, as rsync -e (default: $MERKLESYNC_RSH).",
        ),
        click.option(
            "--remote-cmd",
            metavar="CMD",
            help="The command that starts merklesync on the remote side (default: the "
            "named remote's remote-cmd, $MERKLESYNC_REMOTE_CMD, or merklesync).",
        ),
    ):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """A MerklesyncError becomes one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json"))
        cli_state.json_begun = False
        try:
            return func(*args, **kwargs)
        except MerklesyncError as exc:
            _fail(exc.message, exc.exit_code, as_json)
        except click.UsageError as exc:  # raised by the command itself
            _fail(exc.format_message(), exc.exit_code, as_json)
        except BrokenPipeError:  # whoever read our output stopped (`| head`): nothing to say
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second failure as it is flushed at exit
            sys.exit(EXIT_USAGE)
        except OSError as exc:  # a local file operation no layer below expected
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}", EXIT_IO, as_json)
        except RuntimeError as exc:
            if not str(exc).startswith("Symlink loop"):  # Path.resolve's word for ELOOP
                raise
            _fail(str(exc), EXIT_IO, as_json)
        except KeyboardInterrupt:
            interrupted()

    return wrapper


def _fail(message: str, code: int, as_json: bool) -> NoReturn:
    """One line on stderr; with --json, the same as an object on stdout."""
    click.echo(error_line(message), err=True)
    if as_json and not cli_state.json_begun:
        click.echo(error_json(message, code))
    sys.exit(code)


def scan_stats(report: ScanReport | None) -> Stats:
    """The counters of a command whose only work is a local scan."""
    if report is None:
        return Stats()
    return Stats(files_scanned=report.scanned, files_hashed=report.hashed)


def print_stats(out: Output, stats: Stats) -> None:
    if out.json:
        return
    for name, value in stats.as_dict().items():
        click.echo(f"{name.replace('_', ' ')}: {value}", err=True)


def change_json(change: Change, ok: bool | None = None, reason: str = "") -> dict[str, Any]:
    item: dict[str, Any] = {
        "path": change.path,
        "change": change.kind.value,
        "action": change.action.value,
    }
    if ok is not None:
        item["ok"] = ok
    if reason:
        item["reason"] = reason
    return item
