"""The user's own project on the real Slurm (hpcjob on the login node, as the test user) and over
the real sshd (hpcjob on 'a laptop', the code travelling over SSH).

The project is shaped like the MLOps course skeleton (tests/helpers.py `course_project`): its
trainer reads a YAML config, prints `Epoch N: Train_Loss = …, Val_Loss = …` and writes
metrics.csv. The journeys follow a user: the project's `train` with options mapped to config
keys, `--set` and `--sweep` over config keys, a Python file, their job.sh, any command, a command
the node lacks, the code snapshot stored once and a rerun from it; the refusals submit nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import COURSE_PROJECT_FILE, Result, course_project
from tests.integration.support import (
    Hpcjob,
    SSHLogin,
    UserSession,
    ssh_hpcjob,
    wait_until,
)

RESULTS = "code/experiments/results/mlp_baseline"  # the trainer's output, in a run's working copy
TRAINER = "experiments/train.py"


def ok(result: Result, *codes: int) -> Any:
    assert result.exit_code in (codes or (0,)), result.stderr + result.stdout
    return result.json()


def metric(detail: dict[str, Any], key: str) -> dict[int, float]:
    return {m["step"]: m["value"] for m in detail["metrics"] if m["key"] == key}


def csv_metric(path: Path, column: str) -> dict[int, float]:
    """A column of the trainer's metrics.csv by epoch, as the file says it."""
    header, *rows = (line.split(",") for line in path.read_text().splitlines())
    at = header.index(column)
    return {int(row[0]): float(row[at]) for row in rows}


def config_used(folder: Path) -> dict[str, Any]:
    """The config the trainer read (it saves a copy next to its results)."""
    data: dict[str, Any] = yaml.safe_load((folder / RESULTS / "config_used.yaml").read_text())
    return data


def stamp(path: Path) -> tuple[int, int, int]:
    """What any rewrite changes: a new upload is renamed into place (a new inode and ctime)."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_ctime_ns


def change_the_trainer(root: Path) -> None:
    """Today's code differs from the code a run recorded (the file keeps its owner)."""
    trainer = root / TRAINER
    trainer.write_text(trainer.read_text().replace("def main", 'print("CHANGED")\n\n\ndef main'))


def make_course(dest: Path, owner: str | None = None) -> Path:
    root = course_project(dest)
    (root / "hpcjob.toml").write_text(COURSE_PROJECT_FILE)
    if owner:  # theirs, .git included, so that git answers them (no safe.directory needed)
        subprocess.run(["chown", "-R", owner, str(root)], check=True)
    return root


# ------------------------------------------------------------------------ the login node


@pytest.fixture
def course(user: UserSession) -> UserSession:
    """The course project in the test user's folder, and hpcjob run from inside it with the
    test user's venv as the profile's `venv` (activated in the job: their job.sh runs `python`)."""
    root = make_course(user.home / "course", owner=user.cluster["HPCJOB_TEST_USER"])
    venv = str(Path(user.python).parent.parent)
    return dataclasses.replace(user, workdir=root, profile_env={"HPCJOB_VENV": venv})


def show(user: UserSession, ref: str) -> dict[str, Any]:
    detail: dict[str, Any] = ok(user.hpcjob("show", ref, "--json"))
    return detail


def submitted(user: UserSession, *args: str, code: int = 0) -> dict[str, Any]:
    run: dict[str, Any] = ok(user.hpcjob("submit", "--json", *args, timeout=400), code)
    return run


def sacct_row(user: UserSession, job_id: str, job_name: str) -> dict[str, str]:
    """The job's own accounting record, waited for (sacct first shows an interim one, with
    JobName `allocation`)."""
    fields = "JobName,Timelimit,AllocCPUS,Partition,State"

    def row() -> dict[str, str] | None:
        out = user.as_user("sacct", "-j", job_id, "-X", "-n", "-P", "-o", fields).stdout
        for line in out.splitlines():
            found = dict(zip(fields.split(","), line.split("|"), strict=True))
            if found["JobName"] == job_name:
                return found
        return None

    found: dict[str, str] = wait_until(row, f"job {job_id}'s sacct record as {job_name}")
    return found


