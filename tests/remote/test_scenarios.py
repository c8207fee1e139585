"""The push/pull/diff scenarios of tests/core/test_push.py, run against every
kind of peer (see conftest: local, serve over pipes, SSH) with the remote
replica as the destination and as the source."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sshd import Daemon

from merklesync.sources import placer
from tests.clirun import ms
from tests.remote.conftest import Side, make_side
from tests.treegen import assert_same_tree, make_tree, mutate, rsync_itemize


def write(path: Path, text: str, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def user_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".merklesync" not in p.parts)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".merklesync-tmp-")]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(root, files=60, dirs=8, seed=3, symlinks=3)
    assert ms("init", root).code == 0
    return root


def test_first_push_copies_everything(side: Side, src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    r = side.ms("push", side.src(src), side.dst(dst))
    assert r.code == 0, r.err
    assert_same_tree(src, dst)
    assert [
        line for line in rsync_itemize(src, dst) if not line.startswith((".d..t", ".L..t"))
    ] == []
    r = side.ms("diff", side.src(src), side.dst(dst))
    assert r.code == 0, r.err
    assert no_temp_files(dst)


def test_second_push_changes_nothing_in_one_round_trip(
    side: Side, src: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "dst"
    assert side.ms("push", side.src(src), side.dst(dst)).code == 0
    r = side.ms("push", side.src(src), side.dst(dst), "--json", "--stats")
    assert r.code == 0, r.err
    out = r.json()
    assert out["changes"] == []
    assert out["stats"]["round_trips"] == 1
    assert out["stats"]["files_hashed"] == 0
    if side.remote:
        assert 0 < out["stats"]["bytes_sent"] + out["stats"]["bytes_received"] < 1000


def test_edits_deletes_and_adds_propagate(side: Side, src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    side.ms("push", side.src(src), side.dst(dst))
    mutate(src, modify=5, add=4, delete=3, seed=9)
    r = side.ms("diff", side.src(src), side.dst(dst), "--json")
    assert r.code == 1, r.err
    kinds = {c["change"] for c in r.json()["changes"]}
    assert kinds <= {"A", "M", "D"} and len(r.json()["changes"]) >= 12
    r = side.ms("push", side.src(src), side.dst(dst), "--stats", "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_transferred"] == 9
    assert_same_tree(src, dst)
    assert side.ms("diff", side.src(src), side.dst(dst)).code == 0


def test_diff_lines_and_exit_codes(side: Side, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "same", "x")
    write(a / "changed", "one")
    write(a / "only-a", "a")
    write(a / "kind", "file")
    ms("init", a)
    assert side.ms("push", side.src(a), side.dst(b)).code == 0
    write(a / "changed", "two")
    (a / "only-a").unlink()
    write(a / "new", "n")
    (a / "kind").unlink()
    (a / "kind").mkdir()
    r = side.ms("diff", side.src(a), side.dst(b))
    assert r.code == 1, r.err
    assert r.lines() == ["M changed", "T kind", "A new", "D only-a"]


def test_symlinks_modes_and_empty_dirs(side: Side, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "d/file", "content")
    os.chmod(a / "d/file", 0o640)
    (a / "empty").mkdir()
    os.symlink("../d/file", a / "d/link")
    os.symlink("/etc/passwd", a / "abs-link")
    write(a / "empty-file", "")
    ms("init", a)
    r = side.ms("push", side.src(a), side.dst(b))
    assert r.code == 0, r.err
    assert_same_tree(a, b)
    assert os.readlink(b / "abs-link") == "/etc/passwd"
    os.chmod(a / "d/file", 0o600)
    r = side.ms("push", side.src(a), side.dst(b), "--json")
    assert r.json()["stats"]["files_transferred"] == 0
    assert (b / "d/file").stat().st_mode & 0o777 == 0o600


def test_type_changes_both_ways(side: Side, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "x/inner", "i")
    write(a / "y", "file")
    ms("init", a)
    side.ms("push", side.src(a), side.dst(b))
    (a / "x/inner").unlink()
    (a / "x").rmdir()
    write(a / "x", "now a file")
    (a / "y").unlink()
    write(a / "y/deep/z", "now a dir")
    r = side.ms("push", side.src(a), side.dst(b))
    assert r.code == 0, r.err
    assert_same_tree(a, b)


def test_dest_newer_is_left_alone(side: Side, src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    side.ms("push", side.src(src), side.dst(dst))
    victim = user_files(dst)[0]
    rel = victim.relative_to(dst).as_posix()
    victim.write_text("edited on the destination")
    r = side.ms("push", side.src(src), side.dst(dst))
    assert r.code == 1, r.err
    assert f"left alone: {rel}: the destination has a newer version" in r.err
    assert victim.read_text() == "edited on the destination"


def test_concurrent_edits_are_a_conflict_not_an_overwrite(
    side: Side, src: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "dst"
    side.ms("push", side.src(src), side.dst(dst))
    rel = user_files(src)[0].relative_to(src)
    (src / rel).write_text("source edit")
    (dst / rel).write_text("destination edit")
    r = side.ms("push", side.src(src), side.dst(dst), "--json")
    assert r.code == 1, r.err
    [change] = [c for c in r.json()["changes"] if c["path"] == rel.as_posix()]
    assert change["action"] == "conflict"
    assert (dst / rel).read_text() == "destination edit"


def _same_three(root: Path) -> None:
    write(root / "f", "same")
    (root / "d").mkdir()
    os.symlink("f", root / "link")


def test_copies_made_apart_agree_from_their_first_run(side: Side, tmp_path: Path) -> None:
    """Replicas made apart from the same files (copied with rsync, say),
    each made one --as-copy, hold the same version of each: their first run
    finds them equal at the root, and writes nothing on either side."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        _same_three(root)
        assert ms("init", "--as-copy", root).code == 0
    before = [(x / n).lstat() for x in (a, b) for n in ("f", "d", "link")]
    for cmd in ("push", "sync"):
        r = side.ms(cmd, side.src(a), side.dst(b), "--json", "--stats")
        assert r.code == 0, r.err
        assert r.json()["changes" if cmd == "push" else "events"] == []
        assert r.json()["stats"]["round_trips"] == 1
        assert r.json()["stats"]["entries_compared"] == 0
    after = [(x / n).lstat() for x in (a, b) for n in ("f", "d", "link")]
    assert [(st.st_ino, st.st_ctime_ns) for st in after] == [
        (st.st_ino, st.st_ctime_ns) for st in before
    ]


