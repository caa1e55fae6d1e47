"""train.py under torchrun (DistributedDataParallel on the CPU, gloo): the same numbers as a
single process of the same seed and global batch, one writer, a shared stop, identical resume."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import synth
from jobrun import TRAIN_ARGS, Run, no_gpu_env, run_torchrun, run_workload

pytestmark = pytest.mark.slow

# Without dropout (whose masks differ between 1 and 2 processes; see workloads/ddp.py).
DDP_ARGS = (*TRAIN_ARGS, "--dropout", 0)
# Summing the same float32 losses and gradients in another order: measured ~1e-7 relative.
REL_TOL = 1e-5
NUMBERS = ("train_loss", "val_loss", "val_acc", "val_auc")


def assert_same_numbers(run: Run, reference: Run) -> None:
    got, want = run.metrics(), reference.metrics()
    assert [m["epoch"] for m in got] == [m["epoch"] for m in want]
    for g, w in zip(got, want, strict=True):
        for key in NUMBERS:
            assert math.isclose(g[key], w[key], rel_tol=REL_TOL), (g["epoch"], key, g, w)


@pytest.fixture(scope="module")
def single(official_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("single")
    return run_workload(
        "train.py", out, "--data-dir", official_dir, *DDP_ARGS, env=no_gpu_env(OMP_NUM_THREADS="1")
    )


def test_two_processes_match_one_process_and_only_rank_0_writes(
    single: Run, official_dir: Path, tmp_path: Path
) -> None:
    assert single.returncode == 0, single.stderr
    run = run_torchrun("train.py", tmp_path, 2, "--data-dir", official_dir, *DDP_ARGS)
    assert run.returncode == 0, run.stderr
    assert_same_numbers(run, single)
    # One writer: one set of lines, records, checkpoints; each rank got half of each batch.
    assert [line[0] for line in run.epoch_lines()] == ["1", "2"]
    assert run.stdout.count("First batch OK: x=(32, 3, 96, 96) y=(32,)") == 1
    assert run.stdout.count("Done: 2 epochs") == 1
    assert len(run.records()) == len(single.records())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "provenance.json").is_file()
    assert "Traceback" not in run.stderr and "Error" not in run.stderr


def test_a_last_batch_smaller_than_the_world_leaves_a_rank_empty_and_still_matches(
    tmp_path: Path,
) -> None:
    # 257 and 65 images in batches of 64: each split's last batch is one image, so rank 1's
    # slice of it is empty (no gradient from it, nothing to evaluate).
    data = tmp_path / "data"
    synth.generate(data, "official", {"train": 257, "valid": 65, "test": 8}, seed=2)
    args = ("--data-dir", data, *DDP_ARGS)
    one = run_workload("train.py", tmp_path / "one", *args, env=no_gpu_env(OMP_NUM_THREADS="1"))
    two = run_torchrun("train.py", tmp_path / "two", 2, *args)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert_same_numbers(two, one)


def test_a_rank_with_no_validation_images_at_all_still_matches(tmp_path: Path) -> None:
    # One validation image for two ranks: rank 1 evaluates nothing.
    data = tmp_path / "data"
    synth.generate(data, "official", {"train": 128, "valid": 1, "test": 8}, seed=3)
    args = ("--data-dir", data, *DDP_ARGS)
    one = run_workload("train.py", tmp_path / "one", *args, env=no_gpu_env(OMP_NUM_THREADS="1"))
    two = run_torchrun("train.py", tmp_path / "two", 2, *args)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    for got, want in zip(two.metrics(), one.metrics(), strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):  # AUC needs both classes
            assert math.isclose(got[key], want[key], rel_tol=REL_TOL), (key, got, want)


def test_a_batch_that_does_not_split_over_the_processes_is_refused(
    official_dir: Path, tmp_path: Path
) -> None:
    args = list(map(str, DDP_ARGS))
    args[args.index("--batch-size") + 1] = "63"
    run = run_torchrun("train.py", tmp_path, 2, "--data-dir", official_dir, *args)
    assert run.returncode != 0
    assert "--batch-size 63 is the global batch and must divide evenly over the 2" in run.stderr
    assert "use a multiple of 2" in run.stderr and not (tmp_path / "metrics.jsonl").exists()


def test_a_failing_rank_ends_the_run_with_an_error(official_dir: Path, tmp_path: Path) -> None:
    # A diverging run: every rank meets the non-finite loss and exits 65; torchrun exits non-zero.
    run = run_torchrun(
        "train.py", tmp_path, 2, "--data-dir", official_dir, *DDP_ARGS, "--lr", "1e30", timeout=120
    )
    assert run.returncode != 0
    assert re.search(r"Error: rank [01]: non-finite loss \(nan\) at epoch 1, batch \d+", run.stderr)
    assert not run.epoch_lines()


def test_usr1_on_one_rank_stops_all_at_one_batch_and_resume_matches(
    official_dir: Path, tmp_path: Path
) -> None:
    """With dropout (the ranks share rank 0's RNG state, so the continuation is identical)."""
    straight = run_torchrun(
        "train.py", tmp_path / "straight", 2, "--data-dir", official_dir, *TRAIN_ARGS
    )
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "stopped"
    # Only the last rank signals itself after 45 batches (32 per epoch): the stop is agreed.
    first = run_torchrun(
        "train.py", out, 2, "--data-dir", official_dir, *TRAIN_ARGS, "--stop-after-batches", 45
    )
    assert first.returncode != 0  # 75 on every rank; torchrun reports the ranks' failure
    assert first.stdout.count("Received SIGUSR1: saved") == 1, first.stdout + first.stderr
    assert "(epoch 2, 13 batches done)" in first.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    second = run_torchrun(
        "train.py", out, 2, "--data-dir", official_dir, *TRAIN_ARGS, "--resume", "auto"
    )
    assert second.returncode == 0, second.stderr
    assert "Resumed from" in second.stdout
    assert second.epoch_lines() == straight.epoch_lines()[1:]
    final, reference = second.metrics()[-1], straight.metrics()[-1]
    for key in NUMBERS:
        assert final[key] == reference[key], key
