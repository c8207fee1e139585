"""One exception root for every failure a user can meet.

Each class carries the exit code the CLI returns for it; the message is the
one line the user sees. A traceback means a bug, never bad input.

Exit codes (also in the man pages, section EXIT STATUS):

==  =====================================================================
0   success; for ``diff``: the replicas hold the same content
1   finished, but differences remain: ``diff`` found differences, or
    ``push``/``pull``/``sync`` left entries alone (conflict, newer version
    on the destination, file changed or unreadable during the run), or a
    scan skipped files or could not read them, or ``repair`` left the
    replicas different (where it left one out: that failure's code)
2   usage error or a generic failure
3   replica state: not a replica, corrupt index, newer format, two
    replicas with the same id
4   replica locked by another process
5   local I/O error: disk full, permission denied, missing source
6   connection: SSH refused, timed out, authentication failed, peer died
7   protocol: the peer sent something malformed, hostile or unexpected
8   host key unknown or changed
==  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_USAGE = 2
EXIT_STATE = 3
EXIT_LOCKED = 4
EXIT_IO = 5
EXIT_CONNECTION = 6
EXIT_PROTOCOL = 7
EXIT_HOSTKEY = 8
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT
EXIT_TERMINATED = 143  # SIGTERM
EXIT_HUNG_UP = 129  # SIGHUP


class MerklesyncError(Exception):
    """Generic failure."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


def reason_about(path: str, message: str) -> str:
    """``message`` without the ``path: `` it starts with, for output that
    names the path in a field of its own (``--json``)."""
    return message.removeprefix(f"{path}: ")


class UsageError(MerklesyncError):
    """Invalid arguments."""

    exit_code = EXIT_USAGE


class ReplicaError(MerklesyncError):
    """Problem with a replica's state."""

    exit_code = EXIT_STATE


class NotAReplica(ReplicaError):
    """Not a merklesync replica (or any of its parent directories)."""


class CorruptIndex(ReplicaError):
    """The replica index is corrupt."""


class ChangeCut(ReplicaError):
    """A change to the replica index was cut short (an interruption or a
    failure in the middle of it): what was recorded since its last commit
    is dropped, and found again by the next scan."""


class NewerFormat(ReplicaError):
    """The replica index was written by a newer merklesync."""


class SameReplicaId(ReplicaError):
    """Two replicas have the same id: one is a copy of the other."""


class ReplicaLocked(MerklesyncError):
    """The replica is locked by another merklesync process."""

    exit_code = EXIT_LOCKED


class LocalIOError(MerklesyncError):
    """A local file operation failed."""

    exit_code = EXIT_IO


class ReadOnlyReplica(LocalIOError):
    """A replica on a read-only file system was to be written."""


class ConnectionFailed(MerklesyncError):
    """Could not reach the peer."""

    exit_code = EXIT_CONNECTION


class RemoteCommandMissing(ConnectionFailed):
    """The merklesync agent could not be started on the remote side."""


class ProtocolError(MerklesyncError):
    """The peer sent a malformed or unexpected message."""

    exit_code = EXIT_PROTOCOL


class UnsafePath(ProtocolError):
    """A path from the peer tries to leave the replica root."""


class HostKeyError(ConnectionFailed):
    """The SSH host key is unknown or has changed."""

    exit_code = EXIT_HOSTKEY
