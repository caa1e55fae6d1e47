"""Sweeps, reruns, compare, plot and fetch against the real test Slurm (and sshd).

A 4-task training sweep runs as ONE Slurm job array on tiny synthetic data; one task is cancelled
while it runs so that `sweep resubmit` has something to do; the best task is rerun; compare and
plot read the ledger; fetch copies a task's files over SFTP through a profile that reaches the
cluster by SSH.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import (
    UserSession,
    processes_matching,
    ssh_profile,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slurm


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_sweep_on_slurm_then_resubmit_rerun_compare_plot_and_fetch_over_ssh(
    user: UserSession,
    user_pcam: Path,
    cluster: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submitted = user.hpcjob(
        "submit", "train", "--partition", "rome", "--epochs", "2", "--batch-size", "64",
        "--data-dir", str(user_pcam), "--time", "10", "--sweep", "lr=1e-3,1e-2",
        "--sweep", "hidden=8,16", "--max-parallel", "2", "--json",
    )  # fmt: skip
    parent = ok(submitted)
    job = parent["job_id"]
    assert "_" not in job  # one sbatch, one array job id
    # Cancel task 0 while it runs, so the sweep has a task to resubmit. (A task cancelled
    # while still pending in the array's meta-record leaves no record in Slurm 22.05 at all.)
    # Its train.py is frozen as soon as it starts, so the task cannot end before the cancel.
    task_0 = (f"{parent['run_dir']}/workload/train.py", f"{parent['run_dir']}/task-0 ")
    (trainer,) = wait_until(lambda: processes_matching(*task_0), "task 0's train.py", tick_s=0.02)
    os.kill(trainer, signal.SIGSTOP)
    running = user.as_user("squeue", "-h", "-t", "R", "-o", "%i").stdout.split()
    assert f"{job}_0" in running, running
    cancelled = user.as_user("scancel", f"{job}_0")
    assert cancelled.returncode == 0, cancelled.stderr
    waited = user.hpcjob("wait", parent["run_id"], "--json", timeout=400)
    assert waited.exit_code == 3, waited.stderr + user.hpcjob("sweep", "status", job).stdout

    script = ok(user.hpcjob("show", parent["run_id"], "--json"))["script"]
    assert "#SBATCH --array=0-3%2" in script
    sacct = user.as_user("sacct", "-j", job, "-X", "-n", "-P", "-o", "JobID,State")
    assert {line.split("|")[0] for line in sacct.stdout.splitlines()} == {
        f"{job}_{i}" for i in range(4)
    }

    rows = ok(user.hpcjob("sweep", "status", "last", "--json"))
    assert [(r["task"], r["params"]) for r in rows] == [
        (0, {"lr": 0.001, "hidden_units": "8"}),
        (1, {"lr": 0.001, "hidden_units": "16"}),
        (2, {"lr": 0.01, "hidden_units": "8"}),
        (3, {"lr": 0.01, "hidden_units": "16"}),
    ]
    assert [r["state"] for r in rows] == ["CANCELLED"] + ["COMPLETED"] * 3
    assert all(r["best"] is not None for r in rows[1:])
    assert sum(r["is_best"] for r in rows) == 1
    for row in rows[1:]:  # each task trained with the parameters the ledger gives it
        log = user.hpcjob("logs", row["job_id"]).stdout
        lr, hidden = row["params"]["lr"], row["params"]["hidden_units"]
        assert f"task {row['task']}: --lr {lr} --hidden-units {hidden}" in log
        assert "Epoch 1: Train_Loss = " in log

    again = ok(user.hpcjob("sweep", "resubmit", parent["run_id"], "--json"))
    assert again["tasks"] == [0]
    assert user.hpcjob("wait", again["run_id"], "--json", timeout=300).exit_code == 0
    rows = ok(user.hpcjob("sweep", "status", parent["run_id"], "--json"))
    assert [r["state"] for r in rows] == ["COMPLETED"] * 4
    assert [r["attempts"] for r in rows] == [2, 1, 1, 1]
    assert rows[0]["job_id"] == f"{again['job_id']}_0"
    assert "#SBATCH --array=0%1" in ok(user.hpcjob("show", again["run_id"], "--json"))["script"]

    best = next(r for r in rows if r["is_best"])
    rerun = user.hpcjob("rerun", best["run_id"], "--epochs", "3", "--wait", "--json", timeout=300)
    assert rerun.exit_code == 0, rerun.stderr
    rerun_run = rerun.json()
    shown = ok(user.hpcjob("show", rerun_run["run_id"], "--json"))
    assert shown["spec"]["rerun_of"] == best["run_id"]
    assert (
        shown["spec"]["args"]["lr"] == best["params"]["lr"] and shown["spec"]["args"]["epochs"] == 3
    )
    assert "Loss curves:" in user.hpcjob("show", rerun_run["run_id"], "--no-script").stdout

    compared = ok(user.hpcjob("compare", best["run_id"], rerun_run["run_id"], "--json"))
    differ = {row["setting"] for row in compared["settings"]}
    assert {"epochs", "rerun_of"} <= differ and "lr" not in differ
    assert any(m["metric"] == "val_loss" for m in compared["metrics"])

    png = user.home / "sweep.png"
    plotted = user.hpcjob("plot", *(r["run_id"] for r in rows), "--out", str(png))
    assert plotted.exit_code == 0, plotted.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"

    # fetch over SSH: this machine as a laptop, with a copy of the ledger and an SSH profile.
    home = tmp_path / "laptop"
    write_config(home, ssh_profile(cluster))
    shutil.copy(user.home / "ledger.db", home / "ledger.db")
    monkeypatch.setenv("HPCJOB_HOME", str(home))
    monkeypatch.setenv("HPCJOB_PROFILE", "cluster")
    from tests.helpers import invoke

    dest = tmp_path / "fetched"
    task = rows[3]
    fetched = invoke("fetch", task["run_id"], "--profile", "cluster", "--dest", str(dest), "--json")
    assert fetched.exit_code == 0, fetched.stderr
    names = {f["name"] for f in fetched.json()["files"]}
    assert {"metrics.jsonl", "loss.png", f"slurm-{task['job_id']}.out", "run.json"} <= names
    assert not any(n.startswith("checkpoints/") for n in names)
    remote = Path(fetched.json()["files"][0]["source"]).parent
    assert str(remote).endswith("/task-3")
    local_metrics = (dest / "metrics.jsonl").read_text()
    assert local_metrics == (remote / "metrics.jsonl").read_text() and '"val_loss"' in local_metrics
    with_ckpt = invoke("fetch", task["run_id"], "--profile", "cluster", "--checkpoints",
                       "--dest", str(tmp_path / "all"), "--json")  # fmt: skip
    assert with_ckpt.exit_code == 0, with_ckpt.stderr
    assert any(f["name"].startswith("checkpoints/") for f in with_ckpt.json()["files"])
