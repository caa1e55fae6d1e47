"""What tests share: running the CLI (in-process and as a process), recorded Slurm outputs and the
Shell that replays them, a ledger row to start from, and the secret-scanning helpers. Test modules
import from here, never from each other."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hpcjob.ledger.records import NewRun
from hpcjob.shell import CommandResult

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def invoke(*args: str) -> Result:
    """Run the CLI in-process, stdout and stderr apart."""
    from hpcjob.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def run_hpcjob(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run hpcjob as a separate process, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpcjob", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def new_run(**overrides: object) -> NewRun:
    values: dict[str, object] = dict(
        profile="local",
        cluster="local:test",
        scheduler="local",
        workload="train",
        spec={"workload": "train", "resources": {"partition": None}},
        script="#!/bin/bash\necho hi\n",
        script_hash="abc",
        run_dir="/runs/x",
    )
    values.update(overrides)
    return NewRun(**values)  # type: ignore[arg-type]


def recorded(name: str) -> CommandResult:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return CommandResult(tuple(data["command"]), data["returncode"], data["stdout"], data["stderr"])


class ReplayShell:
    """Answers each command (by its program name) from a queue of recorded results."""

    def __init__(self, answers: Mapping[str, Sequence[CommandResult]]) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.calls: list[list[str]] = []
        self.files: dict[str, bytes] = {}

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> CommandResult:
        self.calls.append(list(argv))
        queue = self.answers.get(argv[0])
        if not queue:
            raise AssertionError(f"unexpected command {argv}")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def read_bytes(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        data = self.files[path][offset:]
        return data if limit is None else data[:limit]

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.files[path] = data

    def write_files(self, root: str, files: Mapping[str, tuple[bytes, int]]) -> None:
        for name, (data, _mode) in files.items():
            self.files[f"{root}/{name}"] = data

    def makedirs(self, path: str) -> None:
        pass

    def exists(self, path: str) -> bool:
        return path in self.files

    def size(self, path: str) -> int | None:
        return len(self.files[path]) if path in self.files else None

    def expand_home(self, path: str) -> str:
        return path.replace("~", "/home/u", 1)

    def list_files(self, path: str, max_depth: int = 2) -> list[tuple[str, int]]:
        prefix = path.rstrip("/") + "/"
        return [(p[len(prefix) :], len(d)) for p, d in self.files.items() if p.startswith(prefix)]

    def commands(self) -> list[str]:
        return [argv[0] for argv in self.calls]


SECRET_ENV = {
    "HF_TOKEN": "hf_PLANTEDtokenDoNotLeak0001",
    "WANDB_API_KEY": "wandbPLANTEDkey0000000000000000000002",
    "AWS_SECRET_ACCESS_KEY": "awsPLANTEDsecret/0003+xyz",
    "GITHUB_TOKEN": "ghp_PLANTEDgithub0004",
    "DB_PASSWORD": "PLANTED-password-0005",
}


PASSPHRASE = "PLANTED passphrase 0006"


def make_key(folder: Path, passphrase: str) -> tuple[Path, list[str]]:
    """An encrypted ed25519 key and the lines of its body (what must never be copied)."""
    key = folder / "id_planted"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)], check=True
    )
    body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
    return key, body


def needles(key_body: Iterable[str], passphrase: str = PASSPHRASE) -> list[str]:
    return [*SECRET_ENV.values(), passphrase, *[line for line in key_body if len(line) > 20]]


def leaks(blobs: dict[str, bytes], secrets: list[str]) -> list[str]:
    found = []
    for where, data in blobs.items():
        for secret in secrets:
            if secret.encode() in data:
                found.append(f"{secret[:12]}… in {where}")
    return found


def artefacts(home: Path) -> dict[str, bytes]:
    """Every file under HPCJOB_HOME, plus a text dump of the ledger."""
    blobs = {str(p): p.read_bytes() for p in home.rglob("*") if p.is_file()}
    ledger = home / "ledger.db"
    if ledger.exists():
        db = sqlite3.connect(ledger)
        blobs["ledger dump"] = "\n".join(db.iterdump()).encode()
        db.close()
    return blobs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
