"""How commands and files reach the machine that runs the scheduler.

`LocalShell` is this machine. (`SSHShell`, a login node over paramiko, has the same surface.) Both
run argv lists — never a shell string built from user input — and read and write files. `run()` is
the one loud chokepoint for external commands: its error names the argv, the exit status and the
tail of stderr.
"""

from __future__ import annotations

import codecs
import io
import os
import selectors
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hpcjob.errors import HpcjobError

OutputCallback = Callable[[str], None]


class OutputDecoder:
    """Bytes as they arrive → text, a UTF-8 character split across two reads kept whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        if text:
            self.parts.append(text)
        return text

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Shell(Protocol):
    """Commands and files on the scheduler's machine."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> CommandResult:
        """Run argv. `idempotent` commands (queries) may be re-run after a dropped connection;
        others (sbatch) never are: the caller checks by token what happened."""
        ...

    def stream(
        self,
        argv: Sequence[str],
        on_output: OutputCallback,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv once (never re-run), handing its stdout and stderr to `on_output` as text
        while it runs; the result holds all of it, as `run`'s does. At `timeout` (HpcjobError)
        or on any exception, KeyboardInterrupt included, the command is stopped and the exception
        goes on: LocalShell ends the process group; SSHShell closes the channel (a remote command
        that keeps on without writing is the caller's to stop)."""
        ...

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Bytes of a regular file (links followed); anything else is an HpcjobError."""
        ...

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

    def write_files(self, root: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        """Write files (relative path → (data, mode)) under `root`, creating it and their folders
        (0700); each file replaced atomically. Over SSH this is one command, not a round trip
        per file."""
        ...

    def makedirs(self, path: str) -> None: ...

    def exists(self, path: str) -> bool: ...

    def size(self, path: str) -> int | None:
        """The size of a regular file (links followed); None for nothing or anything else."""
        ...

    def expand_home(self, path: str) -> str: ...

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        """Regular files under a folder as (relative path, size), at most `max_depth` folders
        down; links only to regular files inside the folder (no FIFOs, devices, links out)."""
        ...

    def close(self) -> None:
        """End the connection, if there is one (a later use opens a new one)."""
        ...


def command_error(result: CommandResult, what: str | None = None) -> HpcjobError:
    """The error for a failed command: argv, exit status, the tail of stderr."""
    tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
    return HpcjobError(
        f"{what or 'Command'} failed: `{' '.join(result.argv)}` exited with {result.returncode}"
        + (f":\n{tail}" if tail else "."),
    )


class LocalShell:
    """This machine: subprocess for commands, the filesystem for files."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        idempotent: bool = False,  # nothing to re-run on this machine
    ) -> CommandResult:
        full_env = None if env is None else {**os.environ, **env}
        try:
            proc = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                env=full_env,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise HpcjobError(
                f"`{argv[0]}` was not found on this machine.",
                hint="Is the program installed and on PATH?",
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise HpcjobError(
                f"`{' '.join(argv)}` did not answer within {timeout:g} s.",
                hint="The scheduler may be busy; try again in a minute.",
            ) from exc
        result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
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
        full_env = None if env is None else {**os.environ, **env}
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        except FileNotFoundError as exc:
            raise HpcjobError(
                f"`{argv[0]}` was not found on this machine.",
                hint="Is the program installed and on PATH?",
            ) from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        out, err = OutputDecoder(), OutputDecoder()
        try:
            with selectors.DefaultSelector() as selector:
                assert proc.stdout is not None and proc.stderr is not None
                selector.register(proc.stdout, selectors.EVENT_READ, out)
                selector.register(proc.stderr, selectors.EVENT_READ, err)
                while selector.get_map():
                    for key, _ in selector.select(_left(argv, deadline, timeout)):
                        data = os.read(key.fd, 65536)
                        if not data:
                            selector.unregister(key.fileobj)
                        text = key.data.feed(data, final=not data)
                        if text:
                            on_output(text)
            try:
                returncode = proc.wait(_left(argv, deadline, timeout))
            except subprocess.TimeoutExpired:
                _left(argv, 0.0, timeout)  # raises the timeout's error
                raise
        except BaseException:
            _stop(proc)
            raise
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return CommandResult(tuple(argv), returncode, out.text, err.text)

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        full = self.expand_home(path)
        # O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are read
        # (a link to /dev/zero would never end).
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise not_a_file(full)
            handle.seek(offset)
            return handle.read() if limit is None else handle.read(limit)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write atomically: a half-written file is never seen under the final name."""
        target = Path(self.expand_home(path))
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_files(self, root: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        for name in check_relative_names(files):
            self.makedirs(os.path.dirname(f"{root}/{name}"))
            self.write_bytes(f"{root}/{name}", *files[name])

    def makedirs(self, path: str) -> None:
        # 0700, every folder made on the way: what hpcjob makes (run directories) is the user's
        # alone on a shared machine.
        target = Path(self.expand_home(path))
        missing = [target, *target.parents]
        missing = missing[: next((i for i, p in enumerate(missing) if p.is_dir()), len(missing))]
        for folder in reversed(missing):
            folder.mkdir(mode=0o700, exist_ok=True)

    def exists(self, path: str) -> bool:
        return Path(self.expand_home(path)).exists()

    def size(self, path: str) -> int | None:
        try:
            info = Path(self.expand_home(path)).stat()
        except FileNotFoundError:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def expand_home(self, path: str) -> str:
        return os.path.expanduser(path)

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        root = Path(self.expand_home(path))
        real_root = root.resolve()
        found: list[tuple[str, int]] = []
        for folder, dirs, files in os.walk(root):
            depth = len(Path(folder).relative_to(root).parts)
            if depth >= max_depth:
                dirs.clear()
            for name in files:
                file = Path(folder) / name
                try:
                    info = file.stat()
                    inside = file.resolve().is_relative_to(real_root)
                except (FileNotFoundError, RuntimeError):
                    continue  # removed while we looked, or a link loop
                # Regular files only, and a link only to one inside the folder: never a FIFO,
                # a device or the user's /etc/passwd.
                if stat.S_ISREG(info.st_mode) and inside:
                    found.append((str(file.relative_to(root)), info.st_size))
        return sorted(found)

    def close(self) -> None:
        """Nothing is held open between commands on this machine."""


def not_a_file(path: str) -> HpcjobError:
    """Reading something that is not a regular file (a FIFO, a device, a folder)."""
    return HpcjobError(
        f"{path} is not a regular file; hpcjob reads only regular files.",
        hint="Something in the run directory is a FIFO, a device or a link to one.",
    )


def is_relative_name(name: str) -> bool:
    """A plain relative path: no `..`, no leading `/`, no control characters."""
    try:
        check_relative_names({name: None})
    except ValueError:
        return False
    return True


def check_relative_names(files: Mapping[str, object]) -> list[str]:
    """The names of `files`, sorted, each a plain relative path (no `..`, no leading `/`, no
    control characters): a bug here must not write outside the run directory."""
    names = sorted(files)
    for name in names:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a plain relative file name: {name!r}")
        if any(ord(c) < 32 or c == "\x7f" for c in name):
            raise ValueError(f"control character in file name: {name!r}")
    return names


def tar_payload(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed tar of `files` (relative path → (data, mode)), owned by nobody in
    particular (the extracting user owns what it writes) and dated now."""
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in check_relative_names(files):
            data, mode = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# Unpacks a tar from stdin into $1 ("~/…" is the home folder): first into a temporary folder
# inside it, so nothing lands under a final name unless the whole archive arrived, then each
# file renamed into place (atomic). Folders are made 0700, files keep the archive's modes. One
# `mv` per folder, bash builtins elsewhere: on a login node every process start counts.
UNPACK_SCRIPT = r"""set -eu
umask 077
shopt -s nullglob dotglob
root=$1
case $root in "~") root=$HOME ;; "~/"*) root=$HOME/${root#"~/"} ;; esac
[ -d "$root" ] || mkdir -p -- "$root"
tmp=$(mktemp -d "$root/.hpcjob-stage.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
trap 'exit 1' HUP INT TERM PIPE
tar -x -p -f - -C "$tmp"
move() {  # the files of folder $1 (relative, "" for the top) into place; then its folders
  local dir=$1 entry files=()
  for entry in "$tmp/$dir"*; do
    if [ -f "$entry" ]; then files+=("$entry"); fi
  done
  if [ ${#files[@]} -gt 0 ]; then
    [ -d "$root/$dir" ] || mkdir -p -- "$root/$dir"
    mv -f -- "${files[@]}" "$root/$dir"
  fi
  for entry in "$tmp/$dir"*; do
    if [ -d "$entry" ]; then move "$dir${entry##*/}/"; fi
  done
}
move ""
"""


def _left(argv: Sequence[str], deadline: float | None, timeout: float | None) -> float | None:
    """Seconds left before `deadline`; past it, the streamed command's timeout error."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise HpcjobError(
            f"`{' '.join(argv)}` was stopped after {timeout:g} s.",
            hint="It ran out of its time; give it more or run it as a job.",
        )
    return left


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 2.0) -> None:
    """End a streamed command and everything it started: TERM, then KILL after a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
