"""Listing a replica's directories on two cores before a full scan walks them.

A scan of a tree where little changed is one ``lstat`` per entry, nearly all
of it spent listing directories. Before the walk, a forked child lists every
other directory the index knows, while this process lists the rest; the walk
then takes each directory's digest from here instead of listing it again, and
lists for itself only what is new or changed since. (git's preload-index
stats with threads for the same reason; Python threads would take turns.)

Nothing here is trusted beyond what a listing would be: the walk uses an
entry only for the directory it expects (same device and inode as its
parent's listing says), and a child that fails or dies only leaves its half
to the walk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import msgpack

from merklesync.orphans import can_fork, fork_child
from merklesync.sources.dir_fds import DirFds, NotADirectory
from merklesync.sources.listing import Listing

MIN_DIRS = 64  # fewer: forking costs more than it saves

Identity = tuple[int, int]  # (device, inode)


class Prelisted(NamedTuple):
    """A directory as listed ahead of the walk."""

    identity: Identity  # of the directory opened
    digest: bytes | None  # Listing.digest()
    has_ignore_file: bool
    has_temp_files: bool  # the walk lists it itself, and removes the abandoned ones
    subdirs: dict[str, Identity]  # the directories in it


def prelist(root: str, directories: Sequence[str]) -> dict[str, Prelisted]:
    """List ``directories`` (relative to ``root``), half in a forked child;
    those that cannot be listed are left out. Empty when there are too few
    to be worth it, or a fork would be unsafe; the parent's half alone when
    the child cannot be made or fails: it only loses time."""
    if len(directories) < MIN_DIRS or not can_fork():
        return {}
    theirs, mine = directories[0::2], directories[1::2]
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return {}

    def child(out: int) -> None:  # list, send, and go
        listed = [_to_wire(d, p) for d, p in _list(root, theirs)]
        _write_all(out, msgpack.packb(listed, unicode_errors="surrogateescape"))

    pid = fork_child(child, write_fd)
    if pid is None:
        os.close(read_fd)
        os.close(write_fd)
        return {}
    os.close(write_fd)
    try:
        found = dict(_list(root, mine))
        data = _read_all(read_fd)  # the child may wait on a full pipe until now
    finally:
        os.close(read_fd)
        exit_status = _reap(pid)
    if exit_status == 0:
        with contextlib.suppress(ValueError, TypeError, msgpack.UnpackException):
            items = msgpack.unpackb(data, unicode_errors="surrogateescape")
            found.update(_from_wire(item) for item in items)
    return found


def _reap(pid: int) -> int | None:
    """The child's exit status (None: not to be had, SIGCHLD ignored say)."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _list(root: str, directories: Sequence[str]) -> Iterator[tuple[str, Prelisted]]:
    """Each directory reached from the root without following a link (as
    the walk would reach it, so nothing outside the replica is listed; in
    path order, through the open parents DirFds keeps), and listed without
    removing anything: the walk tidies what it lists."""
    dirs = DirFds(root)
    try:
        for directory in directories:
            try:
                fd = dirs.get(directory)
                st = os.fstat(fd)
                listing = Listing.read(fd, tidy=False)
            except (OSError, NotADirectory):
                continue  # the walk finds out why
            yield (
                directory,
                Prelisted(
                    (st.st_dev, st.st_ino),
                    listing.digest(),
                    listing.has_ignore_file,
                    listing.has_temp_files,
                    listing.subdirs(),
                ),
            )
    finally:
        dirs.close()


def _to_wire(directory: str, p: Prelisted) -> list[object]:
    subdirs = [x for name, (dev, ino) in p.subdirs.items() for x in (name, dev, ino)]
    return [directory, *p.identity, p.digest, p.has_ignore_file, p.has_temp_files, subdirs]


def _from_wire(item: Any) -> tuple[str, Prelisted]:
    """From this module's own child: shaped as _to_wire made it."""
    directory, dev, ino, digest, has_file, has_temp, flat = item
    subdirs = {flat[i]: (flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)}
    return directory, Prelisted((dev, ino), digest, has_file, has_temp, subdirs)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)
