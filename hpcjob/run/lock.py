"""The submitter lock: held by the process submitting a run for as long as the run may still be
SUBMITTING — an flock on `$HPCJOB_HOME/submitting/<run>.lock`. The kernel drops it when the process
dies (even by SIGKILL), so another hpcjob can tell a live submission from one a crash left behind,
without waiting."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from hpcjob.errors import HpcjobError


def _lock_path(home: Path, run_id: str) -> Path:
    return home / "submitting" / f"{run_id}.lock"


class SubmitterLock:
    """Held by the process submitting a run, for as long as the run may still be SUBMITTING."""

    def __init__(self, home: Path, run_id: str) -> None:
        self.path = _lock_path(home, run_id)
        self._fd: int | None = None

    def __enter__(self) -> SubmitterLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HpcjobError(
                f"Cannot write {self.path}: {exc.strerror}; nothing was submitted.",
                hint="hpcjob keeps its ledger and locks in HPCJOB_HOME: free some space or make "
                "it writable.",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HpcjobError(
                f"Another hpcjob process is submitting run {self.path.stem} right now.",
                hint="Wait for it to finish, then look with `hpcjob status`.",
            ) from None
        with contextlib.suppress(OSError):  # who holds it, for a person looking (disk may be full)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def submitter_alive(home: Path, run_id: str) -> bool | None:
    """True while a process holds the run's lock, False when the lock file is left by a process
    that died (it is removed), None when there is no lock file to ask."""
    path = _lock_path(home, run_id)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    finally:
        os.close(fd)
