"""Seeded, deterministic file trees for tests and benchmarks, plus two oracles.

Nothing here imports merklesync: the oracles (:func:`snapshot`, :func:`rsync_itemize`)
must stay independent of the code they judge.

* :func:`make_tree` builds a tree of ``files`` files spread over ``dirs`` nested
  directories. The same arguments always give the same paths, sizes, bytes and
  permission bits. Content comes from the BLAKE3 extendable output keyed on
  (seed, file index), so every file is distinct (no accidental dedup between files)
  and 100,000 files / ~400 MB are written in a few seconds. All mtimes are set to
  :data:`FIXED_PAST_TIME` so that no file looks "racy" to a stat cache.
* :func:`mutate` modifies, adds and deletes files and reports exactly which.
* :func:`snapshot` records kind, permission bits, size and SHA-256 (files) or
  target (symlinks) of every entry; :func:`assert_same_tree` compares two of them
  and fails with a readable diff.
* :func:`rsync_itemize` asks ``rsync -anc --delete --itemize-changes`` what it would
  change: an empty list means rsync sees no difference.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import blake3

__all__ = [
    "FIXED_PAST_TIME",
    "STATE_DIR",
    "Mutation",
    "Snapshot",
    "TreeInfo",
    "assert_same_tree",
    "diff_snapshots",
    "make_tree",
    "mutate",
    "rsync_itemize",
    "snapshot",
]

#: 2020-09-13T12:26:40Z: old enough that no stat cache treats a file as racy.
FIXED_PAST_TIME = 1_600_000_000
#: merklesync's state directory; skipped by the oracles wherever it appears.
STATE_DIR = ".merklesync"

MAX_DEPTH = 4
_EXTENSIONS = (".bin", ".dat", ".txt", ".json", ".log", "")
_EXEC_PERCENT = 2  # share of generated files made executable (0o755)
_CHUNK = 1 << 20

#: path -> ("dir", mode) | ("file", mode, size, sha256hex) | ("link", target) | ("other", fmt)
Snapshot = dict[str, tuple[str | int, ...]]


@dataclass(frozen=True)
class TreeInfo:
    """What :func:`make_tree` created. Paths are relative, '/'-separated."""

    root: Path
    seed: int
    dirs: tuple[str, ...]  # parents before children
    files: Mapping[str, int]  # path -> size, in creation order
    symlinks: Mapping[str, str]  # path -> target (relative to the link's directory)
    total_bytes: int

    @property
    def file_count(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class Mutation:
    """What :func:`mutate` did. Each tuple is sorted."""

    modified: tuple[str, ...]
    added: tuple[str, ...]
    deleted: tuple[str, ...]

    @property
    def changed(self) -> tuple[str, ...]:
        """Every path touched, sorted."""
        return tuple(sorted((*self.modified, *self.added, *self.deleted)))

    def __len__(self) -> int:
        return len(self.modified) + len(self.added) + len(self.deleted)


# --------------------------------------------------------------------------- content


def _stream_key(*parts: str | int | bytes) -> blake3.blake3:
    h = blake3.blake3(b"merklesync-treegen-v1")
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        h.update(len(raw).to_bytes(4, "little"))
        h.update(raw)
    return h


def _xof_chunks(key: blake3.blake3, size: int) -> Iterator[bytes]:
    for offset in range(0, size, _CHUNK):
        yield key.digest(length=min(_CHUNK, size - offset), seek=offset)


def _write_file(path: str | Path, chunks: Iterable[bytes], mode: int, mtime_ns: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- make_tree


def make_tree(
    root: Path,
    files: int,
    dirs: int,
    min_size: int = 1024,
    max_size: int = 16384,
    seed: int = 0,
    mtime: int | None = FIXED_PAST_TIME,
    symlinks: int = 0,
) -> TreeInfo:
    """Create a deterministic tree under ``root`` (created if missing).

    ``dirs`` directories (``d0000``...) form a random tree at most
    :data:`MAX_DEPTH` levels deep; ``files`` files (``f000000.ext``) go into a
    uniformly random directory (the root included), with sizes uniform in
    ``[min_size, max_size]``; about 2% are mode 0o755, the rest 0o644; directories
    are 0o755. ``symlinks`` relative symlinks to random generated files are added.
    Every entry gets mtime ``mtime`` (seconds), or keeps "now" when it is None.
    """
    if files < 0 or dirs < 0 or symlinks < 0:
        raise ValueError("files, dirs and symlinks must be >= 0")
    if not 0 <= min_size <= max_size:
        raise ValueError(f"need 0 <= min_size <= max_size, got {min_size}, {max_size}")
    if symlinks and not files:
        raise ValueError("symlinks need at least one file to point to")
    rng = random.Random(f"treegen:{seed}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mtime_ns = time.time_ns() if mtime is None else mtime * 1_000_000_000

    dir_paths: list[str] = [""]
    shallow: list[tuple[str, int]] = [("", 0)]  # directories that may get children
    for i in range(dirs):
        parent, depth = rng.choice(shallow)
        rel = f"{parent}/d{i:04d}" if parent else f"d{i:04d}"
        (root / rel).mkdir(mode=0o755)
        os.chmod(root / rel, 0o755)
        dir_paths.append(rel)
        if depth + 1 < MAX_DEPTH:
            shallow.append((rel, depth + 1))

    sizes: dict[str, int] = {}
    total = 0
    base = _stream_key(seed, "file")
    prefix = os.fspath(root) + os.sep
    for i in range(files):  # hot loop: ~40 us/file, mostly the kernel creating files
        parent = rng.choice(dir_paths)
        name = f"f{i:06d}{rng.choice(_EXTENSIONS)}"
        rel = f"{parent}/{name}" if parent else name
        size = rng.randint(min_size, max_size)
        mode = 0o755 if rng.randrange(100) < _EXEC_PERCENT else 0o644
        key = base.copy()
        key.update(i.to_bytes(8, "little"))
        _write_file(prefix + rel, _xof_chunks(key, size), mode, mtime_ns)
        sizes[rel] = size
        total += size

    links: dict[str, str] = {}
    file_list = list(sizes)
    for i in range(symlinks):
        parent = rng.choice(dir_paths)
        rel = f"{parent}/l{i:04d}" if parent else f"l{i:04d}"
        target = os.path.relpath(rng.choice(file_list), parent or ".")
        os.symlink(target, root / rel)
        if mtime is not None:
            os.utime(root / rel, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        links[rel] = target

    if mtime is not None:  # children first: writing into a directory bumps its mtime
        for rel in reversed(dir_paths):
            os.utime(root / rel if rel else root, ns=(mtime_ns, mtime_ns))
    return TreeInfo(root, seed, tuple(dir_paths[1:]), sizes, links, total)


# --------------------------------------------------------------------------- walking


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for every entry below ``root``, sorted, no symlinks
    followed, :data:`STATE_DIR` skipped at every level (like ``--exclude=.merklesync``)."""
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name == STATE_DIR:
            continue
        path = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, path)


