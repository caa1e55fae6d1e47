"""Shared fixtures: an isolated HPCJOB_HOME, the CLI runner, synthetic PCAM data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HPCJOB_HOME and the local profile; never the developer's files."""
    home = tmp_path / "hpcjob-home"
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "local")
    monkeypatch.setenv("HPCJOB_LOCAL_KILL_WAIT", "1")
    for key in list(os.environ):
        if (
            key.startswith("HPCJOB_")
            and key
            not in (
                "HPCJOB_HOME",
                "HPCJOB_PROFILE",
                "HPCJOB_LOCAL_KILL_WAIT",
            )
            and not key.startswith("HPCJOB_TEST_")
        ):
            monkeypatch.delenv(key)
    return home


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


@pytest.fixture
def cli() -> Any:
    return invoke


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


@pytest.fixture(scope="session")
def pcam_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small synthetic PCAM set (official flavour) made by the workloads' own generator."""
    out = tmp_path_factory.mktemp("pcam")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "workloads" / "synth.py"),
            str(out),
            "--flavour",
            "official",
            "--train",
            "1024",
            "--valid",
            "256",
            "--test",
            "256",
            "--seed",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    yield out
