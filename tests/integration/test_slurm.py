"""hpcjob against the real test Slurm cluster, run as the non-root test user."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import UserSession, wait_until

pytestmark = pytest.mark.slurm


def accounting_facts(user: UserSession, ref: str) -> dict[str, Any]:
    """The run's facts once sacct's record (which lags the job's end by seconds) is in."""

    def facts() -> dict[str, Any] | None:
        shown: dict[str, Any] = user.hpcjob("show", ref, "--json").json()["facts"]
        return shown if "sacct_elapsed_s" in shown else None

    return wait_until(facts, f"sacct's record of {ref}", tick_s=2)


def test_partitions_come_from_sinfo(user: UserSession) -> None:
    result = user.hpcjob("partitions", "--json")
    assert result.exit_code == 0, result.stderr
    parts = {p["partition"]: p for p in result.json()}
    assert set(parts) >= {"rome", "gpu_a100", "gpu_h100", "staging"}
    assert parts["rome"]["default"] is True
    assert parts["gpu_a100"]["gpus_per_node"] == {"a100": 2}
    assert parts["staging"]["time_limit_s"] == 86400


def test_preflight_refuses_before_sbatch(user: UserSession) -> None:
    wrong = user.hpcjob("submit", "gpu-check", "--partition", "gpu_a10")
    assert wrong.exit_code == 2
    assert "Did you mean 'gpu_a100'?" in wrong.stderr
    too_long = user.hpcjob("submit", "gpu-check", "--partition", "staging", "--time", "2-00:00:00")
    assert too_long.exit_code == 2 and "above staging's limit of 1-00:00:00" in too_long.stderr
    no_gpus = user.hpcjob("submit", "gpu-check", "--partition", "rome", "--gpus", "1")
    assert no_gpus.exit_code == 2 and "rome has no GPUs" in no_gpus.stderr
    too_many = user.hpcjob("submit", "gpu-check", "--partition", "gpu_h100", "--gpus", "4")
    assert too_many.exit_code == 2 and "node has 2" in too_many.stderr
    assert user.hpcjob("runs", "--json").json() == []
    assert user.as_user("squeue", "--me", "-h").stdout.strip() == ""


def test_gpu_check_on_a_fake_gpu_fails_with_the_reason(user: UserSession) -> None:
    # The test cluster's GPUs are stand-ins and torch is a CPU build: check_gpu must say so.
    result = user.hpcjob("submit", "gpu-check", "--partition", "gpu_a100", "--gpus", "1",
                         "--wait", "--json")  # fmt: skip
    assert result.exit_code == 3, result.stderr
    run = result.json()
    assert run["state"] == "FAILED" and run["exit_code"] == 1 and run["node"]
    logs = user.hpcjob("logs", run["job_id"]).stdout
    assert "asked for 1 GPU but none is visible" in logs
    assert "CUDA_VISIBLE_DEVICES=0" in logs
    facts = accounting_facts(user, run["job_id"])
    assert facts["sacct_alloc_gpus"] == 1
    assert "gres/gpu:a100=1" in facts["sacct_alloc_tres"]
    assert facts["gpus_requested"] == 1


def test_train_one_epoch_on_rome(user: UserSession, user_pcam: Path) -> None:
    result = user.hpcjob(
        "submit", "train", "--partition", "rome", "--epochs", "1", "--data-dir", str(user_pcam),
        "--hidden-units", "32", "--batch-size", "64", "--time", "10", "--wait", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr + user.hpcjob("logs", "last").stdout
    run = result.json()
    assert run["state"] == "COMPLETED" and run["last_metric"].startswith("epoch 1 ")
    shown = user.hpcjob("show", run["run_id"], "--json").json()
    keys = {(m["step"], m["key"]) for m in shown["metrics"]}
    assert {(1, "train_loss"), (1, "val_loss"), (1, "val_auc")} <= keys
    assert "loss.png" in {a["name"] for a in shown["artifacts"]}
    facts = accounting_facts(user, run["job_id"])
    assert facts["sacct_elapsed_s"] >= 0
    assert facts["sacct_max_rss_bytes"] > 0
    assert "Epoch 1: Train_Loss = " in user.hpcjob("logs", run["job_id"]).stdout


def test_failing_job_keeps_its_exit_code(user: UserSession) -> None:
    user.template("gpu-check", "echo about to fail; exit 3")
    result = user.hpcjob("submit", "gpu-check", "--wait", "--json")
    assert result.exit_code == 3
    run = result.json()
    assert (run["state"], run["exit_code"]) == ("FAILED", 3)
    assert "about to fail" in user.hpcjob("logs", "last").stdout
    status = user.hpcjob("status", "--check")
    assert status.exit_code == 3 and "FAILED" in status.stdout


def test_cancel_a_running_job(user: UserSession) -> None:
    user.template("gpu-check", "echo running; sleep infinity")  # only the cancel ends it
    run = user.hpcjob("submit", "gpu-check", "--json").json()
    wait_until(
        lambda: "running" in user.hpcjob("logs", run["job_id"]).stdout, "the job running", tick_s=1
    )
    cancelled = user.hpcjob("cancel", run["job_id"], "--json")
    assert cancelled.exit_code == 0, cancelled.stderr
    waited = user.hpcjob("wait", run["job_id"], "--json", timeout=300)
    assert waited.exit_code == 3
    assert waited.json()["state"] == "CANCELLED"


@pytest.mark.slow
def test_time_limit_gives_timeout(user: UserSession) -> None:
    user.template("gpu-check", "echo start; sleep infinity")  # cannot meet any limit
    result = user.hpcjob("submit", "gpu-check", "--time", "1", "--wait", "--json", timeout=400)
    assert result.exit_code == 3, result.stderr
    assert result.json()["state"] == "TIMEOUT"
    assert "DUE TO TIME LIMIT" in user.hpcjob("logs", "last").stdout


def test_sbatch_rejection_is_readable_and_recorded(user: UserSession) -> None:
    # Preflight refuses an account the user lacks (test_accounts.py), from a cache kept an hour:
    # an account removed since it was written reaches sbatch, which refuses it.
    import subprocess

    from hpcjob.slurm import AccountAccess

    partitions = ("rome", "gpu_a100", "gpu_h100", "staging")
    stale = AccountAccess("hpctest", "no_such_account", {"no_such_account": partitions}, partitions)
    cache = user.home / "cache" / "accounts-slurm.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps(stale.to_dict()))
    subprocess.run(["chown", "-R", user.cluster["HPCJOB_TEST_USER"], str(cache.parent)], check=True)
    result = user.hpcjob("submit", "gpu-check", "--account", "no_such_account", "--json")
    assert result.exit_code == 1
    assert "sbatch refused the job" in result.stderr and "Hint:" in result.stderr
    runs = user.hpcjob("runs", "--json").json()
    assert [r["state"] for r in runs] == ["UNSUBMITTED"]
    assert runs[0]["reason"]


def test_status_is_one_squeue_and_at_most_one_sacct(user: UserSession, tmp_path: Path) -> None:
    """Count the scheduler commands a status refresh makes with several unfinished jobs."""
    user.template("gpu-check", "sleep infinity")  # unfinished while counted (cancelled after)
    for _ in range(5):
        assert user.hpcjob("submit", "gpu-check", "--json").exit_code == 0
    shims = user.home / "shims"
    shims.mkdir()
    log = user.home / "calls.log"
    for command in ("squeue", "sacct", "sbatch", "sinfo", "scancel", "scontrol"):
        shim = shims / command
        shim.write_text(f'#!/bin/sh\necho {command} >> "{log}"\nexec /usr/bin/{command} "$@"\n')
        shim.chmod(0o755)
    import subprocess

    subprocess.run(["chown", "-R", user.cluster["HPCJOB_TEST_USER"], str(shims)], check=True)
    path = f"{shims}:/usr/local/bin:/usr/bin:/bin"
    status = user.hpcjob("status", "--json", extra_env={"PATH": path})
    assert status.exit_code == 0, status.stderr
    assert len(status.json()) == 5
    calls = log.read_text().split()
    assert calls.count("squeue") == 1 and calls.count("sacct") <= 1, calls
    assert "scontrol" not in calls, calls  # the cluster's name was learned once, at submit
    assert json.loads(status.stdout)[0]["state"] in ("PENDING", "RUNNING")


@pytest.mark.slow
def test_array_of_fifty_tasks(user: UserSession) -> None:
    user.template("gpu-check", 'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID"')
    submitted = user.hpcjob("submit", "gpu-check", "--array", "0-49%10", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    parent = submitted.json()
    waited = user.hpcjob("wait", parent["run_id"], "--json", timeout=600)
    assert waited.exit_code == 0, waited.stderr
    assert waited.json()["state"] == "COMPLETED"
    runs = user.hpcjob("runs", "--limit", "100", "--json").json()
    tasks = [r for r in runs if r["job_id"] != parent["job_id"]]
    assert len(tasks) == 50
    assert {r["state"] for r in tasks} == {"COMPLETED"}
    assert {r["job_id"] for r in tasks} == {f"{parent['job_id']}_{i}" for i in range(50)}
    job_id = parent["job_id"]
    assert f"task 4 of {job_id}" in user.hpcjob("logs", f"{job_id}_4").stdout
    whole = user.hpcjob("logs", job_id)
    assert whole.exit_code == 1 and f"hpcjob logs {job_id}_0" in whole.stderr


def test_dependency_waits_for_the_first_job(user: UserSession) -> None:
    """The second job pends while the first runs (held by the test), and starts only after the
    first has ended: its start is after the first's end on the one clock of this machine."""
    user.template(
        "gpu-check",
        'echo "start $(date +%s%N)"; until [ -e "$HPCJOB_RUN_DIR/release" ]; do sleep 0.2; done; '
        'echo "end $(date +%s%N)"',
    )
    first = user.hpcjob("submit", "gpu-check", "--json").json()
    second = user.hpcjob("submit", "gpu-check", "--after", first["run_id"], "--json").json()
    wait_until(
        lambda: "start" in user.hpcjob("logs", first["job_id"]).stdout,
        "the first job running",
        tick_s=1,
    )
    queued = user.as_user("squeue", "-h", "-j", second["job_id"], "-o", "%T|%r").stdout.strip()
    assert queued == "PENDING|Dependency", queued
    for run in (first, second):
        released = user.as_user("touch", f"{run['run_dir']}/release")
        assert released.returncode == 0, released.stderr
    waited = user.hpcjob("wait", second["run_id"], "--json", timeout=300)
    assert waited.exit_code == 0, waited.stderr
    shown = user.hpcjob("show", second["run_id"], "--json").json()
    assert f"#SBATCH --dependency=afterok:{first['job_id']}" in shown["script"]

    def times(job_id: str) -> dict[str, int]:
        lines = user.hpcjob("logs", job_id).stdout.splitlines()
        return {w[0]: int(w[1]) for w in map(str.split, lines) if w[:1] in (["start"], ["end"])}

    assert times(second["job_id"])["start"] > times(first["job_id"])["end"]
