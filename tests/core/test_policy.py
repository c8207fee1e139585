"""The conflict policy's pure parts: which rule a path gets, the version of
a same-content merge, and conflict-copy names both ways."""

from __future__ import annotations

from merklesync.clock import VersionVector
from merklesync.model import Entry, EntryKind
from merklesync.policy import (
    NAME_MAX,
    Policy,
    Rules,
    conflict_name,
    maybe_shortened,
    merged_version,
    original_of,
    parse_attributes,
    split_name,
)

STAMP = 1_700_000_000 * 10**9


def test_the_last_matching_attribute_wins_as_in_gitattributes() -> None:
    rules = Rules(sets=[parse_attributes("* conflict=union\n*.bin conflict=keep-both\n")])
    assert rules.for_path("data.bin") is Policy.KEEP_BOTH
    assert rules.for_path("notes.txt") is Policy.UNION


def test_a_same_content_merge_gives_one_version_whichever_side_computes_it() -> None:
    def entry(writer: str, stamp: int) -> Entry:
        return Entry(
            "f", EntryKind.FILE, VersionVector.of({writer: 1}), b"d" * 32, 1, 0o644, 0,
            stamp=stamp, origin=writer,
        )  # fmt: skip

    a, b = entry("A", 100), entry("B", 200)
    x, y = merged_version(a, b), merged_version(b, a)
    assert (x.vv, x.stamp, x.origin) == (y.vv, y.stamp, y.origin) == (a.vv.merge(b.vv), 200, "B")


def test_a_dotfile_has_no_extension_and_its_copy_is_found() -> None:
    assert split_name(".bashrc") == (".bashrc", "", "")
    copy = conflict_name(".bashrc", "abc123", STAMP)
    assert copy.startswith(".bashrc.conflict-abc123-")
    assert original_of(copy) == (".bashrc", "abc123", copy.rsplit("-", 1)[1])


def test_a_name_shortened_to_fit_is_known_as_maybe_shortened() -> None:
    """Cut on a character boundary, a copy's name can end up to 3 bytes
    short of NAME_MAX (3-byte characters here: 254 bytes)."""
    copy = conflict_name("\u65e5" * 100 + ".txt", "abc12", STAMP)
    assert NAME_MAX - 3 <= len(copy.encode()) < NAME_MAX
    assert maybe_shortened(copy)
    assert not maybe_shortened(conflict_name("short.txt", "abc12", STAMP))


def test_names_that_only_look_like_conflict_copies_are_not() -> None:
    for name in (
        "notes.conflict-draft-v2.txt",  # no time
        "a.conflict-x-20240101T1200000.txt",  # a time one digit too long
        "report.conflict-alice-20240101T120000-final.pdf",  # -<n> not a number
    ):
        assert original_of(name) is None, name
    assert original_of("report.conflict-alice-20240101T120000-2.pdf") == (
        "report.pdf",
        "alice",
        "20240101T120000",
    )


def test_a_writer_id_from_a_peer_cannot_shape_the_copy_name() -> None:
    """A replica id from a peer may hold any printable character: in a
    copy's name it never makes a directory, nor breaks the name apart."""
    copy = conflict_name("d/f.txt", "x/../../y-z.w", STAMP)
    assert copy.startswith("d/f.conflict-x_______y_z_w-") and copy.count("/") == 1
    parsed = original_of(copy)
    assert parsed is not None and parsed[:2] == ("d/f.txt", "x_______y_z_w")


def test_replicas_whose_attributes_differ_for_a_path_leave_it_to_the_default() -> None:
    both = parse_attributes("*.txt conflict=union\n*.bin conflict=lww\n")
    older = parse_attributes("*.bin conflict=lww\n")
    rules = Rules(Policy.KEEP_BOTH, None, [both, older])
    assert rules.for_path("data.bin") is Policy.LWW  # the same word from both
    assert rules.for_path("notes.txt") is Policy.KEEP_BOTH  # union from one only
    assert rules.for_path("other") is Policy.KEEP_BOTH
    assert Rules(Policy.LWW, None, [both, []]).for_path("notes.txt") is Policy.LWW
