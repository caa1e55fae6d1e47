"""check_gpu.py: what it concludes from the job's request and what torch can see."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import check_gpu
import pytest
import torch
from jobrun import run_workload

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the CPU-only path")


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


@needs_no_gpu
def test_no_gpu_requested_is_fine_on_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_gpu.main(["--output-dir", str(tmp_path)], env={}) == 0
    assert "no GPU requested, CPU only" in capsys.readouterr().out
    facts = json.loads((tmp_path / "metrics.jsonl").read_text())["facts"]
    assert facts["gpu_count"] == 0 and facts["cuda_available"] is False
    assert facts["torch"] == str(torch.__version__) and facts["gpus_requested"] == 0


@needs_no_gpu
def test_gpu_asked_for_by_slurm_but_invisible_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": ""}
    assert check_gpu.main(["--output-dir", str(tmp_path)], env=env) == 1
    err = capsys.readouterr().err
    assert "this job asked for 2 GPUs but none is visible" in err
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in err


@needs_no_gpu
def test_expect_gpus_as_a_job_runs_it(tmp_path: Path) -> None:
    run = run_workload("check_gpu.py", tmp_path, "--expect-gpus", "1")
    assert run.returncode == 1
    assert "this job asked for 1 GPU but none is visible" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.records()[0]["facts"]["gpus_requested"] == 1


def test_missing_torch_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert check_gpu.main(["--output-dir", str(tmp_path)], env={}) == 1
    assert "torch cannot be imported" in capsys.readouterr().err
