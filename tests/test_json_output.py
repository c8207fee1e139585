"""--json output: one document, written as it is made."""

from __future__ import annotations

import json
from typing import Any

import click
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from merklesync.cli.common import Output

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


def test_a_long_list_is_written_in_pieces_and_whole() -> None:
    items = [{"path": f"d/{n}", "ok": n % 3 == 0} for n in range(3 * 4096 + 17)]
    payload = {"a": 1, "changes": items, "z": [None]}
    expected = json.dumps(payload, sort_keys=True) + "\n"
    assert _emitted({**payload, "changes": iter(items)}) == expected


def test_nothing_is_written_without_json() -> None:
    @click.command()
    def emit() -> None:
        Output(as_json=False).emit_json({"changes": iter([1, 2])})

    assert CliRunner().invoke(emit, catch_exceptions=False).stdout == ""
