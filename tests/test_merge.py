"""Content merges: set union of text lines and JSON, and git-style merge commands."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from merklesync.errors import EXIT_DIFFERENT
from merklesync.merge import MergeFailed, run_merge_command, union_merge

# -- helpers -----------------------------------------------------------------


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def norm(value: Any) -> Any:
    """A JSON value as nested sets: order and repetition do not count."""
    if isinstance(value, list):
        return frozenset(norm(item) for item in value)
    if isinstance(value, dict):
        return frozenset((key, norm(item)) for key, item in value.items())
    return ("scalar", canon(value))


def covers(merged: Any, value: Any) -> bool:
    """Every element of ``value`` is somewhere in ``merged``."""
    if isinstance(merged, dict) and isinstance(value, dict):
        return all(key in merged and covers(merged[key], item) for key, item in value.items())
    if isinstance(merged, list):
        present = {canon(item) for item in merged}
        return all(
            canon(item) in present for item in (value if isinstance(value, list) else [value])
        )
    return canon(merged) == canon(value)


def lines_of(data: bytes) -> list[str]:
    parts = re.split(r"\r?\n", data.decode("utf-8"))
    if parts[-1] == "":
        parts.pop()
    return parts


def dump(value: Any, indent: int | None, final: bool, ensure_ascii: bool = True) -> bytes:
    text = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)
    return (text + ("\n" if final else "")).encode()


def union(ours: bytes, theirs: bytes) -> bytes:
    return union_merge("f", ours, theirs)


# -- strategies --------------------------------------------------------------

# Letters and spaces only: no line of these parses as JSON, so the text path is taken.
line = st.text(alphabet="abcxyz ", max_size=4)
texts = st.builds(
    lambda lines, newline, final: (
        newline.join(lines) + (newline if final and lines else "")
    ).encode(),
    st.lists(line, max_size=8),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-2, 2, allow_nan=False).map(lambda f: round(f, 1)),
    st.text(alphabet="abé", max_size=2),
)
arrays = st.lists(st.one_of(st.integers(-5, 5), st.text(alphabet="ab", max_size=2)), max_size=6)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet="abc", max_size=2), inner, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.text(alphabet="abc", max_size=2), values, max_size=5)
layouts = st.tuples(st.sampled_from([None, 2]), st.booleans())
documents = st.builds(lambda v, layout: dump(v, *layout), st.one_of(arrays, objects), layouts)


# -- laws: text --------------------------------------------------------------


@given(texts, texts)
def test_text_union_is_symmetric_in_content_and_loses_nothing(a: bytes, b: bytes) -> None:
    ab, ba = union(a, b), union(b, a)
    assert set(lines_of(ab)) == set(lines_of(ba)) == set(lines_of(a)) | set(lines_of(b))
    assert lines_of(ab)[: len(lines_of(a))] == lines_of(a)  # ours first, in order
    either_final = any(x.endswith(b"\n") for x in (a, b))
    last_is_empty = bool(lines_of(ab)) and lines_of(ab)[-1] == ""
    assert ab.endswith(b"\n") == (either_final or last_is_empty)


@given(texts, texts)
def test_text_union_is_idempotent(a: bytes, b: bytes) -> None:
    assert union(a, a) == a
    ab = union(a, b)
    assert union(ab, b) == ab
    assert union(ab, ab) == ab


@given(texts, texts)
def test_text_union_is_deterministic(a: bytes, b: bytes) -> None:
    assert union(a, b) == union(a, b)


# -- laws: JSON --------------------------------------------------------------


@given(documents, documents)
def test_json_union_is_symmetric_in_content_and_loses_nothing(a: bytes, b: bytes) -> None:
    ab, ba = json.loads(union(a, b)), json.loads(union(b, a))
    assert norm(ab) == norm(ba)
    for side in (json.loads(a), json.loads(b)):
        assert covers(ab, side)
        assert covers(ba, side)


@given(st.tuples(arrays, layouts), st.tuples(arrays, layouts))
def test_json_arrays_union_in_order(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    (va, la), (vb, lb) = a, b
    merged = json.loads(union(dump(va, *la), dump(vb, *lb)))
    assert merged[: len(va)] == va
    assert {canon(x) for x in merged} == {canon(x) for x in va + vb}
    extra = merged[len(va) :]
    assert len({canon(x) for x in extra}) == len(extra)  # theirs' additions appear once


@given(documents, documents)
def test_json_union_is_idempotent(a: bytes, b: bytes) -> None:
    assert union(a, a) == a
    ab = union(a, b)
    assert union(ab, b) == ab
    assert union(ab, a) == ab
    assert union(ab, ab) == ab


@given(st.one_of(arrays, objects), st.one_of(arrays, objects), layouts, layouts)
def test_json_union_keeps_ours_layout(
    va: Any, vb: Any, la: tuple[int | None, bool], lb: tuple[int | None, bool]
) -> None:
    (indent, final), other_indent = la, (2 if la[0] is None else None)
    ours = dump(va, indent, final)
    merged = union(ours, dump(vb, *lb))
    value = json.loads(merged)
    if dump(va, other_indent, final) != ours:  # ours' layout is unambiguous
        assert merged in (dump(value, indent, final, False), dump(value, indent, final, True))
    assert merged.endswith(b"\n") == final


# -- examples: JSON ----------------------------------------------------------


def test_the_shopping_cart() -> None:
    assert union(b'["MacBook"]', b'["iPhone"]') == b'["MacBook", "iPhone"]'
    assert union(b'["iPhone"]', b'["MacBook"]') == b'["iPhone", "MacBook"]'
    ours = b'{"items": ["coffee", "MacBook"]}\n'
    theirs = b'{"items": ["coffee", "iPhone"]}\n'
    assert union(ours, theirs) == b'{"items": ["coffee", "MacBook", "iPhone"]}\n'


def test_json_nested_objects() -> None:
    ours = {"user": {"name": "ann", "tags": ["a"]}, "v": 1}
    theirs = {"user": {"tags": ["b", "a"], "mail": "a@x"}, "w": {"deep": {"x": 1}}}
    merged = json.loads(union(json.dumps(ours).encode(), json.dumps(theirs).encode()))
    assert merged == {
        "user": {"name": "ann", "tags": ["a", "b"], "mail": "a@x"},
        "v": 1,
        "w": {"deep": {"x": 1}},
    }
    assert list(merged) == ["user", "v", "w"]  # ours' keys first


def test_json_scalar_conflict_keeps_both_ours_first() -> None:
    assert json.loads(union(b'{"n": 1}', b'{"n": 2}')) == {"n": [1, 2]}
    assert json.loads(union(b'{"n": 2}', b'{"n": 1}')) == {"n": [2, 1]}
    merged = union(b'{"n": 1}', b'{"n": 2}')
    assert union(merged, b'{"n": 2}') == merged
    assert union(merged, b'{"n": 1}') == merged
    assert json.loads(union(merged, b'{"n": 3}')) == {"n": [1, 2, 3]}
    # Types count: 1, 1.0 and true are three different values.
    assert json.loads(union(b'{"n": 1}', b'{"n": true}')) == {"n": [1, True]}
    assert json.loads(union(b"[1]", b"[1.0, true]")) == [1, 1.0, True]
    # null is a value like any other; an object against a scalar keeps both too.
    assert json.loads(union(b'{"n": null}', b'{"n": {"a": 1}}')) == {"n": [None, {"a": 1}]}


def test_json_array_against_scalar() -> None:
    assert json.loads(union(b'{"t": ["a"]}', b'{"t": "b"}')) == {"t": ["a", "b"]}
    assert json.loads(union(b'{"t": "b"}', b'{"t": ["a", "b"]}')) == {"t": ["b", "a"]}
    assert json.loads(union(b'{"t": [1, 2]}', b'{"t": 2}')) == {"t": [1, 2]}


def test_top_level_scalars_are_text_and_containers_mix() -> None:
    # A file of one JSON scalar per line is text: its lines are merged.
    assert union(b'"a"\n', b'"b"\n') == b'"a"\n"b"\n'
    assert union(b"1\n", b"2\n") == b"1\n2\n"
    assert json.loads(union(b'{"a": 1}', b"[1]")) == [{"a": 1}, 1]


def test_json_decided_by_content_not_name() -> None:
    assert union_merge("cart.txt", b"[1]", b"[2]") == b"[1, 2]"
    assert union_merge("notes.json", b"a\n", b"b\n") == b"a\nb\n"


def test_json_layout_indented_stays_indented() -> None:
    ours = b'{\n  "items": [\n    "coffee"\n  ]\n}\n'
    merged = union(ours, b'{"items": ["tea"]}')
    assert merged == b'{\n  "items": [\n    "coffee",\n    "tea"\n  ]\n}\n'
    four = b'{\n    "a": 1\n}'
    assert union(four, b'{"b": 2}') == b'{\n    "a": 1,\n    "b": 2\n}'
    tabs = b'{\n\t"a": 1\n}\n'
    assert union(tabs, b'{"b": 2}') == b'{\n\t"a": 1,\n\t"b": 2\n}\n'


def test_json_layout_compact_tight_crlf_and_escapes() -> None:
    assert union(b'{"a":[1]}', b'{"a":[2]}') == b'{"a":[1,2]}'
    assert union(b'{"a": [1]}\n', b'{"a":[2]}') == b'{"a": [1, 2]}\n'
    crlf = b'{\r\n  "a": 1\r\n}\r\n'
    assert union(crlf, b'{"b": 2}') == b'{\r\n  "a": 1,\r\n  "b": 2\r\n}\r\n'
    assert union('["é"]'.encode(), b'["\\u00fc"]') == '["é", "ü"]'.encode()
    assert union(b'["\\u00e9"]', '["ü"]'.encode()) == b'["\\u00e9", "\\u00fc"]'
    # Strings holding newlines stay escaped when the layout uses CRLF.
    assert json.loads(union(crlf, b'{"b": "x\\ny"}')) == {"a": 1, "b": "x\ny"}


def test_json_layout_unknown_writer_gets_the_closest() -> None:
    odd = b'{ "a" : [ 1 ] }'
    assert union(odd, b'{"a": [2]}') == b'{"a": [1, 2]}'
    merged = union(b'{\n   "a":1}\n', b'{"b": 2}')
    assert merged == b'{\n   "a": 1,\n   "b": 2\n}\n'


# -- examples: text ----------------------------------------------------------


def test_text_lines() -> None:
    assert union(b"milk\neggs\n", b"milk\nbread\n") == b"milk\neggs\nbread\n"
    assert union(b"milk\nbread\n", b"milk\neggs\n") == b"milk\nbread\neggs\n"
    assert union(b"a\nb\n", b"b\nc\nc\nd\n") == b"a\nb\nc\nd\n"
    assert union(b"", b"a\n") == b"a\n"
    assert union(b"a\n", b"") == b"a\n"


def test_text_final_newline_if_either_had_one() -> None:
    assert union(b"a", b"b") == b"a\nb"
    assert union(b"a", b"b\n") == b"a\nb\n"
    assert union(b"a\n", b"b") == b"a\nb\n"
    assert union(b"a", b"a\n") == b"a\n"
    assert union(b"a\n", b"a") == b"a\n"
    assert union(b"a", b"\na") == b"a\n\n"  # an empty last line needs its newline


def test_text_crlf() -> None:
    assert union(b"a\r\nb\r\n", b"b\nc\n") == b"a\r\nb\r\nc\r\n"
    assert union(b"a\nb\n", b"b\r\nc\r\n") == b"a\nb\nc\n"
    assert union(b"a", b"b\r\n") == b"a\r\nb\r\n"
    # Ours' lines are kept byte for byte, even with mixed endings.
    assert union(b"a\r\nb\n", b"c") == b"a\r\nb\nc\r\n"


def test_text_keeps_ours_duplicates_and_blank_lines() -> None:
    assert union(b"a\n\na\n", b"b\n\n") == b"a\n\na\nb\n"


# -- what cannot be merged ---------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0", b"\x89PNG\r\n\x1a\n\0\1"),
        (b"a\0b\n", b"a\n"),
        (b"caf\xe9\n", b"cafe\n"),
        (b'{"items": ["coffee"]}', b'{"items": ["coffee"'),  # JSON on one side only
        (b"plain text\n", b"[1, 2]\n"),
    ],
)
def test_union_refuses_what_it_cannot_merge(ours: bytes, theirs: bytes) -> None:
    for a, b in ((ours, theirs), (theirs, ours)):
        with pytest.raises(MergeFailed) as info:
            union_merge("img/logo.png", a, b)
        assert info.value.message == "img/logo.png: not text or JSON; cannot merge by union"
        assert info.value.exit_code == EXIT_DIFFERENT


def test_identical_content_is_returned_as_is() -> None:
    blob = b"\0\1\2binary"
    assert union_merge("b", blob, blob) is blob


def test_deep_json_fails_cleanly() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(MergeFailed):
        union(deep, b"[1]")


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (b'{"id": 0.12345678901234567890123, "a": 1}', b'{"id": 0.1, "b": 2}'),  # > a double
        (b'{"x": 1e400, "a": 1}', b'{"x": 1e400, "b": 2}'),  # would be written Infinity
        (b'{"x": NaN, "a": 1}', b'{"b": 2}'),  # taken by json.loads, no JSON
    ],
)
def test_union_refuses_numbers_it_would_not_write_back_exactly(ours: bytes, theirs: bytes) -> None:
    for a, b in ((ours, theirs), (theirs, ours)):
        with pytest.raises(MergeFailed, match="a number in it would not be written back exactly"):
            union_merge("data.json", a, b)


def test_union_keeps_the_value_of_numbers() -> None:
    big = b"123456789012345678901234567890"
    merged = union(b'{"p": 1.10, "n": 1E3, "big": ' + big + b', "a": 1}', b'{"p": 1.1, "b": 2}')
    assert merged == b'{"p": 1.1, "n": 1000.0, "big": ' + big + b', "a": 1, "b": 2}'


def test_union_refuses_a_string_that_cannot_be_utf8() -> None:
    # A lone surrogate, escaped: valid JSON that no UTF-8 file can hold raw
    # (ours writes raw UTF-8). It used to end the whole sync with a traceback.
    with pytest.raises(MergeFailed, match="cannot be written as UTF-8"):
        union_merge("c.json", '["é"]\n'.encode(), b'["\\udc80"]\n')


def test_union_of_json_with_a_byte_order_mark_keeps_it() -> None:
    ours = '\ufeff{\n  "a": 1\n}\n'.encode()
    theirs = '\ufeff{\n  "b": 2\n}\n'.encode()
    merged = union(ours, theirs)
    assert merged == '\ufeff{\n  "a": 1,\n  "b": 2\n}\n'.encode()
    assert json.loads(merged.decode("utf-8-sig")) == {"a": 1, "b": 2}
    assert json.loads(union(ours, b'{"c": 3}').decode("utf-8-sig")) == {"a": 1, "c": 3}


# -- merge commands ----------------------------------------------------------


def test_merge_command_appends_theirs() -> None:
    assert run_merge_command("cat %B >> %A", "list.txt", b"a\n", b"b\n", None) == b"a\nb\n"


def test_merge_command_base_and_path(tmp_path: Path) -> None:
    assert run_merge_command("cat %O > %A", "f", b"x", b"y", b"base") == b"base"
    assert run_merge_command("cat %O > %A", "f", b"x", b"y", None) == b""
    weird = "dir with space/it's %B; $(rm -rf nothing).json"
    assert run_merge_command("printf '%s' %P > %A", weird, b"", b"", None) == weird.encode()


def test_merge_command_temp_files_keep_the_suffix_and_are_removed(tmp_path: Path) -> None:
    log = tmp_path / "log"
    command = f"printf '%s\\n' \"$PWD\" %A %B %O > {log}; cat %B > %A"
    assert run_merge_command(command, "a/cart.json", b"o", b"t", None) == b"t"
    cwd, ours, theirs, base = log.read_text().splitlines()
    assert Path(ours).parent == Path(cwd)
    assert ours.endswith(".json") and theirs.endswith(".json") and base.endswith(".json")
    assert len({ours, theirs, base}) == 3
    assert not Path(cwd).exists()
    with pytest.raises(MergeFailed):
        run_merge_command(f"printf '%s' \"$PWD\" > {log}; exit 1", "f", b"", b"", None)
    assert not Path(log.read_text()).exists()


def test_merge_command_failure_reports_last_stderr_line() -> None:
    command = "echo starting >&2; echo 'conflict in line 3' >&2; echo >&2; exit 3"
    with pytest.raises(MergeFailed) as info:
        run_merge_command(command, "notes.txt", b"a", b"b", None)
    assert info.value.message == "notes.txt: merge command failed (exit 3): conflict in line 3"
    assert info.value.exit_code == EXIT_DIFFERENT


def test_merge_command_missing() -> None:
    with pytest.raises(MergeFailed) as info:
        run_merge_command("no-such-merge-tool-4711 %A %B", "f", b"a", b"b", None)
    assert "exit 127" in info.value.message
    assert "not found" in info.value.message


def test_merge_command_removing_the_result_fails() -> None:
    with pytest.raises(MergeFailed, match="left no result"):
        run_merge_command("rm %A", "f", b"a", b"b", None)


def test_a_path_is_never_shell_code_however_the_command_quotes_it(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    name = f"notes/$(touch {planted}).txt"
    for command in ('echo "merging %P" >&2; cat %B >> %A', "cat %B >> %A # '%P'", "echo %P"):
        assert run_merge_command(command, name, b"a\n", b"b\n", None) in (b"a\nb\n", b"a\n")
    assert not planted.exists()
    for command in ('printf "[%s]" "%P" > %A', "printf '[%s]' '%P' > %A", "printf [%s] %P > %A"):
        shown = run_merge_command(command, name, b"", b"", None)
        assert shown == f"[{name}]".encode(), command


def test_a_process_the_command_leaves_running_does_not_hold_the_merge() -> None:
    # It keeps standard error open: the merge is done when the shell ends.
    start = time.monotonic()
    merged = run_merge_command("cat %B >> %A; (sleep 20 &)", "f.txt", b"a\n", b"b\n", None, 10)
    assert merged == b"a\nb\n"
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("command", ["sleep 10", "sleep 10; true", "sleep 10 & wait"])
def test_merge_command_timeout(command: str) -> None:
    start = time.monotonic()
    with pytest.raises(MergeFailed) as info:
        run_merge_command(f"echo waiting >&2; {command}", "f", b"a", b"b", None, timeout=0.3)
    assert time.monotonic() - start < 5
    assert info.value.message == "f: merge command timed out after 0.3 s: waiting"


def test_union_knows_an_object_whatever_the_order_of_its_keys() -> None:
    merged = union_merge("cart.json", b'[{"id": 1, "qty": 2}]', b'[{"qty": 2, "id": 1}]')
    assert json.loads(merged) == [{"id": 1, "qty": 2}]


def test_a_backslash_in_single_quotes_is_a_backslash_as_sh_reads_it() -> None:
    merged = run_merge_command("tr '\\' '/' < %B > %A", "p.txt", b"ours", b"a\\b", None)
    assert merged == b"a/b"