def test_what_copies_made_apart_hold_differently_is_a_conflict_and_later_edits_flow(
    side: Side, tmp_path: Path
) -> None:
    """What each of two replicas made apart --as-copy found alike and one
    edits or deletes later is a fast-forward to the other; what they found
    differently neither wrote after the other: a conflict, left alone."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write(root / "edited.txt", "as copied")
        write(root / "deleted.txt", "as copied")
        write(root / "both.txt", "as copied")
        write(root / "apart.txt", f"only {root.name} has this")
        assert ms("init", "--as-copy", root).code == 0
        write(root / "both.txt", f"edited on {root.name}")
    write(a / "edited.txt", "edited on a")
    (a / "deleted.txt").unlink()
    r = side.ms("push", side.src(a), side.dst(b), "--json")
    assert r.code == 1, r.err  # something left alone
    actions = {c["path"]: c["action"] for c in r.json()["changes"]}
    assert actions == {
        "apart.txt": "conflict",
        "both.txt": "conflict",
        "deleted.txt": "copy",
        "edited.txt": "copy",
    }
    assert r.json()["left_alone"] == [
        {
            "path": "apart.txt",
            "reason": "conflict: different content found by first scans, unchanged since",
        },
        {"path": "both.txt", "reason": "conflict: both sides changed it"},
    ]
    assert (b / "edited.txt").read_text() == "edited on a"
    assert not (b / "deleted.txt").exists()
    assert (b / "apart.txt").read_text() == "only b has this"


def test_same_content_on_both_sides_merges_versions(side: Side, tmp_path: Path) -> None:
    """Copies made apart, made replicas without --as-copy: concurrent
    versions of the same content, merged without a byte copied."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        _same_three(root)
        assert ms("init", root).code == 0
    dry = side.ms("push", side.src(a), side.dst(b), "--json", "--dry-run")
    assert [c["action"] for c in dry.json()["changes"]] == ["merge-version"] * 3
    names = ("f", "d", "link")
    before = [(x / n).lstat() for x in (a, b) for n in names]
    r = side.ms("push", side.src(a), side.dst(b), "--json")
    assert r.code == 0, r.err
    assert [c["action"] for c in r.json()["changes"]] == ["merge-version"] * 3
    assert r.json()["stats"]["files_transferred"] == 0
    after = [(x / n).lstat() for x in (a, b) for n in names]
    # Left as they were on both sides: not made again, not even touched.
    assert [(st.st_ino, st.st_ctime_ns) for st in after] == [
        (st.st_ino, st.st_ctime_ns) for st in before
    ]
    # Both sides took the merged version: nothing left to compare, either way.
    for there, back in ((a, b), (b, a)):
        again = side.ms("push", side.src(there), side.dst(back), "--json", "--stats").json()
        assert again["changes"] == []
        assert again["stats"]["round_trips"] == 1
    assert (a / "f").read_text() == (b / "f").read_text() == "same"