@pytest.mark.slurm
def test_the_course_project_on_slurm(course: UserSession) -> None:
    user, root = course, course.workdir
    snapshots = user.home / "runs" / ".snapshots"

    # The project's own trainer, its epochs set in its config; metrics from its lines and CSV.
    first = submitted(user, "train", "--epochs", "2", "--wait")
    assert first["state"] == "COMPLETED"
    detail = show(user, first["run_id"])
    assert set(metric(detail, "train_loss")) == {1, 2}
    assert set(metric(detail, "val_loss")) == {1, 2}
    assert set(metric(detail, "val_accuracy")) == {1, 2}  # from metrics.csv alone
    assert detail["spec"]["args"] == {"training.epochs": 2}
    run_dir = Path(first["run_dir"])
    assert config_used(run_dir)["training"]["epochs"] == 2
    assert "Epoch 2: Train_Loss = " in user.hpcjob("logs", first["run_id"]).stdout
    (only,) = snapshots.iterdir()
    assert only.name == detail["spec"]["program"]["snapshot"]
    trainer_stamp = stamp(only / TRAINER)

    # --set and --sweep over config keys: ONE job array, each task its own config and folder.
    sweep = submitted(
        user, "train", "--epochs", "2", "--set", "model.hidden_units=[16,8]",
        "--sweep", "training.learning_rate=1e-3,1e-2", "--sweep", "seed=1,2", "--wait",
    )  # fmt: skip
    assert "_" not in sweep["job_id"]
    assert "#SBATCH --array=0-3" in show(user, sweep["run_id"])["script"]
    sweep_dir = Path(sweep["run_dir"])
    configs = [config_used(sweep_dir / f"task-{task}") for task in range(4)]
    seen = [(c["training"]["learning_rate"], c["seed"]) for c in configs]
    assert seen == [(1e-3, 1), (1e-3, 2), (1e-2, 1), (1e-2, 2)]
    assert all(c["model"]["hidden_units"] == [16, 8] for c in configs)
    tasks = ok(user.hpcjob("sweep", "status", sweep["run_id"], "--json"))
    assert [t["state"] for t in tasks] == ["COMPLETED"] * 4
    assert tasks[3]["params"] == {"training.learning_rate": 1e-2, "seed": 2}
    for task in tasks:  # each task's metrics are its own results, not another task's
        csv = sweep_dir / f"task-{task['task']}" / RESULTS / "metrics.csv"
        assert metric(show(user, task["run_id"]), "val_accuracy") == csv_metric(csv, "val_accuracy")
    assert len({t["best"] for t in tasks}) > 1
    assert [p.name for p in snapshots.iterdir()] == [only.name]  # the same code: stored once
    assert stamp(only / TRAINER) == trainer_stamp

    # A Python file of the project, the words after `--` its arguments.
    evaluate = submitted(user, "experiments/evaluate.py", "--wait", "--", "--checkpoint", "last.pt")
    assert evaluate["state"] == "COMPLETED"
    assert "evaluate args: --checkpoint last.pt" in user.hpcjob("logs", evaluate["run_id"]).stdout
    assert metric(show(user, evaluate["run_id"]), "test_loss") == {1: 0.5}

    # Their job.sh: its #SBATCH lines reach Slurm, --time on the command line wins.
    result = user.hpcjob("submit", "job.sh", "--time", "5", "--wait", "--json", timeout=400)
    script = ok(result)
    assert "--output is dropped" in result.stderr
    log = user.hpcjob("logs", script["run_id"]).stdout
    assert "course job.sh on" in log and "Epoch 5: Train_Loss = " in log
    record = sacct_row(user, script["job_id"], "course-train")
    assert record == {
        "JobName": "course-train",
        "Timelimit": "00:05:00",
        "AllocCPUS": "2",
        "Partition": user.cluster["HPCJOB_TEST_DEFAULT_PARTITION"],
        "State": "COMPLETED",
    }

    # Any command after `--`; one the node lacks fails with the reason in plain words.
    echo = submitted(user, "--time", "5", "--wait", "--", "echo", "hello", "world")
    assert "hello world" in user.hpcjob("logs", echo["run_id"]).stdout
    missing = submitted(user, "--time", "5", "--wait", "--", "no-such-command-hpcjob", code=3)
    assert missing["state"] == "FAILED"
    assert "command not found" in json.dumps(show(user, missing["run_id"])["facts"])
    said = user.hpcjob("show", missing["run_id"], "--no-script").stdout
    assert f"command not found on {socket.gethostname()}: no-such-command-hpcjob" in said

    # A rerun takes the code it recorded, not today's; --current-code takes today's.
    change_the_trainer(root)
    rerun = ok(user.hpcjob("rerun", first["run_id"], "--wait", "--json", timeout=400))
    assert rerun["state"] == "COMPLETED"
    assert "CHANGED" not in user.hpcjob("logs", rerun["run_id"]).stdout
    assert show(user, rerun["run_id"])["spec"]["program"]["snapshot"] == only.name
    assert stamp(only / TRAINER) == trainer_stamp
    today = ok(
        user.hpcjob("rerun", first["run_id"], "--current-code", "--wait", "--json", timeout=400)
    )
    assert "CHANGED" in user.hpcjob("logs", today["run_id"]).stdout
    assert len(list(snapshots.iterdir())) == 2


