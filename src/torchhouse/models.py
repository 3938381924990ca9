"""Small ready-made nets for configs and examples (plain nn.Modules)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BagOfTrigrams", "bag_of_trigrams", "digits_cnn", "mlp"]


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


class BagOfTrigrams(nn.Module):
    """Text classifier: embed each trigram id, average the non-padding ones, then an MLP.

    Takes int64 ids ``(N, L)`` with 0 as padding (``torchhouse.text.TrigramVocabulary``).

    Example:
        >>> BagOfTrigrams(100)(torch.tensor([[2, 3, 0]])).shape
        torch.Size([1, 2])
    """

    def __init__(
        self, vocabulary_size: int, dim: int = 32, hidden: int = 32, classes: int = 2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, dim, padding_idx=0)
        self.head = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids > 0).unsqueeze(-1).float()
        pooled = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        out: torch.Tensor = self.head(pooled)
        return out


def bag_of_trigrams(
    vocabulary_size: int, dim: int = 32, hidden: int = 32, classes: int = 2, dropout: float = 0.2
) -> BagOfTrigrams:
    """`BagOfTrigrams` as a config factory (``torchhouse.models:bag_of_trigrams``)."""
    return BagOfTrigrams(vocabulary_size, dim, hidden, classes, dropout)


def digits_cnn(channels: int = 32, hidden: int = 128, dropout: float = 0.25) -> nn.Module:
    """A small CNN for 1x8x8 digit images (about 150k parameters).

    Example:
        >>> digits_cnn()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * 4 * 4, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )
