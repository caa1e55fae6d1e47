"""Pure pieces of train.py, checked in-process."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import train
from model import MLP


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The definition: P(score of a positive > score of a negative), ties counting half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def test_roc_auc_matches_the_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # coarse: many ties
    assert train.roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))
    assert train.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert np.isnan(train.roc_auc(np.ones(4, dtype=int), np.arange(4.0)))


def test_hidden_units_option() -> None:
    assert train.hidden_units("512,256") == [512, 256]
    assert train.hidden_units("64") == [64]
    for bad in ("", "a,b", "0,3"):
        with pytest.raises(argparse.ArgumentTypeError):
            train.hidden_units(bad)


def test_non_finite_report_names_the_culprit() -> None:
    model = MLP((3, 2, 2), [4])
    x = torch.rand(2, 3, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    logits = model(x)
    text = train.describe_nonfinite(3, 7, torch.tensor(float("nan")), x, logits, model, 1e-3)
    assert text.startswith("non-finite loss (nan) at epoch 3, batch 7")
    assert "inputs: 1 of 24 non-finite (1 NaN, 0 Inf)" in text
    assert "weights: all" in text and "lower --lr" not in text
