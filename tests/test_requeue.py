"""`submit --auto-requeue N` on the embedded scheduler: a run that hits its time limit is
resubmitted in its run directory and resumes; the ledger keeps one run with several attempts.

The warning before the time limit is an event the test controls: once the job has reached a
known point (a file it writes), the test sends what `#SBATCH --signal=B:USR1@…` sends, USR1 to
the batch shell. No test guesses how far a job gets in some number of seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcjob.ledger.store import Ledger
from tests.helpers import wait_until, warn_job

REPO = Path(__file__).resolve().parent.parent
Invoke = Any

# A stand-in for train.py that costs no torch: it counts steps in a state file (its
# "checkpoint") and prints one epoch line per step; on USR1 it stops with 75, as train.py does.
# The first time it reaches step HOLD it says so (a file `held`) and waits for the warning; a
# warning that never comes fails it after two minutes (a hang, not a wait).
COUNTER_TEMPLATE = """{% extends "base.sbatch.j2" %}
{% block command %}
trap 'echo "checkpoint at step $n"; exit 75' USR1
n=$(cat step 2>/dev/null || echo 0)
echo "attempt starts at step $n"
while [ "$n" -lt STEPS ]; do
    if [ "$n" -eq HOLD ] && [ ! -e held ]; then
        touch held
        for _ in $(seq 1200); do sleep 0.1; done
        echo "never warned" >&2
        exit 1
    fi
    echo "Epoch $((n + 1)): Train_Loss = 0.$((n + 1))"
    n=$((n + 1))
    echo "$n" > step
