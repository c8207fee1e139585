"""Files hashed ahead of a scan that reads them all, on a second core
(sources/prehash.py): the index is what a scan alone would make, and a
digest from the child is taken only for the file as the scan listed it."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from merklesync.ignore import IgnoreRules
from merklesync.model import Entry, EntryKind, ScanReport
from merklesync.replica import Replica
from merklesync.sources import prehash
from merklesync.sources.directory import DirectorySource
from merklesync.sources.listing import stat_key
from merklesync.sources.prehash import Prehasher
from tests.clirun import ms, run_python
from tests.treegen import make_tree


@pytest.fixture
def ahead(monkeypatch: pytest.MonkeyPatch) -> list[Prehasher]:
    """The child starts after the first file, on any machine; the
    prehashers a scan started, kept for their counts."""
    monkeypatch.setattr(prehash, "MIN_FILES", 1)
    monkeypatch.setattr(prehash, "can_fork", lambda: True)
    started: list[Prehasher] = []
    real = Prehasher.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[Prehasher], *args: Any) -> Prehasher | None:
        found: Prehasher | None = real(cls, *args)
        if found is not None:
            started.append(found)
        return found

    monkeypatch.setattr(Prehasher, "start", classmethod(start))
    return started


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    make_tree(root, files=120, dirs=8, seed=5, min_size=0, max_size=3000, symlinks=3)
    (root / ".merklesyncignore").write_text("*.skip\n")
    (root / "x.skip").write_bytes(b"ignored")
    os.utime(root / ".merklesyncignore", (1_600_000_000, 1_600_000_000))  # not racy
    return root


def files_on_disk(root: Path) -> dict[str, bytes]:
    """Every file's blake3, by a walk that knows nothing of merklesync."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith(".merklesync/"):
            found[rel] = blake3.blake3(path.read_bytes()).digest()
    return found


def indexed(root: Path) -> dict[str, Entry]:
    with Replica.open(root) as replica:
        return {e.path: e for e in replica.index.iter_entries(live_only=True)}


def scan(root: Path, **kw: bool) -> ScanReport:
    with Replica.open(root) as replica:
        return replica.scan(**kw)


def test_a_first_scan_takes_the_childs_digests(tree: Path, ahead: list[Prehasher]) -> None:
    assert ms("init", tree).code == 0
    assert len(ahead) == 1 and ahead[0].used > 100  # all but the first directory's
    entries = indexed(tree)
    digests = {p: e.digest for p, e in entries.items() if e.kind is EntryKind.FILE}
    expected = files_on_disk(tree)
    del expected["x.skip"]
    assert digests == expected
    report = scan(tree)
    assert not (report.added or report.modified or report.deleted or report.hashed)


def test_checksum_scans_use_it_and_find_nothing_new(tree: Path, ahead: list[Prehasher]) -> None:
    assert ms("init", tree).code == 0
    before = indexed(tree)
    report = scan(tree, checksum=True)
    assert len(ahead) == 2 and ahead[1].used > 100
    assert report.hashed == len([e for e in before.values() if e.kind is EntryKind.FILE])
    assert not (report.added or report.modified or report.deleted)
    assert indexed(tree) == before


def test_without_a_child_the_index_is_the_same(tree: Path, tmp_path: Path) -> None:
    """The same tree scanned with and without the child: the same entries
    (but for the replica ids in the version vectors)."""
    twin = tmp_path / "twin"
    os.system(f"cp -a {tree} {twin}")  # same names, content, modes and mtimes
    assert ms("init", twin).code == 0  # 120 files: fewer than MIN_FILES, no child
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prehash, "MIN_FILES", 1)
        mp.setattr(prehash, "can_fork", lambda: True)
        assert ms("init", tree).code == 0

    def shape(entries: dict[str, Entry]) -> dict[str, tuple[object, ...]]:
        return {
            p: (e.kind, e.digest, e.size, e.mode, e.mtime_ns, e.target) for p, e in entries.items()
        }

    assert shape(indexed(tree)) == shape(indexed(twin))


