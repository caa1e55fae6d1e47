"""What travels over one SSH channel: the remote command line (pure: quoting, the marker that ends
what login scripts print, `bash -lc`), a command's output read as it comes, and the SFTP helpers
(stat, makedirs, walk) that `SSHShell` builds its file operations on."""

from __future__ import annotations

import posixpath
import re
import select
import shlex
import stat
import time
from collections.abc import Mapping, Sequence

import paramiko

from hpcjob.shell import OutputCallback, OutputDecoder

# ------------------------------------------------------------------------- command line (pure)
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


# ------------------------------------------------------------------------------- the channel
def describe_fault(exc: BaseException) -> str:
    """An exception in one line for a message: its type, and its text when it has one."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CommandTimeout(Exception):
    """The command did not finish within its timeout (the channel is still open)."""


class Relay:
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
                # What login scripts print before the marker is dropped anyway: keep only what
                # may be the marker's start, so endless output before it cannot fill memory.
                self.pending[which] = self.pending[which][-len(self.marker) :]
                return
            self.seen[which] = True
            text, self.pending[which] = self.pending[which][at + len(self.marker) :], ""
        if text:
            self.on_output(text)


# A command's output kept in memory, per stream; the rest is read (so the command can finish)
# and dropped, with a note on stderr. A compromised login node may answer with endless output.
OUTPUT_MAX = 64 * 1024 * 1024


def collect(
    channel: paramiko.Channel,
    timeout: float | None,
    relay: Relay | None = None,
    max_bytes: int = OUTPUT_MAX,
) -> tuple[bytes, bytes, int]:
    """stdout, stderr and exit status of a command, read together (neither pipe can fill up),
    each kept up to `max_bytes`; `relay` gets each piece as it arrives."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    dropped = [0, 0]
    while True:
        while channel.recv_ready():
            data = channel.recv(65536)
            dropped[0] += _keep(out, data, max_bytes)
            if relay is not None:
                relay.feed(0, data)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            dropped[1] += _keep(err, data, max_bytes)
            if relay is not None:
                relay.feed(1, data)
        if channel.eof_received or channel.closed:
            if not (channel.recv_ready() or channel.recv_stderr_ready()):
                break
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise CommandTimeout
        select.select([channel], [], [], left)  # the channel's pipe wakes on data, EOF, close
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not channel.status_event.wait(left) and not channel.closed:
        raise CommandTimeout
    for name, count in zip(("stdout", "stderr"), dropped, strict=True):
        if count:
            err += f"\n[hpcjob: {count} bytes of {name} past {max_bytes} were dropped]\n".encode()
    return bytes(out), bytes(err), channel.exit_status


def _keep(buffer: bytearray, data: bytes, max_bytes: int) -> int:
    """Append what fits under `max_bytes`; how many bytes did not."""
    room = max(0, max_bytes - len(buffer))
    buffer += data[:room]
    return len(data) - min(room, len(data))


# ------------------------------------------------------------------------------------------ SFTP
def sftp_stat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    """The attributes of a path (symlinks followed); None when there is nothing there."""
    try:
        return sftp.stat(path)
    except FileNotFoundError:
        return None


def sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    """`mkdir -p`, each new folder private (0700)."""
    attrs = sftp_stat(sftp, path)
    if attrs is not None:
        if not stat.S_ISDIR(attrs.st_mode or 0):
            raise FileExistsError(f"{path} exists and is not a folder")
        return
    parent = posixpath.dirname(path.rstrip("/"))
    if parent and parent != path.rstrip("/"):
        sftp_makedirs(sftp, parent)
    try:
        sftp.mkdir(path, mode=0o700)  # the user's alone on a shared cluster
    except OSError:
        made = sftp_stat(sftp, path)  # made by someone else meanwhile?
        if made is None or not stat.S_ISDIR(made.st_mode or 0):
            raise


def sftp_walk(sftp: paramiko.SFTPClient, root: str, max_depth: int) -> list[tuple[str, int]]:
    """LocalShell.list_files over SFTP: os.walk's rules (symlinked folders not followed);
    regular files only, a link only to one inside `root`."""
    found: list[tuple[str, int]] = []
    real_root: str | None = None
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
                target = sftp_stat(sftp, posixpath.join(root, name))
                if target is None or not stat.S_ISREG(target.st_mode or 0):
                    continue  # a folder, a FIFO, a device, or nothing
                real_root = real_root or sftp.normalize(root)
                if not sftp.normalize(posixpath.join(root, name)).startswith(real_root + "/"):
                    continue  # a link out of the run directory
                found.append((name, target.st_size or 0))
            elif stat.S_ISDIR(mode):
                if depth < max_depth:
                    folders.append((name, depth + 1))
            elif stat.S_ISREG(mode):
                found.append((name, entry.st_size or 0))
    return sorted(found)
