"""SSHShell: the `Shell` of a login node reached over SSH (paramiko), with the user's own SSH setup.

How a host is reached is resolved by pure functions (`resolve_target`) from the profile's keys and
the text of ~/.ssh/config. Precedence, highest first, for the login node:

1. profile keys set explicitly (config file, `HPCJOB_<KEY>`, flags): `user`, `port`,
   `identity_file` (tried first), `known_hosts` (replaces ~/.ssh/known_hosts, for every hop);
2. ~/.ssh/config, looked up with the profile's `host` as the Host alias: HostName, User, Port,
   IdentityFile, ProxyJump, ProxyCommand, UserKnownHostsFile, GlobalKnownHostsFile,
   IdentitiesOnly, `IdentityAgent none`, ConnectTimeout (paramiko's SSHConfig; `Include` inlined);
3. values of a built-in profile (`defaults`, e.g. snellius's port 22);
4. defaults: the local user name, port 22, ~/.ssh/id_{ed25519,ecdsa,rsa}, ~/.ssh/known_hosts.
The system file /etc/ssh/ssh_known_hosts is always read too. Jump hosts (ProxyJump, a chain
`a,b`) take `user@host:port` from the entry, then ~/.ssh/config, then the defaults; the first one
honours its own ProxyJump, as OpenSSH does.

Connection: one per invocation, opened on first use, reused for every command and transfer (one
SFTP session); TCP_NODELAY on (paramiko leaves it off: ~44 ms per command on loopback instead of
~2 ms); jump hosts as `direct-tcpip` channels through the previous hop.

Host keys: known_hosts and paramiko's RejectPolicy; an unknown key is refused with its SHA256
fingerprint and the ways to accept it (`connect_and_trust`, behind `hpcjob connect`, asks and only
then writes known_hosts); a changed key is refused with a man-in-the-middle warning.

Login: keys (identity files, ssh-agent; an encrypted key's passphrase is asked once, kept only as
the decrypted key in memory), then a password only when a terminal is there. A failed login is
never retried: Snellius bans an address for 24 h after a few failures.

Transient faults (reset, timeout, EOF) are retried with backoff, reconnecting, for operations that
are safe to repeat: file operations (writes are atomic renames of the full content) and commands
run with `idempotent=True`; a command like sbatch is never sent twice. Not thread-safe.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import glob
import hashlib
import logging
import os
import posixpath
import re
import select
import shlex
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hpcjob.errors import HpcjobError
from hpcjob.shell import (
    UNPACK_SCRIPT,
    CommandResult,
    OutputCallback,
    OutputDecoder,
    command_error,
    tar_payload,
)

# paramiko.config imports `invoke` (asyncio, unittest.mock, yaml: ~36 ms of every command over
# SSH) only to run `Match exec` lines of ~/.ssh/config. Import paramiko without it; `_lookup`
# imports it after all when a config needs it.
_BLOCK_INVOKE = "invoke" not in sys.modules
if _BLOCK_INVOKE:
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` → ImportError
try:
    import paramiko
    from paramiko.auth_strategy import AuthSource, AuthStrategy, SourceResult
    from paramiko.hostkeys import InvalidHostKey
finally:
    if _BLOCK_INVOKE and sys.modules.get("invoke", False) is None:
        del sys.modules["invoke"]


if TYPE_CHECKING:
    from hpcjob.shell import Shell

# paramiko logs a dropped connection at ERROR from its own thread; the retry or the error this
# module raises says it in the user's words instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

T = TypeVar("T")
Prompt = Callable[[str], str]
Confirm = Callable[[str], bool]

SSH_CONFIG = "~/.ssh/config"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
MAX_HOPS = 8


# ----------------------------------------------------------------------------- resolution (pure)
@dataclass(frozen=True)
class Hop:
    """One SSH server on the way: a jump host, or the login node itself (the last hop)."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: tuple[str, ...] = ()
    identities_explicit: bool = True  # False: OpenSSH's default files, used when they exist
    identities_only: bool = False
    use_agent: bool = True
    known_hosts: tuple[str, ...] = ()  # the user's files; `hpcjob connect` appends to the first
    global_known_hosts: tuple[str, ...] = ()
    proxy_command: str | None = None
    connect_timeout: float | None = None

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files this host under, as OpenSSH writes it."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}" + ("" if self.port == 22 else f" port {self.port}")


@dataclass(frozen=True)
class SSHTarget:
    """How to reach a login node: the jump hosts in order, then the login node."""

    hops: tuple[Hop, ...]

    @property
    def login(self) -> Hop:
        return self.hops[-1]

    @property
    def jumps(self) -> tuple[Hop, ...]:
        return self.hops[:-1]


_JUMP = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[^@\s/]+)@)?"
    r"(?:\[(?P<ipv6>[^\]\s]+)\]|(?P<host>[^:@\s/\[\]]+))(?::(?P<port>\d+))?/?$"
)


def parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """One ProxyJump entry, `[user@]host[:port]` (or `ssh://…`), as (user, host, port)."""
    match = _JUMP.match(spec.strip())
    if match is None:
        raise HpcjobError(
            f"Cannot read the ProxyJump entry {spec!r}.",
            hint="Write jump hosts as [user@]host[:port], several separated by commas.",
        )
    port = match["port"]
    return match["user"], match["ipv6"] or match["host"], int(port) if port else None


