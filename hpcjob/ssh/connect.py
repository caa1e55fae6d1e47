"""The entry points: `ssh_shell_for` (the SSHShell of a profile, from its values and
~/.ssh/config) and `connect_and_trust` (behind `hpcjob connect`: log in once, asking before a new
host key is trusted)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpcjob.ssh.hostkeys import Confirm
from hpcjob.ssh.login import Prompt
from hpcjob.ssh.session import SSHShell
from hpcjob.ssh.target import read_ssh_config, resolve_target


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
    target = resolve_target(
        profile_values,
        text,
        defaults=defaults,
        config_name=name,
        profile_name=opts.profile_name,
    )
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
