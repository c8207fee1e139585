"""The man pages in man/ are generated from the CLI; they must not drift."""

from pathlib import Path

from merklesync.cli.manpages import all_pages

MAN = Path(__file__).resolve().parent.parent / "man"


def test_committed_man_pages_match_the_cli() -> None:
    pages = all_pages()
    stale = [
        n for n, text in pages.items() if not (MAN / n).exists() or (MAN / n).read_text() != text
    ]
    assert not stale, f"regenerate with `python -m merklesync.cli.manpages man`: {stale}"


def test_every_command_has_a_page() -> None:
    names = set(all_pages())
    assert {"merklesync.1", "merklesync-push.1", "merklesync-diff.1"} <= names
    on_disk = {p.name for p in MAN.glob("*.1")}
    assert on_disk == names, "remove pages of commands that no longer exist"


def test_every_command_is_registered_under_its_own_name() -> None:
    import click

    from merklesync.cli.app import COMMANDS, cli

    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None
