"""Host keys: OpenSSH's fingerprints and known_hosts lines, loading known_hosts into a client, the
refusals of an unknown or changed key, the trust question of `hpcjob connect`, and the policy that
asks it."""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import paramiko
from paramiko.hostkeys import InvalidHostKey

from hpcjob.errors import HpcjobError
from hpcjob.ssh.target import Hop

Confirm = Callable[[str], bool]


# ---------------------------------------------------------------- fingerprints, known_hosts (pure)
def fingerprint_sha256(key_blob: bytes) -> str:
    """OpenSSH's fingerprint of a public key blob: `SHA256:` + unpadded base64."""
    digest = base64.b64encode(hashlib.sha256(key_blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def key_type_label(key_name: str) -> str:
    """`ssh-ed25519` → `ED25519`, as OpenSSH names key types in its messages."""
    if "ed25519" in key_name:
        return "ED25519"
    if key_name.startswith("ecdsa"):
        return "ECDSA"
    if "rsa" in key_name:
        return "RSA"
    return key_name.upper()


def describe_key(key: paramiko.PKey) -> str:
    return f"{key_type_label(key.get_name())} {fingerprint_sha256(key.asbytes())}"


def known_hosts_line(host_key_name: str, key_name: str, key_base64: str) -> str:
    return f"{host_key_name} {key_name} {key_base64}"


def known_hosts_lines(text: str, host_key_name: str) -> list[int]:
    """Line numbers (from 1) of a known_hosts text that name this host, hashed or not."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0].startswith("@"):
            fields = fields[1:]
        names = fields[0].split(",") if fields else []
        for name in names:
            hashed = name.startswith("|1|")
            if (hashed and paramiko.HostKeys.hash_host(host_key_name, name) == name) or (
                name == host_key_name
            ):
                found.append(number)
                break
    return found


# --------------------------------------------------------------------------- messages (pure)
def _scan_hint(hop: Hop, jumps: Sequence[Hop]) -> str:
    if jumps:
        via = ",".join(j.label.replace(" port ", ":") for j in jumps)
        return f"connect once with OpenSSH: `ssh -J {via} -p {hop.port} {hop.user}@{hop.hostname}`"
    known_file = shlex.quote(hop.known_hosts_file)
    return (
        f"`ssh-keyscan -p {hop.port} {hop.hostname} >> {known_file}` (check the "
        f"fingerprint it adds), or connect once with `ssh -p {hop.port} {hop.user}@{hop.hostname}`"
    )


def connect_command(profile_name: str | None) -> str:
    """The `hpcjob connect` that trusts this profile's host keys, for a hint."""
    return f"hpcjob connect {profile_name or '<profile>'}"


def unknown_host_error(
    hop: Hop,
    key_name: str,
    fingerprint: str,
    *,
    profile_name: str | None = None,
    jumps: Sequence[Hop] = (),
) -> HpcjobError:
    """The refusal of a host key that no known_hosts file holds, with the ways to accept it."""
    return HpcjobError(
        f"The host key of {hop.host_key_name} is not known, so hpcjob did not connect.\n"
        f"{key_type_label(key_name)} key fingerprint is {fingerprint}.",
        hint=(
            "Compare the fingerprint with the one the cluster publishes (Snellius: SURF's user "
            f"documentation), then accept it: `{connect_command(profile_name)}` "
            f"shows it and asks; or {_scan_hint(hop, jumps)}."
        ),
    )


def changed_host_error(
    hop: Hop,
    offered: str,
    expected: str,
    stale_lines: Sequence[tuple[str, int]],
    *,
    profile_name: str | None = None,
) -> HpcjobError:
    """The loud refusal of a host key that differs from the one in known_hosts."""
    where = ", ".join(f"{file} line {n}" for file, n in stale_lines) or "your known_hosts"
    files = list(dict.fromkeys(file for file, _ in stale_lines)) or [hop.known_hosts_file]
    removes = "; ".join(
        f"`ssh-keygen -R {shlex.quote(hop.host_key_name)} -f {shlex.quote(f)}`" for f in files
    )
    return HpcjobError(
        f"WARNING: THE HOST KEY OF {hop.host_key_name} HAS CHANGED. hpcjob did not log in.\n"
        "Someone could be eavesdropping on you right now (a man-in-the-middle attack), or the "
        "server's host key has just been replaced.\n"
        f"The server offered {offered}; {where} holds {expected}.",
        hint=(
            "Check the fingerprint the cluster publishes or ask its admins. Only if the change is "
            f"genuine, remove the old entry ({where}): {removes}; then accept the new key with "
            f"`{connect_command(profile_name)}`."
        ),
    )


# ------------------------------------------------------------------------------------- the edge
def trust_question(hop: Hop, key_name: str, fingerprint: str) -> str:
    return (
        f"The host key of {hop.host_key_name} is not known yet.\n"
        f"{key_type_label(key_name)} key fingerprint is {fingerprint}.\n"
        "Compare it with the fingerprint the cluster publishes. If they match, it is added to "
        f"{hop.known_hosts_file}."
    )


def append_known_host(path: str, line: str) -> None:
    """Add one line to a known_hosts file (made private, with its folder, when new)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        if file.stat().st_size and not file.read_bytes().endswith(b"\n"):
            handle.write("\n")
        handle.write(line + "\n")


def load_host_keys(client: paramiko.SSHClient, hop: Hop) -> None:
    """The hop's known_hosts files (the user's, then the system's) into the client's keys."""
    keys = client.get_host_keys()
    for path in (*hop.known_hosts, *hop.global_known_hosts):
        if not os.path.isfile(path):
            continue
        try:
            keys.load(path)
        except (InvalidHostKey, OSError, UnicodeDecodeError) as exc:
            raise HpcjobError(
                f"Cannot read the known_hosts file {path}: {exc}",
                hint="Fix or remove the broken line (OpenSSH: `ssh-keygen -R HOST -f FILE`).",
            ) from exc


def changed_key_error(
    hop: Hop, exc: paramiko.BadHostKeyException, profile_name: str | None = None
) -> HpcjobError:
    """`changed_host_error` for paramiko's refusal, naming the known_hosts lines that hold the
    old key."""
    stale: list[tuple[str, int]] = []
    for path in (*hop.known_hosts, *hop.global_known_hosts):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        stale += [(path, n) for n in known_hosts_lines(text, hop.host_key_name)]
    return changed_host_error(
        hop,
        describe_key(exc.key),
        describe_key(exc.expected_key),
        stale,
        profile_name=profile_name,
    )


class HostKeyPolicy(paramiko.RejectPolicy):
    """paramiko's RejectPolicy (never the auto-adding one: a key taken unasked on first contact is
    a man-in-the-middle door) with a message that says how to accept the key. Given `confirm`
    (hpcjob connect), the user may accept the key, and only then is it written to known_hosts and
    named in `trusted`."""

    def __init__(
        self,
        hop: Hop,
        *,
        jumps: Sequence[Hop] = (),
        confirm: Confirm | None = None,
        profile_name: str | None = None,
        trusted: list[str] | None = None,
    ) -> None:
        self._hop, self._jumps, self._confirm = hop, tuple(jumps), confirm
        self._profile_name = profile_name
        self.trusted = [] if trusted is None else trusted

    def missing_host_key(  # type: ignore[override]
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        hop = self._hop
        fingerprint = fingerprint_sha256(key.asbytes())
        if self._confirm is None:
            raise unknown_host_error(
                hop,
                key.get_name(),
                fingerprint,
                profile_name=self._profile_name,
                jumps=self._jumps,
            )
        if not self._confirm(trust_question(hop, key.get_name(), fingerprint)):
            raise HpcjobError(
                f"The host key of {hop.host_key_name} was not accepted; nothing was written.",
                hint=f"Run `{connect_command(self._profile_name)}` again once you have checked "
                "the fingerprint.",
            )
        target = hop.known_hosts_file
        append_known_host(target, known_hosts_line(hostname, key.get_name(), key.get_base64()))
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.trusted.append(f"{hostname} {describe_key(key)} → {target}")
