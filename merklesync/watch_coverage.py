"""Which directories of a replica a watcher really sees.

watchdog skips, without a word, a subdirectory it cannot watch (the per-user
inotify limit reached, no permission); and a file system mounted inside the
tree, or one changed from another host, reports nothing here. A watcher
asks the kernel instead: ``/proc/self/fdinfo`` lists the inode of every
directory this process's inotify descriptors watch. A directory missing from
it, or on another device than the root, is walked by every scan.

Elsewhere than Linux there is nothing to ask (None), and nothing is assumed
missing.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from merklesync.ignore import STATE_DIR

_INO = re.compile(r"\bino:([0-9a-f]+)")
# File systems changed by other hosts behind the kernel's back.
REMOTE_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre")


def watched_inodes() -> set[int] | None:
    """Inodes watched by this process's inotify descriptors; None when the
    kernel does not say (no /proc, or no inotify descriptor open)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    found: set[int] = set()
    seen_inotify = False
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        seen_inotify = True
        found.update(int(m.group(1), 16) for m in _INO.finditer(text))
    return found if seen_inotify else None


def directories(root: Path) -> list[str]:
    """Every directory below ``root`` (relative, "" for the root itself),
    not following links, leaving out the state directory."""
    out = [""]
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                for entry in it:
                    if rel == "" and entry.name == STATE_DIR:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        child = f"{rel}/{entry.name}" if rel else entry.name
                        out.append(child)
                        stack.append(child)
        except OSError:
            continue  # unreadable: it is checked itself, its insides cannot be
    return out


def unseen(root: Path, candidates: Iterable[str], root_dev: int) -> set[str] | None:
    """The directories among ``candidates`` no watch covers (gone ones are
    left out); None when the kernel does not say."""
    inodes = watched_inodes()
    if inodes is None:
        return None
    out = set()
    for rel in candidates:
        try:
            st = os.lstat(root / rel if rel else root)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and (st.st_ino not in inodes or st.st_dev != root_dev):
            out.add(rel)
    return out


def remote_file_system(root: Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``root`` when other hosts may
    change it (NFS, SMB, FUSE...); None for a local one or when unknown.
    ``mounts``: the text of /proc/self/mounts (read when not given)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text(errors="replace")
        except OSError:
            return None
    lines = mounts.splitlines()
    best, best_type = "", ""
    target = str(root)
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    if best_type in REMOTE_TYPES or best_type.startswith("fuse"):
        return best_type
    return None
