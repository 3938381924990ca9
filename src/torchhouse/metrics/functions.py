"""Metrics: torchmetrics-style objects and plain callables, accumulated on the device.

Two kinds of metric are accepted in ``Model(metrics={...})``:

- A *stateful* metric: any object with ``update``, ``compute`` and ``reset`` methods, such
  as a ``torchmetrics.Metric``. It is recognised by those methods, so torchmetrics is never
  imported here. It is updated on the device every step and computed once per epoch.
- A *function* ``fn(preds, target) -> tensor``: its value is a sample-weighted mean over
  the epoch, so a short last batch does not count as a full one.

`EpochMetrics` keeps one epoch's values in preallocated device buffers (one slot per
step), so the step loop never waits for the device; values are read once per epoch, or
when the progress bar refreshes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch

from torchhouse.data.trees import tree_map
from torchhouse.errors import ConfigError, DataError
from torchhouse.metrics.tasks import (
    BINARY,
    CLASSIFICATION,
    PROBABILITY,
    REGRESSION,
    metric_kind,
    task_of_loss,
)

__all__ = [
    "METRIC_NAMES",
    "RESERVED_NAMES",
    "ClassAccuracy",
    "accuracy",
    "binary_accuracy_logits",
    "check_binary_accuracy_inputs",
    "check_metric_values",
    "class_accuracy_for",
    "copy_metrics",
    "is_stateful_metric",
    "mean_absolute_error",
    "mean_squared_error",
    "normalise_metrics",
    "resolve_metric",
    "resolve_weighted_metrics",
]

MetricLike = Any

RESERVED_NAMES = ("loss", "lr")


def is_stateful_metric(obj: Any) -> bool:
    """True for torchmetrics-style metrics: objects with update / compute / reset methods."""
    return all(callable(getattr(obj, name, None)) for name in ("update", "compute", "reset"))


def accuracy(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Classification accuracy as a plain function, computed on the device.

    ``preds`` are logits or probabilities: ``(N, C)`` for C classes (argmax is taken) or
    ``(N,)`` / ``(N, 1)`` for binary tasks (threshold 0.5 on probabilities, 0 on logits
    cannot be told apart, so pass probabilities, or use ``binary_accuracy_logits``).

    >>> accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    tensor(0.5000)
    """
    if preds.dim() >= 2 and preds.shape[-1] > 1:
        return (preds.argmax(dim=-1) == target).float().mean()
    return ((preds.reshape(target.shape) > 0.5) == target.bool()).float().mean()


def mean_absolute_error(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, on the device (``"mae"``).

    >>> mean_absolute_error(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]))
    tensor(1.)
    """
    return (preds.reshape(target.shape).float() - target.float()).abs().mean()


def mean_squared_error(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, on the device (``"mse"``).

    >>> mean_squared_error(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]))
    tensor(1.)
    """
    return (preds.reshape(target.shape).float() - target.float()).pow(2).mean()


def binary_accuracy_logits(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary accuracy for logits (threshold 0).

    >>> binary_accuracy_logits(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0]))
    tensor(0.5000)
    """
    return ((preds.reshape(target.shape) > 0) == target.bool()).float().mean()


class ClassAccuracy:
    """Accuracy over the targets that count: class scores' argmax against class indices,
    leaving out targets equal to ``ignore_index`` (padding, -100 in Hugging Face's
    convention). It returns counts, ``(correct, counted)``, and the epoch's value is the sum
    of the first over the sum of the second: token accuracy over labelled tokens, not a mean
    of per-batch means.

    ``class_dim`` is where the class scores are: 1 for torch's losses ``(N, C, ...)``, -1 for
    a Hugging Face net's logits ``(N, T, C)``.

    >>> ClassAccuracy()(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, -100]))
    (tensor(1), tensor(2))
    """

    counts = True  # returns (numerator, denominator); the epoch divides their sums

    def __init__(self, ignore_index: int | None = -100, class_dim: int = 1) -> None:
        self.ignore_index = ignore_index
        self.class_dim = class_dim
        self.__name__ = "accuracy"

    def __call__(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Any]:
        predicted = preds.argmax(self.class_dim if preds.dim() > 2 else -1)
        ignore = self.ignore_index
        if ignore is None:
            return (predicted == target).sum(), target.numel()
        counted = (target != ignore).sum()
        if ignore < 0:  # an argmax is never negative: a hit is never an ignored target
            return (predicted == target).sum(), counted
        return ((predicted == target) & (target != ignore)).sum(), counted

    def __repr__(self) -> str:
        return f"ClassAccuracy(ignore_index={self.ignore_index}, class_dim={self.class_dim})"


def class_accuracy_for(loss: Any) -> ClassAccuracy:
    """The accuracy named metrics use with a classification loss (its ``ignore_index``) or
    with a net's own loss (Hugging Face: -100, logits with the classes last)."""
    if loss is None:
        return ClassAccuracy(-100, class_dim=-1)
    return ClassAccuracy(getattr(loss, "ignore_index", -100), class_dim=1)


