"""Named remotes of a replica (``merklesync remote add origin host:path``),
kept in ``.merklesync/config`` in git's INI style::

    [remote "origin"]
    url = backup-host:notes
    remote-cmd = ~/.local/bin/merklesync

The file is small and rewritten atomically (temp file + rename); it is
never synced (nothing under ``.merklesync/`` is).
"""

from __future__ import annotations

import configparser
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from merklesync.address import parse_address
from merklesync.errors import LocalIOError, ReplicaError, UsageError
from merklesync.ignore import STATE_DIR

CONFIG_FILE = "config"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_SECTION = re.compile(r'remote "(.*)"\Z')


@dataclass(frozen=True, slots=True)
class Remote:
    name: str
    url: str
    remote_cmd: str | None = None


def is_name(text: str) -> bool:
    """Whether ``text`` could name a remote (no slash, colon or space)."""
    return bool(_NAME.match(text)) and text not in (".", "..")


def check_name(name: str) -> str:
    if not is_name(name):
        raise UsageError(
            f"bad remote name {name!r}: use letters, digits, '.', '_' and '-' "
            "(not starting with '.' or '-')"
        )
    return name


def _path(root: Path) -> Path:
    return root / STATE_DIR / CONFIG_FILE


def _parser(root: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    path = _path(root)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LocalIOError(f"cannot read {path}: {exc.strerror}") from exc
    except (configparser.Error, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0]
        raise ReplicaError(f"{path} is malformed: {detail}") from None
    return parser


def load(root: Path) -> dict[str, Remote]:
    """The remotes of the replica at ``root``, by name."""
    out: dict[str, Remote] = {}
    parser = _parser(root)
    for section in parser.sections():
        m = _SECTION.match(section)
        if m is None or "url" not in parser[section]:
            continue
        cmd = parser[section].get("remote-cmd")
        out[m.group(1)] = Remote(m.group(1), parser[section]["url"], cmd or None)
    return out


def _check_plain(what: str, text: str) -> None:
    """A value the config keeps as given: no control characters (a newline
    would make it a value of several lines, listed as several remotes) and
    no spaces at either end (the config would lose them)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text) or text != text.strip():
        raise UsageError(f"bad {what} {text!r}: no control characters, nor spaces at either end")


def add(root: Path, remote: Remote) -> Remote:
    """Record a new remote; a local URL is stored as an absolute path."""
    check_name(remote.name)
    _check_plain("remote URL", remote.url)
    if remote.remote_cmd is not None:
        _check_plain("remote command", remote.remote_cmd)
    address = parse_address(remote.url)
    url = remote.url if address.is_remote else str(Path(address.path).resolve())
    parser = _parser(root)
    section = f'remote "{remote.name}"'
    if parser.has_section(section):
        raise UsageError(f"remote {remote.name} already exists")
    parser.add_section(section)
    parser[section]["url"] = url
    if remote.remote_cmd:
        parser[section]["remote-cmd"] = remote.remote_cmd
    _save(root, parser)
    return Remote(remote.name, url, remote.remote_cmd)


def remove(root: Path, name: str) -> None:
    parser = _parser(root)
    if not parser.remove_section(f'remote "{name}"'):
        raise UsageError(f"no such remote: {name}")
    _save(root, parser)


def _save(root: Path, parser: configparser.ConfigParser) -> None:
    path = _path(root)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                parser.write(f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise LocalIOError(f"cannot write {path}: {exc.strerror}") from exc
