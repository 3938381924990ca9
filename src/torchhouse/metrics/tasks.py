"""Which task a loss implies: one answer for the metric names, serving, configs and the app.

- ``"classification"``: class scores ``(N, C)`` and class-index targets (``CrossEntropyLoss``,
  ``NLLLoss``, and ``loss=None``: a net that computes its own loss, as Hugging Face
  classifiers do, with logits ``(N, ..., C)``);
- ``"binary"``: one logit per sample (``BCEWithLogitsLoss``);
- ``"probability"``: one probability per sample (``BCELoss``);
- ``"regression"``: anything else.

Example:
    >>> from torch import nn
    >>> task_of_loss(nn.BCEWithLogitsLoss()), task_of_loss_name("torch.nn:BCELoss")
    ('binary', 'probability')
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BINARY",
    "CLASSIFICATION",
    "PROBABILITY",
    "REGRESSION",
    "TASKS",
    "metric_kind",
    "task_of_loss",
    "task_of_loss_name",
]

CLASSIFICATION, BINARY, PROBABILITY, REGRESSION = "classification", "binary", "probability", "regression"
TASKS = (CLASSIFICATION, BINARY, PROBABILITY, REGRESSION)
_BY_LOSS = {
    "CrossEntropyLoss": CLASSIFICATION,
    "NLLLoss": CLASSIFICATION,
    "BCEWithLogitsLoss": BINARY,
    "BCELoss": PROBABILITY,
}


def task_of_loss_name(name: str | None) -> str:
    """The task of a loss given by name (``"CrossEntropyLoss"``, ``"module:CrossEntropyLoss"``);
    None is a net's own loss (classification)."""
    if name is None:
        return CLASSIFICATION
    return _BY_LOSS.get(name.rpartition(":")[2].rpartition(".")[2], REGRESSION)


def task_of_loss(loss: Any) -> str:
    """The task of a loss object (by its class's name, so a subclass of a torch loss counts as it)."""
    if loss is None:
        return CLASSIFICATION  # the net's own loss: Hugging Face classifiers
    for cls in type(loss).__mro__:
        if cls.__name__ in _BY_LOSS and cls.__module__.startswith("torch.nn"):
            return _BY_LOSS[cls.__name__]
    return REGRESSION


def metric_kind(loss: Any) -> str | None:
    """What named metrics (``"auc"``, ``"f1"``...) read the net's outputs as: "multiclass" class
    scores, "binary-logits", "binary-probabilities", or None (no classification task)."""
    return {
        CLASSIFICATION: "multiclass",
        BINARY: "binary-logits",
        PROBABILITY: "binary-probabilities",
    }.get(task_of_loss(loss))
