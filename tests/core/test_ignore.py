"""Ignore rules as a replica applies them: what is never part of a replica,
and --exclude's patterns under a directory left out."""

from __future__ import annotations

from pathlib import Path

from merklesync.ignore import IgnoreRules, exclude_predicate
from merklesync.sources.listing import TEMP_PREFIX


def test_temp_files_of_a_write_are_never_part_of_a_replica(tmp_path: Path) -> None:
    rules = IgnoreRules(tmp_path)
    assert rules.ignored(f"{TEMP_PREFIX}123-456-f.txt", False)
    assert rules.ignored(f"d/{TEMP_PREFIX}1-2-x", False)
    assert rules.ignored(".merklesync", True) and rules.ignored("d/.merklesync", True)
    assert not rules.ignored("d/f.txt", False)


def test_an_excluded_directory_cannot_have_paths_taken_back_below_it() -> None:
    """As in git: a '!' pattern does not take back what is under a
    directory left out."""
    include = exclude_predicate(["secret/", "!secret/keep/"])
    assert not include("secret/keep/x.txt", False)
    assert not include("secret/keep", True)
    assert include("public/x.txt", False)
