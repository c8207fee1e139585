"""Ignore rules as a replica applies them: what is never part of a replica,
and --exclude's patterns under a directory left out."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from merklesync import ignore
from merklesync.ignore import IGNORE_FILE, TEMP_PREFIX, IgnoreRules, exclude_predicate
from merklesync.replica import Replica
from tests.clirun import ms


def test_temp_files_of_a_write_are_never_part_of_a_replica(tmp_path: Path) -> None:
    rules = IgnoreRules(tmp_path)
    assert rules.ignored(f"{TEMP_PREFIX}123-456-f.txt", False)
    assert rules.ignored(f"d/{TEMP_PREFIX}1-2-x", False)
    assert rules.ignored(".merklesync", True) and rules.ignored("d/.merklesync", True)
    assert not rules.ignored("d/f.txt", False)
    # Only a name of a temp file's whole form: the prefix alone is a name like any other.
    assert not rules.ignored(f"{TEMP_PREFIX}my notes.txt", False)
    assert not rules.ignored(f"d/{TEMP_PREFIX}12-x", False)


def test_a_file_named_like_a_temp_file_but_not_one_is_kept_and_synced(tmp_path: Path) -> None:
    """A scan removes the temp files abandoned by a run that died: never a
    file of the user's whose name only begins the same way."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    mine = [f"{TEMP_PREFIX}my notes.txt", f"{TEMP_PREFIX}12-x", f"{TEMP_PREFIX}-1-2-y"]
    for name in mine:
        (src / name).write_text(name)
    abandoned = src / f"{TEMP_PREFIX}999999999-1-gone.txt"  # no such process
    abandoned.write_text("half")
    assert ms("init", src).code == 0
    assert not abandoned.exists()
    assert ms("push", src, dst).code == 0
    for name in mine:
        assert (src / name).read_text() == name == (dst / name).read_text()


def test_an_excluded_directory_cannot_have_paths_taken_back_below_it() -> None:
    """As in git: a '!' pattern does not take back what is under a
    directory left out."""
    include = exclude_predicate(["secret/", "!secret/keep/"])
    assert not include("secret/keep/x.txt", False)
    assert not include("secret/keep", True)
    assert include("public/x.txt", False)


def test_a_path_ignored_for_a_while_comes_back_as_the_version_it_was(tmp_path: Path) -> None:
    """Ignored, a path leaves the index (no tombstone: the other replicas
    keep it); no longer ignored, it is not a first version: an edit made
    meanwhile is a new version of the one synced before (it reaches the
    other replica, no conflict), an unchanged file is that version again."""
    from tests.clirun import ms

    a, b = tmp_path / "a", tmp_path / "b"
    (a / "logs").mkdir(parents=True)
    (a / "logs" / "keep.txt").write_text("keep\n")
    (a / "logs" / "same.txt").write_text("same\n")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    with Replica.open(a) as r:
        before = r.index.get("logs/same.txt")
    (a / ".merklesyncignore").write_text("*.txt\n")
    ms("sync", a, b)  # the rule reaches B (which ignores them too); A refuses B's copies
    (a / "logs" / "keep.txt").write_text("edited\n")
    (a / ".merklesyncignore").unlink()
    ms("sync", a, b)  # B still ignores them as this run writes: left alone
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert "0 conflicts settled" in r.err and "conflict:" not in r.err
    assert (b / "logs" / "keep.txt").read_text() == "edited\n"
    assert sorted(p.name for p in (b / "logs").iterdir()) == ["keep.txt", "same.txt"]
    with Replica.open(a) as r:
        after = r.index.get("logs/same.txt")
    assert before is not None and after is not None and after.entry.vv == before.entry.vv
    assert ms("diff", a, b).code == 0


