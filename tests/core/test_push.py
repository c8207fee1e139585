"""One-way push/pull and diff between local replicas, checked with an oracle
that does not use merklesync."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from merklesync.replica import Replica
from tests.clirun import ms
from tests.treegen import assert_same_tree, make_tree, mutate, rsync_itemize


def write(path: Path, text: str, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(root, files=60, dirs=8, seed=3)
    assert ms("init", root).code == 0
    return root


def test_first_push_copies_everything(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert_same_tree(src, dst)
    # File times are kept; directory times are not synced (as Unison).
    assert [line for line in rsync_itemize(src, dst) if not line.startswith(".d..t")] == []
    assert ms("diff", src, dst).code == 0


def test_second_push_changes_nothing(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    ms("push", src, dst)
    r = ms("push", src, dst, "--json")
    assert r.code == 0
    assert r.json()["changes"] == []
    assert r.json()["stats"]["round_trips"] == 1
    assert r.json()["stats"]["files_hashed"] == 0


def test_edits_deletes_and_adds_propagate(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    ms("push", src, dst)
    mutate(src, modify=5, add=4, delete=3, seed=9)
    r = ms("diff", src, dst, "--json")
    assert r.code == 1
    kinds = {c["change"] for c in r.json()["changes"]}
    assert kinds <= {"A", "M", "D"} and len(r.json()["changes"]) >= 12
    assert ms("push", src, dst).code == 0
    assert_same_tree(src, dst)
    assert ms("diff", src, dst).code == 0


def test_diff_lines_and_exit_codes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "same", "x")
    write(a / "changed", "one")
    write(a / "only-a", "a")
    write(a / "kind", "file")
    ms("init", a)
    ms("push", a, b)
    write(a / "changed", "two")
    (a / "only-a").unlink()
    write(a / "new", "n")
    (a / "kind").unlink()
    (a / "kind").mkdir()
    r = ms("diff", a, b)
    assert r.code == 1
    assert r.lines() == ["M changed", "T kind", "A new", "D only-a"]


def test_symlinks_modes_and_empty_dirs(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "d/file", "content")
    os.chmod(a / "d/file", 0o640)
    (a / "empty").mkdir()
    os.symlink("../d/file", a / "d/link")
    os.symlink("/etc/passwd", a / "abs-link")
    ms("init", a)
    assert ms("push", a, b).code == 0
    assert_same_tree(a, b)
    assert os.readlink(b / "abs-link") == "/etc/passwd"
    os.chmod(a / "d/file", 0o600)
    assert ms("push", a, b, "--json").json()["stats"]["files_transferred"] == 0
    assert (b / "d/file").stat().st_mode & 0o777 == 0o600


def test_setuid_and_setgid_stay_on_their_own_machine(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "shared/prog", "#!/bin/sh\n")
    os.chmod(a / "shared/prog", 0o4755)
    os.chmod(a / "shared", 0o2775)
    ms("init", a)
    assert ms("push", a, b).code == 0
    assert (b / "shared/prog").stat().st_mode & 0o7777 == 0o755
    assert (b / "shared").stat().st_mode & 0o7777 == 0o775
    assert ms("diff", a, b).code == 0  # the synced bits agree
    # Each side's own setuid/setgid bits survive a change of the synced
    # ones made on the other side (a file rewritten gets none).
    os.chmod(b / "shared", 0o2775)
    os.chmod(b / "shared/prog", 0o4755)
    ms("status", b)
    os.chmod(a / "shared", 0o2770)
    os.chmod(a / "shared/prog", 0o4750)
    assert ms("push", a, b).code == 0
    assert (b / "shared").stat().st_mode & 0o7777 == 0o2770
    assert (b / "shared/prog").stat().st_mode & 0o7777 == 0o4750
    write(a / "shared/prog", "#!/bin/sh\nexit 0\n")
    assert ms("push", a, b).code == 0
    assert (b / "shared/prog").stat().st_mode & 0o7777 == 0o750
    assert ms("diff", a, b).code == 0


def test_a_long_name_in_a_script_of_three_bytes_a_character(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    name = "文" * 83 + ".txt"  # 253 bytes: near the longest a name may be
    write(a / name, "x")
    ms("init", a)
    r = ms("push", a, b)
    assert r.code == 0, r.err
    assert (b / name).read_text() == "x"


def test_type_changes_both_ways(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "x/inner", "i")
    write(a / "y", "file")
    ms("init", a)
    ms("push", a, b)
    (a / "x/inner").unlink()
    (a / "x").rmdir()
    write(a / "x", "now a file")
    (a / "y").unlink()
    write(a / "y/deep/z", "now a dir")
    assert ms("push", a, b).code == 0, ms("diff", a, b).out
    assert_same_tree(a, b)


def test_dest_newer_is_left_alone(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    ms("push", src, dst)
    victim = sorted(p for p in dst.rglob("*") if p.is_file() and ".merklesync" not in p.parts)[0]
    rel = victim.relative_to(dst).as_posix()
    victim.write_text("edited on the destination")
    r = ms("push", src, dst)
    assert r.code == 1
    assert f"left alone: {rel}: the destination has a newer version" in r.err
    assert victim.read_text() == "edited on the destination"


def test_concurrent_edits_are_a_conflict_not_an_overwrite(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    ms("push", src, dst)
    rel = sorted(
        p.relative_to(src) for p in src.rglob("*") if p.is_file() and ".merklesync" not in p.parts
    )[0]
    (src / rel).write_text("source edit")
    (dst / rel).write_text("destination edit")
    r = ms("push", src, dst, "--json")
    assert r.code == 1
    [change] = [c for c in r.json()["changes"] if c["path"] == rel.as_posix()]
    assert change["action"] == "conflict"
    assert (dst / rel).read_text() == "destination edit"


def test_same_content_on_both_sides_merges_versions(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "f", "same")
    write(b / "f", "same")
    write(a / "g", "only in a")
    ms("init", a)
    ms("init", b)
    dry = ms("push", a, b, "--dry-run")
    assert dry.code == 0
    assert (
        f"would copy 1 entry from {a} to {b}; 1 entry already the same there "
        "(versions to update); 0 left alone"
    ) in dry.err
    r = ms("push", a, b, "--json")
    assert r.code == 0
    assert [c["action"] for c in r.json()["changes"]] == ["merge-version", "copy"]
    assert r.json()["stats"]["files_transferred"] == 1
    # a took the merged version too: nothing is left to compare either way.
    for there, back in ((b, a), (a, b)):
        again = ms("push", there, back, "--json", "--stats").json()
        assert again["changes"] == [] and again["stats"]["round_trips"] == 1


def test_the_summary_tells_merged_versions_from_copies(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write(root / "f", "same")
        ms("init", root)
    r = ms("push", a, b)
    assert r.code == 0
    assert (
        f"copied 0 entries from {a} to {b}; 1 entry already the same there "
        "(versions updated); 0 left alone"
    ) in r.err


def test_pushing_into_an_unrelated_nonempty_directory_never_overwrites(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "f", "mine")
    write(b / "f", "theirs")
    ms("init", a)
    assert ms("push", a, b).code == 1
    assert (b / "f").read_text() == "theirs"


def test_dry_run_writes_nothing(src: Path, tmp_path: Path, private_tmp: Path) -> None:
    """(private_tmp: where previews keep their throwaway index.)"""
    dst = tmp_path / "dst"
    dst.mkdir()
    r = ms("push", src, dst, "--dry-run")
    assert r.code == 0
    assert len(r.lines()) > 60 and all(line.startswith("A ") for line in r.lines())
    assert list(dst.iterdir()) == []
    for command in ("push", "sync"):
        r = ms(command, src, tmp_path / f"new-{command}", "--dry-run")
        assert r.code == 0 and not (tmp_path / f"new-{command}").exists(), r.err
    r = ms("pull", src, tmp_path / "new-pull", "--dry-run")
    assert r.code == 0 and not (tmp_path / "new-pull").exists(), r.err
    assert list(private_tmp.iterdir()) == []


def test_pull_is_push_reversed(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = tmp_path / "dst"
    ms("init", dst)
    monkeypatch.chdir(dst)
    assert ms("pull", src).code == 0
    assert_same_tree(src, dst)
    mutate(src, modify=2, seed=4)
    monkeypatch.chdir(src)
    assert ms("push", dst, "--json").code == 0
    assert_same_tree(src, dst)


def test_ignore_file_and_exclude(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / ".merklesyncignore", "*.log\nbuild/\n")
    write(a / "keep.txt", "k")
    write(a / "x.log", "noise")
    write(a / "build/out.o", "obj")
    write(a / "secret/key", "s")
    ms("init", a)
    assert ms("push", a, b, "--exclude", "secret/").code == 0
    assert sorted(
        p.relative_to(b).as_posix() for p in b.rglob("*") if ".merklesync" not in p.parts
    ) == [
        ".merklesyncignore",
        "keep.txt",
    ]
    assert ms("push", a, b).code == 0
    assert (b / "secret/key").read_text() == "s"


def _index_paths(root: Path) -> list[str]:
    with Replica.open(root) as replica:
        return sorted(e.path for e in replica.index.iter_entries(live_only=True))


def test_nothing_is_written_under_a_directory_the_destination_ignores(tmp_path: Path) -> None:
    """`dir/` then `!dir/keep`: as in git, and as the scan, which never
    enters an ignored directory, nothing under it is taken back in: a push
    writes no dir/keep there (nor says so: the destination's rules are
    its own), and the index keeps no row for it."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "dir/keep", "k")
    write(a / "dir/other", "o")
    write(a / "f", "f")
    ms("init", a)
    write(b / ".merklesyncignore", "dir/\n!dir/keep\n")
    ms("init", b)
    r = ms("push", a, b)  # B's rules leave dir/ out: none of the run's business
    assert "dir/" not in r.err, r.err  # (only B's own .merklesyncignore is left alone)
    assert not (b / "dir").exists()
    assert _index_paths(b) == [".merklesyncignore", "f"]
    # The same with --exclude, on both sides: the run leaves dir/keep out.
    c = tmp_path / "c"
    r = ms("push", a, c, "--exclude", "dir/", "--exclude", "!dir/keep")
    assert r.code == 0, r.err
    assert not (c / "dir").exists() and _index_paths(c) == ["f"]


