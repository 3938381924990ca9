"""Small ready-made nets for configs and examples (plain nn.Modules)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(
    in_features: int,
    hidden: Sequence[int] = (64, 64),
    out_features: int = 1,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multi-layer perceptron: Linear -> ReLU (-> Dropout) per hidden width, then Linear.

    Example:
        >>> mlp(30, [16], 1)
        Sequential(
          (0): Linear(in_features=30, out_features=16, bias=True)
          (1): ReLU()
          (2): Linear(in_features=16, out_features=1, bias=True)
        )
    """
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
