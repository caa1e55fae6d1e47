"""`submit --auto-requeue` on the real Slurm: a training run with a 1-minute limit gets TERM at
the limit, checkpoints (exit 75, state TIMEOUT), is resubmitted by hpcjob and resumes — one run,
several attempts, and the final metrics of an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.support import REPO, UserSession

pytestmark = pytest.mark.slurm

# About 40-70 s per epoch here (beside the reference run): two epochs cannot fit in Slurm's
# smallest limit (1 minute).
TRAIN = ["--epochs", "2", "--batch-size", "32", "--hidden-units", "1024", "--seed", "11",
         "--num-workers", "0", "--no-weighted-sampling"]  # fmt: skip
KEYS = ("train_loss", "val_loss", "val_acc", "val_auc")


@pytest.fixture(scope="module")
def slow_pcam(cluster: dict[str, str], user_python: str) -> Path:
    target = Path(cluster["HPCJOB_TEST_SCRATCH"]) / "pcam-synth-requeue"
    if not (target / "synth.json").exists():
        subprocess.run(
            [user_python, str(REPO / "workloads" / "synth.py"), str(target), "--flavour",
             "official", "--train", "4096", "--valid", "512", "--test", "64", "--seed", "4"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


def test_timeout_checkpoint_requeue_resume_equals_uninterrupted(
    user: UserSession, slow_pcam: Path, user_python: str, tmp_path: Path
) -> None:
    # The reference: the same training, never interrupted, beside the job (same machine, same
    # torch, same thread count: the numbers must match exactly).
    reference = tmp_path / "reference"
    ref = subprocess.Popen(
        [user_python, str(REPO / "workloads" / "train.py"), "--data-dir", str(slow_pcam),
         "--output-dir", str(reference), *TRAIN],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    result = user.hpcjob(
        "submit", "train", "--partition", "rome", "--time", "1", "--mem", "3G",
        "--data-dir", str(slow_pcam),
        "--auto-requeue", "4", "--wait", "--json", *TRAIN, timeout=420,
    )  # fmt: skip
    _out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    assert result.exit_code == 0, result.stderr + user.hpcjob("logs", "last").stdout
    run = result.json()
    assert run["state"] == "COMPLETED"
    assert "auto-requeue 1 of 4" in result.stderr

    shown = user.hpcjob("show", run["run_id"], "--json").json()
    attempts = shown["attempts"]
    assert len(attempts) >= 2, attempts
    for ended in attempts[:-1]:  # stopped by the warning (75) or at the limit (TIMEOUT)
        assert ended["state"] == "TIMEOUT" or (ended["state"], ended["exit_code"]) == (
            "FAILED",
            75,
        ), ended
    assert attempts[-1]["state"] == "COMPLETED" and attempts[-1]["job_id"] == run["job_id"]
    assert len({a["job_id"] for a in attempts}) == len(attempts)
    assert len(user.hpcjob("runs", "--json").json()) == 1  # one run in the ledger
    assert "--signal" not in shown["script"]  # Slurm might send it at once: TERM at the limit

    # The first attempt was stopped by the limit; the last resumed from a checkpoint (the one
    # saved on TERM, or an epoch's, when TERM came while it was validating).
    run_dir = Path(shown["run_dir"])
    first = (run_dir / f"slurm-{attempts[0]['job_id']}.out").read_text()
    last = (run_dir / f"slurm-{attempts[-1]['job_id']}.out").read_text()
    assert "DUE TO TIME LIMIT" in first, first[-2000:]
    assert "Resumed from" in last, last[-2000:]

    expected = {
        (r["step"], k): r[k]
        for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())
        if "step" in r
        for k in KEYS
    }
    assert len(expected) == 2 * len(KEYS)
    got = {(m["step"], m["key"]): m["value"] for m in shown["metrics"]}
    assert {key: got.get(key) for key in expected} == expected
