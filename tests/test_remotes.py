"""Named remotes (merklesync remote): names, what is stored, and a config
edited by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from merklesync import remotes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "r" / ".merklesync").mkdir(parents=True)
    return tmp_path / "r"


def test_a_name_is_at_most_64_characters() -> None:
    assert remotes.is_name("a" * 64)
    assert not remotes.is_name("a" * 65)


def test_a_local_url_is_stored_absolute(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)
    remotes.add(root, remotes.Remote("bk", "../bk"))
    monkeypatch.chdir("/")
    url = remotes.load(root)["bk"].url
    assert os.path.isabs(url) and url == str((tmp_path / "bk").resolve())
    remotes.add(root, remotes.Remote("far", "host:rel/path"))
    assert remotes.load(root)["far"].url == "host:rel/path"  # the remote's own, as given


def test_a_section_without_url_is_passed_over(root: Path) -> None:
    (root / ".merklesync" / "config").write_text(
        '[remote "half"]\nremote-cmd = x\n[remote "o"]\nurl = h:x\nremote-cmd =\n'
    )
    assert remotes.load(root) == {"o": remotes.Remote("o", "h:x", None)}
