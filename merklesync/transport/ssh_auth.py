"""Authentication by public key: ssh-agent's keys and the IdentityFiles, in
OpenSSH's order (passwords and keyboard-interactive are not used: runs are
unattended)."""

from __future__ import annotations

import base64
import contextlib
import os
from dataclasses import dataclass

from merklesync.errors import ConnectionFailed
from merklesync.transport.lazy_invoke import defer_invoke
from merklesync.transport.ssh_config import Target

defer_invoke()  # before paramiko is imported
import paramiko  # noqa: E402
from paramiko.pkey import UnknownKeyType  # noqa: E402


@dataclass
class Identity:
    """One IdentityFile: its key when it loads without a passphrase, else its
    public half (``.pub`` beside it), by which ssh-agent may hold it."""

    path: str
    key: paramiko.PKey | None
    public: bytes | None
    encrypted: bool = False


def load_identities(target: Target) -> tuple[list[Identity], list[str]]:
    found: list[Identity] = []
    notes: list[str] = []
    for path in target.identity_files:
        if not os.path.exists(path):
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError):  # TypeError: paramiko 4+
            found.append(Identity(path, None, public_half(path), encrypted=True))
            continue
        except (paramiko.SSHException, OSError, ValueError, UnknownKeyType) as exc:
            notes.append(f"cannot load {path}: {exc}")
            continue
        cert = path + "-cert.pub"
        if os.path.exists(cert):
            with contextlib.suppress(paramiko.SSHException, OSError, ValueError):
                key.load_certificate(cert)
        found.append(Identity(path, key, key.asbytes()))
    return found, notes


def public_half(path: str) -> bytes | None:
    """The key blob of ``path``.pub, if it reads."""
    try:
        with open(path + ".pub", encoding="ascii", errors="replace") as f:
            fields = f.read().split()
        return base64.b64decode(fields[1], validate=True) if len(fields) >= 2 else None
    except (OSError, ValueError):
        return None


def key_order(
    identities: list[Identity], agent_keys: list[paramiko.PKey], identities_only: bool
) -> tuple[list[tuple[str, paramiko.PKey]], list[str]]:
    """The keys to offer, as OpenSSH orders them: the IdentityFiles ssh-agent
    holds (an encrypted one is usable so), the agent's other keys unless
    IdentitiesOnly, then the IdentityFiles read from disk. A server counts
    the keys offered (MaxAuthTries): the configured ones come first. Also
    the notes on identities that cannot be used."""
    held = {k.asbytes(): k for k in agent_keys}
    order: list[tuple[str, paramiko.PKey]] = []
    used: set[bytes] = set()

    def offer(label: str, key: paramiko.PKey) -> None:
        if key.asbytes() not in used:
            used.add(key.asbytes())
            order.append((label, key))

    for ident in identities:
        if ident.public in held:
            offer(f"{ident.path} (from ssh-agent)", held[ident.public])
    if not identities_only:
        for key in held.values():
            offer(f"agent key {key.fingerprint}", key)
    notes: list[str] = []
    for ident in identities:
        if ident.key is not None:
            offer(ident.path, ident.key)
        elif ident.public not in held:
            notes.append(f"{ident.path} is encrypted (add it to ssh-agent)")
    return order, notes


def authenticate(t: paramiko.Transport, target: Target) -> None:
    identities, notes = load_identities(target)
    agent: paramiko.Agent | None = None
    agent_keys: list[paramiko.PKey] = []
    try:
        agent = paramiko.Agent()
        agent_keys = list(agent.get_keys())
    except (paramiko.SSHException, OSError):
        agent = None
    candidates, unusable = key_order(identities, agent_keys, target.identities_only)
    notes += unusable
    tried: list[str] = []
    try:
        for label, key in candidates:
            tried.append(label)
            try:
                remaining = t.auth_publickey(target.user, key)
            except paramiko.BadAuthenticationType as exc:
                raise ConnectionFailed(
                    f"{target.label} does not accept SSH keys (it allows: "
                    f"{', '.join(exc.allowed_types) or 'nothing'})"
                ) from exc
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise ConnectionFailed(
                    f"SSH connection to {target.label} lost during authentication: {exc}"
                ) from exc
            if t.is_authenticated():
                return
            raise ConnectionFailed(
                f"{target.label} asks for more authentication ({', '.join(remaining)}), "
                "which merklesync cannot provide"
            )
    finally:
        if agent is not None:
            agent.close()
    if not candidates:
        why = "no SSH key found (ssh-agent, IdentityFile, ~/.ssh/id_ed25519, id_ecdsa, id_rsa)"
    else:
        why = "server rejected " + ", ".join(tried)
    extra = f"; {'; '.join(notes)}" if notes else ""
    raise ConnectionFailed(f"authentication failed for {target.label}: {why}{extra}")
