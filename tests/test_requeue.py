"""`submit --auto-requeue N` on the embedded scheduler: a run that hits its time limit is
resubmitted in its run directory and resumes; the ledger keeps one run with several attempts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpcjob.ledger.store import Ledger

REPO = Path(__file__).resolve().parent.parent
Invoke = Any

# A stand-in for train.py that costs no torch: it counts steps in a state file (its
# "checkpoint"), prints one epoch line per step, and on Slurm's warning (USR1) stops with 75.
COUNTER_TEMPLATE = """{% extends "base.sbatch.j2" %}
{% block sbatch_extra %}{{ sbatch("signal", "B:USR1@1") }}{% endblock %}
{% block command %}
trap 'echo "checkpoint at step $n"; exit 75' USR1
n=$(cat step 2>/dev/null || echo 0)
echo "attempt starts at step $n"
while [ "$n" -lt STEPS ]; do
    sleep 0.4
    echo "Epoch $((n + 1)): Train_Loss = 0.$((n + 1))"
    n=$((n + 1))
    echo "$n" > step
done
echo done
{% endblock %}
"""
# Ignores the warning: the scheduler ends it TIMEOUT at the limit (TERM, then KILL).
STUBBORN_TEMPLATE = """{% extends "base.sbatch.j2" %}
{% block command %}
n=$(cat step 2>/dev/null || echo 0)
trap '' USR1
while [ "$n" -lt STEPS ]; do sleep 0.4; n=$((n + 1)); echo "$n" > step; done
echo done
{% endblock %}
"""


def _template(home: Path, text: str, steps: int) -> None:
    folder = home / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.sbatch.j2").write_text(text.replace("STEPS", str(steps)))


def _submit(cli: Invoke, pcam_dir: Path, *args: str) -> Any:
    return cli(
        "submit", "train", "--data-dir", str(pcam_dir), "--time", "0:03", "--wait", "--json",
        *args,
    )  # fmt: skip


def test_warned_run_is_resubmitted_and_resumes_as_one_run(
    cli: Invoke, pcam_dir: Path, isolated_home: Path
) -> None:
    _template(isolated_home, COUNTER_TEMPLATE, steps=9)
    result = _submit(cli, pcam_dir, "--auto-requeue", "6")
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert run["state"] == "COMPLETED"
    shown = cli("show", run["run_id"], "--json").json()
    attempts = shown["attempts"]
    assert len(attempts) >= 2, attempts
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a["state"] == "FAILED" and a["exit_code"] == 75 for a in attempts[:-1])
    assert attempts[-1]["state"] == "COMPLETED" and attempts[-1]["job_id"] == run["job_id"]
    assert len({a["job_id"] for a in attempts}) == len(attempts)  # a new job each time
    assert len({a["token"] for a in attempts}) == len(attempts)
    # One run in the ledger, with every step's metric exactly once.
    assert len(cli("runs", "--json").json()) == 1
    steps = sorted(m["step"] for m in shown["metrics"] if m["key"] == "train_loss")
    assert steps == list(range(1, 10))
    history = [h["state"] for h in shown["history"]]
    assert history.count("SUBMITTING") == len(attempts)
    # Each attempt resumed where the one before stopped.
    run_dir = Path(shown["run_dir"])
    first_log = (run_dir / f"slurm-{attempts[0]['job_id']}.out").read_text()
    last_log = (run_dir / f"slurm-{attempts[-1]['job_id']}.out").read_text()
    assert "attempt starts at step 0" in first_log and "checkpoint at step" in first_log
    assert "attempt starts at step 0" not in last_log and "done" in last_log
    table = cli("show", run["run_id"], "--no-script")
    assert "Attempts (auto-requeue up to 6)" in table.stdout


def test_timeout_is_requeued_and_the_limit_is_kept(
    cli: Invoke, pcam_dir: Path, isolated_home: Path
) -> None:
    _template(isolated_home, STUBBORN_TEMPLATE, steps=100)
    result = _submit(cli, pcam_dir, "--auto-requeue", "1")
    assert result.exit_code == 3
    run = result.json()
    assert run["state"] == "TIMEOUT"
    attempts = cli("show", run["run_id"], "--json").json()["attempts"]
    assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "TIMEOUT"), (2, "TIMEOUT")]
    # Later refreshes leave it alone: the limit is spent.
    assert cli("status", "--json").json()[0]["job_id"] == run["job_id"]
    assert len(cli("show", run["run_id"], "--json").json()["attempts"]) == 2


def test_without_auto_requeue_a_warned_run_just_ends(
    cli: Invoke, pcam_dir: Path, isolated_home: Path
) -> None:
    _template(isolated_home, COUNTER_TEMPLATE, steps=100)
    result = _submit(cli, pcam_dir)
    assert result.exit_code == 3
    run = result.json()
    assert run["state"] == "FAILED" and run["exit_code"] == 75
    shown = cli("show", run["run_id"], "--json").json()
    assert len(shown["attempts"]) == 1 and shown["max_requeues"] == 0


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("--auto-requeue", "-1"), "--auto-requeue must be between 0 and 20"),
        (("--auto-requeue", "21"), "--auto-requeue must be between 0 and 20"),
        (("--auto-requeue", "x"), "Invalid value"),
    ],
)
def test_bad_auto_requeue_values_are_usage_errors(
    cli: Invoke, pcam_dir: Path, args: tuple[str, ...], phrase: str
) -> None:
    result = cli("submit", "train", "--data-dir", str(pcam_dir), *args)
    assert result.exit_code == 2
    assert phrase in result.stderr and "Traceback" not in result.stderr
    assert cli("runs", "--json").json() == []


def test_two_refreshing_processes_requeue_once(isolated_home: Path) -> None:
    """The claim is one transaction that re-reads the run: a second claim finds it taken."""
    from hpcjob.jobstate import JobInfo, JobState
    from hpcjob.ledger.records import NewRun

    ledger = Ledger(isolated_home / "ledger.db")
    run = ledger.create_run(NewRun("local", "c", "local", "train", {}, "", "", "/x"))
    run = ledger.set_submitted(run.run_id, "7", "/x/slurm-7.out")
    run = ledger.record_info(run, JobInfo("7", JobState.TIMEOUT), "test")
    ledger.set_facts(run.run_id, {"sacct_elapsed_s": 60, "sbu_estimate": 1.0})
    assert ledger.claim_requeue(run, 1, run.token + "-a2", "why")
    assert not ledger.claim_requeue(run, 1, run.token + "-a2", "why")
    assert [(a.job_id, a.token, a.state) for a in ledger.attempts(run.run_id)] == [
        ("7", run.token, "TIMEOUT")
    ]
    claimed = ledger.get_run(run.run_id)
    assert claimed.state == JobState.SUBMITTING and claimed.job_id is None
    assert claimed.token == run.token + "-a2" and claimed.reason == "why"
    assert ledger.facts(run.run_id) == {"sbu_estimate": 1.0}  # the old job's sacct facts go
    history = [(h.state, h.source) for h in ledger.history(run.run_id)]
    assert history[-1] == (JobState.SUBMITTING, "auto-requeue")
    assert history.count((JobState.SUBMITTING, "auto-requeue")) == 1  # the refused claim: none


@pytest.mark.slow
def test_train_resumed_across_time_limits_equals_an_uninterrupted_run(
    cli: Invoke, pcam_dir: Path, tmp_path: Path
) -> None:
    """The real training workload: stopped by its time limit (warned a quarter of it ahead) and
    resumed from its checkpoint, it ends with the numbers of a run that was never interrupted."""
    args = ["--epochs", "8", "--batch-size", "32", "--hidden-units", "64", "--seed", "5",
            "--num-workers", "0", "--no-weighted-sampling"]  # fmt: skip
    reference = tmp_path / "reference"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "workloads" / "train.py"), "--data-dir", str(pcam_dir),
         "--output-dir", str(reference), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Half the uninterrupted run's time: sure to be cut at least once on a fast or a busy machine.
    limit = min(max(6, int(time.monotonic() - started) // 2), 600)
    result = cli(
        "submit", "train", "--data-dir", str(pcam_dir), "--time", f"{limit // 60}:{limit % 60:02d}",
        "--auto-requeue", "20", "--wait", "--json", *args,
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr, cli("logs", "last").stdout)
    run = result.json()
    shown = cli("show", run["run_id"], "--json").json()
    assert len(shown["attempts"]) >= 2, shown["attempts"]
    assert shown["attempts"][-1]["state"] == "COMPLETED"
    expected = {
        (r["step"], k): v
        for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())
        if "step" in r
        for k, v in r.items()
        if k in ("train_loss", "val_loss", "val_acc", "val_auc")
    }
    assert len(expected) == 8 * 4
    got = {(m["step"], m["key"]): m["value"] for m in shown["metrics"]}
    assert {key: got.get(key) for key in expected} == expected


def test_a_run_left_behind_is_requeued_by_the_next_refresh(
    cli: Invoke, isolated_home: Path
) -> None:
    """A run that ended TIMEOUT without being resubmitted then (its process died, or another
    held the lock) is resubmitted by the next `status`, and `wait` follows it to the end."""
    from hpcjob.jobstate import JobInfo, JobState

    folder = isolated_home / "templates"
    folder.mkdir(parents=True)
    (folder / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}echo hello\n{% endblock %}'
    )
    run = cli("submit", "gpu-check", "--wait", "--json").json()
    ledger = Ledger(isolated_home / "ledger.db")
    stored = ledger.get_run(run["run_id"])
    ledger.record_info(stored, JobInfo(run["job_id"], JobState.TIMEOUT), "test")
    ledger.set_max_requeues(run["run_id"], 1)
    ledger.close()
    status = cli("status", "--json")
    assert "auto-requeue 1 of 1" in status.stderr
    assert status.json()[0]["job_id"] != run["job_id"]
    waited = cli("wait", run["run_id"], "--json")
    assert waited.exit_code == 0 and waited.json()["state"] == "COMPLETED"
    attempts = cli("show", run["run_id"], "--json").json()["attempts"]
    assert [a["state"] for a in attempts] == ["TIMEOUT", "COMPLETED"]