def resolve_target(
    profile: Mapping[str, Any],
    ssh_config_text: str = "",
    *,
    local_user: str | None = None,
    defaults: Collection[str] = (),
    config_name: str = SSH_CONFIG,
) -> SSHTarget:
    """The hops to the profile's `host`, by the precedence in the module docstring.

    `defaults` names profile keys whose values are built-in defaults: they rank below
    ~/.ssh/config. `~` expands with $HOME (paramiko's SSHConfig does the same for IdentityFile).
    """
    host = str(profile.get("host") or "").strip()
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise HpcjobError(
            f"The profile's host {host!r} is not a host name.",
            hint="Set `host` to a name like snellius.surf.nl or a Host alias of ~/.ssh/config.",
        )
    config = _parse_config(ssh_config_text, config_name)
    me = local_user or getpass.getuser()

    def given(key: str) -> Any:
        value = profile.get(key)
        return None if value in (None, "") or key in defaults else value

    def fallback(key: str) -> Any:
        value = profile.get(key)
        return value if key in defaults and value not in (None, "") else None

    known = given("known_hosts")
    known_files = (_expand(str(known)),) if known else None
    hops = _chain(config, host, None, None, me, known_files, config_name, set())
    opts = _lookup(config, host, config_name)
    config_ids = [_expand(p) for p in _list(opts, "identityfile")]
    explicit_id = given("identity_file")
    default_id = fallback("identity_file")
    ids = [_expand(str(explicit_id))] if explicit_id else []
    ids += config_ids + ([_expand(str(default_id))] if default_id else [])
    login = replace(
        hops[-1],
        user=str(given("user") or opts.get("user") or fallback("user") or me),
        port=int(given("port") or _port(opts, config_name) or fallback("port") or 22),
        identity_files=tuple(dict.fromkeys(ids)) or hops[-1].identity_files,
        identities_explicit=bool(ids),
    )
    return SSHTarget((*hops[:-1], login))


def _chain(
    config: paramiko.SSHConfig,
    alias: str,
    user: str | None,
    port: int | None,
    me: str,
    known_files: tuple[str, ...] | None,
    config_name: str,
    seen: set[str],
) -> list[Hop]:
    """The hops to `alias`: its ProxyJump chain (the first entry's own ProxyJump honoured)."""
    if alias in seen or len(seen) >= MAX_HOPS:
        raise HpcjobError(
            f"The ProxyJump settings in {config_name} loop or chain more than {MAX_HOPS} hosts "
            f"(at {alias}).",
            hint="Check the ProxyJump lines of the hosts involved.",
        )
    opts = _lookup(config, alias, config_name)
    hop = _hop(opts, alias, user, port, me, known_files, config_name)
    jump = str(opts.get("proxyjump") or "").strip()
    if not jump or jump.lower() == "none":
        return [hop]
    specs = [parse_jump(s) for s in jump.split(",") if s.strip()]
    first_user, first_host, first_port = specs[0]
    hops = _chain(
        config, first_host, first_user, first_port, me, known_files, config_name, {*seen, alias}
    )
    for jump_user, jump_host, jump_port in specs[1:]:
        jump_opts = _lookup(config, jump_host, config_name)
        later = _hop(jump_opts, jump_host, jump_user, jump_port, me, known_files, config_name)
        hops.append(replace(later, proxy_command=None))
    # Only the first hop may reach the network through a ProxyCommand.
    return [*hops, replace(hop, proxy_command=None)]


def _hop(
    opts: paramiko.SSHConfigDict,
    alias: str,
    user: str | None,
    port: int | None,
    me: str,
    known_files: tuple[str, ...] | None,
    config_name: str,
) -> Hop:
    ids = tuple(dict.fromkeys(_expand(p) for p in _list(opts, "identityfile")))
    user_known = known_files or tuple(
        _expand(p) for p in str(opts.get("userknownhostsfile") or USER_KNOWN_HOSTS).split()
    )
    global_known = str(opts.get("globalknownhostsfile") or SYSTEM_KNOWN_HOSTS).split()
    timeout = opts.get("connecttimeout")
    proxy = opts.get("proxycommand")
    return Hop(
        alias=alias,
        hostname=str(opts.get("hostname") or alias),
        port=port or _port(opts, config_name) or 22,
        user=user or str(opts.get("user") or me),
        identity_files=ids or tuple(_expand(p) for p in DEFAULT_IDENTITIES),
        identities_explicit=bool(ids),
        identities_only=str(opts.get("identitiesonly", "no")).lower() == "yes",
        use_agent=str(opts.get("identityagent", "")).lower() != "none",
        known_hosts=tuple(p for p in user_known if p.lower() != "none"),
        global_known_hosts=tuple(_expand(p) for p in global_known if p.lower() != "none"),
        proxy_command=str(proxy) if proxy and str(proxy).lower() != "none" else None,
        connect_timeout=float(timeout) if timeout and str(timeout).isdigit() else None,
    )


def _parse_config(text: str, config_name: str) -> paramiko.SSHConfig:
    try:
        return paramiko.SSHConfig.from_text(text)
    except Exception as exc:  # paramiko raises several kinds for a malformed file
        raise HpcjobError(f"Cannot read {config_name}: {exc}") from exc


def _lookup(config: paramiko.SSHConfig, alias: str, config_name: str) -> paramiko.SSHConfigDict:
    try:
        try:
            return config.lookup(alias)
        except ImportError:  # `Match exec`: paramiko was imported without `invoke` (see above)
            import invoke

            paramiko.config.invoke = invoke  # type: ignore[attr-defined]
            return config.lookup(alias)
    except Exception as exc:  # e.g. `Match exec` needs the `invoke` package
        raise HpcjobError(f"Cannot apply {config_name} to host {alias}: {exc}") from exc


