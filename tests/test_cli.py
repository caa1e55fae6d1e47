"""The CLI end to end on the embedded scheduler: every command's happy path and its error paths."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    GUARD_S,
    Result,
    bash_wait_for,
    ledger_run,
    read_until,
    run_hpcjob,
    wait_until,
)

Invoke = Any


def submit_json(cli: Invoke, *args: str) -> dict[str, Any]:
    result = cli("submit", *args, "--json")
    assert result.exit_code in (0, 3), result.stderr
    data: dict[str, Any] = result.json()
    return data


def test_gpu_check_wait_records_a_completed_run(cli: Invoke) -> None:
    run = submit_json(cli, "gpu-check", "--wait")
    assert run["state"] == "COMPLETED"
    assert run["job_id"] and run["run_id"].startswith("r")
    shown = cli("show", run["job_id"], "--json").json()
    assert shown["run_id"] == run["run_id"]
    assert "#SBATCH --job-name=hpcjob-gpu-check" in shown["script"]
    assert shown["facts"]  # check_gpu's facts reached the ledger
    assert [h["state"] for h in shown["history"]][:2] == ["SUBMITTING", "PENDING"]
    assert shown["history"][-1]["state"] == "COMPLETED"
    logs = cli("logs", run["run_id"])
    assert "no GPU requested, CPU only" in logs.stdout


def test_train_run_end_to_end(cli: Invoke, pcam_dir: Path) -> None:
    run = submit_json(
        cli, "train", "--epochs", "2", "--data-dir", str(pcam_dir), "--hidden-units", "64",
        "--batch-size", "64", "--keep-checkpoints", "1", "--wait",
    )  # fmt: skip
    assert run["state"] == "COMPLETED", cli("logs", run["job_id"]).stdout
    assert run["last_metric"].startswith("epoch 2 val_loss=")
    shown = cli("show", "last", "--json").json()
    metrics = {(m["step"], m["key"]): m["value"] for m in shown["metrics"]}
    assert {(1, "train_loss"), (2, "train_loss"), (2, "val_loss"), (2, "val_auc")} <= set(metrics)
    assert "loss.png" in {a["name"] for a in shown["artifacts"]}
    kept = shown["facts"]["checkpoints"]  # what train.py kept, and by which policy
    assert kept["kept"] == ["best.pt", "epoch-002.pt", "last.pt"] and kept["removed"] == 1
    assert "--keep-checkpoints 1" in kept["policy"]
    table = cli("show", "last", "--no-script")
    assert "train_loss" in table.stdout and "COMPLETED" in table.stdout
    assert "epoch-002.pt" in table.stdout and "--keep-checkpoints 1" in table.stdout
    status = cli("status", "--json").json()
    assert [r["run_id"] for r in status] == [run["run_id"]]
    assert status[0]["elapsed_s"] is not None and status[0]["node"]


def test_train_given_a_gpu_torch_cannot_use_fails_fast_unless_allow_cpu(
    cli: Invoke, pcam_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded scheduler gives a `--gpus 1` job a GPU in its Slurm variables; torch sees
    none (CUDA_VISIBLE_DEVICES="" hides any this machine has): train must not quietly train on
    the CPU what a GPU partition bills as GPU hours."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    common = (
        "train", "--epochs", "1", "--data-dir", str(pcam_dir), "--hidden-units", "16",
        "--batch-size", "64", "--gpus", "1", "--wait",
    )  # fmt: skip
    stopped = submit_json(cli, *common)
    assert stopped["state"] == "FAILED" and stopped["exit_code"] == 1
    log = cli("logs", stopped["run_id"]).stdout
    assert "this job asked for 1 GPU but none is visible" in log and "--allow-cpu" in log
    assert "First batch OK" not in log
    shown = cli("show", stopped["run_id"], "--json").json()
    assert shown["facts"]["device"] == "cpu" and shown["facts"]["gpus_requested"] == 1
    assert "CUDA_VISIBLE_DEVICES=''" in shown["facts"]["gpu_unused_reason"]
    hint = shown["efficiency"]["hint"]
    assert hint.startswith("1 GPU asked for, but torch could not use it") and "--allow-cpu" in hint

    on_cpu = submit_json(cli, *common, "--allow-cpu")
    assert on_cpu["state"] == "COMPLETED"
    log = cli("logs", on_cpu["run_id"]).stdout
    assert "WARNING: this job asked for 1 GPU but trains on the CPU (--allow-cpu)" in log
    shown = cli("show", on_cpu["run_id"], "--json").json()
    assert shown["facts"]["allow_cpu"] is True and shown["facts"]["device"] == "cpu"
    assert shown["efficiency"]["hint"].startswith("the 1 GPU asked for went unused")
    text = cli("show", on_cpu["run_id"], "--no-script").stdout
    assert "GPU       unused: trained on the CPU" in text
    assert "--allow-cpu" in shown["script"] and "HPCJOB_EXPECT_GPUS=1" in shown["script"]


def test_status_and_runs_tables_and_filters(cli: Invoke, tmp_path: Path) -> None:
    assert cli("runs", "--json").json() == []
    assert "No runs" in cli("status").stderr
    ok = submit_json(cli, "gpu-check", "--wait")
    bad = submit_json(cli, "gpu-check", "--gpus", "1", "--wait")  # no GPU here: it fails
    assert bad["state"] == "FAILED" and bad["exit_code"] == 1
    runs = cli("runs", "--json").json()
    assert [r["run_id"] for r in runs] == [bad["run_id"], ok["run_id"]]  # newest first
    assert [r["run_id"] for r in cli("runs", "--state", "failed", "--json").json()] == [
        bad["run_id"]
    ]
    assert cli("runs", "--workload", "train", "--json").json() == []
    assert len(cli("runs", "--limit", "1", "--json").json()) == 1
    table = cli("status")
    assert table.exit_code == 0
    assert "COMPLETED" in table.stdout and "FAILED" in table.stdout
    assert cli("status", "--check").exit_code == 3
    bogus = cli("runs", "--state", "DONE")
    assert bogus.exit_code == 2 and "not a job state" in bogus.stderr


def test_wait_exit_code_three_on_failure(cli: Invoke) -> None:
    result = cli("submit", "gpu-check", "--gpus", "1", "--wait")
    assert result.exit_code == 3
    assert "FAILED" in result.stdout
    assert cli("wait", "last").exit_code == 3


def test_cancel_a_running_job_and_logs_follow(cli: Invoke, tmp_path: Path) -> None:
    # A user template whose job prints, then sleeps: something to follow and to cancel.
    templates = Path(os.environ["HPCJOB_HOME"]) / "templates"
    templates.mkdir(parents=True)
    (templates / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}echo started; sleep 600\n{% endblock %}'
    )
    run = submit_json(cli, "gpu-check")
    wait_until(
        lambda: cli("show", run["job_id"], "--json").json()["state"] == "RUNNING", "the job to run"
    )
    follower = subprocess.Popen(
        [sys.executable, "-m", "hpcjob", "logs", run["job_id"], "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        followed = read_until(follower.stdout, "started")  # it follows the running job
        cancelled = cli("cancel", run["job_id"], "--json").json()
        assert cancelled[0]["run_id"] == run["run_id"]
        rest, err = follower.communicate(timeout=GUARD_S)
    finally:
        follower.kill()
    out = followed + rest
    assert follower.returncode == 0
    assert "started" in out and "CANCELLED" in out
    assert "ended: CANCELLED" in err
    again = cli("cancel", run["job_id"])
    assert again.exit_code == 1 and "already ended" in again.stderr


def _gated_template(home: Path, gate: Path, after: str) -> None:
    """A gpu-check template whose job waits until the test creates `gate`, then runs `after`."""
    templates = home / "templates"
    templates.mkdir(parents=True)
    (templates / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}'
        f"{bash_wait_for(gate)}\n{after}\n{{% endblock %}}"
    )


def test_job_runs_on_after_the_cli_exits(isolated_home: Path, tmp_path: Path) -> None:
    """Submit from a separate process that exits at once; the job still completes."""
    gate = tmp_path / "go"
    _gated_template(isolated_home, gate, "echo survived")
    submitted = run_hpcjob("submit", "gpu-check", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    first = json.loads(run_hpcjob("show", job_id, "--json").stdout)
    assert first["state"] in ("PENDING", "RUNNING")  # it waits for the gate: it cannot have ended
    gate.touch()
    waited = run_hpcjob("wait", job_id, "--json")
    assert waited.exit_code == 0 and json.loads(waited.stdout)["state"] == "COMPLETED"
    assert "survived" in run_hpcjob("logs", job_id).stdout


def test_time_limit_gives_timeout(cli: Invoke) -> None:
    templates = Path(os.environ["HPCJOB_HOME"]) / "templates"
    templates.mkdir(parents=True)
    (templates / "gpu-check.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}{% block command %}sleep 30\n{% endblock %}'
    )
    result = cli("submit", "gpu-check", "--time", "0:02", "--wait", "--json")
    assert result.exit_code == 3
    assert result.json()["state"] == "TIMEOUT"
    assert "DUE TO TIME LIMIT" in cli("logs", "last").stdout


def test_render_and_dry_run_submit_nothing(cli: Invoke, pcam_dir: Path) -> None:
    rendered = cli("render", "train", "--partition", "gpu_a100", "--epochs", "3")
    assert rendered.exit_code == 0
    assert "#SBATCH --partition=gpu_a100" in rendered.stdout
    assert "--epochs 3" in rendered.stdout
    dry = cli("submit", "train", "--dry-run", "--data-dir", str(pcam_dir), "--json")
    assert dry.exit_code == 0
    assert dry.json()["dry_run"] is True and "#!/bin/bash" in dry.json()["script"]
    told = cli("submit", "gpu-check", "--dry-run").stderr
    assert "cost: none — the embedded scheduler runs jobs on this machine" in told
    assert "not billed:" not in told
    assert cli("runs", "--json").json() == []


def test_a_missing_data_folder_is_refused_by_dry_run_and_submit_alike(cli: Invoke) -> None:
    """The data is looked for where the job will read it (this machine, for the embedded
    scheduler) before anything is recorded; a dry run says what a submit would."""
    for workload in ("train", "eda"):
        for dry in (["--dry-run"], []):
            result = cli("submit", workload, "--data-dir", "/nonexistent", *dry)
            assert result.exit_code == 2, (workload, dry, result.stderr)
            assert "the data directory /nonexistent does not exist" in result.stderr
            assert "Valid" not in result.stderr and "Traceback" not in result.stderr
    assert cli("runs", "--json").json() == []  # nothing in the ledger


def test_a_venv_without_its_python_is_refused_before_submit(
    cli: Invoke, isolated_home: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(
        f'[profiles.mine]\nscheduler = "local"\nvenv = "{venv}"\n'
    )
    for dry in (["--dry-run"], []):
        result = cli("submit", "gpu-check", "-P", "mine", *dry)
        assert result.exit_code == 2, result.stderr
        assert f"the venv {venv} has no bin/python on this machine" in result.stderr
        assert "hpcjob setup-env -P mine" in result.stderr
    assert cli("runs", "--json", "--all-profiles").json() == []


def test_validation_errors_exit_2_without_traceback(cli: Invoke) -> None:
    result = cli("submit", "train", "--epochs", "0", "--time", "1h", "--lr", "-1")
    assert result.exit_code == 2
    assert "Error:" in result.stderr and "Traceback" not in result.stderr
    assert "--epochs" in result.stderr and "--time" in result.stderr
    assert cli("submit", "nosuch").exit_code == 2
    missing = cli("submit", "train", "--data-dir", "/definitely/not/here")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    assert "synth.py" in missing.stderr
    assert cli("runs", "--json").json() == []  # nothing half-recorded


def test_unknown_refs_and_empty_ledger(cli: Invoke) -> None:
    for args in (["show", "last"], ["logs", "last"], ["show", "12345"], ["cancel", "r000000"]):
        result = cli(*args)
        assert result.exit_code == 1, args
        assert "Error:" in result.stderr and "Traceback" not in result.stderr


def test_an_ambiguous_run_id_prefix_names_the_runs_it_matches(cli: Invoke) -> None:
    from hpcjob.ledger.store import Ledger
    from tests.helpers import new_run

    ledger = Ledger(Path(os.environ["HPCJOB_HOME"]) / "ledger.db")
    for i, workload in enumerate(("train", "eda", "gpu-check", "train")):
        run = ledger.create_run(new_run(run_id=f"r0{i}cafe", workload=workload))
        ledger.set_submitted(run.run_id, str(900 + i), "o")
    ledger.close()
    for args in (["show", "r0"], ["logs", "r0"], ["cancel", "r0"]):
        result = cli(*args)
        assert result.exit_code == 1, args
        assert "'r0' is ambiguous" in result.stderr and "Traceback" not in result.stderr
        assert "No run or job" not in result.stderr
        for i in range(4):
            assert f"r0{i}cafe" in result.stderr and f"job {900 + i}" in result.stderr
        assert "gpu-check" in result.stderr and "PENDING" in result.stderr


def test_damaged_ledger_is_a_sentence(cli: Invoke) -> None:
    home = Path(os.environ["HPCJOB_HOME"])
    home.mkdir(parents=True)
    (home / "ledger.db").write_bytes(b"garbage" * 512)
    result = cli("status")
    assert result.exit_code == 1 and "damaged" in result.stderr


def test_config_show_and_init(cli: Invoke) -> None:
    shown = cli("config", "show", "--json").json()
    assert shown["profile"] == "local" and shown["config_file_exists"] is False
    sources = {row["key"]: row["source"] for row in shown["settings"]}
    assert sources["scheduler"] == "built-in profile local"
    created = cli("config", "init")
    assert created.exit_code == 0 and Path(created.stdout.strip()).exists()
    assert cli("config", "init").exit_code == 1
    snellius = cli("config", "show", "--profile", "snellius", "--account", "x", "--json")
    assert snellius.exit_code == 2  # config show takes no resource flags
    snellius = cli("config", "show", "--profile", "snellius", "--json").json()
    values = {row["key"]: row["value"] for row in snellius["settings"]}
    assert values["host"] == "snellius.surf.nl"
    assert "Python/3.13.1-GCCcore-14.2.0" in values["modules"]
    broken = Path(created.stdout.strip())
    broken.write_text("[profiles.local\n")
    result = cli("status")
    assert result.exit_code == 1 and "not valid TOML" in result.stderr


def test_json_output_is_clean_and_parseable(cli: Invoke) -> None:
    run = submit_json(cli, "gpu-check", "--wait")
    for args in (["status", "--json"], ["runs", "--json"], ["show", "last", "--json"]):
        result: Result = cli(*args)
        json.loads(result.stdout)
    detail = cli("show", run["run_id"], "--json").json()
    assert {"run_id", "job_id", "state", "metrics", "script", "history"} <= set(detail)


def test_version_and_help() -> None:
    assert run_hpcjob("--version").stdout.startswith("hpcjob ")
    helped = run_hpcjob("--help")
    assert helped.exit_code == 0 and "submit" in helped.stdout


@pytest.mark.parametrize("command", [["--help"], ["status"], ["runs"], ["show", "last"]])
def test_light_commands_do_not_import_heavy_modules(command: list[str]) -> None:
    probe = (  # main() ends the process; atexit handlers still run
        "import atexit, sys\n"
        "def report():\n"
        "    heavy = [m for m in ('torch', 'h5py', 'paramiko', 'numpy') if m in sys.modules]\n"
        "    print('HEAVY', heavy, file=sys.stderr)\n"
        "atexit.register(report)\n"
        f"sys.argv = ['hpcjob', *{command!r}]\n"
        "from hpcjob.cli import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stderr, done.stderr


def test_interrupted_wait_leaves_the_job_running(isolated_home: Path, tmp_path: Path) -> None:
    """Ctrl-C while `submit --wait` waits: it says the job keeps running, and it does."""
    gate = tmp_path / "go"
    _gated_template(isolated_home, gate, "echo done")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcjob", "submit", "gpu-check", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        told = read_until(proc.stderr, "profile")  # "Submitted … (run r…, profile local)"
        found = re.search(r"\(run\s+(r[0-9a-f]+),", told)
        assert found, told
        run_id = found.group(1)
        # Only a refresh inside the wait records RUNNING (submit leaves the run PENDING), so once
        # the ledger says RUNNING the process is waiting: that is where Ctrl-C comes.
        wait_until(
            lambda: (ledger_run(isolated_home, run_id) or {}).get("state") == "RUNNING",
            "the waiting hpcjob to see its job run",
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=GUARD_S)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Stopped waiting" in err and "keeps running" in err and "Traceback" not in err
    shown = json.loads(run_hpcjob("show", run_id, "--json").stdout)
    assert shown["state"] == "RUNNING"  # it does keep running, held at its gate
    gate.touch()
    waited = run_hpcjob("wait", run_id, "--json")
    assert json.loads(waited.stdout)["state"] == "COMPLETED"
    assert "done" in run_hpcjob("logs", run_id).stdout


def test_after_resolves_a_run_id(cli: Invoke) -> None:
    first = submit_json(cli, "gpu-check")
    second = submit_json(cli, "gpu-check", "--after", first["run_id"], "--wait")
    assert second["state"] == "COMPLETED"
    script = cli("show", second["run_id"], "--json").json()["script"]
    assert f"#SBATCH --dependency=afterok:{first['job_id']}" in script


def test_eda_run_records_its_artifacts(cli: Invoke, pcam_dir: Path) -> None:
    run = submit_json(cli, "eda", "--data-dir", str(pcam_dir), "--wait")
    assert run["state"] == "COMPLETED", cli("logs", run["job_id"]).stdout
    shown = cli("show", run["run_id"], "--json").json()
    names = {a["name"] for a in shown["artifacts"]}
    assert "eda.json" in names and any(n.endswith(".png") for n in names)
    assert any(key.startswith("eda_") for key in shown["facts"])


def test_partitions_and_connect_on_the_embedded_scheduler(cli: Invoke) -> None:
    parts = cli("partitions", "--json")
    assert parts.exit_code == 0 and parts.json() == []
    assert "any partition name runs here" in parts.stderr
    refused = cli("connect")
    assert refused.exit_code == 2 and "has no host" in refused.stderr


def test_logs_tail_and_wait_on_a_finished_run(cli: Invoke) -> None:
    run = submit_json(cli, "gpu-check", "--wait")
    tail = cli("logs", run["job_id"], "--tail", "1")
    assert tail.exit_code == 0 and len(tail.stdout.splitlines()) == 1
    waited = cli("wait", run["run_id"], "--json")
    assert waited.exit_code == 0 and waited.json()["state"] == "COMPLETED"


@pytest.mark.parametrize("command", ["submit", "rerun"])
def test_num_workers_help_says_the_default_the_job_script_uses(command: str) -> None:
    """templates/train.sbatch.j2 gives the loader one worker less than the allocated cores, at
    most 8, when --num-workers is not given: the help says so (it said 0)."""
    from typer.testing import CliRunner

    from hpcjob.cli import app

    helped = " ".join(CliRunner().invoke(app, [command, "--help"]).stdout.split())
    option = helped[helped.index("--num-workers") :][:120]
    assert "Loader workers (default: one less than the allocated cores, at most 8)" in option
    template = (Path(__file__).parent.parent / "templates" / "train.sbatch.j2").read_text()
    assert (
        "${SLURM_CPUS_PER_TASK:-1} - 1" in template and "-gt 8 ]; then hpcjob_workers=8" in template
    )
