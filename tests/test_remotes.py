"""Named remotes (merklesync remote): names, what is stored, and a config
edited by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from merklesync import remotes
from merklesync.errors import UsageError


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


@pytest.mark.parametrize(
    ("url", "cmd"),
    [
        ('h:/r1\n[remote "inj"]\nurl = /tmp', None),
        ("h:/r1\r", None),
        (" h:/r1", None),
        ("h:/r1", "merklesync\nserve"),
        ("h:/r1", "merklesync "),
    ],
)
def test_a_value_that_would_not_read_back_as_given_is_refused(
    root: Path, url: str, cmd: str | None
) -> None:
    """A newline made one remote read as several lines in `remote list`
    (and a value of several in the config); the config drops spaces at
    either end."""
    with pytest.raises(UsageError, match="no control characters, nor spaces at either end"):
        remotes.add(root, remotes.Remote("evil", url, cmd))
    assert remotes.load(root) == {}
