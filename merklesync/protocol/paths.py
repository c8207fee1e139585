"""The rules a path from the peer must follow before anyone uses it.

A wire path names an entry relative to the replica root, in POSIX form:
``dir/sub/file.txt``. :func:`check_relpath` accepts it only when it is

- a non-empty ``str`` of valid UTF-8 (no lone surrogates, so a name that
  ``os.fsdecode`` could only carry with ``surrogateescape`` cannot travel);
- relative: no leading ``/``;
- normalised: components separated by single ``/``; no empty component
  (``a//b``, trailing ``/``), no ``.`` or ``..`` component;
- free of control characters: U+0000-U+001F, U+007F-U+009F (a name with a
  newline or an escape sequence would corrupt line-based output and can
  drive a terminal; sources must skip such files with a warning);
- at most 4096 bytes of UTF-8 in all, and 255 bytes per component;
- not inside a state directory: no component may be ``.merklesync``,
  compared case-insensitively, ignoring trailing dots and spaces and the
  code points HFS+ ignores, so that ``.MerkleSync/index.db`` cannot reach
  the index on a case-insensitive file system, and no peer can plant a
  replica (with remotes whose commands would run) in a subdirectory.
  Scans never enter a ``.merklesync`` directory at any depth either.

Backslash is an ordinary character (it is legal in POSIX names, and systemd
unit names use it). Paths are compared byte for byte: no Unicode
normalisation. A replica on a file system where ``\\`` or ``C:`` mean
something must refuse those names when it maps a wire path to a file; that
mapping (``resolve_under``) also refuses to go through symlinks, and is not
part of this pure module.
"""

from __future__ import annotations

import re

from merklesync.errors import UnsafePath

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
STATE_DIR = ".merklesync"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Code points HFS+ drops when comparing names (as git's is_hfs_dotgit does).
_IGNORABLE = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")


# A byte that is not UTF-8, as os.fsdecode carries it (surrogateescape),
# once repr has written it out: shown as the byte it is ("\xe9").
# (An escape, not a backslash of the name followed by "udc..": after an even
# number of backslashes.)
_ESCAPED_BYTE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def _show(path: str, limit: int = 80) -> str:
    text = _ESCAPED_BYTE.sub(r"\1\\x\2", repr(path))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_state_dir(name: str) -> bool:
    """Whether a file system could take ``name`` for the state directory."""
    folded = (name if name.isascii() else _IGNORABLE.sub("", name)).casefold().rstrip(". ")
    return folded == STATE_DIR


def check_relpath(path: object) -> str:
    """Return ``path`` if it is a safe relative wire path; raise UnsafePath."""
    if not isinstance(path, str):
        raise UnsafePath(f"path must be a string, not {type(path).__name__}")
    if not path:
        raise UnsafePath("empty path")
    # Most paths: one byte per character, no control character, no surrogate.
    simple = path.isascii() and path.isprintable()
    if not simple and _SURROGATE.search(path):
        raise UnsafePath(f"path is not valid UTF-8: {_show(path)}")
    size = len(path) if simple else len(path.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise UnsafePath(f"path of {size} bytes is longer than {MAX_PATH_BYTES}: {_show(path)}")
    if path.startswith("/"):
        raise UnsafePath(f"absolute path: {_show(path)}")
    if not simple and _CONTROL.search(path):
        raise UnsafePath(f"control character in path: {_show(path)}")
    for part in path.split("/"):
        if not part:
            raise UnsafePath(f"empty component in path: {_show(path)}")
        if part in (".", ".."):
            raise UnsafePath(f"'{part}' component in path: {_show(path)}")
        if len(part) > MAX_NAME_BYTES // 4 and len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafePath(f"component longer than {MAX_NAME_BYTES} bytes: {_show(path)}")
        if (part[0] == "." or not part.isascii()) and is_state_dir(part):
            raise UnsafePath(f"path inside a {STATE_DIR} state directory: {_show(path)}")
    return path
