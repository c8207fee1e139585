"""Host keys checked against the known_hosts files as OpenSSH does (hashed
names, patterns, negations, ``@revoked``; a host an ``@cert-authority`` line
covers is refused: host certificates are not checked), and a new key
recorded where asked (``accept-new``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from merklesync.errors import HostKeyError
from merklesync.transport.lazy_invoke import defer_invoke
from merklesync.transport.ssh_config import Target

defer_invoke()  # before paramiko is imported
import paramiko  # noqa: E402


@dataclass(frozen=True)
class KnownKey:
    path: str
    lineno: int
    marker: str | None
    keytype: str
    blob: bytes

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


def pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt_b64, hash_b64 = pattern.split("|", 3)
            salt, expect = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        except (ValueError, TypeError):
            return False
        got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(got, expect)
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()
    )
    return re.fullmatch(regex, name) is not None


def line_matches(hosts_field: str, name: str) -> bool:
    matched = False
    for pattern in hosts_field.split(","):
        negated = pattern.startswith("!")
        if pattern_matches(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            matched = True
    return matched


def known_keys(paths: Iterable[str], name: str) -> list[KnownKey]:
    found: list[KnownKey] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = None
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
            if len(fields) < 3 or not line_matches(fields[0], name):
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except ValueError:
                continue
            found.append(KnownKey(path, lineno, marker, fields[1], blob))
    return found


def host_key_algorithms(preferred: Sequence[str], known_types: set[str]) -> list[str]:
    """Put the algorithms of the key types we already know first (as OpenSSH does)."""

    def known(alg: str) -> bool:
        if alg.startswith("rsa-sha2-"):
            return "ssh-rsa" in known_types
        return alg in known_types

    return [a for a in preferred if known(a)] + [a for a in preferred if not known(a)]


def check_host_key(target: Target, key: paramiko.PKey, accept_new: bool) -> None:
    name = target.known_hosts_name
    entries = known_keys([*target.known_hosts, *target.global_known_hosts], name)
    blob, keytype = key.asbytes(), key.get_name()
    offered = f"{key.algorithm_name} key fingerprint is {key.fingerprint}"
    for e in entries:
        if e.marker == "@revoked" and e.blob == blob:
            raise HostKeyError(f"host key for {name} is REVOKED ({e.where}): {offered}")
    plain = [e for e in entries if e.marker is None]
    if any(e.blob == blob for e in plain):
        return
    authority = next((e for e in entries if e.marker == "@cert-authority"), None)
    if authority is not None:  # never trust on first use what a CA was to vouch for
        raise HostKeyError(
            f"host key for {name} is to be vouched for by a certificate authority "
            f"({authority.where}), and merklesync does not check host certificates: "
            f"add the host's own key ({offered}) to known_hosts to use it"
        )
    same_type = [e for e in plain if e.keytype == keytype]
    if same_type:
        raise HostKeyError(
            f"host key for {name} has CHANGED (possible man-in-the-middle attack): "
            f"{offered}, but {same_type[0].where} holds a different one; "
            f"if the change is expected, delete that line"
        )
    if plain:
        raise HostKeyError(
            f"host key for {name} has CHANGED: the server offered {offered}, but "
            f"{plain[0].where} holds a {plain[0].keytype} key for it; "
            f"if the change is expected, delete that line"
        )
    record_in = target.known_hosts[0] if target.known_hosts else None
    if not accept_new or record_in is None:
        raise HostKeyError(
            f"host key for {name} is not known: {offered}; if it is right, re-run "
            f"with --accept-new-host-key to record it in {record_in or 'known_hosts'}"
        )
    record_host_key(record_in, name, key, target.hash_known_hosts)


def record_host_key(path: str, name: str, key: paramiko.PKey, hashed: bool) -> None:
    if hashed:
        salt = os.urandom(20)
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        with open(path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode())
    except OSError as exc:
        raise HostKeyError(f"cannot record the host key in {path}: {exc.strerror}") from exc