def test_a_path_a_replica_begins_to_ignore_is_none_of_that_run_s_business(
    tmp_path: Path,
) -> None:
    """The run that brings a new rule (its scan drops the path from the
    index) does not find the other side's copy newer, nor ask the side
    that ignores it to write it: nothing left alone, exit 0; the other
    replica keeps its copy."""
    from tests.clirun import ms

    for command in ("push", "sync"):
        a, b = _run_once(tmp_path / command, command, {"cache.tmp": "k\n", "kept.txt": "k\n"})
        (a / ".merklesyncignore").write_text("*.tmp\n")
        (b / "cache.tmp").write_text("edited on b\n")
        r = ms(command, a, b)
        assert r.code == 0, (command, r.err)
        assert "left alone:" not in r.err and "0 left alone" in r.err, r.err
        assert (b / "cache.tmp").read_text() == "edited on b\n"
        assert (a / "cache.tmp").read_text() == "k\n"
        assert (b / ".merklesyncignore").read_text() == "*.tmp\n"


def test_a_run_that_left_out_what_a_replica_ignores_proves_nothing(tmp_path: Path) -> None:
    """A deletion the other side ignores did not reach it: the run is not
    recorded as one after which that side holds all this one has (no
    tombstone of it may be collected on that proof), for push as for sync."""
    from tests.clirun import ms

    for command in ("push", "sync"):
        a, b = _run_once(tmp_path / command, command, {"p.tmp": "p\n", "f": "f\n"})
        # B now ignores p.tmp (and keeps its copy), and its rule file too:
        # nothing else differs.
        (b / ".merklesyncignore").write_text("*.tmp\n.merklesyncignore\n")
        assert ms("status", b).code == 0
        (a / "p.tmp").unlink()
        with Replica.open(a) as r:
            before = r.index.peers()
        ms(command, a, b)
        with Replica.open(a) as r:
            assert r.index.peers() == before, command
        assert (b / "p.tmp").read_text() == "p\n"


def _run_once(where: Path, command: str, files: dict[str, str]) -> tuple[Path, Path]:
    """Replica ``where``/a holding ``files``, and ``where``/b made from it by
    one run of ``command`` (push or sync)."""
    from tests.clirun import ms

    a, b = where / "a", where / "b"
    a.mkdir(parents=True)
    for name, text in files.items():
        (a / name).write_text(text)
    ms("init", a)
    assert ms(command, a, b).code == 0
    return a, b


def test_rules_that_cannot_be_read_leave_their_directory_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ignore file there but unreadable: what it was meant to leave out
    must not leave, so its directory is kept as the index knew it and out
    of runs (said, exit 1) until it can be read; the rest goes on."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "private").mkdir(parents=True)
    (src / "private" / IGNORE_FILE).write_text("*.key\n")
    (src / "private" / "notes.txt").write_text("v1")
    (src / "private" / "secret.key").write_text("s")
    assert ms("init", src).code == 0
    assert ms("push", src, dst).code == 0
    (src / "private" / "notes.txt").write_text("v2")
    (src / "private" / "secret2.key").write_text("s2")
    (src / "top.txt").write_text("t")
    real = ignore.read_rules

    def unreadable(path: Path) -> bytes:
        if path == src / "private" / IGNORE_FILE:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    with monkeypatch.context() as m:
        m.setattr(ignore, "read_rules", unreadable)
        r = ms("push", src, dst)
        assert r.code == 1
        assert f"private/{IGNORE_FILE}: cannot read: Permission denied" in r.err
        assert (dst / "top.txt").read_text() == "t"
        assert (dst / "private" / "notes.txt").read_text() == "v1"
        assert not list(dst.rglob("*.key"))
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert (dst / "private" / "notes.txt").read_text() == "v2"
    assert not list(dst.rglob("*.key"))


