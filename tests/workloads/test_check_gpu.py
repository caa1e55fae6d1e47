"""check_gpu.py: what it concludes from the job's request and what torch can see.

The CPU-only path is checked on every machine: a job run with CUDA_VISIBLE_DEVICES="" (as Slurm
sets it for a job given no GPU) sees none, even where this machine has one. The path the machine
itself takes, GPU or not, is checked as it is. No test here skips for lack or presence of a GPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import check_gpu
import pytest
import torch
from jobrun import no_gpu_env, run_workload


@pytest.mark.parametrize(
    "env, wanted",
    [
        ({}, 0),
        ({"SLURM_GPUS_ON_NODE": "1"}, 1),
        ({"SLURM_GPUS": "a100:2"}, 2),
        ({"SLURM_TRES_PER_TASK": "cpu=18,gres/gpu:1"}, 1),
        ({"SLURM_TRES_PER_TASK": "cpu=16"}, 0),
        ({"SLURM_GPUS_PER_NODE": "gpu:a100:4"}, 4),
        ({"SLURM_JOB_GPUS": "0,1,2"}, 3),
        ({"SLURM_JOB_ID": "123", "SLURM_CPUS_PER_TASK": "4"}, 0),
    ],
)
def test_requested_gpus_from_slurm_variables(env: dict[str, str], wanted: int) -> None:
    assert check_gpu.requested_gpus(env) == wanted


def test_no_gpu_requested_is_fine_on_cpu(tmp_path: Path) -> None:
    run = run_workload("check_gpu.py", tmp_path, env=no_gpu_env())
    assert run.returncode == 0, run.stderr
    assert "no GPU requested, CPU only" in run.stdout
    seen = run.facts()
    assert seen["gpu_count"] == 0 and seen["cuda_available"] is False
    assert seen["torch"] == str(torch.__version__) and seen["gpus_requested"] == 0


def test_gpu_asked_for_by_slurm_but_invisible_fails(tmp_path: Path) -> None:
    run = run_workload("check_gpu.py", tmp_path, env=no_gpu_env(SLURM_GPUS_ON_NODE="2"))
    assert run.returncode == 1
    assert "this job asked for 2 GPUs but none is visible" in run.stderr
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in run.stderr
    assert "Traceback" not in run.stderr


def test_expect_gpus_as_a_job_runs_it(tmp_path: Path) -> None:
    run = run_workload("check_gpu.py", tmp_path, "--expect-gpus", "1", env=no_gpu_env())
    assert run.returncode == 1
    assert "this job asked for 1 GPU but none is visible" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.records()[0]["facts"]["gpus_requested"] == 1


def test_this_machine_as_it_is(tmp_path: Path) -> None:
    """No GPU asked for, and this machine's own GPUs (if any) left visible: the conclusion
    matches what torch sees here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run = run_workload("check_gpu.py", tmp_path, "--matmul-size", "256", env=env)
    assert run.returncode == 0, run.stderr
    seen = run.facts()
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        assert f"OK: {count} GPU(s) visible, 0 requested" in run.stdout
        assert seen["gpu_count"] == count and len(seen["gpu_names"]) == count
    else:
        assert "no GPU requested, CPU only" in run.stdout and seen["gpu_count"] == 0


def test_missing_torch_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert check_gpu.main(["--output-dir", str(tmp_path)], env={}) == 1
    assert "torch cannot be imported" in capsys.readouterr().err
