"""Logging in to one hop: keys (identity files, then the ssh-agent's; an encrypted key's
passphrase is asked once and kept only as the decrypted key in memory), then a password, and a
second factor, only when a terminal is there to ask. A failed login is never retried: Snellius
bans an address for 24 h after a few failures."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import paramiko
from paramiko.auth_strategy import AuthSource, AuthStrategy, SourceResult

from hpcjob.errors import HpcjobError
from hpcjob.ssh.channel import describe_fault
from hpcjob.ssh.hostkeys import describe_key
from hpcjob.ssh.target import Hop

Prompt = Callable[[str], str]


def auth_failed_error(
    hop: Hop,
    tried: Sequence[str],
    notes: Sequence[str] = (),
    detail: str | None = None,
    *,
    profile_name: str | None = None,
) -> HpcjobError:
    """One clear error for a failed login: user, host, what was tried; never retried."""
    profile = f"profile {profile_name}" if profile_name else "the profile"
    if tried:
        what = f"the server accepted none of: {'; '.join(tried)}"
    else:
        what = (
            f"no key was there to offer (no identity_file in {profile}, no IdentityFile in "
            "~/.ssh/config, no ssh-agent key, no ~/.ssh/id_* file) and no terminal to ask for a "
            "password"
        )
    extra = f" ({'; '.join(notes)})" if notes else ""
    return HpcjobError(
        f"Could not log in to {hop.hostname} port {hop.port} as {hop.user}"
        + (f" ({profile})" if profile_name else "")
        + f": {what}{extra}."
        + (f" {detail}" if detail else "")
        + "\nhpcjob does not try again by itself: Snellius blocks your address for 24 hours "
        "after a few failed logins.",
        hint=(
            f"Check the user name (`user` of {profile}, or User in ~/.ssh/config) and that the "
            "public key (.pub) is registered for this account (Snellius: SURF's portal); "
            f"`ssh -v -p {hop.port} {hop.user}@{hop.hostname}` shows what OpenSSH offers."
        ),
    )


class Login:
    """The logins of one shell, to each of its hops: it offers each key once and never loops.

    It keeps the keys decrypted so far (a passphrase is asked once), the key that logged in to
    each hop (a reconnection offers only that one), the ssh-agent connection, and `attempts`
    (keys, passwords and second factors sent, for the benchmark and the tests). `interactive`
    None: asking is allowed when stdin is a terminal.
    """

    def __init__(
        self, prompt: Prompt, interactive: bool | None = None, profile_name: str | None = None
    ) -> None:
        self.prompt = prompt
        self.interactive = interactive
        self.profile_name = profile_name  # named in the refusal
        self.attempts = 0
        self._keys: dict[str, paramiko.PKey] = {}  # decrypted keys: a passphrase is asked once
        self._good: dict[int, tuple[str, paramiko.PKey]] = {}  # the key that logged in, per hop
        self._agent: paramiko.Agent | None = None

    def _refusal(
        self, hop: Hop, tried: Sequence[str], notes: Sequence[str] = (), detail: str | None = None
    ) -> HpcjobError:
        return auth_failed_error(hop, tried, notes, detail, profile_name=self.profile_name)

    def strategy(self, hop: Hop, index: int) -> AuthStrategy:
        """What `SSHClient.connect(auth_strategy=…)` takes to log in to hop number `index`."""
        return _Strategy(self, hop, index)

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    def authenticate(self, transport: paramiko.Transport, hop: Hop, index: int) -> None:
        """Log in to `hop` (number `index` of the shell's hops), or raise `auth_failed_error`."""
        tried: list[str] = []
        notes: list[str] = []
        try:
            try:
                transport.auth_none(hop.user)
                return  # the server wants no login
            except paramiko.BadAuthenticationType as exc:
                allowed = set(exc.allowed_types)
            remembered = self._good.get(index)
            if "publickey" in allowed:
                keys = [remembered] if remembered else self._candidate_keys(hop, notes)
                for label, key in keys:
                    tried.append(label)
                    self.attempts += 1
                    try:
                        remaining = transport.auth_publickey(hop.user, key)
                    except paramiko.AuthenticationException:
                        continue
                    self._good[index] = (label, key)
                    if remaining:
                        self._second_factor(transport, hop, remaining, tried)
                    return
            if allowed & {"password", "keyboard-interactive"} and self._can_ask():
                self._password(transport, hop, allowed, tried)
                return
        except HpcjobError:
            raise
        except Exception as exc:  # the server hung up during login: never retried either
            raise self._refusal(
                hop, tried, notes, f"The connection closed during login ({describe_fault(exc)})."
            ) from exc
        raise self._refusal(hop, tried, notes)

    def _candidate_keys(self, hop: Hop, notes: list[str]) -> Iterator[tuple[str, paramiko.PKey]]:
        """Keys in the order offered: identity files that need no passphrase (or whose public key
        the agent holds), the agent's other keys, then encrypted files (asking the passphrase)."""
        agent_keys = self._agent_keys() if hop.use_agent else ()
        offered: set[bytes] = set()
        encrypted: list[str] = []
        for path in hop.identity_files:
            if not os.path.isfile(path):
                if hop.identities_explicit:
                    notes.append(f"{path}: no such file")
                continue
            public = _public_blob(path + ".pub")
            in_agent = next((k for k in agent_keys if public and k.asbytes() == public), None)
            try:
                key = in_agent or self._key_from_file(path, None, notes)
            except _NeedsPassphrase:
                encrypted.append(path)
                continue
            if key is None:
                continue
            if key.asbytes() not in offered:
                offered.add(key.asbytes())
                yield f"{path}{' (via ssh-agent)' if in_agent else ''} ({describe_key(key)})", key
        if not hop.identities_only:
            for key in agent_keys:
                if key.asbytes() not in offered:
                    offered.add(key.asbytes())
                    comment = getattr(key, "comment", "") or ""
                    yield f"ssh-agent key {comment} ({describe_key(key)})".replace("  ", " "), key
        for path in encrypted:
            if not self._can_ask():
                notes.append(f"{path}: needs its passphrase and there is no terminal to ask")
                continue
            passphrase = self.prompt(f"Passphrase for key {path}: ")
            key = self._key_from_file(path, passphrase, notes)
            if key is not None and key.asbytes() not in offered:
                offered.add(key.asbytes())
                yield f"{path} ({describe_key(key)})", key

    def _key_from_file(
        self, path: str, passphrase: str | None, notes: list[str]
    ) -> paramiko.PKey | None:
        """The key in a file (cached: a passphrase is asked once); None when it cannot be read.
        Raises _NeedsPassphrase for an encrypted key when no passphrase is given."""
        if path in self._keys:
            return self._keys[path]
        failure: Exception | None = None
        for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            try:
                key: paramiko.PKey = kind.from_private_key_file(path, passphrase)
            except paramiko.PasswordRequiredException:
                raise _NeedsPassphrase from None
            except (paramiko.SSHException, ValueError, OSError) as exc:
                failure = exc
                continue
            self._keys[path] = key
            return key
        if passphrase is not None:
            raise HpcjobError(
                f"The passphrase for {path} is not right (nothing was sent to the server).",
                hint="Run the command again and type the key's passphrase.",
            )
        notes.append(f"{path}: not a private key paramiko can read ({failure})")
        return None

    def _agent_keys(self) -> tuple[paramiko.PKey, ...]:
        if self._agent is None:
            self._agent = paramiko.Agent()
        try:
            return tuple(self._agent.get_keys())
        except paramiko.SSHException:
            return ()

    def _can_ask(self) -> bool:
        return sys.stdin.isatty() if self.interactive is None else self.interactive

    def _password(
        self, transport: paramiko.Transport, hop: Hop, allowed: set[str], tried: list[str]
    ) -> None:
        """One password attempt, asked on the terminal; the password is not kept."""
        password = self.prompt(f"Password for {hop.user}@{hop.hostname}: ")
        tried.append("a password")
        self.attempts += 1
        try:
            if "password" in allowed:
                remaining = transport.auth_password(hop.user, password)
            else:
                remaining = transport.auth_interactive(
                    hop.user, lambda _t, _i, prompts: [password for _ in prompts]
                )
        except paramiko.AuthenticationException:
            raise self._refusal(hop, tried) from None
        if remaining:
            self._second_factor(transport, hop, remaining, tried)

    def _second_factor(
        self, transport: paramiko.Transport, hop: Hop, remaining: Sequence[str], tried: list[str]
    ) -> None:
        """A key was accepted and the server asks for more (MFA): one interactive answer."""
        if not self._can_ask() or "keyboard-interactive" not in remaining:
            raise self._refusal(
                hop, tried, detail=f"The server also wants {', '.join(remaining)}, which needs "
                "a terminal: run the command in one."
            )  # fmt: skip
        self.attempts += 1
        tried.append("a second factor")
        try:
            rest = transport.auth_interactive(
                hop.user, lambda _t, _i, prompts: [self.prompt(text) for text, _echo in prompts]
            )
        except paramiko.AuthenticationException:
            raise self._refusal(hop, tried) from None
        if rest:
            raise self._refusal(hop, tried, detail=f"The server still wants {rest}.")


class _Strategy(AuthStrategy):
    """Hands paramiko's login step to `Login.authenticate`."""

    def __init__(self, login: Login, hop: Hop, index: int) -> None:
        super().__init__(ssh_config=paramiko.SSHConfig())
        self._login, self._hop, self._index = login, hop, index

    def get_sources(self) -> Iterator[AuthSource]:
        return iter(())  # unused: authenticate() below does the work

    def authenticate(self, transport: paramiko.Transport) -> list[SourceResult]:
        self._login.authenticate(transport, self._hop, self._index)
        return []


class _NeedsPassphrase(Exception):
    pass


def _public_blob(path: str) -> bytes | None:
    try:
        fields = Path(path).read_text(encoding="utf-8").split()
        return base64.b64decode(fields[1]) if len(fields) >= 2 else None
    except (OSError, ValueError):
        return None
