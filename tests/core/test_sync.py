"""Two-way sync between local replicas: propagation, conflicts, policies."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from merklesync.replica import Replica
from tests.clirun import ms
from tests.treegen import assert_same_tree, make_tree, mutate


def files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".merklesync" not in p.parts
    }


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "shared.txt").write_text("base\n")
    (a / "keep.txt").write_text("keep\n")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    return a, b


def test_changes_on_both_sides_travel_both_ways(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=40, dirs=5, seed=5)
    ms("init", a)
    assert ms("sync", a, b).code == 0
    assert_same_tree(a, b)
    mutate(a, modify=3, add=2, delete=2, seed=1)
    mutate(b, modify=0, add=3, delete=0, seed=2)
    assert ms("sync", a, b).code == 0
    assert_same_tree(a, b)
    again = ms("sync", a, b, "--json").json()
    assert again["events"] == [] and again["stats"]["round_trips"] == 1


def test_keep_both_is_the_default_and_deterministic(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert "conflict: shared.txt: keep-both" in r.err
    fa, fb = files(a), files(b)
    assert fa == fb
    copies = [p for p in fa if p.startswith("shared.conflict-") and p.endswith(".txt")]
    assert len(copies) == 1
    assert {fa["shared.txt"], fa[copies[0]]} == {"from a\n", "from b\n"}
    assert ms("sync", a, b, "--json").json()["events"] == []
    assert ms("diff", a, b).code == 0


@pytest.mark.parametrize(
    ("policy", "expected"), [("local", "from a\n"), ("remote", "from b\n"), ("lww", "from b\n")]
)
def test_one_side_wins_policies(pair: tuple[Path, Path], policy: str, expected: str) -> None:
    a, b = pair
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")  # written last: lww picks it
    r = ms("sync", a, b, "--on-conflict", policy)
    assert r.code == 0, r.err
    assert files(a) == files(b)
    assert files(a)["shared.txt"] == expected
    assert "discarded the version" in r.err


def test_modification_beats_deletion(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (a / "shared.txt").unlink()
    (b / "shared.txt").write_text("edited\n")
    r = ms("sync", a, b)
    assert r.code == 0
    assert "modify-delete: shared.txt: the modification on b wins" in r.err
    assert files(a)["shared.txt"] == "edited\n" == files(b)["shared.txt"]


def test_deletion_travels(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (b / "keep.txt").unlink()
    assert ms("sync", a, b).code == 0
    assert "keep.txt" not in files(a)


def test_union_merges_the_cart(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (a / "cart.json").write_text(json.dumps({"items": ["coffee"]}))
    assert ms("sync", a, b).code == 0
    (a / "cart.json").write_text(json.dumps({"items": ["coffee", "MacBook"]}))
    (b / "cart.json").write_text(json.dumps({"items": ["coffee", "iPhone"]}))
    r = ms("sync", a, b, "--on-conflict", "union")
    assert r.code == 0, r.err
    for side in (a, b):
        items = json.loads((side / "cart.json").read_text())["items"]
        assert sorted(items) == ["MacBook", "coffee", "iPhone"]


def test_attributes_choose_the_policy_per_path(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (a / ".merklesyncattributes").write_text("*.txt conflict=local\n")
    assert ms("sync", a, b).code == 0
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    assert ms("sync", a, b).code == 0
    assert files(b)["shared.txt"] == "from a\n"


def test_dry_run_changes_nothing(pair: tuple[Path, Path]) -> None:
    """On either side: changes both ways, a conflict, a deletion."""
    a, b = pair
    (a / "new.txt").write_text("n")
    (b / "from-b.txt").write_text("b")
    (a / "shared.txt").write_text("a side\n")
    (b / "shared.txt").write_text("b side\n")
    (b / "keep.txt").unlink()
    before = files(a), files(b)
    r = ms("sync", a, b, "--dry-run")
    assert r.code == 0
    assert "a->b A new.txt" in r.out and "b->a A from-b.txt" in r.out
    assert "b->a D keep.txt" in r.out
    assert (files(a), files(b)) == before


def test_a_merge_that_fails_keeps_both_and_says_so_in_the_exit_status(
    pair: tuple[Path, Path],
) -> None:
    """The policy asked could not settle the conflict: both versions are
    kept, a warning says why (under --quiet too) and the status is 1, so
    that cron tells."""
    a, b = pair
    for n, (args, said) in enumerate(
        [
            (("--on-conflict", "union"), "cannot merge by union; kept both"),
            (("--on-conflict", "merge-cmd", "--merge-cmd", "false"), "merge command failed"),
        ]
    ):
        (a / "image.bin").write_bytes(b"\0a%d" % n)
        (b / "image.bin").write_bytes(b"\0b%d" % n)
        r = ms("sync", "-q", a, b, *args)
        assert r.code == 1 and said in r.err, r.err
        assert files(a) == files(b)
        assert ms("sync", a, b).code == 0  # settled: both kept


def test_conflict_between_file_and_directory_keeps_both(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (a / "shared.txt").unlink()
    (a / "shared.txt").mkdir()
    (a / "shared.txt" / "inner").write_text("i")
    (b / "shared.txt").write_text("file edit\n")
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert files(a) == files(b)
    assert (b / "shared.txt").is_dir()
    assert "file edit\n" in files(b).values()


@pytest.mark.parametrize("policy", ["remote", "lww"])
def test_a_file_that_wins_over_a_directory_still_holding_entries_says_where_it_went(
    pair: tuple[Path, Path], policy: str
) -> None:
    """The policy picks B's file, but A's directory holds entries: the
    directory stays, the file becomes a conflict copy, and the run says
    that (not that A's version was discarded)."""
    a, b = pair
    (a / "shared.txt").unlink()
    (a / "shared.txt").mkdir()
    (a / "shared.txt" / "inner").write_text("i")
    (b / "shared.txt").write_text("file edit\n")  # the later write
    later = time.time_ns() + 2_000_000_000
    os.utime(b / "shared.txt", ns=(later, later))
    r = ms("sync", a, b, "--on-conflict", policy, "--json")
    assert r.code == 0, r.err
    [event] = [e for e in r.json()["events"] if e["path"] == "shared.txt"]
    assert event["what"] == "conflict" and "discarded" not in event["detail"]
    assert event["detail"].startswith(
        "the directory still holds entries: it stays; the file that wanted its place goes to "
        "shared.conflict-"
    )
    assert files(a) == files(b)
    assert "file edit\n" in files(b).values() and (b / "shared.txt" / "inner").exists()


def _conflicted(pair: tuple[Path, Path]) -> tuple[Path, Path]:
    a, b = pair
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    assert ms("sync", a, b).code == 0
    return a, b


def test_conflicts_lists_copies_with_their_writer_and_when(tmp_path: Path) -> None:
    """Each copy with the replica that wrote its version and when: the
    version's time (in the copy's name), not the copy's own making."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "shared.txt").write_text("base\n")
    day_ago = time.time() - 86_400
    os.utime(a / "shared.txt", (day_ago, day_ago))
    assert ms("init", a).code == 0
    assert ms("sync", a, b).code == 0
    when = time.time() - 7200  # the losing version: B's, two hours ago
    (b / "shared.txt").write_text("from b\n")
    os.utime(b / "shared.txt", (when, when))
    (a / "shared.txt").write_text("from a\n")
    assert ms("sync", a, b).code == 0
    r = ms("conflicts", a, "--json")
    assert r.code == 1
    [c] = r.json()["conflicts"]
    assert c["path"] == "shared.txt" and c["copy"].startswith("shared.conflict-")
    written = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    assert c["written"] == written and c["copy"].endswith(f"-{written}.txt")
    line = ms("conflicts", b).lines()[0]
    assert line.startswith("shared.txt\tshared.conflict-")
    assert line.endswith(time.strftime(" at %Y-%m-%d %H:%M:%S UTC", time.gmtime(when))), line


@pytest.mark.parametrize("take", ["local", "remote", "both", "union"])
def test_resolve_then_sync_settles_everywhere(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, take: str
) -> None:
    a, b = _conflicted(pair)
    monkeypatch.chdir(a)
    r = ms("resolve", "--all", "--take", take)
    assert r.code == 0, r.err
    assert ms("conflicts", a).code == 0
    assert ms("sync", a, b).code == 0
    assert files(a) == files(b)
    texts = files(a)
    if take == "local":
        assert texts["shared.txt"] == "from a\n"
    elif take == "remote":
        assert texts["shared.txt"] == "from b\n"
    elif take == "union":
        assert texts["shared.txt"] in ("from a\nfrom b\n", "from b\nfrom a\n")
    else:
        assert sorted(texts.values()).count("from a\n") == 1
        assert sorted(texts.values()).count("from b\n") == 1
    assert not any(".conflict-" in p for p in texts)


def test_resolve_finds_the_replica_from_the_paths_named(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Named from outside the replica (here, the directory that holds both
    replicas), a path is settled in the replica that holds it; the other
    replica's copy is untouched."""
    a, b = _conflicted(pair)
    monkeypatch.chdir(a.parent)
    r = ms("resolve", Path(a.name) / "shared.txt", "--take", "local")
    assert r.code == 0, r.err
    assert files(a)["shared.txt"] == "from a\n"
    assert not any(".conflict-" in p for p in files(a))
    assert any(".conflict-" in p for p in files(b))
    monkeypatch.chdir(b / "..")
    r = ms("resolve", Path(a.name) / "nothing.txt", "--take", "local")
    assert r.code == 2 and "no conflict copies of nothing.txt" in r.err


def test_resolve_needs_paths_or_all(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pair[0])
    assert ms("resolve", "--take", "local").code == 2
    r = ms("resolve", "nothing.txt", "--take", "local")
    assert r.code == 2 and "no conflict copies of nothing.txt" in r.err


def test_a_copy_whose_name_was_shortened_is_settled_for_its_own_file(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its name leaves no room for the whole original's: the conflict copy
    # holds a shortened one, and resolve must not write that as a new file.
    a, b = pair
    name = "n" * 240 + ".txt"
    (a / name).write_text("base\n")
    assert ms("sync", a, b).code == 0
    (a / name).write_text("from a\n")
    (b / name).write_text("from b\n")
    assert ms("sync", a, b).code == 0
    [c] = ms("conflicts", a, "--json").json()["conflicts"]
    assert c["path"] == name and len(c["copy"].encode()) <= 255
    monkeypatch.chdir(a)
    r = ms("resolve", "--all", "--take", "local")
    assert r.code == 0, r.err
    ours = {p: text for p, text in files(a).items() if p.startswith("nnn")}
    assert ours == {name: "from a\n"}  # no copy left, no file made under a shortened name
    assert ms("sync", a, b).code == 0
    assert files(a) == files(b)


def test_resolve_all_settles_what_it_can_and_says_what_it_cannot(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    (a / "notes.txt").write_text("a\n")
    (b / "notes.txt").write_text("b\n")
    (a / "image.bin").write_bytes(b"\0a")
    (b / "image.bin").write_bytes(b"\0b")
    assert ms("sync", a, b).code == 0
    monkeypatch.chdir(a)
    r = ms("resolve", "--all", "--take", "union", "--json")
    assert r.code == 1, r.err
    assert "not resolved: image.bin: not text or JSON; cannot merge by union" in r.err
    out = r.json()
    assert out["failed"] == [
        {"path": "image.bin", "reason": "not text or JSON; cannot merge by union"}
    ]
    [merged] = [step for step in out["done"] if step["action"] == "merge"]
    assert merged["target"] == "notes.txt" and merged["path"].startswith("notes.conflict-")
    assert sorted((a / "notes.txt").read_text().splitlines()) == ["a", "b"]
    [left] = ms("conflicts", a, "--json").json()["conflicts"]
    assert left["path"] == "image.bin"


def test_warning_past_the_cap_of_conflict_copies(pair: tuple[Path, Path]) -> None:
    a, b = pair
    for round_ in range(6):
        (a / "shared.txt").write_text(f"a{round_}\n")
        (b / "shared.txt").write_text(f"b{round_}\n")
        r = ms("sync", a, b)
        assert r.code == (1 if round_ == 5 else 0), r.err  # past the cap: a warning, exit 1
    assert "shared.txt has 6 conflict copies" in r.err
    assert len([p for p in files(a) if ".conflict-" in p]) == 6


def test_winner_is_not_written_where_the_copy_failed(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from merklesync.peer import Outcome
    from merklesync.sources import directory

    a, b = pair
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    real = directory.DirectorySource.write_items

    def refuse_copies(self, items, index, clock):  # type: ignore[no-untyped-def]
        for item in items:
            if ".conflict-" in item.entry.path:
                yield item, Outcome(item.entry.path, False, "disk says no")
            else:
                yield from real(self, [item], index, clock)

    monkeypatch.setattr(directory.DirectorySource, "write_items", refuse_copies)
    r = ms("sync", a, b, "--json")
    monkeypatch.undo()
    assert r.code == 1
    [unresolved] = r.json()["unresolved"]
    assert unresolved["path"] == "shared.txt" and "could not be written" in unresolved["reason"]
    assert [e["ok"] for e in r.json()["events"] if e["path"] == "shared.txt"] == [False]
    # Nothing was lost: each side still has its own version.
    assert (a / "shared.txt").read_text() == "from a\n"
    assert (b / "shared.txt").read_text() == "from b\n"
    assert ms("sync", a, b).code == 0
    assert sorted(v for p, v in files(a).items() if p.startswith("shared")) == [
        "from a\n",
        "from b\n",
    ]


def test_a_failure_on_one_side_is_not_hidden_by_success_on_the_other(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from merklesync.peer import Outcome
    from merklesync.sources import directory

    a, b = pair
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    real = directory.DirectorySource.write_items

    def refuse_copies_on_b(self, items, index, clock):  # type: ignore[no-untyped-def]
        for item in items:
            if ".conflict-" in item.entry.path and self.root == b.resolve():
                yield item, Outcome(item.entry.path, False, "disk says no")
            else:
                yield from real(self, [item], index, clock)

    monkeypatch.setattr(directory.DirectorySource, "write_items", refuse_copies_on_b)
    r = ms("sync", a, b, "--json")
    monkeypatch.undo()
    assert r.code == 1, r.err
    assert any("disk says no" in f["reason"] for f in r.json()["left_alone"])
    # Nothing lost meanwhile: a holds both versions, b its own.
    assert sorted(v for p, v in files(a).items() if p.startswith("shared")) == [
        "from a\n",
        "from b\n",
    ]
    assert (b / "shared.txt").read_text() == "from b\n"
    assert ms("sync", a, b).code == 0
    assert sorted(v for p, v in files(b).items() if p.startswith("shared")) == [
        "from a\n",
        "from b\n",
    ]


@pytest.mark.parametrize("take", ["local", "remote", "both", "union"])
def test_resolve_with_several_copies(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, take: str
) -> None:
    a, b = pair
    for round_ in range(3):
        (a / "shared.txt").write_text(f"a{round_}\n")
        (b / "shared.txt").write_text(f"b{round_}\n")
        assert ms("sync", a, b).code == 0
    before = sorted(v for p, v in files(a).items() if p.startswith("shared"))
    assert len(before) == 4
    monkeypatch.chdir(a)
    r = ms("resolve", "shared.txt", "--take", take)
    assert r.code == 0, r.err
    after = files(a)
    assert not any(".conflict-" in p for p in after)
    if take == "local":
        assert after["shared.txt"] == "a2\n"  # the newest version a wrote
    elif take == "remote":
        assert after["shared.txt"] == "b2\n"
    elif take == "union":
        assert sorted(after["shared.txt"].splitlines()) == sorted(x.strip() for x in before)
    else:  # every version kept, none overwritten
        assert sorted(v for p, v in after.items() if p.startswith("shared")) == before
    assert ms("sync", a, b).code == 0
    assert files(a) == files(b)


def test_keep_both_for_files_larger_than_memory_merges(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from merklesync import merge as merge_module

    monkeypatch.setattr(merge_module, "MAX_MERGE_BYTES", 10)  # everything is "large" now
    a, b = pair
    (a / "shared.txt").write_text("a large version\n" * 100)
    (b / "shared.txt").write_text("b large version\n" * 100)
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert files(a) == files(b)
    texts = sorted(v for p, v in files(a).items() if p.startswith("shared"))
    assert texts == ["a large version\n" * 100, "b large version\n" * 100]


@pytest.mark.parametrize("name", ["n" * 250 + ".txt", "x." + "e" * 250, "é" * 127])
def test_keep_both_on_a_long_name_keeps_the_copy_within_255_bytes(
    tmp_path: Path, name: str
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / name).write_text("base\n")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    (a / name).write_text("from a\n")
    (b / name).write_text("from b\n")
    (a / "other").write_text("travels too\n")
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    fa, fb = files(a), files(b)
    assert fa == fb and fb["other"] == "travels too\n"
    copies = [p for p in fa if ".conflict-" in p]
    assert len(copies) == 1 and len(copies[0].encode()) <= 255
    assert {fa[name], fa[copies[0]]} == {"from a\n", "from b\n"}


def test_union_never_reads_through_a_link(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The name now holds a link (to a file outside the replica): its
    target is not a version to merge, and nothing of it lands in the tree."""
    a, _b = _conflicted(pair)
    secret = tmp_path / "secret"
    secret.write_text("not for the replicas\n")
    (a / "shared.txt").unlink()
    (a / "shared.txt").symlink_to(secret)
    monkeypatch.chdir(a)
    r = ms("resolve", "shared.txt", "--take", "union")
    assert r.code == 2, r.err
    assert "not a file to merge (a symbolic link)" in r.err and "Traceback" not in r.err
    assert (a / "shared.txt").is_symlink()
    assert not any(
        "not for the replicas" in p.read_text()
        for p in a.rglob("*.txt")
        if p.is_file() and not p.is_symlink()
    )


@pytest.mark.parametrize(
    ("policy", "b_deletes"),
    [
        ("keep-both", False),
        ("lww", False),
        ("union", False),
        ("local", False),
        ("remote", False),
        ("lww", True),
        ("keep-both", True),
    ],
)
def test_an_edit_made_during_a_sync_that_settles_a_conflict_is_kept(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, policy: str, b_deletes: bool
) -> None:
    """A's file changes after the scan, before the sync writes anything.
    Whatever the policy, the edit is kept on A, the next sync carries it to
    B (as a change after the resolution, or concurrent with B's version:
    a resolution that would replace A's content is refused on A, and B must
    not take it either), and a third changes nothing."""
    from merklesync.sources import directory

    a, b = pair
    (a / "shared.txt").write_text("from a\n")
    if b_deletes:
        (b / "shared.txt").unlink()
    else:
        (b / "shared.txt").write_text("from b\n")
    precious = "a's edit made during the sync\n"
    real = directory.DirectorySource.write_items
    edited: list[bool] = []

    def edit_a_first(self, items, index, clock):  # type: ignore[no-untyped-def]
        if not edited:
            edited.append(True)
            (a / "shared.txt").write_text(precious)
        yield from real(self, items, index, clock)

    monkeypatch.setattr(directory.DirectorySource, "write_items", edit_a_first)
    ms("sync", a, b, "--on-conflict", policy)
    monkeypatch.undo()
    assert edited and (a / "shared.txt").read_text() == precious
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert files(a) == files(b)
    assert precious in files(b).values()
    assert ms("sync", a, b, "--json").json()["events"] == []


def test_keep_both_makes_one_copy_when_the_winner_cannot_be_written(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's version keeps the name, but A changes before it is written: the
    run's second pass does not copy b's version a second time."""
    from merklesync.sources import directory

    a, b = pair
    (b / "shared.txt").write_text("from b\n")
    _ns(b / "shared.txt", time.time_ns() - 100 * 10**9)
    (a / "shared.txt").write_text("from a, the later write\n")
    real = directory.DirectorySource.write_items

    def edit_a_before_its_winner(self, items, index, clock):  # type: ignore[no-untyped-def]
        for item in items:
            if item.entry.path == "shared.txt" and self.root == a.resolve():
                (a / "shared.txt").write_text("a's edit made during the sync\n")
            yield from real(self, [item], index, clock)

    monkeypatch.setattr(directory.DirectorySource, "write_items", edit_a_before_its_winner)
    r = ms("sync", a, b)
    monkeypatch.undo()
    assert r.code == 1, r.err
    for side in (a, b):
        copies = [v for p, v in files(side).items() if ".conflict-" in p]
        assert copies == ["from b\n"], side
    assert (b / "shared.txt").read_text() == "from b\n"


@pytest.mark.parametrize("policy", ["lww", "remote"])
def test_a_file_winning_over_an_empty_directory_is_settled_in_one_run(
    pair: tuple[Path, Path], policy: str
) -> None:
    a, b = pair
    (a / "shared.txt").unlink()
    (a / "shared.txt").mkdir()
    (b / "shared.txt").write_text("file edit, the later write\n")
    r = ms("sync", a, b, "--on-conflict", policy)
    assert r.code == 0, r.err
    assert files(a) == files(b) and files(a)["shared.txt"] == "file edit, the later write\n"
    assert ms("sync", a, b, "--json").json()["events"] == []


def _ns(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def test_lww_a_modification_made_after_a_deletion_wins(pair: tuple[Path, Path]) -> None:
    """The deletion happened no later than its directory last changed; the
    scan that finds it comes later, and is not when it happened."""
    a, b = pair
    (a / "shared.txt").unlink()
    deleted_by = os.stat(a).st_ctime_ns
    (b / "shared.txt").write_text("edited after the deletion\n")
    _ns(b / "shared.txt", deleted_by + 1)
    r = ms("sync", a, b, "--on-conflict", "lww")
    assert r.code == 0, r.err
    assert "the modification on b wins" in r.err
    assert files(a)["shared.txt"] == "edited after the deletion\n" == files(b)["shared.txt"]


def test_lww_a_modification_made_before_a_deletion_loses(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (b / "shared.txt").write_text("edited before the deletion\n")
    _ns(b / "shared.txt", os.stat(a).st_ctime_ns - 1)
    (a / "shared.txt").unlink()
    r = ms("sync", a, b, "--on-conflict", "lww")
    assert r.code == 0, r.err
    assert "the deletion on a wins" in r.err
    assert "shared.txt" not in files(a) and "shared.txt" not in files(b)


def test_lww_a_file_edited_after_its_directory_was_removed_wins(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "d").mkdir(parents=True)
    (a / "d/f").write_text("f\n")
    (a / "d/h").write_text("h\n")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    shutil.rmtree(a / "d")
    deleted_by = os.stat(a).st_ctime_ns
    (b / "d/f").write_text("edited after d was removed\n")
    _ns(b / "d/f", deleted_by + 1)
    r = ms("sync", a, b, "--on-conflict", "lww")
    assert r.code == 0, r.err
    assert "modify-delete: d/f: the modification on b wins" in r.err
    assert files(a) == files(b) == {"d/f": "edited after d was removed\n"}
    assert ms("sync", a, b, "--json").json()["events"] == []


def _two_conflicts(tmp_path: Path) -> tuple[Path, Path]:
    """x.txt after two conflicts: the first won by b's R1 (a's L1 kept as a
    copy), the second by a's L2, its newest (b's R2 kept as a copy)."""
    a, b = tmp_path / "a", tmp_path / "b"
    now = time.time_ns()
    a.mkdir()
    (a / "x.txt").write_text("v0\n")
    _ns(a / "x.txt", now - 30 * 10**9)
    ms("init", a)
    assert ms("sync", a, b).code == 0
    for side, text, ago in ((a, "L1 (a, old)\n", 20), (b, "R1 (b)\n", 10)):
        (side / "x.txt").write_text(text)
        _ns(side / "x.txt", now - ago * 10**9)
    assert ms("sync", a, b).code == 0
    assert (a / "x.txt").read_text() == "R1 (b)\n"
    for side, text, ago in ((a, "L2 (a, newest)\n", 0), (b, "R2 (b)\n", 60)):
        (side / "x.txt").write_text(text)
        _ns(side / "x.txt", now - ago * 10**9)
    assert ms("sync", a, b).code == 0
    assert (a / "x.txt").read_text() == "L2 (a, newest)\n"
    assert sorted(files(a).values()) == sorted(["L1 (a, old)\n", "L2 (a, newest)\n", "R2 (b)\n"])
    return a, b


@pytest.mark.parametrize(
    ("side", "take", "expected"),
    [
        ("a", "local", "L2 (a, newest)\n"),
        ("a", "remote", "R2 (b)\n"),
        ("b", "local", "R2 (b)\n"),
        ("b", "remote", "L2 (a, newest)\n"),
    ],
)
def test_resolve_takes_the_newest_version_of_the_side_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: str, take: str, expected: str
) -> None:
    a, b = _two_conflicts(tmp_path)
    monkeypatch.chdir(a if side == "a" else b)
    r = ms("resolve", "x.txt", "--take", take)
    assert r.code == 0, r.err
    here = files(a if side == "a" else b)
    assert here == {"x.txt": expected}
    assert ms("sync", a, b).code == 0
    assert files(a) == files(b) == {"x.txt": expected}


def test_resolve_local_keeps_an_edit_made_here_since_the_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _a, b = _two_conflicts(tmp_path)
    (b / "x.txt").write_text("edited on b after the conflicts\n")
    monkeypatch.chdir(b)
    assert ms("resolve", "x.txt", "--take", "local").code == 0
    assert files(b) == {"x.txt": "edited on b after the conflicts\n"}


def test_resolve_stopped_on_the_way_then_run_again_takes_the_same_copy(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies from the other side; `--take remote` chooses the newer.
    Stopped after its first removal (a signal, a crash), then run again,
    it must choose that one again: the older copy is no candidate by then."""
    a = _two_copies_by_one_writer(pair)
    monkeypatch.chdir(a)
    real_unlink = Path.unlink

    def stopped(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "unlink", stopped)
    assert ms("resolve", "shared.txt", "--take", "remote").code == 130
    monkeypatch.setattr(Path, "unlink", real_unlink)
    r = ms("resolve", "shared.txt", "--take", "remote")
    assert r.code == 0, r.err
    assert (a / "shared.txt").read_text() == "b, round 2\n"
    assert ms("conflicts", a).code == 0


def test_resolve_stopped_after_removing_a_copy_has_made_its_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keeps the name's version (B's, under --take remote) and is stopped
    right after removing the copy: its choice is recorded all the same (the
    name's new version comes before any copy goes), so B's opposite choice
    meets it as a conflict, as after a run that ended; it was lost, with
    nothing left to settle, and B's choice silently undid it."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "f.txt").write_text("base\n")
    assert ms("init", a).code == 0
    assert ms("sync", a, b).code == 0
    (a / "f.txt").write_text("edit on a\n")
    (b / "f.txt").write_text("edit on b, later\n")
    assert ms("sync", a, b).code == 0  # B's later edit keeps the name on both
    real_unlink = Path.unlink

    def stopped(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "unlink", stopped)
    assert ms("resolve", "--take", "remote", a / "f.txt").code == 130
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert ms("conflicts", a).lines() == []  # nothing left to settle here
    assert ms("resolve", "--take", "remote", b / "f.txt").code == 0  # B takes A's edit
    done = ms("sync", a, b, "--json")
    assert done.code == 0, done.err
    assert "conflict" in {e["what"] for e in done.json()["events"]}


@pytest.mark.parametrize("take", ["local", "remote"])
def test_resolve_stopped_after_recording_its_choice_chooses_the_same_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, take: str
) -> None:
    """The name's new version is recorded before any copy goes; stopped
    right then, and run again, resolve must see the same side on the name
    (the version keeps its content's writer as origin: given this
    replica's, it took the older copy of the other side over the newest)."""
    a, b = _two_conflicts(tmp_path)
    expected = {"local": "R2 (b)\n", "remote": "L2 (a, newest)\n"}[take]

    def stopped(self: Path, missing_ok: bool = False) -> None:
        raise KeyboardInterrupt  # before the first copy goes

    monkeypatch.setattr(Path, "unlink", stopped)
    assert ms("resolve", b / "x.txt", "--take", take).code == 130
    monkeypatch.undo()
    assert (b / "x.txt").read_text() == expected
    assert ms("resolve", b / "x.txt", "--take", take).code == 0
    assert files(b) == {"x.txt": expected}
    assert ms("sync", a, b).code == 0
    assert files(a) == files(b) == {"x.txt": expected}


def test_a_deletion_sent_to_a_replica_that_never_had_the_path_is_no_copy(
    tmp_path: Path,
) -> None:
    """As push says it: the tombstone travels (so an old copy from a third
    replica cannot bring the file back there), and is neither listed nor
    counted as a file copied."""
    a, n = tmp_path / "a", tmp_path / "n"
    a.mkdir()
    (a / "f").write_text("f")
    (a / "g").write_text("g")
    assert ms("init", a).code == 0
    (a / "g").unlink()
    assert ms("status", a).code == 0
    r = ms("sync", "-v", a, n)
    assert r.code == 0, r.err
    assert r.lines() == ["a->b A f"] and "1 copied" in r.err, (r.out, r.err)
    with Replica.open(n) as replica:
        assert [e.path for e in replica.index.iter_entries() if e.deleted] == ["g"]


def _two_copies_by_one_writer(pair: tuple[Path, Path]) -> Path:
    """Two conflict copies of shared.txt in A, both of B's versions."""
    a, b = pair
    for n in (1, 2):
        (b / "shared.txt").write_text(f"b, round {n}\n")
        (a / "shared.txt").write_text(f"a, round {n}\n")  # the later write keeps the name
        assert ms("sync", a, b).code == 0
    assert len(ms("conflicts", a).lines()) == 2
    return a


def test_resolve_take_both_dry_run_names_what_the_run_then_makes(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _two_copies_by_one_writer(pair)
    monkeypatch.chdir(a)
    dry = ms("resolve", "-n", "shared.txt", "--take", "both").lines()
    assert len({line.rpartition(" as ")[2] for line in dry}) == 2, dry
    assert all(line.startswith("would keep ") for line in dry), dry
    done = ms("resolve", "shared.txt", "--take", "both").lines()
    assert done == [line.replace("would keep ", "kept ", 1) for line in dry]


def test_resolve_take_both_stopped_after_a_link_makes_no_second_name(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked to its new name, stopped before the copy was removed: run
    again, the copy is found kept already, not kept a second time."""
    a = _two_copies_by_one_writer(pair)
    monkeypatch.chdir(a)
    real_unlink = os.unlink

    def stopped(path: str | Path, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "unlink", stopped)
    assert ms("resolve", "shared.txt", "--take", "both").code == 130
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert ms("resolve", "shared.txt", "--take", "both").code == 0
    texts = sorted(p.read_text() for p in a.iterdir() if p.is_file())
    assert texts == ["a, round 2\n", "b, round 1\n", "b, round 2\n", "keep\n"], texts


def _ids(a: Path, b: Path, id_a: str, id_b: str) -> None:
    """Make A and B (empty, new) replicas with the given ids."""
    for root, rid in ((a, id_a), (b, id_b)):
        root.mkdir()
        assert ms("init", root).code == 0
        with Replica.open(root) as replica:
            replica.index.set_meta("replica_id", rid)
            replica.index.commit()


@pytest.mark.parametrize("stop", ["before the move", "after the move"])
def test_resolve_stopped_then_run_again_takes_what_it_chose_whatever_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """Copies from both sides, the name changed here since: `--take remote`
    chooses B's newest copy. Stopped before or after moving it onto the
    name, then run again, it must end the same (the choice is judged by the
    newest copy, which must stay until the chosen one is on the name)."""
    import os as os_module

    from merklesync import conflicts

    a, b = tmp_path / "a", tmp_path / "b"
    _ids(a, b, "f" * 16, "0" * 16)  # B's id first: its versions win ties of writer
    (a / "f").write_text("base\n")
    assert ms("sync", a, b).code == 0
    for first, second, n in ((a, b, 1), (b, a, 2), (a, b, 3)):
        (first / "f").write_text(f"{first.name}{n}\n")
        (second / "f").write_text(f"{second.name}{n}\n")  # the later write keeps the name
        assert ms("sync", a, b).code == 0
    (a / "f").write_text("a, edited since\n")
    monkeypatch.chdir(a)
    real_replace, real_unlink = os_module.replace, Path.unlink
    moved: list[bool] = []

    def replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if str(dst).endswith("/f") and stop == "before the move":
            raise KeyboardInterrupt
        real_replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]
        moved.append(str(dst).endswith("/f"))

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if any(moved):
            raise KeyboardInterrupt
        real_unlink(self, missing_ok)

    monkeypatch.setattr(conflicts.os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    assert ms("resolve", "f", "--take", "remote").code == 130
    monkeypatch.setattr(conflicts.os, "replace", real_replace)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    r = ms("resolve", "f", "--take", "remote")
    assert r.code == 0, r.err
    assert (a / "f").read_text() == "b2\n"
    assert ms("conflicts", a).code == 0


def test_resolve_a_symlink_settles_the_link_not_what_it_points_at(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`resolve lnk` is about the link in conflict; the file it points at,
    in a conflict of its own, is left as it is."""
    a, b = pair
    (a / "lnk").symlink_to("old")
    assert ms("sync", a, b).code == 0
    for root, target, text in ((a, "shared.txt", "from a\n"), (b, "./shared.txt", "from b\n")):
        (root / "shared.txt").write_text(text)
        (root / "lnk").unlink()
        (root / "lnk").symlink_to(target)
    assert ms("sync", a, b).code == 0
    assert len(ms("conflicts", a).lines()) == 2
    monkeypatch.chdir(a)
    r = ms("resolve", "lnk", "--take", "remote")
    assert r.code == 0, r.err
    [left] = ms("conflicts", a).lines()
    assert left.startswith("shared.txt\t")


def test_a_byte_order_mark_is_no_part_of_the_first_attribute_rule(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / ".merklesyncattributes").write_bytes(b"\xef\xbb\xbf*.txt conflict=local\n")
    (a / "f.txt").write_text("base\n")
    assert ms("init", a).code == 0
    assert ms("sync", a, b).code == 0
    (b / "f.txt").write_text("from b\n")
    (a / "f.txt").write_text("from a, later\n")
    (b / "f.txt").write_text("from b, later still\n")
    assert ms("sync", a, b).code == 0
    assert (a / "f.txt").read_text() == (b / "f.txt").read_text() == "from a, later\n"
    assert ms("conflicts", a).code == 0


def test_a_conflict_copy_in_conflict_itself_is_settled_with_it(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy edited on both sides gets a copy of its own
    (``NAME.conflict-X-T1.conflict-Y-T2.EXT``): listed as a copy of the
    first copy, and `resolve --all` settles both, leaving no conflict."""
    a, b = pair
    hour_ago = time.time() - 3600  # the first conflict's versions: long before the second's
    for side, text in ((a, "from a\n"), (b, "from b\n")):
        (side / "shared.txt").write_text(text)
        os.utime(side / "shared.txt", (hour_ago, hour_ago))
    assert ms("sync", a, b).code == 0
    (first,) = [p.name for p in a.glob("shared.conflict-*")]
    (a / first).write_text("copy edited on a\n")
    (b / first).write_text("copy edited on b\n")
    assert ms("sync", a, b).code == 0
    listed = {c["copy"]: c["path"] for c in ms("conflicts", a, "--json").json()["conflicts"]}
    (nested,) = [c for c in listed if c != first]
    assert listed == {first: "shared.txt", nested: first}
    monkeypatch.chdir(a)
    assert ms("resolve", "--all", "--take", "local").code == 0
    assert ms("conflicts", a).code == 0
    assert sorted(p.name for p in a.iterdir() if p.name != ".merklesync") == [
        "keep.txt",
        "shared.txt",
    ]


def test_a_sync_that_lists_nothing_lets_go_of_its_plain_copies(tmp_path: Path) -> None:
    """Without -v or --json, each plain copy, once written, is only counted
    (a first sync of millions of files holds no object per file); the
    conflicts, their copies and what failed are kept, and the summary is
    the same."""
    from merklesync.peer.local import LocalPeer
    from merklesync.sync import sync

    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, files=200, dirs=20, seed=11)
    make_tree(b, files=0, dirs=0)
    (b / "only-b.txt").write_text("b")
    (a / "both.txt").write_text("from a\n")
    (b / "both.txt").write_text("from b\n")
    for root in (a, b):
        assert ms("init", root).code == 0
    with Replica.open(a) as ra, Replica.open(b) as rb:
        result = sync(LocalPeer(ra), LocalPeer(rb), keep_done=False)
    assert result.forgotten_copies == 200 + 20 + 1  # a's files and directories, b's file
    assert {e.path for e in result.events} == {"both.txt"}  # the conflict
    conflict_copy = [p.name for p in a.glob("both.conflict-*")]
    assert len(conflict_copy) == 1
    assert_same_tree(a, b)
    assert set(result.outcomes_a) | set(result.outcomes_b) <= {"both.txt", conflict_copy[0]}
    c = tmp_path / "c"
    r = ms("sync", a, c)
    assert r.code == 0, r.err
    entries = ms("status", a, "--json").json()["entries"]
    assert f"synced {a} and {c}: {entries} copied, 0 conflicts settled, 0 left alone" in r.err


def test_a_second_pass_counts_each_copy_once(tmp_path: Path) -> None:
    """On A a directory becomes a file while B adds files in it: the first
    pass's copies into it fail, the second pass makes them. The summary
    counts each once, listed (-v) or not."""
    said = []
    for verbose in ((), ("-v",)):
        base = tmp_path / f"run{len(said)}"
        a, b = base / "a", base / "b"
        (a / "d").mkdir(parents=True)
        for i in range(10):
            (a / "d" / f"x{i}").write_text(f"x{i}")
        assert ms("init", a).code == 0 and ms("sync", a, b).code == 0
        shutil.rmtree(a / "d")
        (a / "d").write_text("now a file")
        for i in range(5):
            (b / "d" / f"new{i}").write_text(f"new{i}")
        r = ms("sync", *verbose, a, b)
        assert r.code == 0, r.err
        assert_same_tree(a, b)
        said.append(next(line for line in r.err.splitlines() if line.startswith("synced")))
        if verbose:
            listed = [line for line in r.out.splitlines() if line[:4] in ("a->b", "b->a")]
            assert f"synced {a} and {b}: {len(listed)} copied" in said[-1], (said, r.out)
    assert said[0].split(": ")[1] == said[1].split(": ")[1], said


def test_what_a_sync_could_not_write_is_neither_listed_nor_counted_as_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that did not go (its content could not be read) is listed as
    left alone, not as done: -v leaves it out, the count of copies too,
    and --json says it did not go."""
    from merklesync.model import Entry, Unreadable
    from merklesync.sources.directory import DirectorySource

    read = DirectorySource.read

    def unreadable_k(self: DirectorySource, entry: Entry) -> object:
        if entry.path == "k.txt":
            return Unreadable("cannot read: Permission denied")
        return read(self, entry)

    def edited_apart(where: Path) -> tuple[Path, Path]:
        a, b = where / "a", where / "b"
        a.mkdir(parents=True)
        (a / "k.txt").write_text("keep\n")
        ms("init", a)
        assert ms("sync", a, b).code == 0
        (a / "new.txt").write_text("new\n")
        (b / "k.txt").write_text("edited on b\n")
        return a, b

    listed, as_json = edited_apart(tmp_path / "listed"), edited_apart(tmp_path / "json")
    monkeypatch.setattr(DirectorySource, "read", unreadable_k)
    r = ms("sync", *listed, "-v")
    assert r.code == 1, r.err
    assert r.out.splitlines() == ["a->b A new.txt"]
    assert "left alone: k.txt: cannot read: Permission denied" in r.err
    assert "1 copied, 0 conflicts settled, 1 left alone" in r.err
    r = ms("sync", *as_json, "--json")
    events = sorted(r.json()["events"], key=lambda e: e["path"])
    assert events == [
        {"path": "k.txt", "what": "b->a", "detail": "M", "ok": False},
        {"path": "new.txt", "what": "a->b", "detail": "A", "ok": True},
    ]


def test_a_directory_kept_for_what_it_holds_is_not_reported_deleted(tmp_path: Path) -> None:
    """A deleted a directory whose other side gained a file: the directory
    stays on both sides, with the file, and the run says so; it does not
    also say it deleted the directory."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "d").mkdir(parents=True)
    (a / "d" / "f").write_text("1\n")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    shutil.rmtree(a / "d")
    (b / "d" / "new").write_text("2\n")
    r = ms("sync", a, b, "--json")
    assert r.code == 0, r.err
    events = {(e["path"], e["what"]): e for e in r.json()["events"]}
    assert ("d", "a->b") not in events
    assert events[("d", "conflict")]["detail"] == (
        "the directory still holds entries: it stays; the deletion is not made"
    )
    assert events[("d/new", "b->a")]["ok"] is True
    assert files(a) == files(b) == {"d/new": "2\n"}
    r = ms("sync", a, b, "-v")
    assert r.code == 0 and r.out == "", (r.out, r.err)


@pytest.mark.parametrize("policy", ["keep-both", "union", "lww"])
def test_a_change_of_mode_on_each_side_makes_no_copy_of_the_same_bytes(
    pair: tuple[Path, Path], policy: str
) -> None:
    """Only the permission bits differ: the later change wins everywhere,
    and no conflict copy holds the very same bytes again."""
    a, b = pair
    os.chmod(a / "shared.txt", 0o600)
    os.chmod(b / "shared.txt", 0o755)  # the later change
    later = time.time_ns() + 2_000_000_000
    os.utime(b / "shared.txt", ns=(later, later))
    r = ms("sync", a, b, "--on-conflict", policy, "--json")
    assert r.code == 0, r.err
    events = r.json()["events"]
    assert [(e["path"], e["what"]) for e in events] == [("shared.txt", "conflict")]
    assert "mode only: kept 0755" in events[0]["detail"]
    assert files(a) == files(b) == {"keep.txt": "keep\n", "shared.txt": "base\n"}
    for side in (a, b):
        assert (side / "shared.txt").stat().st_mode & 0o777 == 0o755
    assert ms("sync", a, b, "--json").json()["events"] == []


def test_a_change_of_mode_with_local_keeps_the_first_replicas_mode(
    pair: tuple[Path, Path],
) -> None:
    a, b = pair
    os.chmod(a / "shared.txt", 0o600)
    os.chmod(b / "shared.txt", 0o755)
    assert ms("sync", a, b, "--on-conflict", "local").code == 0
    assert (b / "shared.txt").stat().st_mode & 0o777 == 0o600
    assert ms("diff", a, b).code == 0


def test_conflicts_and_resolve_name_what_their_scan_skipped(pair: tuple[Path, Path]) -> None:
    """As status: a file the scan skips is named, and the exit status is 1."""
    a, b = pair
    os.mkfifo(a / "pipe")
    r = ms("conflicts", a, "--json")
    assert r.code == 1
    assert r.json()["conflicts"] == [] and "pipe" in r.json()["warnings"][0]
    assert "pipe" in ms("conflicts", a).err
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    ms("sync", a, b)
    r = ms("resolve", a / "shared.txt", "--take", "local", "--json")
    assert r.code == 1, r.err
    assert r.json()["done"] and "pipe" in r.json()["warnings"][0]


def test_two_replicas_that_settle_a_conflict_differently_meet_as_a_conflict(
    pair: tuple[Path, Path],
) -> None:
    """Each replica keeps its own version: B's is under the name already
    (nothing written), A takes its copy onto the name (a write). Neither
    choice silently undoes the other: the next sync finds them concurrent,
    and keep-both keeps both versions."""
    a, b = _conflicted(pair)  # B's version, the later one, keeps the name
    assert ms("resolve", a / "shared.txt", "--take", "local").code == 0
    assert files(a)["shared.txt"] == "from a\n"
    assert ms("resolve", b / "shared.txt", "--take", "local").code == 0
    assert files(b)["shared.txt"] == "from b\n"
    r = ms("sync", a, b, "--json")
    assert r.code == 0, r.err
    assert [e["what"] for e in r.json()["events"] if e["path"] == "shared.txt"] == ["conflict"]
    texts = files(a)
    assert files(b) == texts
    assert sorted(t for t in texts.values() if t.startswith("from")) == ["from a\n", "from b\n"]
    assert ms("sync", a, b, "--json").json()["events"] == []


def test_a_merge_met_by_an_edit_during_the_sync_is_left_alone_and_said_once(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """The merge command runs while A's file is edited: the merge is not
    written on A (changed since the scan), and the second pass cannot read
    A's version as scanned either. The conflict is left for the next run,
    said once as such: not also as a merge done, nor as a failed one."""
    a, b = pair
    (a / "shared.txt").write_text("from a\n")
    (b / "shared.txt").write_text("from b\n")
    script = tmp_path / "merge.sh"
    script.write_text(
        f'#!/bin/sh\necho "edited during the sync" >> {a / "shared.txt"}\ncat "$2" >> "$1"\n'
    )
    script.chmod(0o755)
    r = ms("sync", a, b, "--on-conflict", "merge-cmd", "--merge-cmd", f"{script} %A %B", "--json")
    assert r.code == 1, r.err
    doc = r.json()
    assert [(u["path"], "since the scan" in u["reason"]) for u in doc["unresolved"]] == [
        ("shared.txt", True)
    ]
    assert doc["merges_failed"] == []
    assert not [e for e in doc["events"] if e["path"] == "shared.txt" and "merged" in e["detail"]]
    assert (a / "shared.txt").read_text() == "from a\nedited during the sync\n"
    assert (b / "shared.txt").read_text() == "from b\n"
    r = ms("sync", a, b)
    assert r.code == 0, r.err
    assert files(a) == files(b)


def test_union_never_merges_a_version_read_short(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's version arrives cut short (as from an agent whose file grew as
    it was read: some data, then "gone"): the merge would hold a line
    neither side ever had, under a digest of its own. It is not made; the
    conflict waits for the next run, which merges the versions whole."""
    from merklesync.model import Unreadable
    from merklesync.peer.local import LocalPeer

    a, b = pair
    (a / "shared.txt").write_text("base\nfrom a\n")
    (b / "shared.txt").write_text("base\nfrom b\n")
    real = LocalPeer.read

    def cut_short(self, entries):  # type: ignore[no-untyped-def]
        for entry, chunks in real(self, entries):
            if self.replica.root == b.resolve() and not isinstance(chunks, Unreadable):
                chunks = iter([b"".join(chunks)[:7]])  # "base\nfr"
            yield entry, chunks

    monkeypatch.setattr(LocalPeer, "read", cut_short)
    r = ms("sync", a, b, "--on-conflict", "union", "--json")
    monkeypatch.undo()
    assert r.code == 1, r.err
    assert [u["path"] for u in r.json()["unresolved"]] == ["shared.txt"]
    assert (a / "shared.txt").read_text() == "base\nfrom a\n"
    assert (b / "shared.txt").read_text() == "base\nfrom b\n"
    assert ms("sync", a, b, "--on-conflict", "union").code == 0
    merged = (a / "shared.txt").read_text()
    assert merged == (b / "shared.txt").read_text()
    assert sorted(merged.splitlines()) == ["base", "from a", "from b"]


def test_a_merge_written_on_one_side_only_is_still_said(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The union is written on A; B's write fails, once. The second pass
    copies A's merged version to B, and the run still says it merged: what
    happened on A is not lost from the report."""
    from merklesync.peer import Outcome
    from merklesync.sources import directory

    a, b = pair
    (a / "shared.txt").write_text("base\nfrom a\n")
    (b / "shared.txt").write_text("base\nfrom b\n")
    real = directory.DirectorySource.write_items
    refused: list[str] = []

    def refuse_once_on_b(self, items, index, clock):  # type: ignore[no-untyped-def]
        for item in items:
            if self.root == b.resolve() and not refused:
                refused.append(item.entry.path)
                yield item, Outcome(item.entry.path, False, "disk says no")
            else:
                yield from real(self, [item], index, clock)

    monkeypatch.setattr(directory.DirectorySource, "write_items", refuse_once_on_b)
    r = ms("sync", a, b, "--on-conflict", "union", "--json")
    monkeypatch.undo()
    assert refused == ["shared.txt"]
    assert r.code == 0, r.err
    said = [(e["what"], e["detail"]) for e in r.json()["events"] if e["path"] == "shared.txt"]
    assert any(what == "conflict" and "union" in detail for what, detail in said), said
    assert files(a) == files(b)
    assert sorted((b / "shared.txt").read_text().splitlines()) == ["base", "from a", "from b"]


@pytest.mark.parametrize("replaced_by", [None, "a file"])
def test_a_dry_run_foresees_a_directory_that_stays_for_what_it_still_holds(
    tmp_path: Path, replaced_by: str | None
) -> None:
    """A deletes dd (or puts a file in its place) while B adds to it: the
    run keeps dd on both sides (a conflict); the dry run said it would
    delete (or replace) it, and counted the copy."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "dd" / "sub").mkdir(parents=True)
    (a / "dd" / "one").write_text("1")
    (a / "dd" / "sub" / "three").write_text("3")
    ms("init", a)
    assert ms("sync", a, b).code == 0
    shutil.rmtree(a / "dd")
    if replaced_by is not None:
        (a / "dd").write_text(replaced_by)
    (b / "dd" / "sub" / "two").write_text("2")
    dry, real = (ms("sync", "--json", *extra, a, b) for extra in (["--dry-run"], []))
    assert dry.code == real.code == 0, real.err
    done = [{k: v for k, v in e.items() if k != "ok"} for e in real.json()["events"]]
    assert dry.json()["events"] == done
    assert dry.err.replace("would sync", "synced") == real.err
    kept = {e["path"] for e in real.json()["events"] if "still holds entries" in e["detail"]}
    assert kept == {"dd", "dd/sub"} if replaced_by is None else {"dd"}