def test_a_source_behind_with_the_same_content_catches_up(side: Side, tmp_path: Path) -> None:
    """The destination's version is newer, its content the same (edited,
    then edited back): nothing is written there, and the source takes that
    version, so later runs have nothing to compare."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "f", "same")
    write(a / "g", "other")
    ms("init", a)
    assert side.ms("push", side.src(a), side.dst(b)).code == 0
    write(b / "f", "changed")
    ms("status", b)
    write(b / "f", "same")
    ms("status", b)
    dry = side.ms("push", side.src(a), side.dst(b), "--json", "--stats", "--dry-run").json()
    assert dry["changes"] == [] and dry["stats"]["round_trips"] > 1
    r = side.ms("push", side.src(a), side.dst(b), "--json", "--stats")
    assert r.code == 0, r.err
    assert r.json()["changes"] == [] and r.json()["stats"]["round_trips"] > 1
    again = side.ms("push", side.src(a), side.dst(b), "--json", "--stats").json()
    assert again["changes"] == [] and again["stats"]["round_trips"] == 1
    assert (a / "f").read_text() == (b / "f").read_text() == "same"


def test_pushing_into_an_unrelated_nonempty_directory_never_overwrites(
    side: Side, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "f", "mine")
    write(b / "f", "theirs")
    ms("init", a)
    assert side.ms("push", side.src(a), side.dst(b)).code == 1
    assert (b / "f").read_text() == "theirs"


def test_dry_run_writes_nothing(side: Side, src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    r = side.ms("push", side.src(src), side.dst(dst), "--dry-run")
    assert r.code == 0, r.err
    assert len(r.lines()) > 60 and all(line.startswith("A ") for line in r.lines())
    assert list(dst.iterdir()) == []  # not even made a replica
    # A destination that does not exist is not created.
    r = side.ms("push", side.src(src), side.dst(tmp_path / "new"), "--dry-run")
    assert r.code == 0, r.err
    assert len(r.lines()) > 60 and not (tmp_path / "new").exists()
    # A directory with files of its own: what a real run would find there.
    victim = user_files(src)[0].relative_to(src)
    write(dst / victim, "already here")
    r = side.ms("push", side.src(src), side.dst(dst), "--dry-run")
    assert r.code == 1 and f"{victim.as_posix()}: conflict" in r.err, r.err
    assert sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file()) == [victim]
    real = side.ms("push", side.src(src), side.dst(dst))
    assert real.code == 1 and f"{victim.as_posix()}: conflict" in real.err, real.err


def test_pull_is_push_reversed(side: Side, src: Path, tmp_path: Path) -> None:
    """pull SRC from inside the destination; then push back from inside it."""
    dst = tmp_path / "dst"
    ms("init", dst)
    r = side.ms("pull", side.src(src), cwd=dst) if side.direction == "from" else None
    if r is None:  # the remote is the destination: pull into it from the local source
        r = side.ms("pull", src, side.dst(dst))
    assert r.code == 0, r.err
    assert_same_tree(src, dst)
    mutate(src, modify=2, seed=4)
    r = side.ms("push", side.dst(dst), cwd=src)
    assert r.code == 0, r.err
    assert_same_tree(src, dst)


def test_many_new_files_both_ways(side: Side, tmp_path: Path) -> None:
    """Enough new files for the writing side to place them in a second
    process (sources/placer.py): forked by an agent, a fresh interpreter
    where the writing process runs threads (a pull over SSH or pipes)."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=placer.MIN_FILES + 44, dirs=6, seed=11)
    ms("init", a)
    r = side.ms("push", side.src(a), side.dst(b), "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_transferred"] == placer.MIN_FILES + 44
    assert_same_tree(a, b)
    assert no_temp_files(b)