def test_a_path_ignored_then_deleted_before_a_scan_is_not_deleted_elsewhere(
    tmp_path: Path,
) -> None:
    """Made ignored, then removed (a `make clean`) before any scan saw it
    ignored: as for an ignored path still there, its row goes without a
    tombstone, and the other replica keeps its copy."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "a.log", "data")
    write(a / "build/x.o", "obj")
    ms("init", a)
    assert ms("push", a, b).code == 0
    write(a / ".merklesyncignore", "*.log\nbuild/\n")
    (a / "a.log").unlink()
    (a / "build/x.o").unlink()
    (a / "build").rmdir()
    ms("push", a, b)
    assert (b / "a.log").read_text() == "data" and (b / "build/x.o").read_text() == "obj"
    assert _index_paths(a) == [".merklesyncignore"]
    with Replica.open(a) as replica:
        assert [e.path for e in replica.index.iter_entries() if e.deleted] == []


def test_an_ignored_file_in_a_directory_deleted_before_a_scan_is_not_deleted_elsewhere(
    tmp_path: Path,
) -> None:
    """The same under a directory removed whole: what the rules leave out
    now goes from the index without a tombstone; the rest is deleted."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "d/x.log", "log")
    write(a / "d/y.txt", "y")
    ms("init", a)
    assert ms("push", a, b).code == 0
    write(a / ".merklesyncignore", "*.log\n")
    (a / "d/x.log").unlink()
    (a / "d/y.txt").unlink()
    (a / "d").rmdir()
    r = ms("push", a, b)
    assert "d: directory is not empty on the destination" in r.err, r.err
    assert (b / "d/x.log").read_text() == "log" and not (b / "d/y.txt").exists()
    with Replica.open(a) as replica:
        deleted = sorted(e.path for e in replica.index.iter_entries() if e.deleted)
    assert deleted == ["d", "d/y.txt"]


