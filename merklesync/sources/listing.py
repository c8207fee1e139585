"""One directory's listing: its names with their stats, read through a
descriptor, and the digest that tells a later scan nothing in it changed."""

from __future__ import annotations

import contextlib
import os
import stat as st_mod
import struct
from dataclasses import dataclass, field

import blake3

from merklesync.errors import UnsafePath
from merklesync.ignore import IGNORE_FILE, STATE_DIR, temp_writer
from merklesync.model import int64
from merklesync.protocol.paths import check_relpath

STAT = struct.Struct(">QqqQI")


def stat_key(st: os.stat_result) -> bytes:
    """What the stat cache compares: size, mtime, ctime, inode and mode
    (a time beyond 64 bits of ns as the nearest one)."""
    try:
        return STAT.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
    except struct.error:
        return STAT.pack(
            st.st_size, int64(st.st_mtime_ns), int64(st.st_ctime_ns), st.st_ino, st.st_mode
        )


def refused_name(name: str, rel: str) -> UnsafePath | None:
    """Why a name listed at ``rel`` is never put in an index (a peer would
    refuse it), or None; cheap for the usual name."""
    if name.isascii() and name.isprintable() and name[0] != "." and len(rel) <= 1024:
        return None
    try:
        check_relpath(rel)
    except UnsafePath as exc:
        return exc
    return None


def listing_sum(rules: bytes, digest: bytes | None) -> bytes | None:
    """A listing's digest with the ignore rules it is judged under: what a
    directory's scan keeps, and a later one compares."""
    if digest is None:
        return None
    return blake3.blake3(len(rules).to_bytes(8, "big") + rules + digest).digest()


@dataclass
class Listing:
    """One directory's names with their stats (or why there is none) and
    packed stat keys (empty without one), in the order listed; the state
    directory and temp files left out."""

    names: list[str] = field(default_factory=list)
    stats: list[os.stat_result | OSError] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    has_ignore_file: bool = False
    has_temp_files: bool = False  # left in place (not tidy), or by a writer still at work
    _positions: dict[str, int] | None = None  # name -> index, made when first needed

    @classmethod
    def read(cls, dir_fd: int, *, tidy: bool = True) -> Listing:
        """List a directory opened as ``dir_fd``; ``tidy``: removing the
        temp files abandoned by interrupted runs."""
        listing = cls()
        with os.scandir(dir_fd) as it:
            dirents = list(it)
        names, stats, keys = listing.names, listing.stats, listing.keys
        pack = STAT.pack
        for de in dirents:
            name = de.name
            if name[0] == ".":
                if name == STATE_DIR:
                    continue
                writer = temp_writer(name)
                if writer is not None:
                    if tidy and abandoned(writer):
                        _remove_abandoned(name, dir_fd)
                    else:
                        listing.has_temp_files = True
                    continue
                if name == IGNORE_FILE:
                    listing.has_ignore_file = True
            names.append(name)
            try:
                st = de.stat(follow_symlinks=False)
            except OSError as exc:
                stats.append(exc)
                keys.append(b"")
                continue
            stats.append(st)
            # stat_key(st), inlined: every entry of every scan passes here
            try:
                keys.append(pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode))
            except struct.error:  # a time beyond 64 bits of ns
                keys.append(stat_key(st))
        return listing

    def identity(self, name: str) -> tuple[int, int] | None:
        """(device, inode) of a name as listed (None: not listed, or no stat)."""
        if self._positions is None:  # once per listing: a directory may hold many
            self._positions = {n: i for i, n in enumerate(self.names)}
        i = self._positions.get(name)
        st = self.stats[i] if i is not None else None
        return (st.st_dev, st.st_ino) if isinstance(st, os.stat_result) else None

    def subdirs(self) -> dict[str, tuple[int, int]]:
        """The directories listed, each with its (device, inode)."""
        return {
            name: (st.st_dev, st.st_ino)
            for name, st in zip(self.names, self.stats, strict=True)
            if isinstance(st, os.stat_result) and st_mod.S_ISDIR(st.st_mode)
        }

    def digest(self) -> bytes | None:
        """The names and stat keys in one digest (None when a stat failed).
        A listing in another order differs: that only costs a slower scan."""
        if b"" in self.keys:
            return None
        names = "\0".join(self.names).encode("utf-8", "surrogateescape")
        digest = blake3.blake3(len(names).to_bytes(8, "big"))
        digest.update(names)
        digest.update(b"".join(self.keys))  # fixed size each
        return digest.digest()

    def sum(self, rules: bytes) -> bytes | None:
        """See listing_sum."""
        return listing_sum(rules, self.digest())


def _remove_abandoned(name: str, dir_fd: int) -> None:
    """Remove a temp file left by an interrupted run. One in a directory
    whose mode refuses it stays (and stays out of runs): the run that wrote
    it made that directory writable for the while, and the next opening of
    the replica removes it before the directory gets its mode back (see
    remove_abandoned, directory_write's resume)."""
    with contextlib.suppress(OSError):  # gone already, or not ours to remove
        os.unlink(name, dir_fd=dir_fd)


def remove_abandoned(dir_fd: int) -> None:
    """Remove the temp files abandoned in a directory opened as ``dir_fd``."""
    for name in os.listdir(dir_fd):
        writer = temp_writer(name)
        if writer is not None and abandoned(writer):
            _remove_abandoned(name, dir_fd)


def abandoned(pid: int) -> bool:
    """Whether a temp file written by ``pid`` (the pid in its name) is
    abandoned: its writer is gone (or it is this process, which writes
    none while it scans)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False