def on_the_walk(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[str, Prehasher | None], None]
) -> None:
    """Call ``before(directory, prehasher)`` as the scan is about to list each directory."""
    real = DirectorySource._scan_directory

    def scanning(self: DirectorySource, directory: str, scan: Any, *args: Any) -> Any:
        before(directory, scan.prehash)
        return real(self, directory, scan, *args)

    monkeypatch.setattr(DirectorySource, "_scan_directory", scanning)


def test_a_file_changed_after_the_child_read_it_is_read_again(
    tree: Path, ahead: list[Prehasher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same mtime, new bytes: only its ctime tells, and the
    scan's listing has it."""
    changed: list[Path] = []

    def change_once(directory: str, child: Prehasher | None) -> None:
        if child is None or changed or not directory:
            return
        victim = next(
            p for p in sorted((tree / directory).iterdir()) if p.is_file() and not p.is_symlink()
        )
        while directory not in child._done and not child._ended:  # the child has read it
            child._read()
        st = victim.stat()
        victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()) or b"\x01")
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        changed.append(victim)

    on_the_walk(monkeypatch, change_once)
    assert ms("init", tree).code == 0
    assert changed and ahead[0].used > 0
    rel = changed[0].relative_to(tree).as_posix()
    assert indexed(tree)[rel].digest == blake3.blake3(changed[0].read_bytes()).digest()


def test_a_child_that_dies_leaves_the_rest_to_the_scan(
    tree: Path, ahead: list[Prehasher], monkeypatch: pytest.MonkeyPatch
) -> None:
    def kill(directory: str, child: Prehasher | None) -> None:
        if child is not None:
            os.kill(child._pid, signal.SIGKILL)

    on_the_walk(monkeypatch, kill)
    assert ms("init", tree).code == 0
    expected = files_on_disk(tree)
    del expected["x.skip"]
    assert {p: e.digest for p, e in indexed(tree).items() if e.kind is EntryKind.FILE} == expected


def key(path: Path) -> bytes:
    return stat_key(path.lstat())


def start(
    root: Path, pending: list[tuple[str, Any]], ignore: IgnoreRules | None = None
) -> Prehasher:
    source = DirectorySource(root, ignore or IgnoreRules(root))
    child = Prehasher.start(str(root), source.ignore, pending, source.hash_file)
    assert child is not None
    return child


def test_digests_only_for_the_stat_the_child_saw(tmp_path: Path, ahead: list[Prehasher]) -> None:
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode() * 10)
    child = start(tmp_path, [("", None)])
    try:
        assert child.digest("", "a", key(tmp_path / "a")) == blake3.blake3(b"a" * 10).digest()
        assert child.digest("", "a", key(tmp_path / "a")) is None  # taken once
        (tmp_path / "b").write_bytes(b"B" * 10)  # after the child read it
        assert child.digest("", "b", key(tmp_path / "b")) is None
        assert child.digest("", "c", b"another stat") is None
        assert child.digest("", "nothing", b"") is None  # the directory is done: no wait
        assert child.used == 1
    finally:
        child.close()


def test_ignored_files_and_large_ones_are_left_to_the_scan(
    tmp_path: Path, ahead: list[Prehasher], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prehash, "MAX_SIZE", 100)
    (tmp_path / ".merklesyncignore").write_text("*.skip\nskipped/\n")
    (tmp_path / "x.skip").write_bytes(b"x")
    (tmp_path / "big").write_bytes(b"b" * 101)
    (tmp_path / "small").write_bytes(b"s")
    (tmp_path / "skipped").mkdir()
    (tmp_path / "skipped" / "f").write_bytes(b"f")
    child = start(tmp_path, [("", None)])
    try:
        assert child.digest("", "small", key(tmp_path / "small")) is not None
        for name in ("x.skip", "big"):
            assert child.digest("", name, key(tmp_path / name)) is None
        assert child.digest("skipped", "f", key(tmp_path / "skipped" / "f")) is None
        assert child._ended  # it walked all there was, not the ignored directory
    finally:
        child.close()