def test_nested_ignore_file_takes_back_what_a_parent_one_ignores(tmp_path: Path) -> None:
    """As in git, the deepest ignore file with a rule for a path decides:
    `!a.log` in sub/ takes back sub/a.log from the root's `*.log`."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / ".merklesyncignore", "*.log\n")
    write(a / "sub/.merklesyncignore", "!a.log\n")
    for name in ("a.log", "sub/a.log", "sub/b.log", "sub/c.txt"):
        write(a / name, name)
    ms("init", a)
    assert ms("push", a, b).code == 0
    assert _index_paths(b) == [
        ".merklesyncignore",
        "sub",
        "sub/.merklesyncignore",
        "sub/a.log",
        "sub/c.txt",
    ]


def test_a_byte_order_mark_is_no_part_of_the_first_rule(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a).mkdir()
    (a / ".merklesyncignore").write_bytes(b"\xef\xbb\xbf*.log\n")
    write(a / "a.log", "noise")
    write(a / "keep.txt", "k")
    ms("init", a)
    assert ms("push", a, b).code == 0
    assert _index_paths(b) == [".merklesyncignore", "keep.txt"]


def test_a_name_no_peer_takes_is_not_warned_about_when_ignored(tmp_path: Path) -> None:
    """A name merklesync cannot carry (a newline in it) is skipped with a
    warning and exit 1, unless a rule or --exclude leaves it out anyway."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "bad\nname", "x")
    write(a / "f", "f")
    r = ms("init", a)
    assert r.code == 1 and "skipped" in r.err
    r = ms("push", a, b, "--exclude", "bad*")
    assert r.code == 0 and "skipped" not in r.err, r.err
    write(a / ".merklesyncignore", "bad*\n")
    r = ms("push", a, b)
    assert r.code == 0 and "skipped" not in r.err, r.err