def test_ignore_file_and_exclude(side: Side, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / ".merklesyncignore", "*.log\nbuild/\n")
    write(a / "keep.txt", "k")
    write(a / "x.log", "noise")
    write(a / "build/out.o", "obj")
    write(a / "secret/key", "s")
    ms("init", a)
    r = side.ms("push", side.src(a), side.dst(b), "--exclude", "secret/")
    assert r.code == 0, r.err
    assert sorted(p.relative_to(b).as_posix() for p in user_files(b)) == [
        ".merklesyncignore",
        "keep.txt",
    ]
    assert side.ms("push", side.src(a), side.dst(b)).code == 0
    assert (b / "secret/key").read_text() == "s"


def test_status_of_the_remote_side(side: Side, src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    side.ms("push", side.src(src), side.dst(dst))
    write(dst / "new-file", "n")
    r = side.ms("status", side.dst(dst), "--json")
    assert r.code == 0, r.err
    assert r.json()["added"] == ["new-file"]
    assert r.json()["entries"] == ms("status", dst, "--json").json()["entries"]


def test_a_scan_that_finds_more_than_an_answer_lists(side: Side, tmp_path: Path) -> None:
    # Paths of about 3.8 kB: some 1,100 of them fill what a refresh answer
    # lists (as a few million short ones would, on a first scan). The scan
    # records them all; the answer lists what fits and counts the rest.
    root = tmp_path / "big"
    root.mkdir()
    assert ms("init", root).code == 0
    deep = root.joinpath(*["d" * 250] * 15)
    deep.mkdir(parents=True)
    for i in range(1_300):
        (deep / f"{i:05d}").write_text(str(i))
    r = side.ms("status", side.addr(root), "--json")
    assert r.code == 0, r.err
    out = r.json()
    assert out["entries"] == 1_315
    if side.remote:
        listed = len(out["added"])
        assert 1_000 < listed < 1_200
        left = f"{1_315 - listed:,} added"
        assert out["warnings"] == [
            f"not listed here (over 4,194,304 bytes of paths and warnings): {left}"
        ]
    else:
        assert len(out["added"]) == 1_315 and out["warnings"] == []
    r = side.ms("status", side.addr(root), "--json")
    assert r.json()["added"] == [] and r.json()["entries"] == 1_315


def test_missing_replica_is_the_remote_error(side: Side, tmp_path: Path) -> None:
    r = side.ms("diff", side.src(tmp_path / "nope"), side.dst(tmp_path / "also-nope"))
    assert r.code == 5, r.err
    assert r.err.count("\n") == 1 and "no such directory" in r.err and "Traceback" not in r.err
    (tmp_path / "plain").mkdir()
    r = side.ms("status", side.dst(tmp_path / "plain"))
    assert r.code == 3, r.err
    assert "is not a merklesync replica" in r.err


def test_watched_replicas_scan_only_what_changed(side: Side, src: Path, tmp_path: Path) -> None:
    """With `merklesync watch` on both replicas (one of them remote for the
    remote kinds), a run scans nothing when nothing changed, and one directory
    listing when one file changed; the result is the same as without."""
    from tests.core.test_watch import Running

    dst = tmp_path / "dst"
    assert side.ms("push", side.src(src), side.dst(dst)).code == 0
    watchers = [Running(src), Running(dst)]
    try:
        first = side.ms("push", side.src(src), side.dst(dst), "--json")
        assert first.code == 0, first.err
        assert first.json()["stats"]["files_scanned"] == 60 + 3 + 8 + 60 + 3 + 8  # both sides
        again = side.ms("push", side.src(src), side.dst(dst), "--json")
        assert again.json()["stats"]["files_scanned"] == 0
        victim = user_files(src)[7]
        victim.write_text("changed under a watcher")
        r = side.ms("push", side.src(src), side.dst(dst), "--json")
        assert r.code == 0, r.err
        assert [c["path"] for c in r.json()["changes"]] == [victim.relative_to(src).as_posix()]
        listing = sum(1 for e in os.scandir(victim.parent) if e.name != ".merklesync")
        assert r.json()["stats"]["files_scanned"] == listing
        assert_same_tree(src, dst)
    finally:
        for w in watchers:
            w.stop()


def test_a_dry_run_against_a_far_side_without_preview(src: Path, tmp_path: Path) -> None:
    """A merklesync over there from before `serve --preview`: an existing
    replica is served as it is, a missing one is reported missing."""
    from tests.remote.conftest import PIPE_HOST, REMOTE_CMD, RSH

    older = tmp_path / "older-merklesync"
    older.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --preview "*)\n'
        "  echo \"Error: No such option: '--preview'\" >&2; exit 2;;\n"
        "esac\n"
        f'exec {REMOTE_CMD} "$@"\n'
    )
    older.chmod(0o755)
    dst = tmp_path / "dst"
    assert ms("push", src, dst).code == 0
    write(src / "new.txt", "n")
    far = ["--rsh", RSH, "--remote-cmd", str(older)]
    r = ms("push", src, f"{PIPE_HOST}:{dst}", "--dry-run", *far)
    assert r.code == 0 and r.lines() == ["A new.txt"], r.err
    r = ms("push", src, f"{PIPE_HOST}:{tmp_path / 'missing'}", "--dry-run", *far)
    assert r.code != 0 and "Traceback" not in r.err and not (tmp_path / "missing").exists()


