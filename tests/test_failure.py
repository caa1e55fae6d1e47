"""Why a failed run failed, in one line: the pure module on recorded-looking tails, and the
embedded scheduler end to end (show, status --json, --wait)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcjob.failure import Failure, error_line, explain_failure

TRACEBACK = """\
+ python3 train.py --epochs 3
Traceback (most recent call last):
  File "/home/u/job/train.py", line 30, in <module>
    import h5py
ModuleNotFoundError: No module named 'h5py'
"""


@pytest.mark.parametrize(
    ("state", "exit_code", "tail", "facts", "line", "cause", "fix"),
    [
        (
            "FAILED",
            1,
            TRACEBACK,
            {},
            "ModuleNotFoundError: No module named 'h5py'",
            "module not found",
            "hpcjob setup-env",
        ),
        (
            "FAILED",
            1,
            "epoch 0\nError: this job asked for 1 GPU but torch sees no CUDA device. Stopping\n",
            {"gpu_unused_reason": "torch.cuda.is_available() is False", "allow_cpu": False},
            "Error: this job asked for 1 GPU but torch sees no CUDA device. Stopping",
            "no GPU",
            "--allow-cpu",
        ),
        (
            "FAILED",
            1,
            "step 3\n",
            {"gpu_unused_reason": "no driver", "allow_cpu": False},
            "GPUs were asked for but the job saw no CUDA device",
            "no GPU",
            "GPU partition",
        ),
        (
            "FAILED",
            1,
            "Traceback (most recent call last):\n  x\ntorch.OutOfMemoryError: CUDA out of memory. "
            "Tried to allocate 2.00 GiB\n",
            {},
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            "GPU out of memory",
            "--batch-size",
        ),
        (
            "FAILED",
            1,
            "Traceback (most recent call last):\n  x\nMemoryError\n",
            {},
            "MemoryError",
            "out of memory",
            "--mem 32G",
        ),
        (
            "OUT_OF_MEMORY",
            None,
            "epoch 1\nslurmstepd: error: Detected 1 oom-kill event(s) in StepId=18163908.batch. "
            "Some of the step tasks have been OOM Killed.\n",
            {},
            "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=18163908.batch. "
            "Some of the step tasks have been OOM Killed.",
            "out of memory",
            "--mem",
        ),
        (
            "TIMEOUT",
            None,
            "epoch 7\nslurmstepd: error: *** JOB 18163908 ON tcn12 CANCELLED AT "
            "2026-12-06T10:00:00 DUE TO TIME LIMIT ***\n",
            {},
            "slurmstepd: error: *** JOB 18163908 ON tcn12 CANCELLED AT 2026-12-06T10:00:00 DUE "
            "TO TIME LIMIT ***",
            "time limit",
            "--time",
        ),
        ("TIMEOUT", None, "", {}, "the job reached its time limit", "time limit", "--time"),
        (
            "FAILED",
            65,
            "Error: non-finite loss (nan) at epoch 2, batch 14: 3 of 64 non-finite\n",
            {},
            "Error: non-finite loss (nan) at epoch 2, batch 14: 3 of 64 non-finite",
            "non-finite loss",
            "--lr",
        ),
        (
            "FAILED",
            65,
            "epoch 2\n",
            {},
            "the loss became NaN or infinite",
            "non-finite loss",
            "--resume",
        ),
        (
            "FAILED",
            1,
            "Error: [Errno 2] No such file or directory: '/scratch/u/pcam/train.h5'\n",
            {},
            "Error: [Errno 2] No such file or directory: '/scratch/u/pcam/train.h5'",
            "file not found",
            "--data-dir",
        ),
        (
            "FAILED",
            1,
            "Traceback (most recent call last):\n  x\nFileNotFoundError: [Errno 2] data.csv\n",
            {},
            "FileNotFoundError: [Errno 2] data.csv",
            "file not found",
            "--data-dir",
        ),
        (
            "FAILED",
            1,
            "saving\nOSError: [Errno 122] Disk quota exceeded: 'ckpt/last.pt'\n",
            {},
            "OSError: [Errno 122] Disk quota exceeded: 'ckpt/last.pt'",
            "disk quota",
            "myquota",
        ),
        (
            "FAILED",
            127,
            "/var/spool/slurmd/job1/slurm_script: line 40: torchrun: command not found\n",
            {},
            "/var/spool/slurmd/job1/slurm_script: line 40: torchrun: command not found",
            "command not found",
            "full path",
        ),
        (
            "FAILED",
            127,
            "",
            {},
            "a command is not on the job's PATH",
            "command not found",
            "setup-env",
        ),
        ("FAILED", 2, "ValueError: bad value\n", {}, "ValueError: bad value", None, None),
    ],
)
def test_each_cause_is_recognised_with_its_fix(
    state: str,
    exit_code: int | None,
    tail: str,
    facts: dict[str, Any],
    line: str,
    cause: str | None,
    fix: str | None,
) -> None:
    found = explain_failure(state, exit_code, tail, facts)
    assert found is not None
    assert found.line == line
    assert found.cause == cause
    if fix is None:
        assert found.fix is None
    else:
        assert found.fix is not None and fix in found.fix


def test_nothing_to_say() -> None:
    assert explain_failure("COMPLETED", 0, TRACEBACK, {}) is None
    assert explain_failure("FAILED", 1, "epoch 1 loss 0.3\n", {}) is None
    assert explain_failure("CANCELLED", None, "", {}) is None


def test_the_last_error_line_wins_and_is_shortened() -> None:
    tail = "Error: first\nnormal\nRuntimeError: second\n  trailing\n"
    assert error_line(tail) == "RuntimeError: second"
    long = "Error: " + "x" * 1000
    line = error_line(long)
    assert line is not None and len(line) == 300 and line.endswith("…")
    assert error_line("hpcjob: the venv is missing\n") == "hpcjob: the venv is missing"
    assert Failure("l", "c", "f").as_fact() == {"line": "l", "cause": "c", "fix": "f"}


def test_a_failed_run_says_why_end_to_end(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "no-project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    wanted = "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    waited = cli(
        "submit", "--time", "10", "--wait", "--", "python3", "-c", "import no_such_module_xyz"
    )
    assert waited.exit_code == 3
    assert wanted in waited.stderr and "hpcjob setup-env" in waited.stderr
    assert "FAILED" in waited.stdout
    shown = cli("show", "last", "--json").json()
    assert shown["state"] == "FAILED"
    assert shown["reason"] == wanted
    assert shown["failure"]["line"] == wanted and shown["failure"]["cause"] == "module not found"
    assert "hpcjob setup-env" in shown["failure"]["fix"]
    text = cli("show", "last", "--no-script").stdout
    assert f"Why: {wanted}" in text and "Fix: " in text
    (row,) = [r for r in cli("status", "--json").json() if r["run_id"] == shown["run_id"]]
    assert row["reason"] == wanted
    as_json = cli(
        "submit", "--time", "10", "--wait", "--json", "--", "python3", "-c", "import no_such_xyz"
    )
    assert as_json.exit_code == 3
    assert "No module named 'no_such_xyz'" in json.dumps(as_json.json()["reason"])