def test_a_deleted_directory_is_matched_by_a_rule_for_directories(tmp_path: Path) -> None:
    """A tombstone is a directory to `build/` when what it deletes was one."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "build/out.o", "obj")
    write(a / "f", "f")
    ms("init", a)
    assert ms("push", a, b).code == 0
    (a / "build/out.o").unlink()
    (a / "build").rmdir()
    r = ms("push", a, b, "--exclude", "build/")
    assert r.code == 0, r.err
    assert (b / "build/out.o").read_text() == "obj"
    # A replica that ignores build/ takes no tombstone for it either.
    c = tmp_path / "c"
    write(c / ".merklesyncignore", "build/\n")
    ms("init", c)
    write(a / "build/out.o", "obj")
    ms("push", a, c)
    (a / "build/out.o").unlink()
    (a / "build").rmdir()
    r = ms("push", a, c)
    assert "build" not in r.err, r.err
    with Replica.open(c) as replica:
        assert replica.index.get("build") is None


def test_destination_inside_source_is_refused(src: Path) -> None:
    r = ms("push", src, src / "inner")
    assert r.code == 2
    assert "inside the source" in r.err and "Traceback" not in r.err
    assert not (src / "inner").exists()  # refused before anything is made


def test_the_same_replica_twice_is_refused_at_once(src: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(src)
    for args in (("push", src, src), ("push", src, link), ("diff", src, src), ("sync", src, src)):
        r = ms(*args)
        assert r.code == 2 and "the same replica" in r.err, (args, r.err)


def test_a_remote_of_a_replica_named_by_a_bare_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    write(r1 / "f", "x")
    ms("init", r1)
    monkeypatch.chdir(r1)
    assert ms("remote", "add", "origin", str(r2)).code == 0
    monkeypatch.chdir(tmp_path)
    assert ms("push", "r1", "origin").code == 0
    assert (r2 / "f").read_text() == "x" and not (tmp_path / "origin").exists()
    assert ms("diff", "r1", "origin").code == 0


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    r = ms("push", tmp_path / "nope", tmp_path / "dst")
    assert r.code == 5
    assert r.err.startswith("merklesync: error: no such directory")
    r = ms("push", tmp_path / "nope", tmp_path / "dst", "--json")  # scripts get it on stdout too
    assert r.code == 5
    assert r.json() == {"error": f"no such directory: {tmp_path / 'nope'}", "exit_code": 5}


def test_not_a_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = ms("status")
    assert r.code == 3
    assert "not a merklesync replica" in r.err


def test_force_overwrites_and_says_what_it_discarded(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    ms("push", src, dst)
    rel = sorted(
        p.relative_to(src) for p in src.rglob("*") if p.is_file() and ".merklesync" not in p.parts
    )[0]
    (src / rel).write_text("source edit")
    (dst / rel).write_text("destination edit")
    assert ms("push", src, dst).code == 1
    with Replica.open(dst) as replica:
        by = replica.replica_id  # whose version goes: the destination wrote it
    r = ms("push", src, dst, "--force", "--dry-run")
    assert f"would overwrite {rel.as_posix()}: the version written by {by} would be lost" in r.err
    assert (dst / rel).read_text() == "destination edit"
    r = ms("push", src, dst, "--force")
    assert r.code == 0, r.err
    assert f"overwrote {rel.as_posix()}: discarded the version written by {by}" in r.err
    assert (dst / rel).read_text() == "source edit"
    assert_same_tree(src, dst)
    # The forced write dominates: the next push back is a plain fast-forward.
    assert ms("push", dst, src, "--json").json()["left_alone"] == []
    with Replica.open(dst) as replica:
        cached = replica.index.get(rel.as_posix())
        assert cached is not None and cached.entry.vv.get(by) >= 2  # the discarded write, and more
    assert ms("sync", src, dst, "--json").json()["events"] == []


def test_read_only_directories_get_their_mode_after_their_contents(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "ro/inner/file", "x")
    os.chmod(a / "ro/inner", 0o555)
    os.chmod(a / "ro", 0o500)
    try:
        ms("init", a)
        r = ms("push", a, b)
        assert r.code == 0, r.err
        assert (b / "ro/inner/file").read_text() == "x"
        assert (b / "ro").stat().st_mode & 0o777 == 0o500
        assert (b / "ro/inner").stat().st_mode & 0o777 == 0o555
        assert ms("diff", a, b).code == 0
        assert ms("push", a, b, "--json").json()["changes"] == []
    finally:
        for root in (a, b):
            for d in (root / "ro", root / "ro/inner"):
                if d.exists():
                    os.chmod(d, 0o755)


def test_a_directory_whose_mode_changed_keeps_its_contents(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "d/x", "1")
    write(a / "d/y", "2")
    ms("init", a)
    assert ms("push", a, b).code == 0
    (a / "d").chmod(0o700)
    r = ms("status", a)
    assert r.code == 0
    assert "d/x" not in r.out and "d/y" not in r.out  # nothing deleted, nothing re-added
    assert ms("push", "-v", a, b).code == 0
    assert (b / "d/x").read_text() == "1" and (b / "d/y").read_text() == "2"
    assert (b / "d").stat().st_mode & 0o777 == 0o700
    # Its mode changed there, a file in it here: the edit travels, no conflict.
    (b / "d").chmod(0o750)
    write(a / "d/x", "changed")
    r = ms("push", a, b)
    assert r.code == 1 and "d: the destination has a newer version" in r.err
    assert (b / "d/x").read_text() == "changed" and "conflict" not in r.err


def test_a_link_changed_again_within_seconds_is_updated(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "l").symlink_to("t1")
    ms("init", a)
    assert ms("push", a, b).code == 0
    (a / "l").unlink()
    (a / "l").symlink_to("t2")
    r = ms("push", a, b)  # b/l was written a moment ago: racy, and still what b's index says
    assert r.code == 0, r.err
    assert os.readlink(b / "l") == "t2"
    (b / "l").unlink()
    (b / "l").symlink_to("mine")  # changed there since its scan: left alone
    (a / "l").unlink()
    (a / "l").symlink_to("t3")
    r = ms("push", a, b)
    assert r.code == 1 and os.readlink(b / "l") == "mine"


def test_quiet_prints_nothing_but_the_exit_code_says(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    assert ms("push", "-q", "-n", src, dst).out == ""
    assert ms("push", "-q", src, dst).code == 0
    write(src / "new.txt", "n")
    for args, code in [(("status", "-q", src), 0), (("diff", "-q", src, dst), 1)]:
        r = ms(*args)
        assert (r.code, r.out, r.err) == (code, "", ""), args
    assert ms("gc", "-q", src).out == ""


def test_conflicting_options_are_usage_errors(src: Path, tmp_path: Path) -> None:
    r = ms("sync", src, tmp_path / "b", "--on-conflict", "merge-cmd")
    assert r.code == 2 and "needs --merge-cmd" in r.err
    assert not (tmp_path / "b").exists()
    r = ms("resolve", "--all", "x", "--take", "local")
    assert r.code == 2 and "not both" in r.err
    # A merge command that cannot run is refused before any work, not at
    # the first conflict (where both versions would be kept, exit 1).
    for command, said in [
        ('cat %B >> "%A', "the shell cannot read it: Syntax error"),
        ("./merge.sh %A %B", "name it by its full path"),
        ("no-such-merge-tool %A %B", "no command 'no-such-merge-tool' found"),
    ]:
        for cmd in ("sync", "repair"):
            r = ms(cmd, src, tmp_path / "b", "--merge-cmd", command)
            assert r.code == 2 and said in r.err and len(r.err.splitlines()) == 1, (cmd, r.err)
    assert not (tmp_path / "b").exists()
    for fine in (
        "cat %B >> %A",
        "LC_ALL=C sort -u -o %A %A %B",
        "$SHELL -c true",
        "~/bin/not-checked %A %B",  # ~ and a PATH given before it: found at run time
        "PATH=/opt/tools:$PATH mymerge %A %B",
    ):
        assert ms("sync", "-n", src, tmp_path / "b", "--merge-cmd", fine).code == 0, fine
    r = ms("gc", tmp_path / "no-such-dir")  # as the exit status table says: a missing directory
    assert r.code == 5 and "no such directory" in r.err


def test_a_deleted_nested_tree_goes_in_one_push(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "d0/s1/s2/f", "1")
    write(a / "d0/s1/g", "2")
    write(a / "keep", "3")
    ms("init", a)
    assert ms("push", a, b).code == 0
    import shutil

    shutil.rmtree(a / "d0")
    r = ms("push", a, b)
    assert r.code == 0, r.err
    assert sorted(p.name for p in b.iterdir()) == [".merklesync", "keep"]


def _forced(tmp_path: Path) -> tuple[Path, Path]:
    """Two replicas where x.txt was edited on both sides since they agreed."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "x.txt", "v1\n")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    write(b / "x.txt", "b's edit\n")
    write(a / "x.txt", "a's edit\n")
    return a, b


