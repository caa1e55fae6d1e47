"""The MLP: the course skeleton's constructor, flattening C×H×W input."""

from __future__ import annotations

import pytest
import torch
from model import MLP


def test_forward_gives_logits_per_class_and_backward_reaches_every_weight() -> None:
    torch.manual_seed(0)
    model = MLP((3, 96, 96), [32, 16], num_classes=2, dropout_rate=0.2)
    x = torch.rand(5, 3, 96, 96)
    logits = model(x)
    assert logits.shape == (5, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1, 1])).backward()
    grads = [p.grad for p in model.parameters()]
    assert len(grads) == 6  # three Linear layers, weight and bias each
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert model.net[1].in_features == 3 * 96 * 96


def test_int_hidden_units_and_dropout_only_in_training() -> None:
    model = MLP((3, 8, 8), 10, num_classes=3, dropout_rate=0.5)
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [10, 3]
    x = torch.rand(4, 3, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    assert not torch.equal(first, model(x))


@pytest.mark.parametrize("hidden, dropout", [([0], 0.2), ([8], 1.0), ([], -0.1)])
def test_bad_sizes_are_refused(hidden: list[int], dropout: float) -> None:
    with pytest.raises(ValueError):
        MLP((3, 8, 8), hidden, dropout_rate=dropout)
