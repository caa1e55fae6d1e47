"""Shared fixtures: an isolated HPCJOB_HOME, the CLI runner, synthetic PCAM data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, invoke


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


@pytest.fixture
def cli() -> Any:
    return invoke


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