# --------------------------------------------------------------------------- mutate


def mutate(
    root: Path,
    modify: int,
    add: int = 0,
    delete: int = 0,
    seed: int = 1,
    *,
    min_size: int = 1024,
    max_size: int = 16384,
    mtime: int | None = None,
    exclude: Collection[str] = (),
) -> Mutation:
    """Change ``modify`` regular files, add ``add`` new ones, delete ``delete`` others.

    Files are drawn (deterministically for a given tree and seed) from the regular
    files under ``root``, minus ``exclude``; modified and deleted sets are disjoint.
    A modified file keeps its exact size (an empty file becomes 1 byte) but gets new
    bytes that depend on its old bytes, so calling mutate twice with the same seed
    still changes it; its mode is kept. Modified and added files get mtime ``mtime``
    (seconds), or the current time when None. Added files (``n<seed>-<i>.ext``) go
    into random existing directories with sizes uniform in ``[min_size, max_size]``.
    """
    if min(modify, add, delete) < 0:
        raise ValueError("modify, add and delete must be >= 0")
    root = Path(root)
    rng = random.Random(f"mutate:{seed}")
    dirs = [""]
    candidates: list[str] = []
    excluded = set(exclude)
    for rel, st in _walk(root):
        if stat.S_ISDIR(st.st_mode):
            dirs.append(rel)
        elif stat.S_ISREG(st.st_mode) and rel not in excluded:
            candidates.append(rel)
    if modify + delete > len(candidates):
        raise ValueError(f"asked to modify {modify} and delete {delete} of {len(candidates)} files")
    picked = rng.sample(candidates, modify + delete)
    to_modify, to_delete = picked[:modify], picked[modify:]
    mtime_ns = time.time_ns() if mtime is None else mtime * 1_000_000_000

    for rel in to_modify:
        path = root / rel
        with open(path, "rb") as f:
            old_digest = hashlib.file_digest(f, "sha256").digest()
        old_size = path.stat().st_size
        size = max(old_size, 1)
        key = _stream_key(seed, "modify", rel, old_digest)
        chunks: Iterable[bytes] = _xof_chunks(key, size)
        if size <= _CHUNK:  # small enough to make sure the bytes really differ
            new = key.digest(length=size)
            if hashlib.sha256(new).digest() == old_digest:  # 1/256 for a 1-byte file
                new = bytes([new[0] ^ 0xFF]) + new[1:]
            chunks = (new,)
        _write_file(path, chunks, stat.S_IMODE(path.stat().st_mode), mtime_ns)

    for rel in to_delete:
        (root / rel).unlink()

    added: list[str] = []
    for i in range(add):
        parent = rng.choice(dirs)
        ext = rng.choice(_EXTENSIONS)
        n = 0
        while True:
            name = f"n{seed}-{i:05d}{'-' + str(n) if n else ''}{ext}"
            rel = f"{parent}/{name}" if parent else name
            if not os.path.lexists(root / rel):
                break
            n += 1
        size = rng.randint(min_size, max_size)
        _write_file(root / rel, _xof_chunks(_stream_key(seed, "add", rel), size), 0o644, mtime_ns)
        added.append(rel)

    return Mutation(tuple(sorted(to_modify)), tuple(sorted(added)), tuple(sorted(to_delete)))