def test_the_source_edits_again_after_a_force_and_the_edit_travels(tmp_path: Path) -> None:
    a, b = _forced(tmp_path)
    assert ms("push", a, b, "--force").code == 0
    assert (b / "x.txt").read_text() == "a's edit\n"
    # The source holds the forced version too: nothing left to compare.
    assert ms("diff", a, b, "--json").json()["changes"] == []
    write(a / "x.txt", "a's next, longer edit\n")
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert (a / "x.txt").read_text() == (b / "x.txt").read_text() == "a's next, longer edit\n"


def test_a_file_made_again_after_a_forced_deletion_travels(tmp_path: Path) -> None:
    a, b = _forced(tmp_path)
    (a / "x.txt").unlink()
    assert ms("push", a, b, "--force").code == 0
    assert not (b / "x.txt").exists()
    write(a / "x.txt", "made again on a\n")
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert (a / "x.txt").read_text() == (b / "x.txt").read_text() == "made again on a\n"


def test_a_source_edited_during_a_force_keeps_its_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's file changes after the forced write reached the
    destination but before the source recorded it: its edit must not be
    taken for an older version of the forced one. The source records the
    forced version for the content it held (a change of version only,
    nothing on its disk touched); its next scan finds the edit, made after
    it, and the edit replaces what was forced."""
    from merklesync.sources import directory

    a, b = _forced(tmp_path)
    real = directory.DirectorySource.write_items

    def edit_a_after_writing_b(self, items, index, clock):  # type: ignore[no-untyped-def]
        yield from real(self, items, index, clock)
        if self.root == b.resolve():
            write(a / "x.txt", "a's edit made during the push\n")

    monkeypatch.setattr(directory.DirectorySource, "write_items", edit_a_after_writing_b)
    assert ms("push", a, b, "--force").code == 0
    monkeypatch.undo()
    assert (b / "x.txt").read_text() == "a's edit\n"
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert "conflict:" not in r.err
    for side in (a, b):
        assert [p.read_text() for p in side.glob("x*.txt")] == ["a's edit made during the push\n"]


def test_new_id_is_for_an_existing_replica_and_not_with_rebuild(src: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    r = ms("init", "--new-id", plain)
    assert r.code == 3 and "not a merklesync replica" in r.err
    assert not (plain / ".merklesync").exists()
    assert ms("init", "--new-id", "--rebuild", src).code == 2
    before = ms("init", src, "--json").json()
    after = ms("init", "--new-id", src, "--json").json()
    assert after["replica_id"] != before["replica_id"] == after["previous_replica_id"]
    assert after["fingerprint"] == before["fingerprint"]  # entries and versions kept
    assert ms("status", src, "--json").json()["replica_id"] == after["replica_id"]


def test_a_replica_of_another_user_around_here_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replica someone else made in a shared directory above (/tmp, say):
    # neither the source of a push nor a place where remote names (and the
    # commands they run) are looked up. As git's safe.directory check.
    shared, mine, backup = tmp_path / "shared", tmp_path / "mine", tmp_path / "backup"
    write(shared / "planted", "theirs")
    write(mine / "notes", "mine")
    assert ms("init", shared).code == 0 and ms("init", mine).code == 0
    assert ms("remote", "add", "backup", str(backup), "--replica", str(shared)).code == 0
    (shared / "work").mkdir()
    monkeypatch.chdir(shared / "work")
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)  # they are someone else's now
    r = ms("push", str(backup))
    assert r.code == 3 and "is a replica of another user" in r.err, r.err
    r = ms("push", str(shared), "backup")
    assert r.code == 2 and "backup is a remote of" in r.err and "another user" in r.err, r.err
    assert not backup.exists()
    assert ms("conflicts").code == 3  # around here: not used
    assert ms("conflicts", str(shared)).code == 0  # named: meant, whoever owns it
    # Root, under sudo, acts for the user who ran it.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", str(me))
    assert ms("push", "backup").code == 0
    assert (backup / "planted").read_text() == "theirs"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_a_file_replaced_as_root_keeps_its_owner(tmp_path: Path) -> None:
    """As with rsync -a run as root: the file written over another user's
    copy is still theirs (and not root's, which that user could no longer
    write); its mode is the source's."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "f", "v1")
    ms("init", src)
    assert ms("push", src, dst).code == 0
    os.chown(dst / "f", 1234, 2345)
    write(src / "f", "v2, longer")
    (src / "f").chmod(0o640)
    assert ms("push", src, dst).code == 0
    st = (dst / "f").stat()
    assert (dst / "f").read_text() == "v2, longer"
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o640)


