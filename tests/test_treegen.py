"""The tree generator and its oracles, tested on their own (no merklesync involved)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.treegen import (
    FIXED_PAST_TIME,
    MAX_DEPTH,
    assert_same_tree,
    diff_snapshots,
    make_tree,
    mutate,
    rsync_itemize,
    snapshot,
)

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")


def regular_files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def test_same_seed_same_tree(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a", files=200, dirs=20, seed=5, symlinks=3)
    b = make_tree(tmp_path / "b", files=200, dirs=20, seed=5, symlinks=3)
    assert (a.dirs, dict(a.files), dict(a.symlinks)) == (b.dirs, dict(b.files), dict(b.symlinks))
    assert_same_tree(snapshot(tmp_path / "a"), snapshot(tmp_path / "b"))


def test_other_seed_other_tree(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", files=50, dirs=5, seed=1)
    make_tree(tmp_path / "b", files=50, dirs=5, seed=2)
    assert snapshot(tmp_path / "a") != snapshot(tmp_path / "b")


def test_counts_sizes_and_times(tmp_path: Path) -> None:
    root = tmp_path / "t"
    info = make_tree(root, files=300, dirs=40, min_size=100, max_size=900, seed=9, symlinks=4)
    on_disk = regular_files(root)
    assert on_disk == dict(info.files)
    assert info.file_count == 300
    assert info.total_bytes == sum(on_disk.values())
    assert all(100 <= size <= 900 for size in on_disk.values())
    dirs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())
    assert dirs == sorted(info.dirs) and len(dirs) == 40
    assert max(d.count("/") for d in dirs) < MAX_DEPTH
    assert any("/" in d for d in dirs), "directories should be nested"
    for p in [root, *root.rglob("*")]:
        assert os.lstat(p).st_mtime == FIXED_PAST_TIME, p
    for link, target in info.symlinks.items():
        assert os.readlink(root / link) == target
        assert (root / link).resolve().is_file()


def test_files_are_distinct(tmp_path: Path) -> None:
    make_tree(tmp_path / "t", files=100, dirs=3, min_size=64, max_size=64)
    digests = [v[3] for v in snapshot(tmp_path / "t").values() if v[0] == "file"]
    assert len(set(digests)) == 100


def test_mtime_none_keeps_now(tmp_path: Path) -> None:
    make_tree(tmp_path / "t", files=3, dirs=1, mtime=None)
    assert all(p.stat().st_mtime > FIXED_PAST_TIME for p in (tmp_path / "t").rglob("*"))


def test_mutate_reports_what_it_did(tmp_path: Path) -> None:
    root = tmp_path / "t"
    make_tree(root, files=100, dirs=10)
    before, stat_before = snapshot(root), {p: os.stat(root / p) for p in regular_files(root)}
    m = mutate(root, modify=7, add=4, delete=3, seed=11)
    assert (len(m.modified), len(m.added), len(m.deleted), len(m)) == (7, 4, 3, 14)
    assert not set(m.modified) & set(m.deleted)
    after = snapshot(root)
    assert {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)} == set(
        m.changed
    )
    for path in m.modified:
        assert after[path][2] == before[path][2], "size is kept"
        assert after[path][3] != before[path][3], "content changes"
        assert os.stat(root / path).st_mtime_ns != stat_before[path].st_mtime_ns
    assert all(path not in before and after[path][0] == "file" for path in m.added)
    assert all(path in before and path not in after for path in m.deleted)


def test_mutate_is_deterministic_and_repeatable(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", files=80, dirs=6)
    make_tree(tmp_path / "b", files=80, dirs=6)
    ma = mutate(tmp_path / "a", modify=5, add=2, delete=2, seed=3, mtime=FIXED_PAST_TIME + 10)
    mb = mutate(tmp_path / "b", modify=5, add=2, delete=2, seed=3, mtime=FIXED_PAST_TIME + 10)
    assert ma == mb
    assert_same_tree(snapshot(tmp_path / "a"), snapshot(tmp_path / "b"))
    # The same seed again still changes the files it picks.
    before = snapshot(tmp_path / "a")
    again = mutate(tmp_path / "a", modify=5, seed=3)
    after = snapshot(tmp_path / "a")
    assert all(before[p] != after[p] for p in again.modified)


def test_mutate_exclude_and_tiny_files(tmp_path: Path) -> None:
    root = tmp_path / "t"
    info = make_tree(root, files=20, dirs=2, min_size=0, max_size=1)
    keep = list(info.files)[:10]
    before = snapshot(root)
    m = mutate(root, modify=10, exclude=keep)
    assert not set(m.modified) & set(keep)
    after = snapshot(root)
    assert all(before[p] != after[p] for p in m.modified)
    with pytest.raises(ValueError):
        mutate(root, modify=15, delete=10)


def test_snapshot_detects_one_byte_and_chmod(tmp_path: Path) -> None:
    root = tmp_path / "t"
    info = make_tree(root, files=30, dirs=4, seed=2)
    victim, other = list(info.files)[:2]
    base = snapshot(root)

    with open(root / victim, "r+b") as f:
        f.seek(info.files[victim] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    changed = snapshot(root)
    lines = diff_snapshots(base, changed)
    assert len(lines) == 1 and lines[0].startswith(f"differs: {victim}: a=file 0644 size=")

    os.chmod(root / other, 0o600)
    chmodded = snapshot(root)
    assert chmodded[other][1] == 0o600
    with pytest.raises(AssertionError, match=rf"differs: {other}: a=file 0644 .* b=file 0600"):
        assert_same_tree(changed, chmodded)


def test_snapshot_kinds_and_state_dir(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_bytes(b"x")
    os.symlink("sub/f", root / "link")
    os.symlink("/nonexistent", root / "dangling")
    (root / ".merklesync").mkdir()
    (root / ".merklesync" / "index.db").write_bytes(b"state")
    snap = snapshot(root)
    assert set(snap) == {"sub", "sub/f", "link", "dangling"}
    assert snap["link"] == ("link", "sub/f")
    assert snap["dangling"] == ("link", "/nonexistent")
    assert snap["sub"][0] == "dir"
    assert snap["sub/f"][:3] == ("file", stat.S_IMODE(os.stat(root / "sub/f").st_mode), 1)


def test_assert_same_tree_accepts_paths_and_lists_differences(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", files=10, dirs=2)
    make_tree(tmp_path / "b", files=10, dirs=2)
    assert_same_tree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "extra").write_text("hi")
    with pytest.raises(AssertionError, match="only in dst: extra"):
        assert_same_tree(tmp_path / "a", tmp_path / "b", names=("src", "dst"))


@needs_rsync
def test_rsync_itemize(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=40, dirs=5, symlinks=2)
    subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
    (dst / ".merklesync").mkdir()
    os.utime(dst, (FIXED_PAST_TIME, FIXED_PAST_TIME))  # mkdir bumped it
    assert rsync_itemize(src, dst) == []
    m = mutate(src, modify=1, add=1, delete=1)
    lines = rsync_itemize(src, dst)
    for path in m.changed:
        assert any(line.endswith(path) for line in lines), (path, lines)
    assert any(line.startswith("*deleting") for line in lines)
