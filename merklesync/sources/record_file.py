"""A file of msgpack records in the state directory, appended to by a run
before the work each record describes, and read by the next run when this
one did not end (final_modes.py, write_intents.py).

Each append is one ``write``, which a process killed afterwards cannot
undo; a record cut short (a full disk, a crash of the machine) ends the
reading, and what came before it stands.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgpack

OPEN_TO_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW


def open_to_append(path: Path) -> int:
    return os.open(path, OPEN_TO_APPEND, 0o600)


def append(fd: int, data: bytes | bytearray, path: Path) -> None:
    """Append records, packed, in one write (OSError when cut short)."""
    if os.write(fd, data) != len(data):  # a full disk
        raise OSError(f"{path}: short write")


def records(path: Path, limit: int | None = None) -> Iterator[object] | None:
    """The records of ``path``, up to ``limit`` bytes of them; None when
    there is no such file (or it is not ours to read: a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    return _read(fd, limit)


def _read(fd: int, limit: int | None) -> Iterator[object]:
    unpacker = msgpack.Unpacker() if limit is None else msgpack.Unpacker(max_buffer_size=limit)
    total = 0
    try:
        while (limit is None or total < limit) and (chunk := os.read(fd, 1 << 16)):
            total += len(chunk)
            unpacker.feed(chunk)
            yield from unpacker
    except (OSError, ValueError, msgpack.UnpackException):
        return  # what came before it stands
    finally:
        os.close(fd)
