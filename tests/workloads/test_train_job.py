"""train.py run as a job runs it: output contract, learning, faults, interrupt and resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from jobrun import TRAIN_ARGS, Run, run_workload, workload_argv

pytestmark = pytest.mark.slow


def test_two_epochs_learn_and_report_through_both_channels(straight_run: Run) -> None:
    run = straight_run
    assert run.returncode == 0, run.stderr
    assert "No checkpoint in" in run.stdout  # --resume auto on a fresh directory
    assert "First batch OK: x=(64, 3, 96, 96) y=(64,)" in run.stdout
    lines = run.epoch_lines()
    assert [line[0] for line in lines] == ["1", "2"]
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [1, 2]
    for line, m in zip(lines, metrics, strict=True):
        printed = [float(v) for v in line[1:]]
        emitted = [m["train_loss"], m["val_loss"], m["val_acc"], m["val_auc"]]
        assert printed == [round(v, 4) for v in emitted]
        assert m["images_per_s"] > 0 and m["epoch_seconds"] > 0
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[1]["val_auc"] > 0.8
    stdout_json = [
        ln.removeprefix("HPCJOB_METRIC ")
        for ln in run.stdout.splitlines()
        if ln.startswith("HPCJOB_METRIC ")
    ]
    assert stdout_json == (run.output_dir / "metrics.jsonl").read_text().splitlines()
    facts = run.records()[0]["facts"]
    assert facts["seed"] == 3 and facts["device"] == "cpu" and facts["train_images"] == 2048
    assert re.fullmatch(r"[0-9a-f]{16}", facts["data_fingerprint"])


def checkpoint_facts(run: Run) -> dict[str, Any]:
    """The latest `checkpoints` fact the run reported."""
    found = [
        r["facts"]["checkpoints"] for r in run.records() if "checkpoints" in r.get("facts", {})
    ]
    assert found, run.stdout
    return dict(found[-1])


def test_writes_the_loss_plot_and_keeps_only_last_and_best_checkpoints(straight_run: Run) -> None:
    out = straight_run.output_dir
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt"]
    losses = [m["val_loss"] for m in straight_run.metrics()]
    best_epoch = losses.index(min(losses)) + 1
    fact = checkpoint_facts(straight_run)
    assert fact["kept"] == ["best.pt", "last.pt"] and fact["removed"] == 2
    assert fact["best_epoch"] == best_epoch and "--keep-checkpoints 0" in fact["policy"]
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["progress"]["history"][-1]["epoch"] == best_epoch


def test_keep_checkpoints_keeps_the_newest_epochs(official_dir: Path, tmp_path: Path) -> None:
    args = list(map(str, TRAIN_ARGS))
    args[args.index("--epochs") + 1] = "3"
    run = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *args, "--keep-checkpoints", "1"
    )
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-003.pt", "last.pt"]
    fact = checkpoint_facts(run)
    assert fact["kept"] == names and fact["removed"] == 2


def test_course_flavour_trains_with_finite_losses(course_dir: Path, tmp_path: Path) -> None:
    run = run_workload("train.py", tmp_path, "--data-dir", course_dir, *TRAIN_ARGS)
    assert run.returncode == 0, run.stderr
    metrics = run.metrics()
    assert len(metrics) == 2
    for m in metrics:
        assert all(isinstance(m[k], float) for k in ("train_loss", "val_loss", "val_auc"))
    assert run.records()[0]["facts"]["x_dtype"] == "float32"


def test_a_diverging_run_stops_at_the_first_non_finite_loss(
    tmp_path: Path, official_dir: Path
) -> None:
    run = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *TRAIN_ARGS, "--lr", "1e30"
    )
    assert run.returncode == 65
    assert re.search(r"non-finite loss \(nan\) at epoch 1, batch \d+", run.stderr)
    assert "inputs: all" in run.stderr and "finite" in run.stderr
    assert re.search(r"outputs \(logits\): \d+ of \d+ non-finite", run.stderr)
    assert "Traceback" not in run.stderr and not run.epoch_lines()


def test_interrupt_then_resume_gives_the_straight_run_numbers(
    straight_run: Run, official_dir: Path, tmp_path: Path
) -> None:
    # 32 batches per epoch: stop in the middle of epoch 2, where every RNG and the sampler
    # position matter.
    first = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *TRAIN_ARGS, "--stop-after-batches", "45"
    )
    assert first.returncode == 75, first.stderr
    assert (
        "Received SIGUSR1: saved" in first.stdout and "(epoch 2, 13 batches done)" in first.stdout
    )
    assert len(first.epoch_lines()) == 1
    second = run_workload(
        "train.py", tmp_path, "--data-dir", official_dir, *TRAIN_ARGS, "--resume", "auto"
    )
    assert second.returncode == 0, second.stderr
    assert "Resumed from" in second.stdout
    assert second.epoch_lines() == straight_run.epoch_lines()[1:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert checkpoint_facts(second) == checkpoint_facts(straight_run)
    final, reference = second.metrics()[-1], straight_run.metrics()[-1]
    for key in ("train_loss", "val_loss", "val_acc", "val_auc"):
        assert final[key] == reference[key], key


def test_sigterm_to_the_whole_job_saves_a_checkpoint_and_workers_survive(
    official_dir: Path, tmp_path: Path
) -> None:
    """Slurm signals every process of the job; data-loader workers must not die of it."""
    argv = workload_argv(
        "train.py",
        "--data-dir",
        official_dir,
        "--epochs",
        30,
        "--batch-size",
        8,
        "--hidden-units",
        16,
        "--num-workers",
        2,
        "--output-dir",
        tmp_path,
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("First batch OK"):
                break
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 75, stderr
    stopped = re.search(r"Received SIGTERM: saved .*last\.pt \(epoch (\d+)", stdout)
    assert stopped and (tmp_path / "checkpoints" / "last.pt").is_file()
    assert "Traceback" not in stderr
    finish = run_workload(
        "train.py",
        tmp_path,
        "--data-dir",
        official_dir,
        "--epochs",
        stopped.group(1),
        "--batch-size",
        8,
        "--hidden-units",
        16,
        "--num-workers",
        2,
        "--resume",
        "auto",
    )
    assert finish.returncode == 0, finish.stderr
    assert [int(line[0]) for line in finish.epoch_lines()] == [int(stopped.group(1))]


def test_resuming_with_other_settings_is_refused(straight_run: Run, official_dir: Path) -> None:
    run = run_workload(
        "train.py",
        straight_run.output_dir,
        "--data-dir",
        official_dir,
        *TRAIN_ARGS,
        "--lr",
        "0.01",
        "--resume",
        "auto",
        "--epochs",
        "3",
    )
    assert run.returncode == 1
    assert "other settings (lr)" in run.stderr and "Traceback" not in run.stderr
