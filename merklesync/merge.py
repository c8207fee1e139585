"""Content merges for concurrent versions of one file (the "siblings" of a
version-vector conflict): a semantic set union, and git-style merge commands.

Pure library code: bytes in, bytes out, :class:`MergeFailed` when a merge is
impossible. The caller decides what to do then (usually keep both versions).

Union merge (``union_merge``), chosen by content, whatever the file name:

* **JSON** (both sides parse as JSON): arrays become the union of their
  elements, ours first in order, then theirs' elements not already present
  (equality by canonical JSON, so ``1``, ``1.0`` and ``true`` are different
  elements); objects become the union of their keys (ours' order, then theirs'
  new keys), values present on both sides merged recursively.
  **Scalar conflict rule:** where the two sides hold different values at the
  same place and they are not both arrays or both objects, the result is the
  array of both, ours first: ``{"n": 1}`` + ``{"n": 2}`` -> ``{"n": [1, 2]}``.
  An array meeting a non-array treats the non-array as a one-element array:
  ``["a"]`` + ``"b"`` -> ``["a", "b"]`` and ``[1, 2]`` + ``2`` -> ``[1, 2]``, so
  merging the result again with either side changes nothing. The output keeps
  ours' layout: its indentation (or one line, with or without spaces after
  ``,`` and ``:``), ``\\uXXXX`` escapes or raw UTF-8, CRLF, final newline, a
  byte order mark. Numbers keep their value, not always their spelling
  (``1.10`` is written ``1.1``, ``1E3`` ``1000.0``); a document holding a
  number that would not be written back exactly (more digits than a double
  holds, ``1e400``), or a string that cannot be UTF-8 (a lone surrogate
  escape), is not merged.
* **Text** (valid UTF-8 without NUL on both sides): ours' lines unchanged and
  in order, then theirs' lines that ours lacks, each once, with ours' newline
  style (``\\r\\n`` and ``\\n`` end the same line); a final newline if either
  side had one (or if the last line is empty, which needs one to exist).
* Anything else (binary, JSON on one side only) raises :class:`MergeFailed`.

A union never loses an element, and never deletes one either: an item
removed on one side and kept on the other comes back (Dynamo's cart has the
same property). The merge is deterministic, symmetric in content (``a + b``
and ``b + a`` hold the same elements), idempotent (``a + a == a``) and
``(a + b) + b == a + b`` byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import IO, TypeAlias

from merklesync.errors import EXIT_DIFFERENT, MerklesyncError, UsageError

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"


MAX_MERGE_BYTES = 64 << 20  # of one version, merged in memory at most


class MergeFailed(MerklesyncError):
    """The versions could not be merged."""

    exit_code = EXIT_DIFFERENT


# -- union -------------------------------------------------------------------


def union_merge(path: str, ours: bytes, theirs: bytes) -> bytes:
    """Merge two versions of ``path`` by set union; see the module docstring."""
    if ours == theirs:
        return ours
    ours_text, theirs_text = _as_text(ours), _as_text(theirs)
    if ours_text is None or theirs_text is None:
        raise MergeFailed(f"{path}: not text or JSON; cannot merge by union")
    ours_json, theirs_json = _as_json(ours_text), _as_json(theirs_text)
    if ours_json is None and theirs_json is None:
        return _merge_lines(ours_text, theirs_text).encode("utf-8")
    if ours_json is None or theirs_json is None:
        raise MergeFailed(f"{path}: not text or JSON; cannot merge by union")
    if isinstance(ours_json, _Inexact) or isinstance(theirs_json, _Inexact):
        raise MergeFailed(f"{path}: a number in it would not be written back exactly")
    try:
        merged = _merge_values(ours_json.value, theirs_json.value)
        return _JSONLayout.of(ours_text, ours_json.value).dump(merged).encode("utf-8")
    except RecursionError:
        raise MergeFailed(f"{path}: JSON nested too deeply to merge") from None
    except UnicodeEncodeError:  # a lone surrogate, escaped in the JSON: no UTF-8 for it
        raise MergeFailed(f"{path}: a string in it cannot be written as UTF-8") from None


def _as_text(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class _Parsed:
    value: JSONValue


class _Inexact(_Parsed):
    """A JSON document with a number a double cannot hold: not merged."""


class _InexactNumber(Exception):
    pass


def _exact_float(literal: str) -> float:
    """A JSON number with a fraction or exponent, as json.loads reads it,
    where the double written back for it has the same value."""
    value = float(literal)
    if not math.isfinite(value) or Decimal(repr(value)) != Decimal(literal):
        raise _InexactNumber(literal)
    return value


def _not_json(literal: str) -> float:
    """NaN and Infinity, which json.loads takes and no JSON holds."""
    raise _InexactNumber(literal)


def _as_json(text: str) -> _Parsed | None:
    """The parsed document, or None when ``text`` is not a JSON array or
    object (a file of one number or string per line is text, not JSON).
    A byte order mark before it is no part of it (the layout keeps it)."""
    try:
        value = json.loads(
            text.removeprefix(_BOM), parse_float=_exact_float, parse_constant=_not_json
        )
    except _InexactNumber:
        return _Inexact(None)
    except (ValueError, RecursionError):
        return None
    return _Parsed(value) if isinstance(value, list | dict) else None


def _canonical(value: JSONValue) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _merge_values(ours: JSONValue, theirs: JSONValue) -> JSONValue:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        merged = dict(ours)
        for key, value in theirs.items():
            merged[key] = _merge_values(merged[key], value) if key in merged else value
        return merged
    if isinstance(ours, list) or isinstance(theirs, list):
        ours_list: list[JSONValue] = ours if isinstance(ours, list) else [ours]
        theirs_list: list[JSONValue] = theirs if isinstance(theirs, list) else [theirs]
        return _union_list(ours_list, theirs_list)
    if _canonical(ours) == _canonical(theirs):
        return ours
    return [ours, theirs]


def _union_list(ours: list[JSONValue], theirs: list[JSONValue]) -> list[JSONValue]:
    result = list(ours)
    seen = {_canonical(item) for item in ours}
    for item in theirs:
        key = _canonical(item)
        if key not in seen:
            seen.add(key)
            result.append(item)
    return result


@dataclass(frozen=True, slots=True)
class _JSONLayout:
    """How a JSON document was written, so a merge can be written alike."""

    indent: str | None  # None: all on one line
    tight: bool  # one line without spaces after "," and ":"
    ensure_ascii: bool
    newline: str
    final_newline: bool
    bom: bool = False

    @classmethod
    def of(cls, text: str, value: JSONValue) -> _JSONLayout:
        newline = "\r\n" if "\r\n" in text else "\n"
        final = text.endswith("\n")
        bom = text.startswith(_BOM)
        body = text.removeprefix(_BOM).replace("\r\n", "\n").strip()
        unit = _indent_unit(body)
        candidates = [
            cls(indent, tight, ascii_, newline, final, bom)
            for ascii_ in (False, True)
            for indent, tight in ((None, False), (None, True), (unit, False))
        ]
        for layout in candidates:
            if layout.dump_body(value) == body:
                return layout
        # Not written by a JSON serializer we know: the closest layout.
        if "\n" in body:
            return cls(unit, False, False, newline, final, bom)
        tight = ", " not in body and ": " not in body
        return cls(None, tight, False, newline, final, bom)

    def dump_body(self, value: JSONValue) -> str:
        if self.indent is not None:
            return json.dumps(
                value, indent=self.indent, ensure_ascii=self.ensure_ascii, allow_nan=False
            )
        separators = (",", ":") if self.tight else (", ", ": ")
        return json.dumps(
            value, separators=separators, ensure_ascii=self.ensure_ascii, allow_nan=False
        )

    def dump(self, value: JSONValue) -> str:
        # json.dumps escapes newlines inside strings, so every "\n" is layout.
        body = self.dump_body(value).replace("\n", self.newline)
        return (_BOM if self.bom else "") + body + (self.newline if self.final_newline else "")


def _indent_unit(body: str) -> str:
    """The leading whitespace of the first indented line: one level."""
    for line in body.split("\n")[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            unit = line[: len(line) - len(stripped)]
            if unit == " " * len(unit) or unit == "\t" * len(unit):
                return unit
            break
    return "  "


_BOM = "\ufeff"
_LINE_END = re.compile(r"\r?\n")


def _split_lines(text: str) -> list[tuple[str, str]]:
    """``(content, line ending)`` pairs; the last ending may be empty."""
    out: list[tuple[str, str]] = []
    pos = 0
    for match in _LINE_END.finditer(text):
        out.append((text[pos : match.start()], match.group()))
        pos = match.end()
    if pos < len(text):
        out.append((text[pos:], ""))
    return out


def _merge_lines(ours: str, theirs: str) -> str:
    ours_lines, theirs_lines = _split_lines(ours), _split_lines(theirs)
    endings = [end for _, end in ours_lines + theirs_lines if end]
    newline = endings[0] if endings else "\n"
    final = any(lines and lines[-1][1] for lines in (ours_lines, theirs_lines))
    seen = {content for content, _ in ours_lines}
    added: list[str] = []
    for content, _ in theirs_lines:
        if content not in seen:
            seen.add(content)
            added.append(content)
    lines = ours_lines + [(content, newline) for content in added]
    if not lines:
        return ""
    # Every line but the last needs an ending; the last has one if either side
    # did, or if it is empty (without an ending, an empty last line is no line).
    pieces = [content + (end or newline) for content, end in lines[:-1]]
    last, last_end = lines[-1]
    pieces.append(last + ((last_end or newline) if final or not last else ""))
    return "".join(pieces)


# -- merge commands ----------------------------------------------------------

_PLACEHOLDER = "ABOP"  # %A is $1, ... %P is $4


def _with_arguments(command: str) -> str:
    """``command`` with each placeholder made the shell argument it stands
    for, quoted as where it stands needs: ``"$1"`` outside quotes, ``$1``
    inside double quotes, and inside single quotes the quote closed around
    ``"$1"``. So a value is one word wherever it is, and never code."""
    out: list[str] = []
    quote = ""  # the quote we are inside, if any
    i = 0
    while i < len(command):
        ch = command[i]
        if ch == "%" and i + 1 < len(command) and command[i + 1] in _PLACEHOLDER:
            n = _PLACEHOLDER.index(command[i + 1]) + 1
            out.append({"": f'"${n}"', '"': f"${n}", "'": f"'\"${n}\"'"}[quote])
            i += 2
            continue
        if ch == "\\" and quote != "'" and i + 1 < len(command):
            out.append(command[i : i + 2])  # an escaped character, whatever it is
            i += 2
            continue
        if ch in "'\"" and quote in ("", ch):
            quote = "" if quote else ch
        out.append(ch)
        i += 1
    return "".join(out)


_SUFFIX = re.compile(r"\.[A-Za-z0-9_-]{1,16}")


def run_merge_command(
    command: str,
    path: str,
    ours: bytes,
    theirs: bytes,
    base: bytes | None,
    timeout: float = 60,
) -> bytes:
    """Merge with an external command, as git runs a merge driver.

    ``%A`` (ours; the command leaves the result in it), ``%B`` (theirs),
    ``%O`` (the common ancestor; an empty file when unknown) and ``%P`` (the
    path in the replica) stand for the shell's ``$1`` to ``$4``, whose values
    are given to ``sh -c`` as arguments (see _with_arguments): one word each,
    never read as shell code, whatever a path holds and however the command
    quotes them. The command
    runs in a private temporary directory, which is removed afterwards. Exit
    status 0 of the shell returns the new content of ``%A``; any other
    status, a timeout or a command that cannot run raises :class:`MergeFailed`
    with the last line the command wrote to standard error (a process it
    leaves behind holding that is not waited for).
    """
    suffix = PurePosixPath(path).suffix
    suffix = suffix if _SUFFIX.fullmatch(suffix) else ""
    with tempfile.TemporaryDirectory(prefix="merklesync-merge-") as tmp:
        files = {
            "A": Path(tmp, f"ours{suffix}"),
            "B": Path(tmp, f"theirs{suffix}"),
            "O": Path(tmp, f"base{suffix}"),
        }
        files["A"].write_bytes(ours)
        files["B"].write_bytes(theirs)
        files["O"].write_bytes(base or b"")
        script = _with_arguments(command)
        argv = [str(files["A"]), str(files["B"]), str(files["O"]), path]
        returncode, stderr = _run_shell(script, argv, tmp, timeout, path)
        if returncode != 0:
            detail = _last_line(stderr)
            raise MergeFailed(
                f"{path}: merge command failed (exit {returncode})"
                + (f": {detail}" if detail else "")
            )
        try:
            return files["A"].read_bytes()
        except OSError as exc:
            raise MergeFailed(
                f"{path}: merge command left no result: {exc.strerror or exc}"
            ) from None


def check_command(command: str) -> None:
    """Refuse a merge command that cannot run, before any conflict needs
    it (UsageError, one line): one the shell cannot parse, or whose
    program is not found where it will run (a temporary directory, so a
    script named by a relative path is not). A program named through a
    variable or a substitution is left to the run."""
    script = _with_arguments(command)
    with tempfile.TemporaryDirectory(prefix="merklesync-merge-") as tmp:
        parsed = subprocess.run(
            ["sh", "-n", "-c", script], cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True
        )
        if parsed.returncode != 0:
            detail = _last_line(parsed.stderr).removeprefix("sh: 1: ")
            raise UsageError(f"--merge-cmd: the shell cannot read it: {detail}")
        program = _program(command)
        if program is None:
            return
        found = subprocess.run(
            ["sh", "-c", 'command -v -- "$1" >/dev/null', "merge", program],
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if found.returncode != 0:
            if "/" in program and not program.startswith("/"):
                raise UsageError(
                    f"--merge-cmd: no {program!r} from the temporary directory the command "
                    "runs in: name it by its full path"
                )
            raise UsageError(f"--merge-cmd: no command {program!r} found")


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _program(command: str) -> str | None:
    """The program ``command`` runs first, where that is a plain word
    looked up as written: None when it is made or found at run time (a
    variable, a substitution, a ``~``, a VAR=value before it, which may be
    the PATH it is looked up in)."""
    try:
        words = shlex.split(command, posix=True)
    except ValueError:
        return None
    if not words or _ASSIGNMENT.match(words[0]) or words[0].startswith("~"):
        return None
    if any(ch in words[0] for ch in "$`%(){}<>|;&!*?[\\"):
        return None
    return words[0]


def _run_shell(
    script: str, argv: list[str], cwd: str, timeout: float, path: str
) -> tuple[int, bytes]:
    """Run ``script`` with ``argv`` as $1...; its exit status and what it
    wrote to standard error (into a file: a process it started and left
    running with that open cannot hold the run)."""
    with tempfile.TemporaryFile(dir=cwd) as stderr:
        try:
            proc = subprocess.Popen(
                ["sh", "-c", script, "merge", *argv],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a timeout kills the command's children too
            )
        except OSError as exc:
            raise MergeFailed(f"{path}: cannot run merge command: {exc.strerror or exc}") from None
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            detail = _last_line(_tail(stderr))
            raise MergeFailed(
                f"{path}: merge command timed out after {timeout:g} s"
                + (f": {detail}" if detail else "")
            ) from None
        return returncode, _tail(stderr)


def _tail(file: IO[bytes]) -> bytes:
    file.seek(max(0, os.fstat(file.fileno()).st_size - _STDERR_KEPT))
    return file.read()


_STDERR_KEPT = 64 << 10  # of a merge command's standard error, the end


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    return "".join(ch if ch.isprintable() else "?" for ch in last)[:300]
