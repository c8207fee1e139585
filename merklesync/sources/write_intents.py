"""Writes noted before they are made, until the index records them.

A write reaches the disk before its row reaches the index: rows are
committed together, every so many writes and at the end of a batch. A run
stopped in between (kill -9, a crash, a full disk, a lost connection to an
agent that is then killed) leaves files placed, replaced or removed that
the index does not know of, and the next scan would take each for a change
made on this replica: a new version, concurrent with the one the write came
from. The next edit of that file elsewhere would then be a conflict nobody
made, and its deletion elsewhere would bring it back (a modification wins).

So each write is noted first, in a file of the state directory: the entry
it is to record, with its version. The next scan takes a path it finds
changed, and in the very state an entry noted for it describes, for that
write: it records the noted entry's version, where it would have bumped
this replica's counter. Anything else it finds is a change made here, as
always. A batch whose rows are all committed removes the file, and so does
the scan that read it, once its own rows are.

The file is a stream of msgpack entries (``Entry.to_wire``), appended to,
one ``write`` per group of writes, made before any of them (the placing
process, sources/placer.py, is handed nothing before the group is noted).
A process killed afterwards cannot undo it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgpack

from merklesync.errors import UnsafePath
from merklesync.model import Entry
from merklesync.protocol.paths import check_relpath

FILE = "intents"
MAX_READ = 64 << 20  # what a scan reads of the file at most (a batch notes far less)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW


class Intents:
    """The file of the writes a run is making, in ``state``."""

    def __init__(self, state: Path) -> None:
        self.path = state / FILE
        self._fd: int | None = None
        self._start = 0  # the file's size when this process first wrote to it
        self._out = bytearray()

    def note(self, entry: Entry) -> None:
        """Note a write that will record ``entry`` (made durable by flush)."""
        self._out += msgpack.packb(entry.to_wire())

    def flush(self) -> None:
        """Make what was noted durable: call before any of it is written."""
        if not self._out:
            return
        if self._fd is None:
            self._fd = os.open(self.path, _FLAGS, 0o600)
            # What is there already is an earlier run's, kept for a scan of
            # every path (one with --exclude keeps it): clear leaves it.
            self._start = os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, self._out) != len(self._out):  # a full disk
                raise OSError(f"{self.path}: short write")
        finally:
            self._out.clear()

    def clear(self) -> None:
        """Every write this process noted is in the index now (or was
        never made): its notes go, an earlier run's stay."""
        self._out.clear()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._start:
                os.ftruncate(fd, self._start)
            else:
                with contextlib.suppress(OSError):  # a read-only file system
                    os.unlink(self.path)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """A scan of every path has read all that is noted: none is left
        for another to recognize."""
        self.clear()
        with contextlib.suppress(OSError):  # none; or a read-only file system
            os.unlink(self.path)

    def read(self) -> dict[str, Entry] | None:
        """The writes noted by a run that did not see them all recorded,
        by path (the last one noted for a path); what does not parse is
        left out (a record cut short, say). None: no such run."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:  # none: the last run ended (or it is not ours to read)
            return None
        noted: dict[str, Entry] = {}
        unpacker = msgpack.Unpacker(use_list=True, max_buffer_size=MAX_READ)
        total = 0
        try:
            while total < MAX_READ and (chunk := os.read(fd, 1 << 16)):
                total += len(chunk)
                unpacker.feed(chunk)
                for record in unpacker:
                    _take(record, noted)
        except (OSError, ValueError, msgpack.UnpackException):
            pass  # what came before it stands
        finally:
            os.close(fd)
        return noted


def _take(record: object, noted: dict[str, Entry]) -> None:
    try:
        entry = Entry.from_wire(record)
        check_relpath(entry.path)
    except (ValueError, TypeError, OverflowError, UnsafePath):
        return
    noted[entry.path] = entry
