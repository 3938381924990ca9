"""Metrics given by name (``"auc"``, ``"f1"``, ``"precision"``, ``"recall"``), built from torchmetrics.

Keras resolves such names from the loss; so does torchhouse (`torchhouse.metrics.tasks`):
``BCEWithLogitsLoss`` means one logit per sample (a sigmoid is applied here, never guessed
per batch from the values), ``BCELoss`` one probability, ``CrossEntropyLoss`` /
``NLLLoss`` C class scores (a softmax, macro averages over the classes, C read from the
first batch). torchmetrics is imported when the first batch arrives, not when torchhouse is.

Example:
    >>> import torch
    >>> auc = NamedMetric("auc", "binary-logits")
    >>> auc.update(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([[1.0], [0.0], [0.0]]))
    >>> round(float(auc.compute()), 3)
    1.0
"""

from __future__ import annotations

from typing import Any

import torch

from torchhouse.errors import ConfigError, DataError

__all__ = ["NAMES", "NamedMetric"]

NAMES = ("auc", "f1", "precision", "recall")
_CLASSES = {
    "auc": ("BinaryAUROC", "MulticlassAUROC"),
    "f1": ("BinaryF1Score", "MulticlassF1Score"),
    "precision": ("BinaryPrecision", "MulticlassPrecision"),
    "recall": ("BinaryRecall", "MulticlassRecall"),
}


class NamedMetric:
    """A torchmetrics classification metric chosen by name and by the kind of the net's outputs."""

    higher_is_better = True

    def __init__(
        self, name: str, kind: str | None, ignore_index: int | None = None, class_dim: int = 1
    ) -> None:
        if name not in NAMES:
            raise ConfigError(f"metric {name!r}: expected one of {list(NAMES)}")
        if kind is None:
            raise ConfigError(
                f"metric {name!r} follows the loss, which must be BCEWithLogitsLoss, BCELoss, "
                "CrossEntropyLoss or NLLLoss; pass a torchmetrics object yourself for another loss"
            )
        self.name, self.kind = name, kind
        # targets equal to ignore_index are left out; class_dim: where (N, C, ...) or (N, T, C) keep C
        self.ignore_index, self.class_dim = ignore_index, class_dim
        self.inner: Any = None
        self.device = torch.device("cpu")
        self.num_classes: int | None = None

    def _build(self, preds: torch.Tensor) -> None:
        import torchmetrics.classification as classification

        binary, multiclass = _CLASSES[self.name]
        if self.kind == "multiclass":
            dim = self.class_dim if preds.dim() > 2 else 1
            if preds.dim() < 2 or preds.shape[dim] < 2:
                raise DataError(
                    f"metric {self.name!r}: a classification loss needs preds of shape (N, C) (or "
                    f"(N, C, ...) for torch's losses, (N, T, C) for a net's own loss), got "
                    f"{tuple(preds.shape)}"
                )
            self.num_classes = int(preds.shape[dim])
            kwargs: dict[str, Any] = {"num_classes": self.num_classes}
            if self.ignore_index is not None:
                kwargs["ignore_index"] = self.ignore_index
            if self.name != "auc":
                kwargs["average"] = "macro"
            self.inner = getattr(classification, multiclass)(**kwargs)
        else:
            self.inner = getattr(classification, binary)()
        self.inner.to(self.device)

    def to(self, device: torch.device) -> NamedMetric:
        self.device = torch.device(device)
        if self.inner is not None:
            self.inner.to(self.device)
        return self

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if self.inner is None:
            self._build(preds)
        if self.kind == "multiclass":
            dim = self.class_dim if preds.dim() > 2 else 1
            scores = preds.float().movedim(dim, -1).reshape(-1, preds.shape[dim])
            self.inner.update(scores.softmax(dim=1), target.long().reshape(-1))
            return
        scores = preds.float().reshape(-1)
        if self.kind == "binary-logits":
            scores = scores.sigmoid()
        self.inner.update(scores, target.reshape(-1).long())

    def compute(self) -> torch.Tensor:
        if self.inner is None:
            return torch.tensor(float("nan"))
        value: torch.Tensor = self.inner.compute()
        return value

    def reset(self) -> None:
        if self.inner is not None:
            self.inner.reset()

    def state_dict(self) -> dict[str, Any]:
        from torchhouse.metrics.states import metric_state

        if self.inner is None:
            return {}
        return {"num_classes": self.num_classes, "inner": metric_state(self.inner, self.name)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torchhouse.metrics.states import load_metric_state

        if not state:
            return
        if self.inner is None:
            classes = state.get("num_classes")
            example = torch.zeros(1, classes) if classes else torch.zeros(1, 1)
            self._build(example)
        load_metric_state(self.inner, state["inner"], self.device)