def test_walks_that_part_ways_stop_the_child(
    tmp_path: Path, ahead: list[Prehasher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child holds digests for directories the scan never asks for:
    past MAX_HELD of them it is stopped, and the scan reads for itself."""
    monkeypatch.setattr(prehash, "MAX_HELD", 6)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        for i in range(5):
            (tmp_path / d / f"f{i}").write_bytes(bytes([i]))
    child = start(tmp_path, [("a", None), ("b", None)])  # b is walked first
    try:
        assert child.digest("a", "f0", key(tmp_path / "a" / "f0")) is None
        assert child._ended
    finally:
        child.close()
    child = start(tmp_path, [("a", None), ("b", None)])
    try:
        child.finished("b")  # the scan was done with b: what comes of it is dropped
        assert child.digest("a", "f0", key(tmp_path / "a" / "f0")) is not None
    finally:
        child.close()


def test_closing_twice_closes_nothing_else(
    tmp_path: Path, ahead: list[Prehasher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child stopped itself (walks that parted ways); the scan closes
    it again at its end: the descriptor number, reused since, is not closed."""
    monkeypatch.setattr(prehash, "MAX_HELD", 2)
    for name in "abcde":
        (tmp_path / name).write_bytes(name.encode())
    child = start(tmp_path, [("", None)])
    assert child.digest("elsewhere", "x", b"") is None  # held past MAX_HELD: stopped
    with open(tmp_path / "a", "rb") as reused:
        child.close()
        os.fstat(reused.fileno())  # still open


def test_names_the_scan_refuses_are_neither_walked_nor_read(
    tmp_path: Path, ahead: list[Prehasher]
) -> None:
    (tmp_path / "bad\n2").mkdir()
    (tmp_path / ".MerkleSync").mkdir()
    for d in ("bad\n2", ".MerkleSync"):
        for i in range(5):
            (tmp_path / d / f"f{i}").write_bytes(b"x")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "f").write_bytes(b"y")
    (tmp_path / "bad\x01name").write_bytes(b"z")
    child = start(tmp_path, [("", None)])
    try:
        assert child.digest("nowhere", "x", b"") is None  # reads to the end
        assert set(child._got) == {"", "ok"}
        assert set(child._got[""]) == set() and set(child._got["ok"]) == {"f"}
    finally:
        child.close()


_POOL_THEN_INIT = """
import os, sys
import blake3
from merklesync.sources import prehash
prehash.MIN_FILES = 1
prehash.MAX_SIZE = 64 << 20  # the child hashes the large file too
prehash.can_fork = lambda: True
blake3.blake3(os.urandom(9 << 20), max_threads=blake3.blake3.AUTO).digest()  # the pool runs
from merklesync.cli import main
sys.argv = ["merklesync", "init", sys.argv[1]]
main()
"""


def test_the_child_hashes_a_large_file_on_one_thread(tmp_path: Path) -> None:
    """blake3's thread pool, started here before the fork, has no threads in
    the child: a large file hashed there on several would wait for ever."""
    (tmp_path / "a.txt").write_bytes(b"hashed here, then the child starts")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "big").write_bytes(os.urandom(9 << 20))
    r = run_python(_POOL_THEN_INIT, tmp_path)
    assert r.returncode == 0, r.stderr
    digest = indexed(tmp_path)["sub/big"].digest
    assert digest == blake3.blake3((tmp_path / "sub" / "big").read_bytes()).digest()


_POOL_THEN_SCAN_CHILD = """
import os, sys
from pathlib import Path
import blake3
blake3.blake3(os.urandom(9 << 20), max_threads=blake3.blake3.AUTO).digest()  # the pool runs
from merklesync.replica import Replica
with Replica.open(Path(sys.argv[1])) as replica:
    print(replica.start_scan().wait().hashed)
"""


def test_a_scan_in_a_forked_child_hashes_a_large_file_on_one_thread(tmp_path: Path) -> None:
    """The same for the scans forked to run beside another (a sync of two
    local replicas, a scan while the remote one is reached)."""
    assert ms("init", tmp_path).code == 0
    (tmp_path / "big").write_bytes(os.urandom(9 << 20))
    r = run_python(_POOL_THEN_SCAN_CHILD, tmp_path)
    assert r.stdout.strip() == "1", r.stderr