def test_json_gets_usage_errors_too(src: Path, tmp_path: Path) -> None:
    from tests.remote.conftest import run_cli

    r = run_cli(["gc", str(src), "--retention-days", "many", "--json"], dict(os.environ))
    assert r.code == 2 and r.json()["exit_code"] == 2 and "many" in r.json()["error"]  # parsing
    r = run_cli(["gc", str(tmp_path / "nope"), "--json"], dict(os.environ))
    assert r.code == 5 and r.json()["exit_code"] == 5 and "no such directory" in r.json()["error"]
    r = ms("sync", src, tmp_path / "b", "--on-conflict", "merge-cmd", "--json")  # by the command
    assert r.code == 2 and "needs --merge-cmd" in r.json()["error"]


def test_a_copy_with_the_same_id_is_refused_until_it_gets_its_own(
    side: Side, tmp_path: Path
) -> None:
    """A replica copied whole (.merklesync/ too) counts its writes under the
    original's id: comparing the two is refused; init --new-id settles it."""
    a, c = tmp_path / "a", tmp_path / "c"
    write(a / "x.txt", "v1\n")
    write(a / "same.txt", "untouched\n")
    assert ms("init", a).code == 0
    shutil.copytree(a, c, symlinks=True)
    write(a / "x.txt", "a's edit\n")
    assert ms("status", a).code == 0  # a's counter moves on
    write(c / "x.txt", "c's only edit, longer\n")
    for command in ("diff", "push", "pull", "sync"):
        r = side.ms(command, side.src(a), side.dst(c))
        assert r.code == 3, (command, r.err)
        assert "have the same replica id" in r.err and "init --new-id" in r.err
        assert len(r.err.strip().splitlines()) == 1
    assert (c / "x.txt").read_text() == "c's only edit, longer\n"
    old = ms("init", a, "--json").json()["replica_id"]
    r = ms("init", "--new-id", c, "--json")
    assert r.code == 0, r.err
    assert r.json()["previous_replica_id"] == old != r.json()["replica_id"]
    # Its entries and versions are kept: only x.txt differs, as a conflict.
    d = side.ms("diff", side.src(a), side.dst(c), "--json").json()["changes"]
    assert [(ch["path"], ch["action"]) for ch in d] == [("x.txt", "conflict")]
    r = side.ms("sync", side.src(a), side.dst(c))
    assert r.code == 0, r.err
    texts = sorted(p.read_text() for p in user_files(c))
    assert texts == sorted(["a's edit\n", "c's only edit, longer\n", "untouched\n"])
    assert sorted(p.read_text() for p in user_files(a)) == texts


