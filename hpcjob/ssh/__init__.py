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

The modules, each importing only those above it in this list: `target` (resolution, pure),
`hostkeys` (fingerprints, known_hosts, the refusals), `channel` (the remote command line, a
channel's output, SFTP helpers), `login` (keys, agent, passphrase, password, second factor),
`session` (SSHShell), `connect` (the entry points: `ssh_shell_for`, `connect_and_trust`).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path


def _real_metadata() -> types.ModuleType:
    """The real importlib.metadata, in place of the stand-in from here on."""
    if sys.modules.get("importlib.metadata") is _METADATA:
        del sys.modules["importlib.metadata"]
    import importlib.metadata

    return importlib.metadata


def _version_from_dist_info(name: str) -> str:
    """`importlib.metadata.version(name)` for a package being imported, read from the name of
    its `<name>-<version>.dist-info` folder; the real lookup where that folder is not found."""
    origin = getattr(sys.modules.get(name), "__file__", None)
    if origin:
        found = sorted(Path(origin).parent.parent.glob(f"{name}-*.dist-info"))
        if len(found) == 1:
            return found[0].name[len(name) + 1 : -len(".dist-info")]
    return str(_real_metadata().version(name))


def _anything_else(attribute: str) -> object:
    """Whatever else a module imported meanwhile asks of importlib.metadata: the real thing."""
    return getattr(_real_metadata(), attribute)


_METADATA = types.ModuleType("importlib.metadata")
_METADATA.version = _version_from_dist_info  # type: ignore[attr-defined]
_METADATA.__getattr__ = _anything_else  # type: ignore[method-assign]


# paramiko.config imports `invoke` (asyncio, unittest.mock, yaml: ~36 ms of every command over
# SSH) only to run `Match exec` lines of ~/.ssh/config. Import paramiko without it, here, before
# any module of this package can import it; `target._lookup` imports `invoke` after all when a
# config needs it. paramiko's __init__ also imports importlib.metadata (~30 ms: email, zipfile,
# a scan of sys.path) only to learn its own version: a stand-in answers that one question.
_BLOCK_INVOKE = "invoke" not in sys.modules
_STAND_IN = "importlib.metadata" not in sys.modules
if _BLOCK_INVOKE:
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` → ImportError
if _STAND_IN:
    sys.modules["importlib.metadata"] = _METADATA
try:
    import paramiko  # noqa: F401  # for the side effect above: the modules import it again
finally:
    if _BLOCK_INVOKE and sys.modules.get("invoke", False) is None:
        del sys.modules["invoke"]
    if _STAND_IN and sys.modules.get("importlib.metadata") is _METADATA:
        del sys.modules["importlib.metadata"]
