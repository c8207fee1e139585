"""Man pages generated from the click definitions, so they cannot rot.

``python -m merklesync.cli.manpages man/`` writes them; a test checks that
the committed pages equal what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from merklesync import __version__, errors
from merklesync.cli.app import cli
from merklesync.cli.json_fields import ERROR_OBJECT, FIELDS

DATE = "2026"
EXIT_STATUS = [
    (errors.EXIT_OK, "Success; for diff, the replicas hold the same content."),
    (
        errors.EXIT_DIFFERENT,
        "Finished, but differences remain: diff found differences, or push/pull/sync left "
        "entries alone (a conflict, a newer version on the destination, a file changed "
        "or unreadable during the run), or sync/repair could not settle a conflict as asked "
        "(a union or merge-cmd merge failed, so both versions were kept; a file has more "
        "conflict copies than the cap), or a scan skipped files or could not read them "
        "(so diff could not compare them), or conflicts found conflict copies, or watch "
        "stopped after its last --run command failed, or repair left the replicas "
        "different. Each is listed on standard error. (repair: where a replica was left "
        "out, the status is that failure's, one of those below.)",
    ),
    (errors.EXIT_USAGE, "Usage error, or a generic failure."),
    (
        errors.EXIT_STATE,
        "Replica state: not a replica, corrupt index, index of a newer format, "
        "two replicas with the same id.",
    ),
    (
        errors.EXIT_LOCKED,
        "The replica is locked by another merklesync process, still after waiting for it "
        "(5 s; MERKLESYNC_LOCK_WAIT sets how long). A run between two replicas that finds "
        "the second locked lets go of the first and tries again, three times in all (up "
        "to three waits, and short pauses between them).",
    ),
    (errors.EXIT_IO, "Local I/O error: disk full, permission denied, missing directory."),
    (errors.EXIT_CONNECTION, "Connection: refused, timed out, authentication failed, peer died."),
    (errors.EXIT_PROTOCOL, "Protocol: the peer sent something malformed, hostile or unexpected."),
    (errors.EXIT_HOSTKEY, "SSH host key unknown or changed."),
    (
        errors.EXIT_INTERRUPTED,
        "Interrupted (Ctrl-C, SIGINT): what was being written is finished or removed; "
        "run the command again to go on.",
    ),
    (
        errors.EXIT_TERMINATED,
        "Terminated (SIGTERM): cleaned up as for 130, then the process ends by the signal "
        "itself, as git and rsync do (a shell shows 143).",
    ),
    (
        errors.EXIT_HUNG_UP,
        "Hung up (SIGHUP: the terminal or SSH session went away): as for 143 (a shell shows "
        "129). Under nohup, SIGHUP stays ignored.",
    ),
]


# Pages whose command ends otherwise: code -> text (None: not returned).
EXIT_STATUS_OF: dict[str, dict[int, str | None]] = {
    "merklesync-watch": {
        errors.EXIT_OK: "Stopped by SIGINT or SIGTERM (Ctrl-C included), the last --run "
        "command, if any, having succeeded.",
        errors.EXIT_DIFFERENT: "Stopped after its last --run command failed.",
        errors.EXIT_PROTOCOL: None,
        errors.EXIT_HOSTKEY: None,
        errors.EXIT_INTERRUPTED: None,
        errors.EXIT_TERMINATED: None,
        errors.EXIT_HUNG_UP: "Hung up (SIGHUP: the terminal or SSH session went away): it "
        "stops and ends by the signal (a shell shows 129); run it under nohup or a service "
        "manager to keep it.",
    },
    "merklesync-serve": {
        errors.EXIT_HUNG_UP: None,
        errors.EXIT_OK: "The client ended the session (bye, or the end of its input).",
        errors.EXIT_DIFFERENT: None,
        errors.EXIT_USAGE: "Usage error, or a failure of the agent itself (said on standard "
        "error).",
        errors.EXIT_STATE: None,
        errors.EXIT_LOCKED: None,
        errors.EXIT_IO: None,
        errors.EXIT_CONNECTION: "The client went away (a broken pipe, a reset).",
        errors.EXIT_PROTOCOL: "The client broke the protocol.",
        errors.EXIT_HOSTKEY: None,
        errors.EXIT_INTERRUPTED: None,
        errors.EXIT_TERMINATED: None,
    },
}


def _esc(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        ("\\&" + line if line.startswith((".", "'")) else line) for line in out.split("\n")
    )


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.strip().split("\n\n") if p.strip()]


def page(name: str, command: click.Command, parent: click.Context) -> str:
    ctx = click.Context(command, info_name=name, parent=parent)
    full = f"{parent.command_path} {name}" if name != parent.info_name else name
    title = full.replace(" ", "-")
    help_text = command.help or ""
    lines = [
        f'.TH {title.upper()} 1 "{DATE}" "merklesync {__version__}" "merklesync manual"',
        ".SH NAME",
        f"{_esc(title)} \\- {_esc(command.get_short_help_str(limit=200))}",
        ".SH SYNOPSIS",
        f".B {_esc(full)}",
        _esc(" ".join(command.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
    ]
    for para in _paragraphs(help_text):
        lines += [_esc(para), ".PP"]
    params = [p for p in command.get_params(ctx) if isinstance(p, click.Option)]
    if params:
        lines.append(".SH OPTIONS")
        for param in params:
            record = param.get_help_record(ctx)
            if record is None:
                continue
            lines += [".TP", f"\\fB{_esc(record[0])}\\fR", _esc(record[1])]
    if isinstance(command, click.Group):
        lines.append(".SH COMMANDS")
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None:
                lines += [
                    ".TP",
                    f"\\fB{_esc(title)}\\-{_esc(sub_name)}\\fR(1)",
                    _esc(sub.get_short_help_str(limit=200)),
                ]
    fields = FIELDS.get(full.removeprefix("merklesync "))
    if fields:
        lines += [
            ".SH JSON OUTPUT",
            _esc("With --json, one JSON object on standard output, its keys sorted:"),
        ]
        for field in fields:
            lines += [".TP", f"\\fB{_esc(field.key)}\\fR", _esc(field.text)]
        lines += [".PP", _esc(ERROR_OBJECT)]
    lines.append(".SH EXIT STATUS")
    own = EXIT_STATUS_OF.get(title, {})
    for code, text in EXIT_STATUS:
        shown = own.get(code, text)
        if shown is not None:
            lines += [".TP", f"\\fB{code}\\fR", _esc(shown)]
    see = ["merklesync(1)"] if title != "merklesync" else []
    see.append("merklesync-protocol(7)")
    lines += [".SH SEE ALSO", ", ".join(_esc(s) for s in see)]
    return "\n".join(lines) + "\n"


def all_pages() -> dict[str, str]:
    root = click.Context(cli, info_name="merklesync", **cli.context_settings)
    pages = {"merklesync.1": page("merklesync", cli, root)}
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        if command is not None:
            pages[f"merklesync-{name}.1"] = page(name, command, root)
            if isinstance(command, click.Group):  # one page per subcommand too
                group = click.Context(command, info_name=name, parent=root)
                for sub_name in command.list_commands(group):
                    sub = command.get_command(group, sub_name)
                    if sub is not None:
                        pages[f"merklesync-{name}-{sub_name}.1"] = page(sub_name, sub, group)
    return pages


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "man")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in all_pages().items():
        (target / name).write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