def test_diff_counts_the_same_whatever_the_kind_of_peer(
    daemons: Callable[[str], Daemon], tmp_path: Path
) -> None:
    """--stats counts as the other kinds do: round trips and the entries
    compared are the same between two local replicas and through an agent."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=3000, dirs=30, seed=21)
    ms("init", a)
    assert ms("push", a, b).code == 0
    mutate(a, modify=3, add=0, delete=0, seed=22)
    pipe = make_side("pipe-to", daemons, tmp_path)
    counts = []
    for dst in (str(b), pipe.addr(b)):
        r = pipe.ms("diff", a, dst, "--json", "--stats")
        assert r.code == 1, r.err
        stats = r.json()["stats"]
        counts.append((stats["round_trips"], stats["nodes_compared"]))
    assert counts[0] == counts[1], counts


def test_what_the_destination_alone_ignores_is_no_failure(side: Side, tmp_path: Path) -> None:
    """Rules of the destination's own (an ignore file that ignores itself
    too): the paths they leave out are not copied there, run after run,
    and that is no failure. A local destination's rules keep them out of
    the run; a remote one refuses them, and the run says so."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "keep.txt", "k")
    ms("init", a)
    assert side.ms("push", side.src(a), side.dst(b)).code == 0
    write(b / ".merklesyncignore", "*.log\n.merklesyncignore\n")
    write(a / "x.log", "noise")
    write(a / "more.txt", "m")
    for _ in range(2):
        r = side.ms("push", side.src(a), side.dst(b), "--json", "-v")
        assert r.code == 0, r.err
        doc = r.json()
        assert doc["left_alone"] == []
        assert doc["ignored"] == (["x.log"] if side.direction == "to" and side.remote else [])
        assert not (b / "x.log").exists()
        assert (b / "more.txt").read_text() == "m"
    r = side.ms("push", side.src(a), side.dst(b), "-v")
    assert r.code == 0, r.err
    if side.direction == "to" and side.remote:
        assert "not copied: x.log" in r.err and "left out by its ignore rules" in r.err
    assert "x.log" not in r.out, r.out  # not listed as a change made


def test_a_sync_with_a_side_that_alone_ignores_a_path(side: Side, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "keep.txt", "k")
    ms("init", a)
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    write(b / ".merklesyncignore", "*.log\n.merklesyncignore\n")
    write(a / "x.log", "noise")
    write(b / "from-b.txt", "b")
    for _ in range(2):
        r = side.ms("sync", side.src(a), side.dst(b), "--json")
        assert r.code == 0, r.err
        doc = r.json()
        assert doc["left_alone"] == []
        remote_b = side.direction == "to" and side.remote
        assert doc["ignored"] == ([{"path": "x.log", "on": "b"}] if remote_b else [])
        assert not (b / "x.log").exists()
        assert (a / "from-b.txt").read_text() == "b"
    r = side.ms("sync", side.src(a), side.dst(b))
    assert r.code == 0, r.err
    if side.direction == "to" and side.remote:
        assert "1 ignored by the side written to" in r.err


def test_a_run_that_leaves_paths_out_is_recorded_as_a_contact_on_both_sides(
    side: Side, tmp_path: Path
) -> None:
    """An agent records it too (asked over the protocol): neither side
    takes the other for away after months of runs that each left
    something out."""
    from merklesync.replica import Replica

    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "keep.txt", "k")
    ms("init", a)
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    write(a / "x.log", "noise")
    assert side.ms("sync", side.src(a), side.dst(b), "--exclude", "*.log").code == 0
    ids = {}
    for root in (a, b):
        with Replica.open(root) as r:
            ids[root] = r.replica_id
    for root, other in ((a, b), (b, a)):
        with Replica.open(root) as r:
            assert list(r.index.contacts()) == [ids[other]], root


def test_a_run_that_leaves_paths_out_collects_the_tombstones_due_on_both_sides(
    side: Side, tmp_path: Path
) -> None:
    """An agent told of a contact collects what is due on its side too (once
    a day), as the client does on its own: the replica written to over SSH
    is the one cron never runs gc on. (b learned of the deletion after its
    last complete run with a began: only its age lets it go.)"""
    from merklesync import retention
    from merklesync.replica import Replica

    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "keep.txt", "k")
    write(a / "gone.txt", "g")
    ms("init", a)
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    (a / "gone.txt").unlink()
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    for root in (a, b):
        with Replica.open(root) as r:
            assert [e.path for e, _ in r.index.tombstones()] == ["gone.txt"], root
            old = time.time_ns() - 200 * retention.DAY_NS  # twice the retention and more
            r.index.conn.execute("UPDATE entries SET learned_ns = ? WHERE deleted", (old,))
            r.index.set_meta("last_gc", 0)  # a day and more since the last collection
            r.index.commit()
    write(a / "x.log", "noise")
    assert side.ms("sync", side.src(a), side.dst(b), "--exclude", "*.log").code == 0
    for root in (a, b):
        with Replica.open(root) as r:
            assert r.index.tombstones() == [], root