# --------------------------------------------------------------------------- oracles


def snapshot(root: Path) -> Snapshot:
    """Describe every entry under ``root`` (root itself excluded) without merklesync.

    Symlinks are recorded, never followed; ``.merklesync`` is skipped at every level.
    Values: ``("dir", mode)``, ``("file", mode, size, sha256hex)``,
    ``("link", target)`` or ``("other", S_IFMT)``; mode is the permission bits.
    """
    root = Path(root)
    out: Snapshot = {}
    for rel, st in _walk(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode)
        elif stat.S_ISREG(st.st_mode):
            with open(root / rel, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            out[rel] = ("file", mode, st.st_size, digest)
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(root / rel))
        else:
            out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def _describe(value: tuple[str | int, ...]) -> str:
    match value:
        case ("dir", int(mode)):
            return f"dir {mode:04o}"
        case ("file", int(mode), int(size), str(digest)):
            return f"file {mode:04o} size={size} sha256={digest[:12]}"
        case ("link", target):
            return f"link -> {target}"
        case _:
            return repr(value)


def diff_snapshots(
    a: Mapping[str, tuple[str | int, ...]],
    b: Mapping[str, tuple[str | int, ...]],
    names: tuple[str, str] = ("a", "b"),
) -> list[str]:
    """Readable differences between two snapshots, one line per path, sorted."""
    lines: list[str] = []
    for path in sorted(a.keys() | b.keys()):
        va, vb = a.get(path), b.get(path)
        if va == vb:
            continue
        if vb is None:
            assert va is not None
            lines.append(f"only in {names[0]}: {path} ({_describe(va)})")
        elif va is None:
            lines.append(f"only in {names[1]}: {path} ({_describe(vb)})")
        else:
            lines.append(f"differs: {path}: {names[0]}={_describe(va)} {names[1]}={_describe(vb)}")
    return lines


def assert_same_tree(
    a: Mapping[str, tuple[str | int, ...]] | Path,
    b: Mapping[str, tuple[str | int, ...]] | Path,
    names: tuple[str, str] = ("a", "b"),
    limit: int = 40,
) -> None:
    """Fail with a readable diff unless two snapshots (or two directories) are equal."""
    sa = snapshot(a) if isinstance(a, Path) else a
    sb = snapshot(b) if isinstance(b, Path) else b
    lines = diff_snapshots(sa, sb, names)
    if lines:
        shown = lines[:limit]
        more = len(lines) - len(shown)
        if more:
            shown.append(f"... and {more} more")
        summary = (
            f"trees differ in {len(lines)} path(s) ({names[0]}: {len(sa)}, {names[1]}: {len(sb)})"
        )
        raise AssertionError("\n".join([summary, *shown]))


def rsync_itemize(a: Path, b: Path, times: bool = True) -> list[str]:
    """What ``rsync -anc --delete --itemize-changes --exclude=.merklesync a/ b/`` would
    change, as its non-empty output lines; ``[]`` when ``b`` already equals ``a``.

    ``times=False`` replaces ``-a`` with ``-rlpgoD`` so modification times are ignored.
    """
    flags = "-anc" if times else "-rlpgoDnc"
    argv = [
        "rsync",
        flags,
        "--delete",
        "--itemize-changes",
        f"--exclude={STATE_DIR}",
        f"{os.fspath(a)}/",
        f"{os.fspath(b)}/",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return [line for line in proc.stdout.splitlines() if line.strip()]
