"""How a login node is reached (pure): the hops from the profile's keys and ~/.ssh/config, by the
precedence in the package docstring (`hpcjob.ssh`), and reading ~/.ssh/config with its Includes."""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko

from hpcjob.errors import HpcjobError

SSH_CONFIG = "~/.ssh/config"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
MAX_HOPS = 8


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

    @property
    def known_hosts_file(self) -> str:
        """The known_hosts file a new key of this host is added to (and named in messages)."""
        return self.known_hosts[0] if self.known_hosts else _expand(USER_KNOWN_HOSTS)


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
    profile_name: str | None = None,
) -> SSHTarget:
    """The hops to the profile's `host`, by the precedence in the package docstring.

    `defaults` names profile keys whose values are built-in defaults: they rank below
    ~/.ssh/config. `~` expands with $HOME (paramiko's SSHConfig does the same for IdentityFile).
    """
    host = str(profile.get("host") or "").strip()
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        whose = f"Profile {profile_name}'s" if profile_name else "The profile's"
        raise HpcjobError(
            f"{whose} host {host!r} is not a host name.",
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
        except ImportError:  # `Match exec`: paramiko was imported without `invoke` (__init__.py)
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