METRIC_NAMES = ("accuracy", "acc", "mae", "mse", "auc", "f1", "precision", "recall")


def resolve_metric(metric: Any, loss: Any, name: str) -> Any:
    """A metric given by name (``"accuracy"``, ``"mae"``, ``"mse"``), or ``accuracy`` itself,
    resolved from the loss the way Keras resolves ``"accuracy"``.

    ``accuracy`` with ``BCEWithLogitsLoss`` thresholds logits at 0 (not probabilities at
    0.5); a name that does not fit the loss is refused. With ``loss=None`` (a net that
    computes its own loss, as Hugging Face classifiers do) it is the argmax accuracy of
    the logits.

    >>> resolve_metric("accuracy", torch.nn.BCEWithLogitsLoss(), "acc") is binary_accuracy_logits
    True
    """
    task = task_of_loss(loss)
    if isinstance(metric, str):
        key = metric.lower()
        if key in ("mae", "mean_absolute_error"):
            return mean_absolute_error
        if key in ("mse", "mean_squared_error"):
            return mean_squared_error
        if key in ("auc", "f1", "precision", "recall"):
            from torchhouse.metrics.named import NamedMetric

            ignore = -100 if loss is None else getattr(loss, "ignore_index", None)
            class_dim = -1 if loss is None else 1
            return NamedMetric(key, metric_kind(loss), ignore_index=ignore, class_dim=class_dim)
        if key not in ("accuracy", "acc"):
            raise ConfigError(
                f"metrics[{name!r}]: {metric!r} is not a metric name torchhouse resolves; use one of "
                f"{list(METRIC_NAMES)}, a th.metrics function or a torchmetrics object"
            )
        if task == REGRESSION:
            raise ConfigError(
                f"metrics[{name!r}]: 'accuracy' follows the loss, and {type(loss).__name__} is not a "
                "classification "
                "loss (CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss or BCELoss); pass th.metrics.accuracy "
                "or binary_accuracy_logits yourself"
            )
        metric = accuracy
    if metric is accuracy and task == BINARY:
        return binary_accuracy_logits  # the net outputs logits: threshold them at 0
    if metric is accuracy and task == CLASSIFICATION:
        return class_accuracy_for(loss)  # class indices: ignored targets left out, counted exactly
    return metric


def check_binary_accuracy_inputs(metrics: Mapping[str, Any], preds: Any) -> None:
    """First batch only: ``accuracy`` on one column of values outside [0, 1] would be silently wrong."""
    if not isinstance(preds, torch.Tensor) or (preds.dim() >= 2 and preds.shape[-1] > 1):
        return
    for name, metric in metrics.items():
        if metric is accuracy and bool(((preds < 0) | (preds > 1)).any()):
            raise DataError(
                f"metric {name!r}: accuracy got one column of values outside [0, 1], which look like "
                "logits; it would threshold them at 0.5 and be wrong. Use "
                "th.metrics.binary_accuracy_logits, or metrics={'acc': 'accuracy'} with "
                "BCEWithLogitsLoss"
            )