def _list(opts: Mapping[str, Any], key: str) -> list[str]:
    value = opts.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _port(opts: Mapping[str, Any], config_name: str) -> int | None:
    value = opts.get("port")
    if value is None:
        return None
    if not str(value).isdigit():
        raise HpcjobError(f"{config_name}: Port {value!r} is not a number.")
    return int(value)


def _expand(path: str) -> str:
    return os.path.expanduser(path)


def read_ssh_config(path: str | Path | None = None) -> tuple[str, str]:
    """The text of an ssh config file with its `Include`s inlined, and the name to show; ('', name)
    when there is none. `path` None means ~/.ssh/config."""
    name = str(path) if path is not None else SSH_CONFIG
    file = Path(_expand(name))
    return (_read_with_includes(file, 0) if file.is_file() else ""), name


_INCLUDE = re.compile(r"^\s*include\s*(?:=\s*|\s)(?P<paths>.+)$", re.IGNORECASE)


def _read_with_includes(file: Path, depth: int) -> str:
    """paramiko's SSHConfig has no `Include`: inline the files (relative to ~/.ssh, like ssh)."""
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise HpcjobError(f"Cannot read the ssh config {file}: {exc.strerror}.") from exc
    if depth >= 8:
        return text
    lines: list[str] = []
    for line in text.splitlines():
        match = _INCLUDE.match(line)
        if match is None:
            lines.append(line)
            continue
        for pattern in shlex.split(match["paths"]):
            pattern = _expand(pattern)
            if not os.path.isabs(pattern):
                pattern = _expand(f"~/.ssh/{pattern}")
            for included in sorted(glob.glob(pattern)):
                if Path(included).is_file():
                    lines.append(_read_with_includes(Path(included), depth + 1))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- keys (pure)
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
def _scan_hint(hop: Hop, jumps: Sequence[Hop], known_file: str) -> str:
    if jumps:
        via = ",".join(j.label.replace(" port ", ":") for j in jumps)
        return f"connect once with OpenSSH: `ssh -J {via} -p {hop.port} {hop.user}@{hop.hostname}`"
    return (
        f"`ssh-keyscan -p {hop.port} {hop.hostname} >> {shlex.quote(known_file)}` (check the "
        f"fingerprint it adds), or connect once with `ssh -p {hop.port} {hop.user}@{hop.hostname}`"
    )


def unknown_host_error(
    hop: Hop,
    key_name: str,
    fingerprint: str,
    *,
    profile_name: str | None = None,
    jumps: Sequence[Hop] = (),
) -> HpcjobError:
    """The refusal of a host key that no known_hosts file holds, with the ways to accept it."""
    known_file = hop.known_hosts[0] if hop.known_hosts else _expand(USER_KNOWN_HOSTS)
    return HpcjobError(
        f"The host key of {hop.host_key_name} is not known, so hpcjob did not connect.\n"
        f"{key_type_label(key_name)} key fingerprint is {fingerprint}.",
        hint=(
            "Compare the fingerprint with the one the cluster publishes (Snellius: SURF's user "
            f"documentation), then accept it: `hpcjob connect {profile_name or '<profile>'}` "
            f"shows it and asks; or {_scan_hint(hop, jumps, known_file)}."
        ),
    )


def changed_host_error(
    hop: Hop, offered: str, expected: str, stale_lines: Sequence[tuple[str, int]]
) -> HpcjobError:
    """The loud refusal of a host key that differs from the one in known_hosts."""
    where = ", ".join(f"{file} line {n}" for file, n in stale_lines) or "your known_hosts"
    files = list(dict.fromkeys(file for file, _ in stale_lines)) or [
        hop.known_hosts[0] if hop.known_hosts else _expand(USER_KNOWN_HOSTS)
    ]
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
            "`hpcjob connect <profile>`."
        ),
    )


def auth_failed_error(
    hop: Hop, tried: Sequence[str], notes: Sequence[str] = (), detail: str | None = None
) -> HpcjobError:
    """One clear error for a failed login: user, host, what was tried; never retried."""
    if tried:
        what = f"the server accepted none of: {'; '.join(tried)}"
    else:
        what = (
            "no key was there to offer (no identity_file in the profile, no IdentityFile in "
            "~/.ssh/config, no ssh-agent key, no ~/.ssh/id_* file) and no terminal to ask for a "
            "password"
        )
    extra = f" ({'; '.join(notes)})" if notes else ""
    return HpcjobError(
        f"Could not log in to {hop.hostname} port {hop.port} as {hop.user}: {what}{extra}."
        + (f" {detail}" if detail else "")
        + "\nhpcjob does not try again by itself: Snellius blocks your address for 24 hours "
        "after a few failed logins.",
        hint=(
            f"Check the user name (profile key `user`, or User in ~/.ssh/config) and that the "
            "public key (.pub) is registered for this account (Snellius: SURF's portal); "
            f"`ssh -v -p {hop.port} {hop.user}@{hop.hostname}` shows what OpenSSH offers."
        ),
    )


