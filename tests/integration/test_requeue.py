"""`submit --auto-requeue` on the real Slurm: one training run goes through three jobs — the
first stopped by Slurm's warning signal (train.py checkpoints, exit 75), the second by its time
limit (TIMEOUT), the third resumes and finishes — and ends with the numbers of an uninterrupted
run with the same seed, as ONE run in the ledger.

Each interruption is an event the test makes, never a guess about how long an epoch takes:
- the warning: once epoch 1's checkpoint exists, train.py is frozen (SIGSTOP) where it stands,
  the test delivers USR1 to the batch shell as Slurm does (`scancel --signal=USR1 --batch`),
  sees the shell pass it on to train.py (pending on the frozen process), and lets it go on;
- the time limit: the second job's train.py is frozen as soon as it starts, so the job cannot
  finish, and its limit is cut to Slurm's smallest (1 minute) by its owner (`scontrol update`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import (
    REPO,
    UserSession,
    current_job,
    pending_signals,
    processes_matching,
    synthetic_pcam,
    wait_until,
)

pytestmark = pytest.mark.slurm

# A few seconds an epoch here; how long does not matter (the test waits for events).
# --keep-checkpoints 2: epoch-NNN.pt files show the test which epochs have ended.
TRAIN = ["--epochs", "2", "--batch-size", "16", "--hidden-units", "128", "--seed", "11",
         "--num-workers", "0", "--no-weighted-sampling", "--keep-checkpoints", "2"]  # fmt: skip
KEYS = ("train_loss", "val_loss", "val_acc", "val_auc")


@pytest.fixture(scope="module")
def requeue_pcam(cluster: dict[str, str], user_python: str) -> Path:
    scratch = Path(cluster["HPCJOB_TEST_SCRATCH"])
    return synthetic_pcam(scratch, user_python, train=1024, valid=256, test=64, seed=4)


def train_processes(run_dir: Path, but: int | None = None) -> list[int]:
    return [p for p in processes_matching(f"{run_dir}/workload/train.py") if p != but]


def test_warned_then_timed_out_run_resumes_to_the_uninterrupted_result(
    user: UserSession, requeue_pcam: Path, user_python: str, tmp_path: Path
) -> None:
    # The reference: the same training, never interrupted, beside the job (same machine, same
    # torch, same thread count: the numbers must match exactly).
    reference = tmp_path / "reference"
    ref = subprocess.Popen(
        [user_python, str(REPO / "workloads" / "train.py"), "--data-dir", str(requeue_pcam),
         "--output-dir", str(reference), *TRAIN],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # 5 minutes: no --signal in the script (Slurm may send it up to a minute early), and only a
    # bound on a hang for the attempts that are not cut short.
    submit = subprocess.Popen(
        user.argv("submit", "train", "--partition", "rome", "--time", "5", "--mem", "3G",
                  "--data-dir", str(requeue_pcam), "--auto-requeue", "4", "--wait", "--json",
                  *TRAIN),
        cwd=user.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    frozen: list[int] = []
    run_dir: Path | None = None
    try:
        run_dir = wait_until(
            lambda: next((user.home / "runs").glob("*"), None), "the run directory"
        )
        checkpoints = run_dir / "checkpoints"

        # Attempt 1: Slurm's warning, delivered by the test once epoch 1 is saved.
        wait_until((checkpoints / "epoch-001.pt").exists, "epoch 1's checkpoint", tick_s=0.02)
        (first,) = train_processes(run_dir)
        os.kill(first, signal.SIGSTOP)
        frozen.append(first)
        assert not (checkpoints / "epoch-002.pt").exists(), "epoch 2 ended before the freeze"
        first_job = wait_until(lambda: current_job(user), "the first job id")
        warned = user.as_user("scancel", "--signal=USR1", "--batch", first_job)
        assert warned.returncode == 0, warned.stderr
        wait_until(
            lambda: signal.SIGUSR1 in pending_signals(first),
            "the batch shell passing USR1 on to train.py",
        )
        os.kill(first, signal.SIGCONT)

        # Attempt 2: cannot finish (frozen from its start) and hits its time limit.
        second = wait_until(lambda: train_processes(run_dir, first), "the next job's train.py")[0]
        os.kill(second, signal.SIGSTOP)
        frozen.append(second)
        second_job = wait_until(lambda: current_job(user, not_=first_job), "the second job id")
        shortened = user.as_user("scontrol", "update", f"JobId={second_job}", "TimeLimit=1")
        assert shortened.returncode == 0, shortened.stderr

        # Attempt 3 runs free.
        out, err = submit.communicate(timeout=600)
    finally:
        if submit.poll() is None:
            submit.kill()
        for pid in frozen:  # a failed test leaves nothing stopped (the fixture cancels the jobs)
            if run_dir is not None and pid in train_processes(run_dir):
                os.kill(pid, signal.SIGCONT)
    _out, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_err
    assert submit.returncode == 0, err + user.hpcjob("logs", "last").stdout
    run = json.loads(out)
    assert run["state"] == "COMPLETED"
    assert "auto-requeue 1 of 4" in err and "auto-requeue 2 of 4" in err, err

    shown = user.hpcjob("show", run["run_id"], "--json").json()
    attempts = shown["attempts"]
    assert [a["state"] for a in attempts] == ["FAILED", "TIMEOUT", "COMPLETED"], attempts
    assert attempts[0]["exit_code"] == 75, attempts  # stopped by the warning, with a checkpoint
    assert [a["job_id"] for a in attempts] == [first_job, second_job, run["job_id"]]
    assert len(user.hpcjob("runs", "--json").json()) == 1  # one run in the ledger
    assert "--signal" not in shown["script"]

    assert run_dir is not None
    outputs = [(run_dir / f"slurm-{a['job_id']}.out").read_text() for a in attempts]
    assert "Received SIGUSR1: saved" in outputs[0], outputs[0][-2000:]
    assert "stopped before the time limit with a checkpoint" in outputs[0]
    assert "DUE TO TIME LIMIT" in outputs[1], outputs[1][-2000:]
    assert "Resumed from" in outputs[2] and "Done: 2 epochs" in outputs[2], outputs[2][-2000:]

    expected = {
        (r["step"], k): r[k]
        for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())
        if "step" in r
        for k in KEYS
    }
    assert len(expected) == 2 * len(KEYS)
    got = {(m["step"], m["key"]): m["value"] for m in shown["metrics"]}
    assert {key: got.get(key) for key in expected} == expected
