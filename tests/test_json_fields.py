"""Every command's --json object holds the keys its man page documents
(merklesync/cli/json_fields.py), and no other."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import click
import pytest

from merklesync.cli.app import cli
from merklesync.cli.json_fields import FIELDS
from merklesync.model import Stats
from tests.clirun import Result, ms


def _commands_with_json() -> set[str]:
    found: set[str] = set()

    def visit(command: click.Command, ctx: click.Context, name: str) -> None:
        if isinstance(command, click.Group):
            for sub_name in command.list_commands(ctx):
                sub = command.get_command(ctx, sub_name)
                assert sub is not None
                visit(sub, click.Context(sub, info_name=sub_name, parent=ctx), f"{name} {sub_name}")
        elif any("--json" in p.opts for p in command.params if isinstance(p, click.Option)):
            found.add(name.strip())

    visit(cli, click.Context(cli, info_name=""), "")
    return found


def test_every_command_with_json_output_is_documented() -> None:
    assert _commands_with_json() == set(FIELDS)


def test_the_counters_documented_are_those_of_stats() -> None:
    [stats] = {f.text for fields in FIELDS.values() for f in fields if f.key == "stats"}
    named = stats.split(": ", 1)[1].rstrip(".").split(", ")
    assert named == [f.name for f in dataclasses.fields(Stats)]


def _checked(command: str, r: Result) -> dict[str, Any]:
    assert r.out.count("\n") == 1, (command, r.out)
    doc: dict[str, Any] = r.json()
    fields = FIELDS[command]
    assert set(doc) <= {f.key for f in fields}, (command, sorted(doc))
    assert {f.key for f in fields if f.always} <= set(doc), (command, sorted(doc))
    for f in fields:  # objects in a list: the keys its text names in braces
        items = doc.get(f.key)
        plain = re.sub(r"\([^()]*\)", "", f.text)  # without what parentheses say of a key
        named = {
            k.strip() for group in re.findall(r"\{([^{}]*)\}", plain) for k in group.split(",")
        }
        if isinstance(items, list) and items and isinstance(items[0], dict):
            assert named, (command, f.key)
            for item in items:
                assert set(item) <= named, (command, f.key, sorted(item))
    return doc


def test_each_object_has_the_documented_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x.txt").write_text("x\n")
    (a / "y.txt").write_text("y\n")
    seen: set[str] = set()

    def run(command: str, *args: str | Path) -> dict[str, Any]:
        seen.add(command)
        return _checked(command, ms(*command.split(), *args, "--json"))

    assert run("init", a)["replica_id"]
    assert run("init", a, "--new-id")["previous_replica_id"]
    assert [c["action"] for c in run("push", a, b)["changes"]] == ["copy", "copy"]
    assert run("pull", a, b)["left_alone"] == []
    (a / "x.txt").write_text("a's\n")
    (b / "x.txt").write_text("b's\n")
    assert run("diff", a, b)["identical"] is False
    assert run("push", a, b)["left_alone"] == [
        {"path": "x.txt", "reason": "conflict: both sides changed it"}
    ]
    assert run("status", b)["modified"] == []
    [event] = run("sync", a, b)["events"]
    assert event["what"] == "conflict"
    [conflict] = run("conflicts", a)["conflicts"]
    assert conflict["path"] == "x.txt"
    monkeypatch.chdir(a)
    # A's version keeps the name, or its conflict copy is taken for it.
    [step] = run("resolve", "--all", "--take", "local")["done"]
    assert step in (
        {"action": "keep", "path": "x.txt", "target": None, "deletion": False},
        {"action": "take", "path": conflict["copy"], "target": "x.txt", "deletion": False},
    )
    assert run("repair", a, b)["left_out"] == []
    assert run("gc", a)["collected"] == []
    assert run("remote add", "origin", b)["name"] == "origin"
    assert [r["name"] for r in run("remote list")["remotes"]] == ["origin"]
    assert run("remote remove", "origin")["removed"] == "origin"
    assert seen == set(FIELDS)


def test_what_a_sync_could_not_do_is_listed_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that failed (both kept) and a replica left out of a repair
    are named where a script looks for them, as the other lists name them."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.mkdir()
    (a / "bin.dat").write_bytes(b"\0one")
    assert ms("init", a).code == 0 and ms("push", a, b).code == 0
    (a / "bin.dat").write_bytes(b"\0a's")
    (b / "bin.dat").write_bytes(b"\0b's")
    r = ms("sync", a, b, "--on-conflict", "union", "--json")
    assert r.code == 1, r.err
    doc = _checked("sync", r)
    [failed] = doc["merges_failed"]
    assert failed == {"path": "bin.dat", "reason": "not text or JSON; cannot merge by union"}
    assert doc["unresolved"] == [] and doc["left_alone"] == []
    [event] = doc["events"]
    assert event["what"] == "conflict" and event["ok"] is True  # both versions kept
    (c / ".merklesync").mkdir(parents=True)
    (c / ".merklesync" / "index.db").write_bytes(b"not an index")
    monkeypatch.chdir(tmp_path)  # c named relative: listed by its resolved path all the same
    doc = _checked("repair", ms("repair", a, b, "c", "--json"))
    [left] = doc["left_out"]
    assert left["replica"] == str(c.resolve()) and left["exit_code"] == 3
    assert set(doc["replicas"]) == set(doc["roots"]) == {str(a.resolve()), str(b.resolve())}
    assert doc["identical"] is False  # c's state is not known


def test_a_force_says_whose_version_it_overwrote(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x.txt").write_text("one\n")
    assert ms("init", a).code == 0 and ms("push", a, b).code == 0
    (a / "x.txt").write_text("a's\n")
    (b / "x.txt").write_text("b's\n")
    b_id = ms("status", b, "--json").json()["replica_id"]
    for dry in (["--dry-run"], []):
        doc = _checked("push", ms("push", a, b, "--force", "--json", *dry))
        [change] = doc["changes"]
        assert change["action"] == "force" and change.get("ok", True) is True
        assert change["discarded"] == f"the version written by {b_id}"
    assert (b / "x.txt").read_text() == "a's\n"