# -------------------------------------------------------------------------- commands (pure)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def remote_command(
    argv: Sequence[str],
    marker: str,
    *,
    env: Mapping[str, str] | None = None,
    login_shell: bool = True,
    load_profile: bool = True,
) -> str:
    """The command line for the remote shell: every word quoted, a marker printed first on stdout
    and stderr (what login scripts print before it is dropped), run by `bash -lc` (modules live
    in the login environment) when `login_shell`, by a plain `bash -c` without `load_profile`."""
    if not argv:
        raise ValueError("an empty command")
    words = list(argv)
    if env:
        bad = [k for k in env if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"not an environment variable name: {bad[0]!r}")
        words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
    mark = shlex.quote(marker)
    script = f"printf '%s\\n' {mark}; printf '%s\\n' {mark} >&2; exec {shlex.join(words)}"
    return shlex.join(["bash", "-lc" if load_profile else "-c", script]) if login_shell else script


def strip_before_marker(text: str, marker: str) -> str:
    """What follows the marker line (all of `text` when the marker never came)."""
    at = text.find(marker + "\n")
    return text if at < 0 else text[at + len(marker) + 1 :]


# ---------------------------------------------------------------------------------- the edge
def _ask_yes_no(question: str) -> bool:
    """The default `confirm`: y/N on the terminal; no terminal means no."""
    if not sys.stdin.isatty():
        return False
    print(question, file=sys.stderr)
    try:
        answer = input("Accept it and add it to known_hosts? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def trust_question(hop: Hop, key_name: str, fingerprint: str) -> str:
    target = hop.known_hosts[0] if hop.known_hosts else _expand(USER_KNOWN_HOSTS)
    return (
        f"The host key of {hop.host_key_name} is not known yet.\n"
        f"{key_type_label(key_name)} key fingerprint is {fingerprint}.\n"
        "Compare it with the fingerprint the cluster publishes. If they match, it is added to "
        f"{target}."
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


class _HostKeyPolicy(paramiko.RejectPolicy):
    """paramiko's RejectPolicy with a message that says how to accept the key. Given `confirm`
    (hpcjob connect), the user may accept the key, and only then is it written to known_hosts."""

    def __init__(self, shell: SSHShell, index: int) -> None:
        self._shell, self._index = shell, index

    def missing_host_key(  # type: ignore[override]
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        hop = self._shell.target.hops[self._index]
        fingerprint = fingerprint_sha256(key.asbytes())
        confirm = self._shell.confirm
        if confirm is None:
            raise unknown_host_error(
                hop,
                key.get_name(),
                fingerprint,
                profile_name=self._shell.profile_name,
                jumps=self._shell.target.hops[: self._index],
            )
        if not confirm(trust_question(hop, key.get_name(), fingerprint)):
            raise HpcjobError(
                f"The host key of {hop.host_key_name} was not accepted; nothing was written.",
                hint="Run `hpcjob connect <profile>` again once you have checked the fingerprint.",
            )
        target = hop.known_hosts[0] if hop.known_hosts else _expand(USER_KNOWN_HOSTS)
        append_known_host(target, known_hosts_line(hostname, key.get_name(), key.get_base64()))
        client.get_host_keys().add(hostname, key.get_name(), key)
        self._shell.trusted.append(f"{hostname} {describe_key(key)} → {target}")


class _Login(AuthStrategy):
    """Hands paramiko's login step to the shell, which offers each key once and never loops."""

    def __init__(self, shell: SSHShell, index: int) -> None:
        super().__init__(ssh_config=paramiko.SSHConfig())
        self._shell, self._index = shell, index

    def get_sources(self) -> Iterator[AuthSource]:
        return iter(())  # unused: authenticate() below does the work

    def authenticate(self, transport: paramiko.Transport) -> list[SourceResult]:
        self._shell._authenticate(transport, self._index)
        return []


@dataclass
class _Attempt:
    sent: bool = False  # the command reached the server: not to be sent again unless idempotent


@dataclass
class _Connection:
    clients: list[paramiko.SSHClient] = field(default_factory=list)
    sftp: paramiko.SFTPClient | None = None
    sftp_base: int = 0

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.clients[-1].get_transport()
        assert transport is not None
        return transport


class _Timeout(Exception):
    pass


class _NeedsPassphrase(Exception):
    pass


class SSHShell:
    """A login node over SSH: one lazily opened connection, commands and files (see the module).

    Counters for the benchmark: `connections_opened` (SSH connections, jump hops included),
    `channels_opened` (exec sessions, SFTP, direct-tcpip), `commands_run`, `auth_attempts`;
    `sftp_requests` and `round_trips` (commands + SFTP requests) are properties.
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        prompt: Prompt | None = None,
        confirm: Confirm | None = None,
        interactive: bool | None = None,
        login_shell: bool = True,
        profile_name: str | None = None,
        retries: int = 3,
        backoff_s: Sequence[float] = (0.25, 1.0, 2.0),
        sleep: Callable[[float], None] = time.sleep,
        connect_timeout_s: float = 20.0,
        io_timeout_s: float = 120.0,
        tcp_nodelay: bool = True,
    ) -> None:
        self.target = target
        self.prompt: Prompt = prompt or getpass.getpass
        self.confirm = confirm
        self.interactive = interactive
        self.login_shell = login_shell
        self.profile_name = profile_name
        self.retries = retries
        self.backoff_s = tuple(backoff_s) or (1.0,)
        self.sleep = sleep
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self.tcp_nodelay = tcp_nodelay
        self.connections_opened = 0
        self.channels_opened = 0
        self.commands_run = 0
        self.auth_attempts = 0
        self.trusted: list[str] = []  # host keys accepted through `confirm`
        self._conn: _Connection | None = None
        self._sftp_done = 0
        self._home: str | None = None
        self._keys: dict[str, paramiko.PKey] = {}  # decrypted keys: a passphrase is asked once
        self._good: dict[int, tuple[str, paramiko.PKey]] = {}  # the key that logged in, per hop
        self._agent: paramiko.Agent | None = None
        # A refused login or host key is final for this shell: asking again risks Snellius's ban.
        self._refused: HpcjobError | None = None

    # ---- the Shell protocol
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> CommandResult:
        """Run argv on the login node. Lost connections are retried only when `idempotent` or
        before the command was sent: sbatch must never run twice."""
        words = tuple(argv)
        result = self._attempt(
            f"`{shlex.join(words)}`",
            lambda attempt: self._run_once(words, timeout, env, attempt),
            retry=idempotent,
        )
        if check and result.returncode != 0:
            raise command_error(result)
        return result

    def stream(
        self,
        argv: Sequence[str],
        on_output: OutputCallback,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """`run` (same remote command, marker and login shell) that hands the output to
        `on_output` as it arrives; never re-run once sent. On a timeout or an exception the
        channel is closed."""
        words = tuple(argv)
        return self._attempt(
            f"`{shlex.join(words)}`",
            lambda attempt: self._run_once(words, timeout, env, attempt, on_output),
            retry=False,
        )

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        full = self.expand_home(path)

        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(full, "rb") as handle:
                size = handle.stat().st_size or 0
                count = max(0, size - offset if limit is None else min(limit, size - offset))
                if count == 0:
                    return b""
                data = b"".join(handle.readv([(offset, count)]))  # pipelined requests
                if len(data) != count:  # a transfer that ended early is never taken for whole
                    raise EOFError(f"read {len(data)} of {count} bytes of {full}")
                return data

        return self._file_op(f"reading {full}", read)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write atomically: a temporary name, then posix-rename over the final one."""
        full = self.expand_home(path)
        folder, name = posixpath.split(full)
        tmp = posixpath.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")

        def write(sftp: paramiko.SFTPClient) -> None:
            try:
                with sftp.open(tmp, "wb") as handle:
                    handle.set_pipelined(True)
                    handle.write(data)
                    handle.chmod(mode)
                sftp.posix_rename(tmp, full)
            except BaseException:
                self._quietly(lambda: sftp.remove(tmp))
                raise

        self._file_op(f"writing {full}", write)

    def write_files(self, root: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        """All files in one command, a tar on its stdin (UNPACK_SCRIPT), instead of about five
        SFTP round trips per file; safe to repeat, so retried on a dropped connection. No login
        profile is loaded: unpacking needs only bash, tar and coreutils."""
        words = ("bash", "-c", UNPACK_SCRIPT, "hpcjob-stage", root)
        payload = tar_payload(files)
        result = self._attempt(
            f"writing {len(files)} files to {root}",
            lambda attempt: self._run_once(words, 120, None, attempt, stdin=payload, profile=False),
            retry=True,
        )
        if result.returncode != 0:
            raise command_error(result, f"Writing files to {root}")

    def makedirs(self, path: str) -> None:
        full = self.expand_home(path)
        self._file_op(f"creating {full}", lambda sftp: _makedirs(sftp, full))

    def exists(self, path: str) -> bool:
        full = self.expand_home(path)
        return self._file_op(f"looking for {full}", lambda sftp: _stat(sftp, full) is not None)

    def size(self, path: str) -> int | None:
        full = self.expand_home(path)

        def size(sftp: paramiko.SFTPClient) -> int | None:
            attrs = _stat(sftp, full)
            return None if attrs is None else attrs.st_size or 0

        return self._file_op(f"looking at {full}", size)

    def expand_home(self, path: str) -> str:
        """`~` and `~/…` become the remote home (asked once, over SFTP); other paths are kept."""
        if path != "~" and not path.startswith("~/"):
            return path
        if self._home is None:
            self._home = self._file_op("finding the home folder", lambda s: s.normalize("."))
        return self._home + path[1:]

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        """Files under a folder as (relative path, size), at most `max_depth` folders down."""
        root = self.expand_home(path)
        return self._file_op(f"listing {root}", lambda sftp: _walk(sftp, root, max_depth))

    # ---- connection
    @property
    def sftp_requests(self) -> int:
        conn = self._conn
        live = conn.sftp.request_number - conn.sftp_base if conn and conn.sftp else 0
        return self._sftp_done + live

    @property
    def round_trips(self) -> int:
        return self.commands_run + self.sftp_requests

    def stats(self) -> dict[str, int]:
        return {
            "connections": self.connections_opened,
            "channels": self.channels_opened,
            "commands": self.commands_run,
            "sftp_requests": self.sftp_requests,
            "round_trips": self.round_trips,
            "auth_attempts": self.auth_attempts,
        }

    def connect(self) -> None:
        """Open the connection now (it otherwise opens on first use)."""
        self._attempt("connecting", lambda _attempt: self._transport(), retry=True)

    def close(self) -> None:
        self._drop()
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    def __enter__(self) -> SSHShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tcp_socket(self) -> socket.socket | None:
        """The TCP socket of the first hop (None before connecting or through a ProxyCommand)."""
        if self._conn is None:
            return None
        first = self._conn.clients[0].get_transport()
        sock = getattr(first, "sock", None)
        return sock if isinstance(sock, socket.socket) else None

    def _transport(self) -> paramiko.Transport:
        if self._refused is not None:
            raise self._refused
        if self._conn is None or not self._conn.transport.is_active():
            self._drop()
            try:
                self._conn = self._open()
            except HpcjobError as exc:
                self._refused = exc
                raise
        return self._conn.transport

    def _sftp(self) -> paramiko.SFTPClient:
        self._transport()
        conn = self._conn
        assert conn is not None
        if conn.sftp is None:
            self.channels_opened += 1
            try:
                sftp = paramiko.SFTPClient.from_transport(conn.transport)
            except paramiko.SSHException as exc:
                if not conn.transport.is_active():
                    raise  # the connection dropped: transient, retried by the caller
                raise self._sftp_refused(_reason(exc)) from exc
            if sftp is None:
                raise self._sftp_refused("no reply")
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.io_timeout_s)
            conn.sftp, conn.sftp_base = sftp, sftp.request_number
        return conn.sftp

    def _sftp_refused(self, why: str) -> HpcjobError:
        return HpcjobError(
            f"{self.target.login.hostname} refused an SFTP session ({why}); "
            "hpcjob reads and writes run files over SFTP.",
            hint="Ask the cluster's admins to enable the sftp subsystem of its sshd "
            "(`Subsystem sftp internal-sftp` in sshd_config), or work on the login node itself.",
        )

    def _open(self) -> _Connection:
        conn = _Connection()
        try:
            sock: Any = None
            for index, hop in enumerate(self.target.hops):
                timeout = hop.connect_timeout or self.connect_timeout_s
                if index == 0:
                    sock = self._first_socket(hop, timeout)
                else:
                    sock = self._through(conn, index, timeout)
                client = paramiko.SSHClient()
                conn.clients.append(client)
                self._load_host_keys(client, hop)
                client.set_missing_host_key_policy(_HostKeyPolicy(self, index))
                self.connections_opened += 1
                try:
                    client.connect(
                        hop.hostname,
                        hop.port,
                        username=hop.user,
                        sock=sock,
                        timeout=timeout,
                        banner_timeout=timeout,
                        auth_timeout=timeout,
                        auth_strategy=_Login(self, index),
                    )
                except paramiko.BadHostKeyException as exc:
                    raise self._changed_key(hop, exc) from None
                client_transport = client.get_transport()
                if client_transport is not None:
                    client_transport.set_keepalive(30)
        except BaseException:
            self._close_clients(conn)
            if isinstance(sock, socket.socket):
                sock.close()
            raise
        return conn

    def _through(self, conn: _Connection, index: int, timeout: float) -> paramiko.Channel:
        """A `direct-tcpip` channel from the previous hop to this one (ProxyJump)."""
        hop, jump = self.target.hops[index], self.target.hops[index - 1]
        self.channels_opened += 1
        try:
            return conn.transport.open_channel(
                "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as exc:
            raise HpcjobError(
                f"The jump host {jump.hostname} could not reach {hop.hostname} port {hop.port}: "
                f"{exc.text}.",
                hint="Check HostName/Port of the host behind ProxyJump in ~/.ssh/config.",
            ) from exc

    def _first_socket(self, hop: Hop, timeout: float) -> Any:
        if hop.proxy_command:
            return paramiko.ProxyCommand(hop.proxy_command)
        try:
            sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
        except socket.gaierror as exc:
            raise HpcjobError(
                f"Cannot find the host {hop.hostname}: {exc.strerror or exc}.",
                hint="Check `host` in the profile (or HostName in ~/.ssh/config) and your network.",
            ) from exc
        # paramiko leaves Nagle on: each small request then waits for the delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self.tcp_nodelay else 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def _load_host_keys(self, client: paramiko.SSHClient, hop: Hop) -> None:
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

    def _changed_key(self, hop: Hop, exc: paramiko.BadHostKeyException) -> HpcjobError:
        stale: list[tuple[str, int]] = []
        for path in (*hop.known_hosts, *hop.global_known_hosts):
            try:
                text = Path(path).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            stale += [(path, n) for n in known_hosts_lines(text, hop.host_key_name)]
        return changed_host_error(hop, describe_key(exc.key), describe_key(exc.expected_key), stale)

    def _drop(self) -> None:
        """Forget the connection (a fault, or close); the next operation opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.sftp is not None:
                self._sftp_done += conn.sftp.request_number - conn.sftp_base
            self._close_clients(conn)

    def _close_clients(self, conn: _Connection) -> None:
        if conn.sftp is not None:
            self._quietly(conn.sftp.close)
        for client in reversed(conn.clients):
            self._quietly(client.close)

    @staticmethod
    def _quietly(action: Callable[[], object]) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection may fail any way
            action()

    # ---- retries
    def _attempt(self, what: str, op: Callable[[_Attempt], T], *, retry: bool) -> T:
        """Run op; on a transient fault reconnect and run it again (a few times, backing off)
        when `retry` or when nothing was sent yet. Login and host-key errors are never retried."""
        tries = 1 + max(0, self.retries)
        for number in range(tries):
            attempt = _Attempt()
            try:
                return op(attempt)
            except HpcjobError:
                raise
            except Exception as exc:
                if not self._transient(exc):
                    raise
                self._drop()
                if attempt.sent and not retry:
                    raise HpcjobError(
                        f"The connection to {self.target.login.hostname} was lost while "
                        f"{what} ran ({_reason(exc)}); it may or may not have run, and hpcjob "
                        "did not run it again.",
                        hint="Check what happened (`hpcjob status`) before trying again.",
                    ) from exc
                if number + 1 >= tries:
                    raise HpcjobError(
                        f"Lost the connection to {self.target.login.hostname} ({what}): "
                        f"{_reason(exc)}; gave up after {tries} tries.",
                        hint="Check your network (Snellius accepts only whitelisted addresses; "
                        "from elsewhere use its VPN or a jump host, ProxyJump in ~/.ssh/config).",
                    ) from exc
                self.sleep(self.backoff_s[min(number, len(self.backoff_s) - 1)])
        raise AssertionError("unreachable")

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
            return False
        if isinstance(exc, (EOFError, ConnectionError, TimeoutError, socket.timeout)):
            return True
        if isinstance(exc.__context__, (EOFError, ConnectionError)):
            # SFTP's "Server connection dropped" (raised from an EOFError) comes before the
            # transport itself has noticed that the connection is gone.
            return True
        if isinstance(exc, (OSError, paramiko.SSHException)):
            # An SFTP status error (no such file, permission) leaves the connection up.
            conn = self._conn
            return conn is None or not conn.transport.is_active()
        return False

    def _file_op(self, what: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        # Every file operation is safe to repeat: reads, stats, and writes that rename a full file.
        return self._attempt(what, lambda _attempt: op(self._sftp()), retry=True)

    # ---- commands
    def _run_once(
        self,
        argv: tuple[str, ...],
        timeout: float | None,
        env: Mapping[str, str] | None,
        attempt: _Attempt,
        on_output: OutputCallback | None = None,
        *,
        stdin: bytes | None = None,
        profile: bool = True,
    ) -> CommandResult:
        marker = f"__hpcjob_{uuid.uuid4().hex}__"
        command = remote_command(
            argv, marker, env=env, login_shell=self.login_shell, load_profile=profile
        )
        transport = self._transport()
        channel = transport.open_session(timeout=self.connect_timeout_s)
        self.channels_opened += 1
        try:
            attempt.sent = True
            channel.exec_command(command)
            self.commands_run += 1
            if stdin:
                # OSError: the command ended before reading it all; its status and stderr say why.
                with contextlib.suppress(OSError):
                    channel.sendall(stdin)
            channel.shutdown_write()  # stdin at EOF, as LocalShell's DEVNULL
            relay = None if on_output is None else _Relay(marker, on_output)
            out, err, status = _collect(channel, timeout, relay)
        except _Timeout:
            if on_output is not None:
                raise HpcjobError(
                    f"`{shlex.join(argv)}` was stopped after {timeout:g} s on "
                    f"{self.target.login.hostname}.",
                    hint="It ran out of its time; give it more or run it as a job.",
                ) from None
            raise HpcjobError(
                f"`{shlex.join(argv)}` did not answer within {timeout:g} s on "
                f"{self.target.login.hostname}.",
                hint="The scheduler may be busy; try again in a minute.",
            ) from None
        finally:
            channel.close()
        if status == -1 and not transport.is_active():
            raise ConnectionResetError("the connection closed while the command ran")
        stdout = strip_before_marker(out.decode(errors="replace"), marker)
        stderr = strip_before_marker(err.decode(errors="replace"), marker)
        return CommandResult(argv, status, stdout, stderr)

    # ---- login
    def _authenticate(self, transport: paramiko.Transport, index: int) -> None:
        hop = self.target.hops[index]
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
                    self.auth_attempts += 1
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
            raise auth_failed_error(
                hop, tried, notes, f"The connection closed during login ({_reason(exc)})."
            ) from exc
        raise auth_failed_error(hop, tried, notes)

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
        self.auth_attempts += 1
        try:
            if "password" in allowed:
                remaining = transport.auth_password(hop.user, password)
            else:
                remaining = transport.auth_interactive(
                    hop.user, lambda _t, _i, prompts: [password for _ in prompts]
                )
        except paramiko.AuthenticationException:
            raise auth_failed_error(hop, tried) from None
        if remaining:
            self._second_factor(transport, hop, remaining, tried)

    def _second_factor(
        self, transport: paramiko.Transport, hop: Hop, remaining: Sequence[str], tried: list[str]
    ) -> None:
        """A key was accepted and the server asks for more (MFA): one interactive answer."""
        if not self._can_ask() or "keyboard-interactive" not in remaining:
            raise auth_failed_error(
                hop, tried, detail=f"The server also wants {', '.join(remaining)}, which needs "
                "a terminal: run the command in one."
            )  # fmt: skip
        self.auth_attempts += 1
        tried.append("a second factor")
        try:
            rest = transport.auth_interactive(
                hop.user, lambda _t, _i, prompts: [self.prompt(text) for text, _echo in prompts]
            )
        except paramiko.AuthenticationException:
            raise auth_failed_error(hop, tried) from None
        if rest:
            raise auth_failed_error(hop, tried, detail=f"The server still wants {rest}.")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _public_blob(path: str) -> bytes | None:
    try:
        fields = Path(path).read_text(encoding="utf-8").split()
        return base64.b64decode(fields[1]) if len(fields) >= 2 else None
    except (OSError, ValueError):
        return None


class _Relay:
    """Hands a streamed command's output on as text, once past the marker line that ends what
    login scripts print (as `strip_before_marker` does for the collected output)."""

    def __init__(self, marker: str, on_output: OutputCallback) -> None:
        self.marker, self.on_output = marker + "\n", on_output
        self.decoders = (OutputDecoder(), OutputDecoder())
        self.pending = ["", ""]  # per stream: what came before the marker, until it comes
        self.seen = [False, False]

    def feed(self, which: int, data: bytes) -> None:
        text = self.decoders[which].feed(data)
        if not self.seen[which]:
            self.pending[which] += text
            at = self.pending[which].find(self.marker)
            if at < 0:
                return
            self.seen[which] = True
            text, self.pending[which] = self.pending[which][at + len(self.marker) :], ""
        if text:
            self.on_output(text)


def _collect(
    channel: paramiko.Channel, timeout: float | None, relay: _Relay | None = None
) -> tuple[bytes, bytes, int]:
    """stdout, stderr and exit status of a command, read together (neither pipe can fill up);
    `relay` gets each piece as it arrives."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    while True:
        while channel.recv_ready():
            data = channel.recv(65536)
            out += data
            if relay is not None:
                relay.feed(0, data)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            err += data
            if relay is not None:
                relay.feed(1, data)
        if channel.eof_received or channel.closed:
            if not (channel.recv_ready() or channel.recv_stderr_ready()):
                break
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise _Timeout
        select.select([channel], [], [], left)  # the channel's pipe wakes on data, EOF, close
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not channel.status_event.wait(left) and not channel.closed:
        raise _Timeout
    return bytes(out), bytes(err), channel.exit_status


def _stat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    try:
        return sftp.stat(path)
    except FileNotFoundError:
        return None


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    attrs = _stat(sftp, path)
    if attrs is not None:
        if not stat.S_ISDIR(attrs.st_mode or 0):
            raise FileExistsError(f"{path} exists and is not a folder")
        return
    parent = posixpath.dirname(path.rstrip("/"))
    if parent and parent != path.rstrip("/"):
        _makedirs(sftp, parent)
    try:
        sftp.mkdir(path, mode=0o700)  # the user's alone on a shared cluster
    except OSError:
        made = _stat(sftp, path)  # made by someone else meanwhile?
        if made is None or not stat.S_ISDIR(made.st_mode or 0):
            raise


def _walk(sftp: paramiko.SFTPClient, root: str, max_depth: int) -> list[tuple[str, int]]:
    """LocalShell.list_files over SFTP: os.walk's rules (symlinked folders not followed)."""
    found: list[tuple[str, int]] = []
    folders = [("", 0)]
    while folders:
        rel, depth = folders.pop()
        try:
            entries = sftp.listdir_attr(posixpath.join(root, rel) if rel else root)
        except FileNotFoundError:
            continue
        for entry in entries:
            name = posixpath.join(rel, entry.filename) if rel else entry.filename
            mode = entry.st_mode or 0
            if stat.S_ISLNK(mode):
                target = _stat(sftp, posixpath.join(root, name))
                if target is None or stat.S_ISDIR(target.st_mode or 0):
                    continue
                found.append((name, target.st_size or 0))
            elif stat.S_ISDIR(mode):
                if depth < max_depth:
                    folders.append((name, depth + 1))
            else:
                found.append((name, entry.st_size or 0))
    return sorted(found)


# ------------------------------------------------------------------------------ entry points
@dataclass(frozen=True)
class ConnectOptions:
    """How `ssh_shell_for` and `connect_and_trust` reach a profile's host, beyond its values.

    `sources` (Profile.sources) marks values of a built-in profile, which rank below
    ~/.ssh/config; without it every value counts as set by the user. `ssh_config_path` None means
    ~/.ssh/config. `confirm` set: an unknown host key is shown and may be accepted. `prompt` asks
    for a passphrase or password; `interactive` None: asking is allowed when stdin is a terminal.
    """

    ssh_config_path: str | Path | None = None
    prompt: Prompt | None = None
    confirm: Confirm | None = None
    sources: Mapping[str, str] | None = None
    profile_name: str | None = None
    interactive: bool | None = None


def ssh_shell_for(
    profile_values: Mapping[str, Any], options: ConnectOptions | None = None
) -> SSHShell:
    """The SSHShell for a profile with `host` (nothing connects until first use)."""
    opts = options or ConnectOptions()
    text, name = read_ssh_config(opts.ssh_config_path)
    defaults = {k for k, source in (opts.sources or {}).items() if source.startswith("built-in")}
    target = resolve_target(profile_values, text, defaults=defaults, config_name=name)
    return SSHShell(
        target,
        prompt=opts.prompt,
        confirm=opts.confirm,
        profile_name=opts.profile_name,
        interactive=opts.interactive,
    )


@dataclass(frozen=True)
class ConnectReport:
    """What `hpcjob connect` shows: who logged in where, through which jump hosts."""

    user: str
    host: str
    port: int
    jumps: tuple[str, ...]
    home: str
    trusted: tuple[str, ...]  # host keys added to known_hosts on the user's yes
    seconds: float


def connect_and_trust(
    profile_values: Mapping[str, Any], options: ConnectOptions | None = None
) -> ConnectReport:
    """Log in once: show each unknown host key's fingerprint and ask (`options.confirm`, y/N on
    the terminal by default); append it to known_hosts only on yes. A changed key is still
    refused."""
    opts = options or ConnectOptions()
    shell = ssh_shell_for(profile_values, replace(opts, confirm=opts.confirm or _ask_yes_no))
    started = time.monotonic()
    try:
        home = shell.expand_home("~")
    finally:
        shell.close()
    login = shell.target.login
    return ConnectReport(
        user=login.user,
        host=login.hostname,
        port=login.port,
        jumps=tuple(h.label for h in shell.target.jumps),
        home=home,
        trusted=tuple(shell.trusted),
        seconds=round(time.monotonic() - started, 3),
    )


if TYPE_CHECKING:

    def _is_a_shell(shell: SSHShell) -> Shell:
        return shell  # mypy checks that SSHShell matches the Shell protocol
