"""Numbers about a training run, for train.py: the ROC AUC, where a loss went non-finite, and
the loss plot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


def describe_nonfinite(
    epoch: int,
    batch: int,
    loss: torch.Tensor,
    x: torch.Tensor,
    logits: torch.Tensor,
    model: nn.Module,
    lr: float,
) -> str:
    """Where the loss went non-finite, and which of inputs, outputs, weights were to blame."""

    def census(t: torch.Tensor) -> str:
        bad = ~torch.isfinite(t)
        if not bad.any():
            return f"all {t.numel()} finite (|max| {t.abs().max().item():.3g})"
        nan = int(torch.isnan(t).sum())
        return f"{int(bad.sum())} of {t.numel()} non-finite ({nan} NaN, {int(bad.sum()) - nan} Inf)"

    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    parts = [
        f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {batch}",
        f"inputs: {census(x)}",
        f"outputs (logits): {census(logits.detach())}",
        f"weights: {census(weights)}",
    ]
    if torch.isfinite(x).all() and not torch.isfinite(logits).all():
        parts.append(f"the inputs are clean, so the model diverged: lower --lr (now {lr:g})")
    return "; ".join(parts)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with tied scores sharing ranks); NaN when only
    one class is present."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank per run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a compute node
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="PCAM MLP")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
