"""The MLP trained on PCAM, with the course skeleton's constructor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten C×H×W, then Linear → ReLU → Dropout per hidden layer, then Linear to logits."""

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_units: Sequence[int] | int,
        num_classes: int = 2,
        dropout_rate: float = 0.2,
    ) -> None:
        super().__init__()
        hidden = [hidden_units] if isinstance(hidden_units, int) else list(hidden_units)
        if any(h <= 0 for h in hidden) or not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"bad MLP sizes: hidden_units={hidden}, dropout_rate={dropout_rate}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout_rate)]
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
