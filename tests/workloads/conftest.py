"""Shared fixtures: the workloads on sys.path (as when a job runs `python workloads/x.py`) and
small synthetic PCAM directories, made once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobrun import TRAIN_ARGS, WORKLOADS, Run, run_workload

sys.path.insert(0, str(WORKLOADS))
import synth  # found through the path above


def make_data(root: Path, flavour: str, seed: int) -> Path:
    out = root / flavour
    synth.generate(out, flavour, {"train": 2048, "valid": 512, "test": 128}, seed=seed)
    return out


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), "official", seed=0)


@pytest.fixture(scope="session")
def course_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), "course", seed=1)


@pytest.fixture(scope="session")
def straight_run(official_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted 2-epoch run: checked on its own and the reference for resuming."""
    out = tmp_path_factory.mktemp("straight")
    return run_workload(
        "train.py", out, "--data-dir", official_dir, *TRAIN_ARGS, "--resume", "auto"
    )