def _per_sample_categorical(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (preds.argmax(dim=-1) == target).float()


def _per_sample_threshold(threshold: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def correct(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hits = (preds.reshape(target.shape) > threshold) == target.bool()
        return hits.float().reshape(len(target), -1).mean(dim=1)

    return correct


def _per_sample_error(power: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def error(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = (preds.reshape(target.shape).float() - target.float()).abs() ** power
        return diff.reshape(len(target), -1).mean(dim=1)

    return error


def resolve_weighted_metrics(
    weighted: Any, loss: Any, taken: Mapping[str, Any]
) -> dict[str, Callable[..., Any]]:
    """``Model(weighted_metrics=...)``: names (``"accuracy"``, ``"mae"``, ``"mse"``) or per-sample
    functions ``fn(preds, target) -> (N,)``, averaged with the sample weights (Keras' rule)."""
    if weighted is None:
        return {}
    if isinstance(weighted, (list, tuple)):
        weighted = {m if isinstance(m, str) else getattr(m, "__name__", "metric"): m for m in weighted}
    if not isinstance(weighted, Mapping):
        raise ConfigError(f"weighted_metrics: expected a dict or list, got {type(weighted).__name__}")
    loss_name = type(loss).__name__
    resolved: dict[str, Callable[..., Any]] = {}
    for name, metric in weighted.items():
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_NAMES or name in taken:
            raise ConfigError(
                f"weighted_metrics: the name {name!r} is not an identifier, reserved, or in metrics"
            )
        if is_stateful_metric(metric):
            raise ConfigError(
                f"weighted_metrics[{name!r}]: a metric object takes no sample weights; give a name "
                "('accuracy', 'mae', 'mse') or a function returning one value per sample"
            )
        if isinstance(metric, str):
            key = metric.lower()
            if key in ("mae", "mean_absolute_error"):
                metric = _per_sample_error(1)
            elif key in ("mse", "mean_squared_error"):
                metric = _per_sample_error(2)
            elif key in ("accuracy", "acc") and task_of_loss(loss) == CLASSIFICATION:
                metric = _per_sample_categorical
            elif key in ("accuracy", "acc") and task_of_loss(loss) in (BINARY, PROBABILITY):
                metric = _per_sample_threshold(0.0 if task_of_loss(loss) == BINARY else 0.5)
            else:
                raise ConfigError(
                    f"weighted_metrics[{name!r}]: {metric!r} is not resolved for the loss {loss_name} "
                    "(accuracy needs a classification loss; names: accuracy, mae, mse)"
                )
        if not callable(metric):
            raise ConfigError(f"weighted_metrics[{name!r}]: expected a name or a function, got {metric!r}")
        resolved[name] = metric
    return resolved


def check_metric_values(metrics: Mapping[str, Any], out: Mapping[str, Any]) -> None:
    """First batch only: each function metric must give one number as a tensor."""
    if "preds" not in out or "target" not in out:
        return
    for name, metric in metrics.items():
        if is_stateful_metric(metric):
            continue
        value = metric(tree_map(_detach, out["preds"]), out["target"])
        if getattr(metric, "counts", False):
            continue  # (numerator, denominator): torchhouse's own counting metrics
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shown = (
                f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
            )
            raise DataError(
                f"metric {name!r} returned {shown}; a metric function must return one number as a "
                "tensor (e.g. (preds.argmax(1) == target).float().mean()), so it can stay on the device"
            )


def normalise_metrics(metrics: Any, loss: Any = None) -> dict[str, MetricLike]:
    """Check ``Model(metrics=...)`` and return it as a name -> metric dict (names resolved)."""
    if metrics is None:
        return {}
    if isinstance(metrics, (list, tuple)):
        metrics = {
            m if isinstance(m, str) else getattr(m, "__name__", None) or type(m).__name__.lower(): m
            for m in metrics
        }
    if not isinstance(metrics, Mapping):
        raise ConfigError(f"metrics: expected a dict of name -> metric, got {type(metrics).__name__}")
    for name, metric in metrics.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"metrics: names must be identifiers like 'acc', got {name!r}")
        if name in RESERVED_NAMES or name.startswith("val_"):
            raise ConfigError(
                f"metrics: the name {name!r} is reserved (loss, lr and val_* are logged by fit)"
            )
        if not (is_stateful_metric(metric) or callable(metric) or isinstance(metric, str)):
            raise ConfigError(
                f"metrics[{name!r}]: expected a torchmetrics Metric (update/compute/reset), "
                f"a function fn(preds, target) -> tensor or a name, got {type(metric).__name__}"
            )
    return {name: resolve_metric(metric, loss, name) for name, metric in metrics.items()}


def copy_metrics(metrics: Mapping[str, MetricLike]) -> dict[str, MetricLike]:
    """Independent copies of the stateful metrics (train and validation keep separate states)."""
    return {n: copy.deepcopy(m) if is_stateful_metric(m) else m for n, m in metrics.items()}


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def metric_preds(output: Any) -> Any:
    """What the metrics see of a net's output: its ``logits`` when it is a mapping that has them
    (a Hugging Face ``ModelOutput`` or a dict), else the output itself."""
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    return output
