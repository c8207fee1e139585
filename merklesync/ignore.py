"""Which paths a replica leaves out: `.merklesyncignore` files (gitignore
syntax, in any directory, relative to it) and `--exclude` patterns."""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from merklesync.errors import UsageError
from merklesync.reading import read_file

if TYPE_CHECKING:
    import pathspec


def compile_patterns(lines: Sequence[str]) -> pathspec.PathSpec[Any]:
    """gitignore-style patterns (pathspec is imported only when needed)."""
    import pathspec

    try:
        with warnings.catch_warnings():  # re's FutureWarning on "[[": its pattern, no news
            warnings.simplefilter("ignore", FutureWarning)
            return pathspec.GitIgnoreSpec.from_lines(list(lines))
    except (ValueError, TypeError, re.error) as exc:  # re.error: "[z-a]" and the like
        raise UsageError(f"bad pattern: {exc}") from exc


IGNORE_FILE = ".merklesyncignore"
STATE_DIR = ".merklesync"
TEMP_PREFIX = ".merklesync-tmp-"
# A temp file's whole name: the prefix, its writer's pid, a clock, then
# (part of) the name it is written for (see file_write.temp_name). A name
# that only begins with the prefix is a file like any other.
_TEMP_NAME = re.compile(r"\.merklesync-tmp-([0-9]{1,10})-[0-9]+-")
MAX_IGNORE_BYTES = 1 << 20
# Why an ignore file holds no rules, as documented: there is none (or it
# is a dangling link), it is no regular file (a FIFO, a socket: ENXIO, a
# device), it is too large. Any other error (no permission, an I/O error,
# no file descriptor left) means its rules are not known.
_NO_RULES = (
    errno.ENOENT,
    errno.ENOTDIR,
    errno.ELOOP,
    errno.EINVAL,
    errno.EFBIG,
    errno.EAGAIN,
    errno.ENXIO,
    errno.ENODEV,
)


def read_rules(path: Path) -> bytes:
    """An ignore file's bytes (a symlink is followed). Only a regular file
    of at most MAX_IGNORE_BYTES counts, not a FIFO (its reading would never
    end) nor a device (/dev/zero would never end either): OSError otherwise."""
    return read_file(path, follow=True, limit=MAX_IGNORE_BYTES)