done
echo done
{% endblock %}
"""
# Ignores the warning: the scheduler ends it TIMEOUT at the limit (TERM, then KILL). Its 40 s
# of steps can never end within the 3 s limit.
STUBBORN_TEMPLATE = """{% extends "base.sbatch.j2" %}
{% block command %}
n=$(cat step 2>/dev/null || echo 0)
trap '' USR1
while [ "$n" -lt STEPS ]; do sleep 0.4; n=$((n + 1)); echo "$n" > step; done
echo done
{% endblock %}
"""


def _template(home: Path, text: str, steps: int, hold: int = -1) -> None:
    folder = home / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    text = text.replace("STEPS", str(steps)).replace("HOLD", str(hold))
    (folder / "train.sbatch.j2").write_text(text)


def _submit(cli: Invoke, pcam_dir: Path, *args: str) -> Any:
    return cli(
        "submit", "train", "--data-dir", str(pcam_dir), "--time", "0:03", "--wait", "--json",
        *args,
    )  # fmt: skip


def _submit_and_warn_when_held(cli: Invoke, pcam_dir: Path, home: Path, *args: str) -> Any:
    """Submit the counter job (a limit far above any wait), warn it once it is held at its step,
    then wait for the run to end, following any requeue."""
    submitted = cli(
        "submit", "train", "--data-dir", str(pcam_dir), "--time", "10:00", "--json", *args
    )
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.json()
    wait_until((Path(run["run_dir"]) / "held").exists, "the job to reach its held step")
    warn_job(home, run["job_id"])
    return cli("wait", run["run_id"], "--json")


def test_warned_run_is_resubmitted_and_resumes_as_one_run(
    cli: Invoke, pcam_dir: Path, isolated_home: Path
) -> None:
    _template(isolated_home, COUNTER_TEMPLATE, steps=9, hold=4)
    result = _submit_and_warn_when_held(cli, pcam_dir, isolated_home, "--auto-requeue", "6")
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert run["state"] == "COMPLETED"
    shown = cli("show", run["run_id"], "--json").json()
    attempts = shown["attempts"]
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in attempts] == [
        (1, "FAILED", 75),
        (2, "COMPLETED", 0),
    ], attempts
    assert attempts[-1]["job_id"] == run["job_id"]
    assert len({a["job_id"] for a in attempts}) == 2  # a new job each time
    assert len({a["token"] for a in attempts}) == 2
    # One run in the ledger, with every step's metric exactly once.
    assert len(cli("runs", "--json").json()) == 1
    steps = sorted(m["step"] for m in shown["metrics"] if m["key"] == "train_loss")
    assert steps == list(range(1, 10))
    history = [h["state"] for h in shown["history"]]
    assert history.count("SUBMITTING") == 2
    # The second attempt resumed where the first stopped.
    run_dir = Path(shown["run_dir"])
    first_log = (run_dir / f"slurm-{attempts[0]['job_id']}.out").read_text()
    last_log = (run_dir / f"slurm-{attempts[-1]['job_id']}.out").read_text()
    assert "attempt starts at step 0" in first_log and "checkpoint at step 4" in first_log
    assert "attempt starts at step 4" in last_log and "done" in last_log
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
    # Each was ended by the TERM at its limit: the batch shell's 143, never a made-up 0.
    assert [a["exit_code"] for a in attempts] == [143, 143]
    # Later refreshes leave it alone: the limit is spent.
    assert cli("status", "--json").json()[0]["job_id"] == run["job_id"]
    assert len(cli("show", run["run_id"], "--json").json()["attempts"]) == 2


def test_without_auto_requeue_a_warned_run_just_ends(
    cli: Invoke, pcam_dir: Path, isolated_home: Path
) -> None:
    _template(isolated_home, COUNTER_TEMPLATE, steps=100, hold=1)
    result = _submit_and_warn_when_held(cli, pcam_dir, isolated_home)
    assert result.exit_code == 3, result.stderr
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
    ledger.set_facts(
        run.run_id, {"sacct_elapsed_s": 60, "local_elapsed_s": 61, "sbu_estimate": 1.0}
    )
    assert ledger.claim_requeue(run, 1, run.token + "-a2", "why")
    assert not ledger.claim_requeue(run, 1, run.token + "-a2", "why")
    assert [(a.job_id, a.token, a.state) for a in ledger.attempts(run.run_id)] == [
        ("7", run.token, "TIMEOUT")
    ]
    claimed = ledger.get_run(run.run_id)
    assert claimed.state == JobState.SUBMITTING and claimed.job_id is None
    assert claimed.token == run.token + "-a2" and claimed.reason == "why"
    assert ledger.facts(run.run_id) == {"sbu_estimate": 1.0}  # the old job's accounting goes
    history = [(h.state, h.source) for h in ledger.history(run.run_id)]
    assert history[-1] == (JobState.SUBMITTING, "auto-requeue")
    assert history.count((JobState.SUBMITTING, "auto-requeue")) == 1  # the refused claim: none


@pytest.mark.slow
def test_train_resumed_across_time_limits_equals_an_uninterrupted_run(
    cli: Invoke, pcam_dir: Path, tmp_path: Path, isolated_home: Path
) -> None:
    """The real training workload: warned as Slurm warns before a time limit, once its first
    checkpoint is on disk, it stops with a checkpoint, is resubmitted, resumes, and ends with the
    numbers of a run that was never interrupted."""
    args = ["--epochs", "8", "--batch-size", "32", "--hidden-units", "64", "--seed", "5",
            "--num-workers", "0", "--no-weighted-sampling"]  # fmt: skip
    reference = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, str(REPO / "workloads" / "train.py"), "--data-dir", str(pcam_dir),
         "--output-dir", str(reference), *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # A limit no attempt comes near: the only interruption is the test's own warning.
    submitted = cli(
        "submit", "train", "--data-dir", str(pcam_dir), "--time", "30:00", "--auto-requeue",
        "1", "--json", *args,
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.stderr
    run = submitted.json()
    # A checkpoint on disk means train.py's USR1 handler is in place (it is set before the first
    # batch), and seven of the eight epochs are still to come when the warning arrives. best.pt
    # is written after epoch 1 (the default keeps no epoch-NNN.pt).
    first = Path(run["run_dir"]) / "checkpoints" / "best.pt"
    wait_until(first.exists, "the first checkpoint", guard_s=600)
    warn_job(isolated_home, run["job_id"])
    result = cli("wait", run["run_id"], "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, cli("logs", "last").stdout)
    shown = cli("show", run["run_id"], "--json").json()
    attempts = [(a["state"], a["exit_code"]) for a in shown["attempts"]]
    assert attempts == [("FAILED", 75), ("COMPLETED", 0)], shown["attempts"]
    logs = [Path(run["run_dir"], f"slurm-{a['job_id']}.out").read_text() for a in shown["attempts"]]
    assert "Received SIGUSR1: saved" in logs[0] and "Resumed from" in logs[1]
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
    kept = sorted(p.name for p in (Path(run["run_dir"]) / "checkpoints").iterdir())
    assert kept == ["best.pt", "last.pt"] == shown["facts"]["checkpoints"]["kept"]


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


# -- a requeued run in the ledger: its logs and its cost ---------------------------------------

RATES = """
[profiles.local]
scheduler = "local"
[profiles.local.sbu_rates]
gpu_a100 = { sbu_per_hour = 128, per = "gpu", cores_per_gpu = 18 }
"""


def requeued_run(home: Path, run_dir: Path) -> Any:
    """A run whose first job (7) hit its time limit after an hour and whose second (8) then
    COMPLETED in half an hour, each job's output where its job wrote it (as --auto-requeue
    leaves them)."""
    from hpcjob.jobstate import JobInfo, JobState
    from tests.helpers import new_run

    ledger = Ledger(home / "ledger.db")
    run_dir.mkdir(parents=True)
    spec = {"workload": "train", "resources": {"partition": "gpu_a100", "gpus": 1}}
    run = ledger.create_run(new_run(run_dir=str(run_dir), spec=spec))
    ledger.set_max_requeues(run.run_id, 2)
    run = ledger.set_submitted(run.run_id, "7", f"{run_dir}/slurm-7.out")
    (run_dir / "slurm-7.out").write_text("attempt one: epoch 1\nepoch 2\n")
    ended = JobInfo("7", JobState.TIMEOUT, exit_code=143, started_at="2026-11-01T10:00:00Z",
                    ended_at="2026-11-01T11:00:00Z")  # fmt: skip
    run = ledger.record_info(run, ended, "test")
    ledger.set_facts(run.run_id, {"local_elapsed_s": 3600})
    assert ledger.claim_requeue(run, 1, run.token + "-a2", "auto-requeue 1 of 2")
    run = ledger.complete_submission(run.run_id, "8", f"{run_dir}/slurm-8.out")
    (run_dir / "slurm-8.out").write_text("attempt two: epoch 3\ndone\n")
    done = JobInfo("8", JobState.COMPLETED, exit_code=0, started_at="2026-11-01T11:05:00Z",
                   ended_at="2026-11-01T11:35:00Z")  # fmt: skip
    run = ledger.record_info(run, done, "test")
    ledger.set_facts(run.run_id, {"local_elapsed_s": 1800})
    return run


def test_logs_of_a_requeued_run_show_every_attempt_latest_last(
    cli: Invoke, isolated_home: Path, tmp_path: Path
) -> None:
    run = requeued_run(isolated_home, tmp_path / "run")
    shown = cli("logs", run.run_id)
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout == (
        "==> attempt 1 of 2: job 7, TIMEOUT <==\n"
        "attempt one: epoch 1\nepoch 2\n"
        "\n==> attempt 2 of 2: job 8, COMPLETED <==\n"
        "attempt two: epoch 3\ndone\n"
    )
    first = cli("logs", run.run_id, "--attempt", "1")
    assert first.exit_code == 0 and first.stdout == "attempt one: epoch 1\nepoch 2\n"
    assert cli("logs", run.run_id, "--attempt", "2").stdout == "attempt two: epoch 3\ndone\n"
    tail = cli("logs", run.run_id, "--tail", "1").stdout
    assert tail.splitlines() == [
        "==> attempt 1 of 2: job 7, TIMEOUT <==", "epoch 2", "",
        "==> attempt 2 of 2: job 8, COMPLETED <==", "done",
    ]  # fmt: skip
    bad = cli("logs", run.run_id, "--attempt", "3")
    assert bad.exit_code == 2 and "has 2 attempts" in bad.stderr


def test_the_actual_cost_of_a_requeued_run_adds_up_its_attempts(
    cli: Invoke, isolated_home: Path, tmp_path: Path
) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(RATES)
    run = requeued_run(isolated_home, tmp_path / "run")
    actual = cli("show", run.run_id, "--json").json()["cost"]["actual"]
    assert actual["hours"] == pytest.approx(1.5)  # 1 h timed out + 0.5 h completed
    assert actual["sbu"] == pytest.approx(192.0)  # 1.5 h × 1 GPU × 128 SBU/h
    text = cli("show", run.run_id, "--no-script").stdout
    assert "actual    192 SBU (90.0 min × 1 gpu × 128 SBU/h; 2 attempts)" in text
    spent = cli("runs", "--since", "2026-11-01", "--json").json()
    assert spent["total_sbu"] == pytest.approx(192.0)