def test_force_names_every_replica_whose_writes_it_discards(tmp_path: Path) -> None:
    """The version --force overwrites may hold the writes of several
    replicas (C's edit, then B's on top): all are named, in no order the
    vectors cannot tell."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write(a / "f", "base")
    ms("init", a)
    assert ms("push", a, b).code == 0 and ms("push", a, c).code == 0
    write(c / "f", "c's edit")
    assert ms("push", c, b).code == 0
    write(b / "f", "b's edit on top")
    write(a / "f", "a's edit")
    ids = []
    for root in (b, c):
        with Replica.open(root) as replica:
            ids.append(replica.replica_id)
    r = ms("push", a, b, "--force", "--dry-run")
    assert f"the version written by {', '.join(sorted(ids))} would be lost" in r.err, r.err


def test_a_run_that_lists_nothing_lets_go_of_what_it_applied(tmp_path: Path) -> None:
    """Without -v or --json, the changes applied are only counted as the
    run goes (a first copy of millions of files holds no object per file):
    the summary is the same, and what it names (left alone, overwritten)
    is kept."""
    from merklesync.peer.local import LocalPeer
    from merklesync.transfer import push

    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, files=300, dirs=30, seed=8)
    make_tree(dst, files=0, dirs=0)
    write(src / "same.txt", "same")
    write(dst / "same.txt", "same")
    write(src / "theirs.txt", "src")
    write(dst / "theirs.txt", "dst")
    write(src / "forced.txt", "src")
    write(dst / "forced.txt", "dst")
    for root in (src, dst):
        assert ms("init", root).code == 0
    with Replica.open(src) as a, Replica.open(dst) as b:
        result = push(
            LocalPeer(a),
            LocalPeer(b),
            keep_done=False,
            include=lambda path, is_dir: path != "forced.txt",
        )
    assert sorted(c.path for c in result.changes) == ["theirs.txt"]  # left alone: a conflict
    assert [c.path for c, _why in result.left_alone()] == ["theirs.txt"]
    assert result.forgotten == 300 + 30 + 1 and result.forgotten_same == 1
    assert len(result.outcomes) == 0
    r = ms("push", "--force", src, dst)  # what --force overwrote is still named
    assert r.code == 0, r.err
    assert "overwrote forced.txt" in r.err and "overwrote theirs.txt" in r.err
    assert "copied 2 entries" in r.err
    entries = ms("init", src, "--json").json()["entries"]
    first = ms("push", src, tmp_path / "new")
    assert f"copied {entries} entries from" in first.err, first.err


def test_a_scan_that_lists_nothing_keeps_no_path(tmp_path: Path) -> None:
    """init's first scan does not hold every path of the tree to print none
    of them; status, which prints them, still gets them all."""
    root = tmp_path / "r"
    make_tree(root, files=40, dirs=4, seed=9)
    with Replica.open(root, create=True) as r:
        report = r.source.scan(r.index, r.replica_id, r.clock, listing=False)
        assert report.added == [] and report.scanned == 44
        assert r.index.root()[1] == 44  # the entries are there
    write(root / "new.txt", "n")
    (root / "d0000").rename(root / "moved")
    r2 = ms("status", root, "--json").json()
    assert "new.txt" in r2["added"] and any(p.startswith("moved/") for p in r2["added"])
    assert any(p.startswith("d0000/") for p in r2["deleted"])


def test_a_file_written_never_gets_setuid_or_setgid_whatever_mode_it_is_given(
    tmp_path: Path,
) -> None:
    """The wire takes modes up to 0o7777 (a peer's entry may say 0o4755):
    the write is where those bits are kept off."""
    import blake3

    from merklesync.sources.file_write import place_new, write_file

    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for name, mode in (("suid", 0o4755), ("sgid", 0o2755), ("both", 0o6755)):
            data = b"#!/bin/sh\nid\n"
            digest = blake3.blake3(data).digest()

            def new(tmp: str, name: str = name) -> None:
                place_new(tmp, name, fd)

            write_file(fd, name, mode, 0, digest, [data], new)
            assert (tmp_path / name).stat().st_mode & 0o7777 == 0o755, name
    finally:
        os.close(fd)


def test_status_and_gc_list_paths_in_order(tmp_path: Path) -> None:
    """As git status lists them: by path, not in the order of the tree's
    hashed keys."""
    root = tmp_path / "r"
    root.mkdir()
    assert ms("init", root).code == 0
    names = [f"f{i:02d}.txt" for i in range(30)]
    for name in names:
        write(root / name, name)
    r = ms("status", root)
    assert r.code == 0, r.err
    assert [line for line in r.lines() if line.startswith("A ")] == [f"A {n}" for n in names]
    for name in names[::2]:
        (root / name).unlink()
    assert ms("status", root, "--json").json()["deleted"] == names[::2]
    r = ms("gc", root, "-n", "--json")  # no other replica: none is waited for
    assert r.code == 0, r.err
    assert r.json()["collected"] == names[::2]


def test_a_file_only_on_the_destination_is_said_so(tmp_path: Path) -> None:
    """Not "a newer version": the source never had it. A push copies and
    never deletes it (exit 1: the replicas still differ), --force neither."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(src / "f", "a")
    ms("init", src)
    assert ms("push", src, dst).code == 0
    write(dst / "extra", "kept")
    for force in ((), ("--force",)):
        r = ms("push", src, dst, *force, "--json")
        assert r.code == 1
        assert r.json()["left_alone"] == [{"path": "extra", "reason": "only on the destination"}]
        assert (dst / "extra").read_text() == "kept"


def _left_alone_and_done(a: Path, b: Path, *options: str) -> tuple[dict[str, str], list[str]]:
    """What a push says it left alone (path: reason, the parent of a
    'not a directory' reason as named) and the paths it says it copied."""
    r = ms("push", "--json", *options, a, b)
    doc = r.json()
    left = {
        x["path"]: "parent not a directory" if "not a directory" in x["reason"] else x["reason"]
        for x in doc["left_alone"]
    }
    done = sorted(c["path"] for c in doc["changes"] if c["path"] not in left)
    return left, done


def test_a_dry_run_foresees_what_the_run_leaves_alone_beyond_the_plan(tmp_path: Path) -> None:
    """Two writes whose failure the plan alone does not show: a directory
    removed (or replaced) that still holds a path the run leaves alone,
    and a write under a path left alone that is no directory on the
    destination. The dry run says what the run then does."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "dd" / "one", "1")
    write(a / "dd" / "sub" / "three", "3")
    write(a / "keep", "k")
    ms("init", a)
    assert ms("push", a, b).code == 0
    for gone in ("dd/one", "dd/sub/three", "dd/sub", "dd"):
        path = a / gone
        path.rmdir() if path.is_dir() else path.unlink()
    write(b / "dd" / "sub" / "two", "only on b")  # keeps dd and dd/sub there
    write(a / "X" / "y", "y")
    write(a / "X" / "Z" / "z", "z")
    write(b / "X", "a file on b")  # X: a conflict, left alone; no X/ to write in
    dry = _left_alone_and_done(a, b, "--dry-run")
    real = _left_alone_and_done(a, b)
    assert dry == real
    assert dry[0] == {
        "X": "conflict: both sides changed it",
        "X/Z": "parent not a directory",
        "X/Z/z": "parent not a directory",
        "X/y": "parent not a directory",
        "dd": "directory is not empty on the destination",
        "dd/sub": "directory is not empty on the destination",
        "dd/sub/two": "only on the destination",
    }
    assert dry[1] == ["dd/one", "dd/sub/three"]


def test_a_forced_write_the_dry_run_foresees_failing_discards_nothing(tmp_path: Path) -> None:
    """--force over a directory that still holds files: the write is left
    alone, so no version "would be lost"; the run says the same."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "f.txt", "base")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    write(a / "x", "a file on a")
    write(b / "x" / "in.txt", "in a directory on b")
    dry = ms("push", "--json", "--dry-run", "--force", a, b)
    real = ms("push", "--json", "--force", a, b)
    assert dry.code == real.code == 1, real.err
    for r in (dry, real):
        assert "would be lost" not in r.err and "discarded" not in r.err, r.err
        assert [x["path"] for x in r.json()["left_alone"]] == ["x", "x/in.txt"]
        assert all("discarded" not in c for c in r.json()["changes"]), r.out


def _renamed_tree(tmp_path: Path, count: int, size: int = 3000) -> tuple[Path, Path]:
    """A source and its copy, then a directory of ``count`` files renamed
    in the source (not yet pushed)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(count):
        write(src / "old" / f"f{i:03}.bin", f"{i:03}" * (size // 3))
    assert ms("init", src).code == 0
    assert ms("push", src, dst).code == 0
    (src / "old").rename(src / "new")
    return src, dst


@pytest.mark.parametrize("leaf_batch", [16_384, 8])
def test_a_rename_is_copied_whichever_batch_brings_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leaf_batch: int
) -> None:
    """The comparison gives its differences in batches (8 leaves at most
    here, so a new path and its old one come apart): the removals, and the
    new files once the destination is seen to hold files, wait for the end
    of the push, and each file finds its old path still there."""
    from merklesync import reconcile

    monkeypatch.setattr(reconcile, "LEAF_BATCH", leaf_batch)
    src, dst = _renamed_tree(tmp_path, 40)
    r = ms("push", src, dst, "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["files_copied"] == 40
    assert r.json()["stats"]["files_transferred"] == 0
    assert_same_tree(src, dst)
    (src / "new").rename(src / "newer")
    r = ms("push", src, dst)
    assert r.code == 0, r.err
    assert "copied 82 entries from" in r.err  # 40 files, a directory made, one removed
    assert "(40 moved: made there from its own files)" in r.err, r.err
    r = ms("sync", dst, src)  # and back: each side renames, the other follows
    (dst / "newer").rename(dst / "newest")
    r = ms("sync", src, dst)
    assert r.code == 0, r.err
    assert "82 copied (40 moved), 0 conflicts settled, 0 left alone" in r.err, r.err
    assert_same_tree(src, dst)


def test_past_the_removals_held_a_push_removes_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded: past HELD_MAX, a removal or a new file is
    written in its own batch (a move found in two batches may be sent)."""
    from merklesync import reconcile, transfer

    monkeypatch.setattr(reconcile, "LEAF_BATCH", 8)
    monkeypatch.setattr(transfer, "HELD_MAX", 3)
    src, dst = _renamed_tree(tmp_path, 40)
    r = ms("push", src, dst, "--json")
    assert r.code == 0, r.err
    stats = r.json()["stats"]
    assert stats["files_copied"] + stats["files_transferred"] == 40
    assert 3 <= stats["files_copied"] < 40
    assert_same_tree(src, dst)


@pytest.mark.parametrize("same_size", [True, False])
def test_a_move_whose_old_file_changed_on_the_destination_is_sent_after_all(
    tmp_path: Path, same_size: bool
) -> None:
    """The file to copy from was edited on the destination after its scan:
    the copy does not match the digest (or the size) and is given up, the
    content is sent instead, and the edit stays (its removal is refused)."""
    from merklesync.peer.local import LocalPeer
    from merklesync.transfer import push

    src, dst = _renamed_tree(tmp_path, 2)
    edit = "x" * 3000 if same_size else "edited"
    with Replica.open(src) as a, Replica.open(dst) as b:
        pa, pb = LocalPeer(a), LocalPeer(b)
        pa.refresh()
        pb.refresh()
        write(dst / "old" / "f000.bin", edit)
        result = push(pa, pb)
    assert (dst / "new" / "f000.bin").read_text() == "000" * 1000
    assert (dst / "new" / "f001.bin").read_text() == "001" * 1000
    assert (dst / "old" / "f000.bin").read_text() == edit
    assert not (dst / "old" / "f001.bin").exists()
    assert pb.stats.files_copied == 1 and pb.stats.files_transferred == 1
    assert not result.outcomes["old/f000.bin"].ok
    assert "changed on the destination" in result.outcomes["old/f000.bin"].reason
    assert result.outcomes["new/f000.bin"].ok


def test_a_copy_is_made_only_from_a_file_the_index_holds_with_that_content(
    tmp_path: Path,
) -> None:
    """What a peer names to copy from is read only where the index holds a
    live file with the item's digest: never the state directory, a file
    behind a link, or a file whose content is another."""
    from merklesync.model import WriteItem
    from merklesync.peer.local import LocalPeer
    from tests.protocol.strategies import file_entry_of

    root, outside = tmp_path / "r", tmp_path / "outside"
    write(outside / "secret.txt", "secret")
    write(root / "a.txt", "public")
    (root / "link").symlink_to(outside)
    assert ms("init", root).code == 0
    index_db = (root / ".merklesync" / "index.db").read_bytes()

    def item(path: str, content: bytes, copy_of: str) -> WriteItem:
        return WriteItem(file_entry_of(path, content), None, None, copy_of)

    with Replica.open(root) as r:
        outcomes = LocalPeer(r).write(
            [
                item("x1", index_db, ".merklesync/index.db"),
                item("x2", b"secret", "link/secret.txt"),
                item("x3", b"secret", "a.txt"),
                item("x4", b"public", "a.txt"),
            ]
        )
    assert [o.ok for o in outcomes] == [False, False, False, True]
    assert "to copy it from" in outcomes[0].reason
    assert not any((root / name).exists() for name in ("x1", "x2", "x3"))
    assert (root / "x4").read_text() == "public"