@pytest.mark.slurm
def test_refusals_submit_nothing(course: UserSession) -> None:
    user, root = course, course.workdir
    owner = user.cluster["HPCJOB_TEST_USER"]
    # A partition in the script's #SBATCH lines that the cluster does not have.
    bad = root / "bad.sh"
    bad.write_text("#!/bin/bash\n#SBATCH --partition=gpu_a10\n#SBATCH --time=00:05:00\necho hi\n")
    shutil.chown(bad, owner)
    result = user.hpcjob("submit", "bad.sh", "--json")
    assert result.exit_code == 2, result.stderr
    assert "no partition 'gpu_a10'. Did you mean 'gpu_a100'?" in result.stderr
    assert "Traceback" not in result.stderr
    # A code snapshot above the project's limit names its largest file.
    (root / "hpcjob.toml").write_text(
        COURSE_PROJECT_FILE.replace('name = "course"', 'name = "course"\nmax_snapshot_mb = 1')
    )
    (root / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    shutil.chown(root / "weights.bin", owner)
    result = user.hpcjob("submit", "train", "--epochs", "1", "--json")
    assert result.exit_code == 2, result.stderr
    assert "weights.bin" in result.stderr and "exclude" in result.stderr
    # Nothing reached Slurm (no job works in this test's folders), nothing is in the ledger, no
    # code was stored.
    work_dirs = user.as_user("squeue", "--me", "-h", "-o", "%Z").stdout.split()
    assert [d for d in work_dirs if d.startswith(str(user.home))] == []
    assert ok(user.hpcjob("runs", "--json")) == []
    assert not (user.home / "runs" / ".snapshots").exists()


# ---------------------------------------------------------------------------- over SSH


@pytest.fixture
def laptop(
    cluster: dict[str, str], ssh_login: SSHLogin, user_python: str, tmp_path: Path
) -> Iterator[tuple[Hpcjob, Path]]:
    """hpcjob as root on 'a laptop' inside the course project (root's, in a tmp folder), its runs
    in a folder of their own on the cluster; yields it and that folder (removed afterwards)."""
    root = make_course(tmp_path / "course")
    name = f"hpcjob/runs-project-{uuid.uuid4().hex[:8]}"
    remote = Path(f"/home/{cluster['HPCJOB_TEST_USER']}/{name}")
    yield (
        ssh_hpcjob(
            cluster, ssh_login, user_python, tmp_path / "laptop", cwd=root, remote_root=f"~/{name}"
        ),
        remote,
    )
    shutil.rmtree(remote, ignore_errors=True)


def run_over_ssh(job: Hpcjob, *args: str, code: int = 0) -> dict[str, Any]:
    rc, out, err = job.run(*args, "--json", timeout=400)
    assert rc == code, err + out
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.mark.ssh
def test_the_course_project_over_ssh(laptop: tuple[Hpcjob, Path]) -> None:
    job, remote = laptop
    root = job.cwd
    snapshots = remote / ".snapshots"

    # A sweep of 4 over config keys from the laptop: the code travels once.
    sweep = run_over_ssh(
        job, "submit", "train", "--epochs", "2", "--sweep", "training.learning_rate=1e-3,1e-2",
        "--sweep", "seed=1,2", "--max-parallel", "2", "--wait",
    )  # fmt: skip
    assert Path(sweep["run_dir"]).parent == remote
    (only,) = snapshots.iterdir()
    trainer_stamp = stamp(only / TRAINER)
    seen = []
    for task in range(4):
        config = config_used(Path(sweep["run_dir"]) / f"task-{task}")
        seen.append((config["training"]["learning_rate"], config["seed"]))
    assert seen == [(1e-3, 1), (1e-3, 2), (1e-2, 1), (1e-2, 2)]
    tasks = run_over_ssh(job, "sweep", "status", sweep["run_id"])
    assert [t["state"] for t in tasks] == ["COMPLETED"] * 4

    # The same code again: not uploaded again; the trainer's epochs in `show`.
    first = run_over_ssh(job, "submit", "train", "--epochs", "2", "--wait")
    assert first["state"] == "COMPLETED"
    assert [p.name for p in snapshots.iterdir()] == [only.name]
    assert stamp(only / TRAINER) == trainer_stamp
    detail = run_over_ssh(job, "show", first["run_id"])
    assert detail["spec"]["program"]["snapshot"] == only.name
    assert set(metric(detail, "train_loss")) == {1, 2}
    assert set(metric(detail, "val_loss")) == {1, 2}

    # Changed code on the laptop; the rerun runs the recorded snapshot on the cluster.
    change_the_trainer(root)
    rerun = run_over_ssh(job, "rerun", first["run_id"], "--wait")
    assert rerun["state"] == "COMPLETED"
    rc, log, err = job.run("logs", rerun["run_id"])
    assert rc == 0, err
    assert "Epoch 2: Train_Loss = " in log and "CHANGED" not in log
    assert run_over_ssh(job, "show", rerun["run_id"])["spec"]["program"]["snapshot"] == only.name
    assert [p.name for p in snapshots.iterdir()] == [only.name]
