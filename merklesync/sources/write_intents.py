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

The file is a stream of msgpack entries (``Entry.to_wire``), appended to
(record_file.py), one ``write`` per group of writes, made before any of
them (the placing process, sources/placer.py, is handed nothing before the
group is noted).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgpack

from merklesync.errors import UnsafePath
from merklesync.model import Entry
from merklesync.protocol.paths import check_relpath
from merklesync.sources import record_file

FILE = "intents"
MAX_READ = 64 << 20  # what a scan reads of the file at most (a batch notes far less)


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
            self._fd = record_file.open_to_append(self.path)
            # What is there already is an earlier run's, kept for a scan of
            # every path (one with --exclude keeps it): clear leaves it.
            self._start = os.fstat(self._fd).st_size
        try:
            record_file.append(self._fd, self._out, self.path)
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
        found = record_file.records(self.path, MAX_READ)
        if found is None:  # none: the last run ended (or it is not ours to read)
            return None
        noted: dict[str, Entry] = {}
        for record in found:
            _take(record, noted)
        return noted


def _take(record: object, noted: dict[str, Entry]) -> None:
    try:
        entry = Entry.from_wire(record)
        check_relpath(entry.path)
    except (ValueError, TypeError, OverflowError, UnsafePath):
        return
    noted[entry.path] = entry
