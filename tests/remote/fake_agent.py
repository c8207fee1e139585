"""A hostile agent for the tests: speaks the framing, lies in its answers.

    python fake_agent.py SCENARIO [serve --stdio ... PATH]

It plays a replica holding one file (``SCENARIO`` decides which lies it
tells) and answers: hello, refresh, children, entries_under, read, write,
remember, bye. The frames are built by hand from lists, so nothing here trusts the
code under test to make them right.
"""

from __future__ import annotations

import os
import sys
import time

import blake3
import msgpack

HEADER = 4
CONTENT = b"the honest content\n"


def frame(obj: object) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return len(payload).to_bytes(HEADER, "big") + payload


def key_of(path: str) -> bytes:
    return blake3.blake3(path.encode()).digest(8)


def entry(path: str, content: bytes = CONTENT, kind: int = 0, target: str = "") -> list[object]:
    digest = blake3.blake3(target.encode() if kind == 2 else content).digest()
    size = len(content) if kind == 0 else 0
    return [path, kind, [["fake0000", 1]], digest, size, 0o644, 10**18, target, False, 5]


def children(entries: list[list[object]]) -> list[object]:
    """The root's 16 children: a count per first hex digit of the keys."""
    counts = [0] * 16
    for e in entries:
        counts[key_of(str(e[0]))[0] >> 4] += 1
    fps = b"".join((bytes([i + 1]) * 8 if counts[i] else bytes(8)) for i in range(16))
    return [[fps, counts]]


class Wire:
    def __init__(self) -> None:
        self.buf = b""

    def send(self, data: bytes) -> None:
        os.write(1, data)

    def recv(self) -> list[object] | None:
        while True:
            if len(self.buf) >= HEADER:
                size = int.from_bytes(self.buf[:HEADER], "big")
                if len(self.buf) >= HEADER + size:
                    obj = msgpack.unpackb(self.buf[HEADER : HEADER + size], raw=False)
                    self.buf = self.buf[HEADER + size :]
                    return obj  # type: ignore[no-any-return]
            data = os.read(0, 1 << 20)
            if not data:
                return None
            self.buf += data


def main(scenario: str) -> None:
    wire = Wire()
    versions = [5, 6] if scenario == "future" else [4, 4]
    wire.send(frame(["merklesync", versions, [], "fake0000", "fake agent 9.0", "/fake"]))
    files = {
        "dotdot": [entry("../../escaped")],
        "absolute": [entry("/tmp/escaped-absolute")],
        "symlink": [entry("evil", kind=2, target="/tmp"), entry("evil/escaped-link")],
        "bad-outcome": [],
        "nested-state": [entry("sub/.merklesync/config")],
        "bigstamp": [[*entry("f.txt")[:9], (1 << 63) - 1]],
        "bigsize": [[*entry("f.txt")[:4], (1 << 64) - 1, *entry("f.txt")[5:]]],
        "setuid": [[*entry("prog")[:5], 0o6755, *entry("prog")[6:]]],
    }.get(scenario, [entry("f.txt")])
    if scenario == "silent":  # hears everything, answers nothing, until the client goes
        while os.read(0, 1 << 16):
            pass
        return
    while True:
        msg = wire.recv()
        if msg is None:
            return
        tag = msg[0]
        if tag == "merklesync":
            continue
        if scenario == "deaf" and tag == "write":  # takes no more of what comes, for a while
            time.sleep(20)
            return
        if scenario == "unknown-op" and tag == "children":
            wire.send(frame(["exec", "rm -rf ~"]))
            continue
        if scenario == "oversized" and tag == "children":
            wire.send((1 << 30).to_bytes(HEADER, "big") + b"\x00" * 64)
            continue
        if scenario == "truncated" and tag == "children":
            wire.send(frame(["ok", children(files)])[:20])
            return
        if scenario == "fanout" and tag == "children":
            # Every node holds ever more: counts that never add up, which
            # would have the client descend without end.
            many = [[bytes([i + 1]) * 8 * 16, [10**12] * 16] for i in range(len(msg[2]))]
            wire.send(frame(["ok", many]))
            continue
        if scenario == "text" and tag == "children":
            wire.send(b"Welcome to the machine!\n")
            continue
        if tag == "refresh":
            wire.send(frame(["ok", [1, 0, [], [], [], []]]))
        elif tag == "children":
            wire.send(frame(["ok", children(files)]))
        elif tag in ("entries_under", "entries"):
            wire.send(frame(["ok", files]))
        elif tag == "read":
            for _e in msg[1]:
                body = b"the evil content!!\n" if scenario == "wrong-digest" else CONTENT
                wire.send(frame(["data", body]) + frame(["end"]))
            wire.send(frame(["done"]))
        elif tag == "write":
            paths = []
            while (item := wire.recv()) is not None and item[0] != "commit":
                if item[0] == "put":
                    paths.append(item[1][0])
            outcomes = [["../../" + p if scenario == "bad-outcome" else p, True, ""] for p in paths]
            wire.send(frame(["ok", outcomes]))
        elif tag == "remember":
            wire.send(frame(["ok", None]))
        elif tag == "bye":
            wire.send(frame(["ok", None]))
            return
        else:
            wire.send(frame(["error", "usage", f"fake agent does not do {tag}"]))


if __name__ == "__main__":
    main(sys.argv[1])
