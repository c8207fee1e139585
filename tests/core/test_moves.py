"""Writes held until the end of a run (transfer.Moves), against a destination
that a real file system here cannot stand for: one that ignores case."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from merklesync.clock import VersionVector
from merklesync.model import Entry, Outcome, WriteItem
from merklesync.transfer import Moves, Op
from tests.protocol.strategies import file_entry_of

IN_THE_WAY = "an unscanned file is in the way on the destination"


class CaseBlindPeer:
    """A destination whose names ignore case, as on macOS or Windows: a file
    is refused where a name equal but for case is there already (as
    file_write.place_new refuses one in the way)."""

    local = True
    copies_locally = True

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def write(self, items: Iterable[WriteItem], progress: object = None) -> list[Outcome]:
        out = []
        for item in items:
            path = item.entry.path
            if item.entry.deleted:
                del self.files[path]
                out.append(Outcome(path, True))
                continue
            content = b"".join(item.data) if item.data is not None else None
            if item.copy_of is not None:
                content = self.files.get(item.copy_of)
            taken = [n for n in self.files if n.casefold() == path.casefold() and n != path]
            if taken or content is None:
                out.append(Outcome(path, False, IN_THE_WAY))
                continue
            self.files[path] = content
            out.append(Outcome(path, True))
        return out


class Source:
    """The source side: each file's content, by path."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def read(self, entries: Sequence[Entry]) -> Iterator[tuple[Entry, list[bytes]]]:
        for entry in entries:
            yield entry, [self.files[entry.path]]


def test_a_name_changed_in_case_alone_is_written_once_its_old_name_is_gone() -> None:
    """readme -> README on a file system that ignores case: the held new
    file finds the old name in its way until the held removal has gone,
    then is written after all (without it, the run would leave neither)."""
    content = b"the same bytes"
    old, new = file_entry_of("readme", content), file_entry_of("README", content)
    gone = old.tombstone(VersionVector.of({"0123456789abcdef": 2}), 5)
    dst = CaseBlindPeer({"readme": content})
    source = Source({"README": content})
    moves = Moves()
    assert moves.hold(Op(gone, old))
    assert moves.hold(Op(new, None, source, new))  # type: ignore[arg-type]
    outcomes: dict[str, Outcome] = {}
    moves.release(dst, outcomes, None)  # type: ignore[arg-type]
    assert dst.files == {"README": content}
    assert outcomes["README"].ok and outcomes["readme"].ok