def test_a_replica_is_never_made_inside_the_state_directory_of_another(
    side: Side, tmp_path: Path
) -> None:
    """Files pushed there would be that replica's own (a ``config``, an
    ``index.db``): refused as a usage error, on either side of a link."""
    a, other = tmp_path / "a", tmp_path / "other"
    write(a / "config", '[remote "x"]\nurl = /nowhere\n')
    write(other / "keep.txt", "k")
    ms("init", a)
    ms("init", other)
    state = other / ".merklesync"
    before = sorted(p.name for p in state.iterdir())
    for target in (state, state / "x"):
        r = side.ms("push", side.src(a), side.dst(target))
        assert r.code == 2, r.err
        assert "inside a replica's .merklesync directory" in r.err, r.err
        assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert sorted(p.name for p in state.iterdir()) == before
    r = ms("init", state / "y")
    assert r.code == 2 and not (state / "y").exists(), r.err


def test_files_moved_or_renamed_are_copied_on_the_destination_not_sent(
    side: Side, tmp_path: Path
) -> None:
    """A directory renamed, and a file moved into another one: each file is
    made on the destination from its old path there (checked against its
    digest as any content), and nothing of it crosses the wire."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    size, count = 20_000, 12
    for i in range(count):
        (src / "old").mkdir(parents=True, exist_ok=True)
        (src / "old" / f"f{i}.bin").write_bytes(bytes([i]) * size)
    write(src / "here" / "moved.txt", "m" * size)
    write(src / "stays.txt", "s")
    assert ms("init", src).code == 0
    assert side.ms("push", side.src(src), side.dst(dst)).code == 0
    (src / "old").rename(src / "new")
    (src / "here" / "moved.txt").rename(src / "there.txt")
    r = side.ms("push", side.src(src), side.dst(dst), "--json", "--stats")
    assert r.code == 0, r.err
    stats = r.json()["stats"]
    assert stats["files_copied"] == count + 1
    assert stats["files_transferred"] == 0 and stats["bytes_transferred"] == 0
    if side.remote:  # the changes' metadata alone: well under one file's content
        assert stats["bytes_sent"] + stats["bytes_received"] < size
    assert_same_tree(src, dst)
    assert not (dst / "old").exists() and no_temp_files(dst)
    r = side.ms("push", side.src(src), side.dst(dst), "--json")
    assert r.code == 0 and r.json()["changes"] == [], r.err


def test_a_sync_copies_what_moved_on_either_side(side: Side, tmp_path: Path) -> None:
    """Each side renames a directory, and a sync makes each rename on the
    other side from the files it already has."""
    a, b = tmp_path / "a", tmp_path / "b"
    size = 20_000
    for i in range(6):
        (a / "one").mkdir(parents=True, exist_ok=True)
        (a / "one" / f"f{i}.bin").write_bytes(bytes([i]) * size)
        (a / "two").mkdir(parents=True, exist_ok=True)
        (a / "two" / f"g{i}.bin").write_bytes(bytes([100 + i]) * size)
    assert ms("init", a).code == 0
    assert side.ms("sync", side.src(a), side.dst(b)).code == 0
    (a / "one").rename(a / "uno")
    (b / "two").rename(b / "dos")
    r = side.ms("sync", side.src(a), side.dst(b), "--json", "--stats")
    assert r.code == 0, r.err
    stats = r.json()["stats"]
    assert stats["files_copied"] == 12
    assert stats["files_transferred"] == 0
    if side.remote:
        assert stats["bytes_sent"] + stats["bytes_received"] < size
    assert_same_tree(a, b)
    assert sorted(p.name for p in a.iterdir() if p.name != ".merklesync") == ["dos", "uno"]
