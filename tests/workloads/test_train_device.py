"""train.py when the job asked for GPUs that torch cannot use: it stops at once with the reason,
or with --allow-cpu trains on the CPU under a loud warning. Run with CUDA_VISIBLE_DEVICES="" (as
Slurm sets it for a job given no GPU), so torch sees none on any machine, GPU or not."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobrun import TRAIN_ARGS, no_gpu_env, run_workload

pytestmark = pytest.mark.slow


def test_gpus_asked_for_but_unusable_stop_training_at_once(
    official_dir: Path, tmp_path: Path
) -> None:
    run = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *TRAIN_ARGS, "--expect-gpus", "1",
        env=no_gpu_env(),
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "this job asked for 1 GPU but none is visible" in run.stderr
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in run.stderr
    assert "--allow-cpu" in run.stderr and "Traceback" not in run.stderr
    assert "First batch OK" not in run.stdout and not run.metrics()  # stopped before training
    assert not (tmp_path / "checkpoints").exists()
    found = run.facts()
    assert found["device"] == "cpu" and found["gpus_requested"] == 1
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in found["gpu_unused_reason"]


def test_the_gpus_asked_for_are_read_from_slurm_without_expect_gpus(
    official_dir: Path, tmp_path: Path
) -> None:
    run = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *TRAIN_ARGS,
        env=no_gpu_env(SLURM_GPUS="1"),
    )  # fmt: skip
    assert run.returncode == 1 and "this job asked for 1 GPU" in run.stderr


def test_the_job_script_says_the_gpus_in_the_environment(
    official_dir: Path, tmp_path: Path
) -> None:
    """The template exports HPCJOB_EXPECT_GPUS rather than pass an option, so a rerun of an older
    snapshot of train.py (which knows no --expect-gpus) still starts."""
    run = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *TRAIN_ARGS,
        env=no_gpu_env(HPCJOB_EXPECT_GPUS="2"),
    )  # fmt: skip
    assert run.returncode == 1 and "this job asked for 2 GPUs" in run.stderr


def test_allow_cpu_trains_on_the_cpu_with_a_loud_warning(
    official_dir: Path, tmp_path: Path
) -> None:
    run = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *TRAIN_ARGS, "--expect-gpus", "2",
        "--allow-cpu", env=no_gpu_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "WARNING: this job asked for 2 GPUs but trains on the CPU (--allow-cpu)" in run.stderr
    assert len(run.epoch_lines()) == 2
    found = run.facts()
    assert found["device"] == "cpu" and found["gpus_requested"] == 2
    assert found["allow_cpu"] is True and "hides every GPU" in found["gpu_unused_reason"]
