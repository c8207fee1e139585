"""Directories written read-only, noted until they have their mode.

A directory written read-only (mode 0555, say) stays writable to its owner
until the end of the run, so that what goes in it can be written (see
DirectoryWriter._put_dir and finish). A run stopped before its end (a
signal, kill -9, a crash, a lost connection to an agent that is killed)
would leave it writable, and the next scan would take that for a change
made on this replica, which a sync would then spread. So each one is noted
in a file of the state directory before it is made or made writable, and
the file is read again when the replica is next opened: every directory it
names that is still as the run left it gets the mode the index says (or,
where the index has no row for it yet, the mode it was to get). The end of
a run removes the file.

A directory a run makes is made at 0700 (whatever the umask), then given
its mode: one to get any other mode is noted too, so that a run killed in
between does not leave it at 0700.

The same goes for a directory found read-only that a run writes in: it is
made writable to its owner until the end of the run, noted first with the
mode it had, and gets that mode back then, or when the replica is next
opened.

The file is a stream of msgpack ``[path, mode, found]`` records, appended
to, one ``write`` each (record_file.py).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgpack

from merklesync.errors import UnsafePath
from merklesync.protocol.paths import check_relpath
from merklesync.sources import record_file

FILE = "final-modes"


class Notes:
    """The file of the directories a run wrote read-only, in ``state``."""

    def __init__(self, state: Path) -> None:
        self.path = state / FILE
        self._fd: int | None = None

    @property
    def taken(self) -> bool:
        """Whether this run noted a directory."""
        return self._fd is not None

    def note(self, rel: str, mode: int, *, found: bool) -> None:
        """Note ``rel``, to get ``mode``: before it is made writable.
        ``found``: it had that mode (else it is written with it)."""
        if self._fd is None:
            self._fd = record_file.open_to_append(self.path)
        record_file.append(self._fd, msgpack.packb([rel, mode, found]), self.path)

    def clear(self) -> None:
        """The run is over: every directory noted has its mode."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):  # gone already; or a read-only file system
            os.unlink(self.path)

    def read(self) -> dict[str, tuple[int, bool]] | None:
        """The directories noted by a run that did not end, each with the
        mode it was to get and whether it was found so (the last one
        noted); what does not parse is left out (the end of a record cut
        short, say). None: no such run."""
        found = record_file.records(self.path)
        if found is None:  # none: the last run ended (or it is not ours to read)
            return None
        noted: dict[str, tuple[int, bool]] = {}
        for record in found:
            _take(record, noted)
        return noted


def _take(record: object, noted: dict[str, tuple[int, bool]]) -> None:
    if not (isinstance(record, list) and len(record) == 3):
        return
    rel, mode, found = record
    if not (isinstance(mode, int) and 0 <= mode <= 0o7777 and isinstance(found, bool)):
        return
    try:
        noted[check_relpath(rel) if rel != "" else rel] = (mode, found)
    except UnsafePath:
        return
