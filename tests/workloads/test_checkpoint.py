"""checkpoint.py's keeping policy, in-process: last.pt, best.pt and the N newest epochs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from checkpoint import Checkpoints


def state(epoch: int) -> dict[str, object]:
    return {"weights": torch.full((4,), float(epoch)), "epoch": epoch}


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def run_epochs(ckpt: Checkpoints, val_losses: list[float]) -> None:
    history: list[float] = []
    for epoch, loss in enumerate(val_losses, start=1):
        ckpt.save_epoch(state(epoch), epoch, best=Checkpoints.is_best(loss, history))
        history.append(loss)


def test_by_default_only_last_and_best_are_kept(tmp_path: Path) -> None:
    ckpt = Checkpoints(tmp_path, keep=0)
    run_epochs(ckpt, [0.5, 0.3, 0.4, math.nan, 0.35])
    assert names(tmp_path) == ["best.pt", "last.pt"]
    assert ckpt.load(tmp_path / "best.pt")["epoch"] == 2
    assert ckpt.load(tmp_path / "last.pt")["epoch"] == 5
    summary = ckpt.summary(epochs_done=5, best_epoch=2)
    assert summary["kept"] == ["best.pt", "last.pt"] and summary["removed"] == 5
    assert summary["best_epoch"] == 2 and "--keep-checkpoints 0" in summary["policy"]


def test_keep_n_keeps_the_newest_epochs_and_removes_older_ones(tmp_path: Path) -> None:
    ckpt = Checkpoints(tmp_path, keep=2)
    run_epochs(ckpt, [0.5, 0.3, 0.4, 0.45])
    assert names(tmp_path) == ["best.pt", "epoch-003.pt", "epoch-004.pt", "last.pt"]
    assert ckpt.load(tmp_path / "epoch-003.pt")["epoch"] == 3
    summary = ckpt.summary(epochs_done=4, best_epoch=2)
    assert summary["removed"] == 2
    # Hard links where the filesystem has them: a kept epoch costs no second copy of last.pt.
    last, newest = tmp_path / "last.pt", tmp_path / "epoch-004.pt"
    assert (
        os.stat(last).st_ino == os.stat(newest).st_ino or newest.read_bytes() == last.read_bytes()
    )


def test_a_directory_from_before_the_policy_is_pruned_on_the_next_epoch(tmp_path: Path) -> None:
    every = Checkpoints(tmp_path, keep=100)
    run_epochs(every, [0.5, 0.4, 0.3])
    ckpt = Checkpoints(tmp_path, keep=1)  # e.g. a resumed run with --keep-checkpoints 1
    ckpt.save_epoch(state(4), 4, best=False)
    assert names(tmp_path) == ["best.pt", "epoch-004.pt", "last.pt"]


def test_non_finite_losses_are_never_best() -> None:
    assert Checkpoints.is_best(0.4, [])
    assert not Checkpoints.is_best(math.nan, [])
    assert Checkpoints.is_best(0.3, [math.nan, 0.4])
    assert not Checkpoints.is_best(0.4, [0.4])  # a tie keeps the earlier epoch
