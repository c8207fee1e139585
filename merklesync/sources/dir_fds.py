"""Directories of a replica held open while writes go into them.

Each is reached from the root one component at a time, never following a
link (``O_NOFOLLOW``), and every write into it goes through its descriptor.
So a parent swapped for a symlink after it was checked cannot lead a write
out of the replica: the write lands in the directory the walk found. A few
recent ones stay open (writes come in path order, a directory's together).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections import OrderedDict

from merklesync.errors import MerklesyncError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directories kept open by one walk or writer: a few of them may run at
# once, so a small share of the process's descriptors (ulimit -n).
KEEP_OPEN = max(4, min(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 16))


def open_dir(root: str, directory: str) -> int:
    """Open the replica's ``directory`` from ``root``, one component at a
    time, none followed if it is a link (ELOOP or ENOTDIR then); the caller
    closes it. DirFds does the same, keeping what it opens."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in directory.split("/") if directory else ():
            below = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def last_change_above(root: str, rel: str) -> int | None:
    """When the nearest directory above ``rel`` that is still one last
    changed (in ns; reached from ``root`` as open_dir does); None when not
    even the root can be opened. For an entry that is gone, the latest its
    removal can have happened: removing a name changes its directory, or
    one above it where that went too. The ctime, which cannot be set back;
    or the mtime, where later (a file system that keeps a creation time
    there)."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        return None
    try:
        for part in rel.split("/")[:-1]:
            try:
                below = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError:
                break
            os.close(fd)
            fd = below
        st = os.fstat(fd)
        return max(st.st_ctime_ns, st.st_mtime_ns)
    finally:
        os.close(fd)


class NotADirectory(MerklesyncError):
    """A parent of a path is not a directory (a file, or a symlink)."""


class DirFds:
    def __init__(self, root: str, keep: int = KEEP_OPEN) -> None:
        self.root = root
        self.keep = keep
        self._open: OrderedDict[str, int] = OrderedDict()  # relative path -> fd, oldest first

    def get(self, directory: str, *, create: bool = False) -> int:
        """A descriptor of the replica's ``directory`` ("" for the root);
        ``create``: make what is missing (mode 0755). FileNotFoundError when
        it is missing otherwise; NotADirectory when a component is not a
        directory."""
        fd = self._open.get(directory)
        if fd is not None:
            self._open.move_to_end(directory)
            return fd
        if not directory:
            return self._keep("", os.open(self.root, DIR_FLAGS))
        head, _, name = directory.rpartition("/")
        parent = self.get(head, create=create)
        try:
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile: fine
                    os.mkdir(name, 0o755, dir_fd=parent)
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                where = os.path.join(self.root, directory)
                raise NotADirectory(f"parent {where} is not a directory") from None
            raise
        return self._keep(directory, fd)

    def _keep(self, directory: str, fd: int) -> int:
        self._open[directory] = fd
        while len(self._open) > self.keep:
            _, old = self._open.popitem(last=False)
            os.close(old)
        return fd

    def forget(self, directory: str) -> None:
        """Close ``directory`` and what is below it (it was removed)."""
        below = directory + "/"
        for rel in [r for r in self._open if r == directory or r.startswith(below)]:
            os.close(self._open.pop(rel))

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1])