def test_a_temp_file_abandoned_in_a_read_only_directory_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run writing in a read-only directory made it writable for the
    while, noted so, and was killed: the next opening removes what it left
    half written while the directory is writable, then gives it its mode
    back. As a user other than root meets it (the mode refuses the unlink)."""
    import msgpack

    root = tmp_path / "r"
    (root / "ro").mkdir(parents=True)
    (root / "ro" / "f").write_text("f")
    (root / "ro").chmod(0o555)
    assert ms("init", root).code == 0
    (root / "ro").chmod(0o755)  # as the killed run left it
    left = root / "ro" / f"{TEMP_PREFIX}999999999-1-f"
    left.write_text("half")
    (root / ".merklesync" / "final-modes").write_bytes(msgpack.packb(["ro", 0o555, True]))
    real = os.unlink

    def as_a_user(path: str, *, dir_fd: int | None = None) -> None:
        if dir_fd is not None and not os.fstat(dir_fd).st_mode & stat.S_IWUSR:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        real(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", as_a_user)
    assert ms("status", root).code == 0
    assert not left.exists() and (root / "ro" / "f").exists()
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    (root / "ro").chmod(0o755)


def test_a_socket_named_as_an_ignore_file_holds_no_rules(tmp_path: Path) -> None:
    """A socket cannot be opened (ENXIO): no rules, as for a FIFO, not rules
    that cannot be read (which would keep its directory out of runs for ever)."""
    import socket

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("f")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "d" / IGNORE_FILE))
        ms("init", src)  # exit 1: the socket itself is skipped, and said
        r = ms("push", src, dst)
        assert "not a file, directory or link" in r.err
        assert (dst / "d" / "f.txt").read_text() == "f"
        assert "cannot read" not in r.err, r.err


def test_a_write_refused_for_rules_that_cannot_be_read_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica written to (as an agent's is) cannot read the ignore
    file of the directory: it refuses the write, and says why; that is no
    "ignored on this replica", which a run takes as by design."""
    import blake3

    from merklesync.clock import VersionVector
    from merklesync.model import Entry, EntryKind, WriteItem
    from merklesync.peer.local import LocalPeer

    root = tmp_path / "r"
    (root / "private").mkdir(parents=True)
    (root / "private" / IGNORE_FILE).write_text("*.key\n")
    real = ignore.read_rules

    def unreadable(path: Path) -> bytes:
        if path == root / "private" / IGNORE_FILE:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(ignore, "read_rules", unreadable)
    data = b"n"
    entry = Entry(
        "private/notes.txt",
        EntryKind.FILE,
        VersionVector.of({"peer": 1}),
        digest=blake3.blake3(data).digest(),
        size=len(data),
        mode=0o644,
        mtime_ns=0,
    )
    peer = LocalPeer.open(root, create=True)
    try:
        peer.refresh()
        [outcome] = peer.write([WriteItem(entry, None, [data])])
    finally:
        peer.close()
    assert not outcome.ok and not outcome.ignored, outcome
    assert "cannot read: Permission denied" in outcome.reason
    assert not (root / "private" / "notes.txt").exists()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOTCONN, errno.EIO])
def test_an_ignore_file_that_fails_to_open_for_a_passing_reason_leaves_rules_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """No file descriptor left, a network mount gone: the rules are not
    known, so what they leave out stays out (it is not taken for no rules)."""
    (tmp_path / IGNORE_FILE).write_text("secret.env\n")

    def failing(path: Path) -> bytes:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(ignore, "read_rules", failing)
    rules = IgnoreRules(tmp_path)
    assert rules.ignored("secret.env", False)
    assert rules.unread("") is not None


def test_diff_leaves_out_what_a_local_replica_ignores_as_a_run_does(tmp_path: Path) -> None:
    """A pair a push has brought level is no different to diff because of a
    path one side's rules keep out (for ever, exit 1, to a cron check)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a").write_text("a\n")
    ms("init", src)
    assert ms("push", src, dst).code == 0
    (dst / IGNORE_FILE).write_text("*.bak\n" + IGNORE_FILE + "\n")
    (src / "x.bak").write_text("kept out there\n")  # the destination ignores it
    (src / IGNORE_FILE).write_text("*.tmp\n" + IGNORE_FILE + "\n")
    (dst / "z.tmp").write_text("kept out here\n")  # the source ignores it
    assert ms("push", src, dst).code == 0
    r = ms("diff", "--json", src, dst)
    assert r.code == 0, r.out
    assert r.json()["changes"] == []
    (src / "a").write_text("edited\n")
    r = ms("diff", src, dst)
    assert r.code == 1 and r.out.splitlines() == ["M a"], r.out