class IgnoreRules:
    def __init__(self, root: Path, excludes: Sequence[str] = ()) -> None:
        self.root = root
        self._specs: dict[str, pathspec.PathSpec[Any] | None] = {}
        self._texts: dict[str, bytes] = {}  # the ignore files read, as read
        self._rules: dict[str, Callable[[str, bool], bool] | None] = {}
        self._excludes = compile_patterns(excludes) if excludes else None
        # Directories whose ignore file is there but cannot be read (no
        # permission, an I/O error), with why: what it would leave out is
        # not known, so everything in them is (see unread).
        self._unread: dict[str, str] = {}
        # Directories whose ignore file is a symlink or has other hard
        # links: edited through another name, it changes without an event
        # in the tree, where a watcher would see it.
        self.volatile: set[str] = set()

    def start_over(self) -> None:
        """Forget the ignore files read: the next look reads them again."""
        self._specs.clear()
        self._unread.clear()
        self._texts.clear()
        self._rules.clear()
        self.volatile.clear()

    @property
    def looked_at(self) -> set[str]:
        """The directories whose ignore file was looked for since start_over."""
        return set(self._specs)

    def _spec(self, directory: str) -> pathspec.PathSpec[Any] | None:
        if directory not in self._specs:
            path = self.root / directory / IGNORE_FILE if directory else self.root / IGNORE_FILE
            spec = None
            try:
                text = read_rules(path)
                # A BOM is no part of the first rule (git skips it too).
                spec = compile_patterns(text.decode("utf-8-sig", "replace").splitlines())
                self._texts[directory] = text
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode) or st.st_nlink > 1:
                    self.volatile.add(directory)
            except OSError as exc:
                if exc.errno not in _NO_RULES:
                    rel = f"{directory}/{IGNORE_FILE}" if directory else IGNORE_FILE
                    self._unread[directory] = f"{rel}: cannot read: {exc.strerror or exc}"
            except UsageError:
                pass
            self._specs[directory] = spec
        return self._specs[directory]

    def unread(self, directory: str) -> str | None:
        """Why the rules in force in ``directory`` are not known (an ignore
        file there or above it that cannot be read), or None. Everything in
        such a directory is left out of runs, and a scan keeps what it knew
        of it: files the rules were meant to keep out never leave. Call
        ``for_directory`` first."""
        if not self._unread:
            return None
        parts = directory.split("/") if directory else []
        for depth in range(len(parts) + 1):
            why = self._unread.get("/".join(parts[:depth]))
            if why is not None:
                return why
        return None

    def signature(self, directory: str) -> bytes:
        """What the ignore files in force in ``directory`` say (empty when
        none is): a listing judged under other rules must not pass as seen.
        Call ``for_directory`` first."""
        parts = directory.split("/") if directory else []
        said = b""
        for depth in range(len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if self._specs.get(prefix) is not None:
                text = self._texts[prefix]
                said += f"{prefix}\0{len(text)}\0".encode() + text
        return said

    def for_directory(
        self, directory: str, *, has_file: bool | None = None
    ) -> Callable[[str, bool], bool] | None:
        """A fast ``ignored`` for the paths directly inside ``directory``
        (beyond the state directory and temp files, which the caller skips);
        None when no rule applies there. ``has_file``: whether the caller's
        listing of ``directory`` holds an ignore file (None: look)."""
        if has_file is False:
            self._specs[directory] = None  # no need to try opening it
        elif has_file and directory in self._specs and self._specs[directory] is None:
            del self._specs[directory]  # none when listed before: there is one now
        parts = directory.split("/") if directory else []
        chain: list[tuple[int, pathspec.PathSpec[Any]]] = []
        for depth in range(len(parts) + 1):
            prefix = "/".join(parts[:depth])
            spec = self._spec(prefix)
            if spec is not None:
                chain.append((len(prefix) + 1 if prefix else 0, spec))
        if self.unread(directory) is not None:
            return _everything
        excludes = self._excludes
        if excludes is None and not chain:
            return None
        judged = _judge(chain)

        def ignored(rel: str, is_dir: bool) -> bool:
            probe = rel + "/" if is_dir else rel
            if excludes is not None and excludes.match_file(probe):
                return True
            return judged(probe)

        return ignored

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """True when ``rel`` (a relative POSIX path) is left out: by a rule,
        or because a directory above it is. As in git, and as a scan, which
        never enters a directory left out: a rule that takes a path under
        one back in (``!dir/keep`` after ``dir/``) does not bring it back."""
        directory, _, name = rel.rpartition("/")
        if _reserved(name):
            return True
        # One lookup per directory, not per path.
        rules = self._rules[directory] if directory in self._rules else self._learn(directory)
        return rules is not None and rules(rel, is_dir)

    def _learn(self, directory: str) -> Callable[[str, bool], bool] | None:
        """The rules for the paths in ``directory``: everything is left out
        where a directory is."""

        def learn(
            below: str, above: Callable[[str, bool], bool] | None
        ) -> Callable[[str, bool], bool] | None:
            name = below.rpartition("/")[2]
            out = bool(below) and (_reserved(name) or (above is not None and above(below, True)))
            return _everything if out else self.for_directory(below)

        return _down_to(self._rules, directory, learn)

    @property
    def has_excludes(self) -> bool:
        """True when command-line --exclude patterns are in force."""
        return self._excludes is not None

    def excluded_by_option(self, rel: str, is_dir: bool) -> bool:
        """True when only a command-line --exclude leaves ``rel`` out."""
        probe = rel + "/" if is_dir else rel
        return self._excludes is not None and self._excludes.match_file(probe)


V = TypeVar("V")


def _down_to(known: dict[str, V], directory: str, learn: Callable[[str, V | None], V]) -> V:
    """What ``known`` says of ``directory``; where it says nothing yet,
    learned for the directories above it first, each once:
    ``learn(directory, what is known of its parent)`` (None for the root)."""
    todo = [directory]
    while todo[-1] and (parent := todo[-1].rpartition("/")[0]) not in known:
        todo.append(parent)
    for below in reversed(todo):
        if below not in known:
            known[below] = learn(below, known[below.rpartition("/")[0]] if below else None)
    return known[directory]


def _judge(chain: list[tuple[int, pathspec.PathSpec[Any]]]) -> Callable[[str], bool]:
    """Whether the ignore files in force leave a path out: ``chain``, from
    the root down, holds each one with the length of its directory's prefix
    in the paths it judges. As in git, the deepest one with a rule for the
    path decides."""
    if len(chain) == 1:
        cut, spec = chain[0]
        return lambda probe: spec.match_file(probe[cut:])
    deepest_first = chain[::-1]

    def judged(probe: str) -> bool:
        for cut, spec in deepest_first:
            said = spec.check_file(probe[cut:]).include  # None: no rule matches
            if said is not None:
                return said
        return False

    return judged


def temp_writer(name: str) -> int | None:
    """The pid of the process that writes the temp file ``name``; None
    when ``name`` is no temp file's."""
    found = _TEMP_NAME.match(name) if name.startswith(TEMP_PREFIX) else None
    return int(found.group(1)) if found else None


def _reserved(name: str) -> bool:
    """The state directory, and temp files: never part of a replica."""
    return name == STATE_DIR or temp_writer(name) is not None


def _everything(rel: str, is_dir: bool) -> bool:
    """The rules of a directory left out: everything in it is."""
    return True


def exclude_predicate(excludes: Sequence[str]) -> Callable[[str, bool], bool]:
    """A filter for paths in a plan: False for what --exclude leaves out,
    a path under a directory it leaves out too (see IgnoreRules.ignored)."""
    if not excludes:
        return lambda path, is_dir: True
    spec = compile_patterns(excludes)
    left_out = {"": False}  # by directory

    def learn(below: str, above: bool | None) -> bool:
        return bool(above) or spec.match_file(below + "/")

    def include(path: str, is_dir: bool) -> bool:
        if _down_to(left_out, path.rpartition("/")[0], learn):
            return False
        return not spec.match_file(path + "/" if is_dir else path)

    return include
