"""--json output: one document, written as it is made."""

from __future__ import annotations

import json
import os
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from merklesync.cli.common import _JSON_ITEMS, Output

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def _emitted(payload: dict[str, Any]) -> str:
    @click.command()
    def emit() -> None:
        Output(as_json=True).emit_json(payload)

    result = CliRunner().invoke(emit, catch_exceptions=False)
    return result.stdout


@given(st.dictionaries(st.text(max_size=6), values), st.lists(values, max_size=20))
def test_a_document_is_what_json_dumps_writes_with_iterators_as_lists(
    fields: dict[str, Any], items: list[Any]
) -> None:
    expected = json.dumps({**fields, "items": items}, sort_keys=True) + "\n"
    assert _emitted({**fields, "items": iter(items)}) == expected
    assert _emitted({**fields, "items": items}) == expected


@pytest.mark.parametrize("pieces", [1, 2, 3.5])
def test_a_long_list_is_written_in_pieces_and_whole(pieces: float) -> None:
    items = [{"path": f"d/{n}", "ok": n % 3 == 0} for n in range(int(pieces * _JSON_ITEMS))]
    payload = {"a": 1, "changes": items, "z": [None]}
    expected = json.dumps(payload, sort_keys=True) + "\n"
    assert _emitted({**payload, "changes": iter(items)}) == expected


def test_nothing_is_written_without_json() -> None:
    @click.command()
    def emit() -> None:
        Output(as_json=False).emit_json({"changes": iter([1, 2])})

    assert CliRunner().invoke(emit, catch_exceptions=False).stdout == ""


def test_every_command_that_reads_a_replica_takes_stats(tmp_path: Any) -> None:
    """--stats on init, status, conflicts, resolve, diff, push, pull, sync
    and repair: the counters on stderr, and in the --json document."""
    from tests.clirun import ms

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    for n in range(3):
        (a / f"f{n}").write_text(f"{n}\n")
    r = ms("init", a, "--stats")
    assert r.code == 0 and "files scanned: 3" in r.err and "files hashed: 3" in r.err
    assert ms("init", a, "--json").json()["stats"]["files_scanned"] == 3
    assert ms("push", a, b, "--stats").code == 0
    for args in (("status", a), ("conflicts", a), ("diff", a, b), ("sync", a, b)):
        r = ms(*args, "--stats")
        assert r.code == 0 and "files scanned: " in r.err, (args, r.err)
        assert "files_scanned" in ms(*args, "--json", "--stats").json()["stats"], args
    assert ms("repair", a, b, "--json").json()["stats"]["round_trips"] == 1
    (a / "f0").write_text("mine\n")
    (b / "f0").write_text("theirs\n")
    assert ms("sync", a, b).code == 0
    old = os.getcwd()
    os.chdir(a)
    try:
        r = ms("resolve", "--all", "--take", "local", "--stats", "--json")
    finally:
        os.chdir(old)
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_scanned"] >= 3
