"""Forked children of merklesync: when one may be forked at all, and that
it goes when its parent goes.

Scan children share the parent's replica lock (the same open file): one
left running after its parent was killed (SIGKILL, or SIGTERM, whose
default action runs no cleanup) would keep the replica locked for a scan
nobody waits for.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

_PR_SET_PDEATHSIG = 1
# Held (blocked) across a fork until the child is inside its try: one that
# arrived in between would unwind the parent's stack in the child (its
# cleanup releasing the parent's lock, which the two share).
HELD_ACROSS_FORK = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def die_with_parent(parent: int) -> None:
    """Call first thing in a child forked by ``parent`` (its pid): the
    kernel sends this process SIGTERM when the parent dies (Linux; elsewhere
    nothing is done); a parent already gone means exit now."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: a libc without it
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
        os._exit(1)


def cores() -> int:
    """The cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere, all cores
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def two_cores() -> bool:
    """A second core to run a child on."""
    return cores() > 1


def can_fork() -> bool:
    """A second core to run a child on, and no other thread (paramiko's,
    a pipe reader's) that fork could catch holding a lock."""
    return two_cores() and threading.active_count() == 1


def spawn_child(code: str, args: Sequence[str], *fds: int) -> subprocess.Popen[bytes] | None:
    """Where a fork would not be safe (other threads): a fresh interpreter
    running ``code`` (``python -c``) with ``args``, then the numbers of
    ``fds`` as it has them (above 2; the only descriptors it inherits),
    then this process's pid (for die_with_parent). None when it cannot be
    started (a frozen build has no interpreter to start).

    Isolated (``-I``): no PYTHON* variables and, above all, not the current
    directory on its path (a pull runs there, among files a peer sent); it
    gets this process's module path instead, where merklesync's own comes
    first. In a process group of its own: a Ctrl-C is for the parent, which
    then stops it. Its stdin, stdout and stderr are /dev/null: whoever
    started it tells what failed."""
    if not sys.executable or getattr(sys, "frozen", False):
        return None
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        here = os.getcwd()
    except OSError:
        here = ""
    path = [package_dir]
    path += [p for p in sys.path if p and os.path.abspath(p) != here and p != package_dir]
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in fds]
    try:
        argv = [sys.executable, "-I", "-c", f"import sys; sys.path[:] = {path!r}; {code}"]
        argv += [*args, *map(str, moved), str(os.getpid())]
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=moved,
            process_group=0,
        )
    except OSError:
        return None
    finally:
        for fd in moved:
            os.close(fd)


def fork_child(work: Callable[..., None], *fds: int) -> int | None:
    """Fork a child that runs ``work(*fds)`` and exits (status 0 when it
    returned, 1 when it raised), running nothing of the parent's: its
    objects are never collected there, every descriptor it inherited but
    ``fds`` and stderr is closed (another child's pipe would never see its
    end; the replica's index and lock are the parent's), stdin and stdout
    are /dev/null, and ``fds`` are moved above 2 first where they were
    below. The parent gets the child's pid; None when fork failed."""
    parent = os.getpid()
    with signals_held() as mask:  # a Ctrl-C after it still reaps the child
        try:
            pid = os.fork()
        except OSError:
            return None
        if pid == 0:
            status = 1
            try:
                gc.freeze()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the command's handler
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                die_with_parent(parent)
                work(*_keep_only(fds))
                status = 0
            finally:
                os._exit(status)
    return pid


@contextlib.contextmanager
def signals_held() -> Iterator[set[signal.Signals | int]]:
    """HELD_ACROSS_FORK blocked in this process for the block (a fork made
    in it); gives the mask before, which a child sets once inside its try."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_ACROSS_FORK)
    try:
        yield mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _keep_only(fds: tuple[int, ...]) -> list[int]:
    """Close every descriptor but ``fds`` and stderr; stdin and stdout
    become /dev/null. Returns ``fds``, moved above 2 where they were below."""
    kept = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) if fd < 3 else fd for fd in fds]
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    keep = set(kept)
    for fd in _open_fds():
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    return kept


def _open_fds() -> list[int]:
    """This process's descriptors: from /proc where there is one (closing
    every possible number can take long where the limit is high)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, min(os.sysconf("SC_OPEN_MAX"), 1 << 16)))
