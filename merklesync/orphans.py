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
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Call first thing in a child forked by ``parent`` (its pid): the
    kernel sends this process SIGTERM when the parent dies (Linux; elsewhere
    nothing is done); a parent already gone means exit now."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: a libc without it
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
        os._exit(1)


def can_fork() -> bool:
    """A second core to run a child on, and no other thread (paramiko's,
    a pipe reader's) that fork could catch holding a lock."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere, all cores
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return cores > 1 and threading.active_count() == 1
