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
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torchhouse.data import tree_map
from torchhouse.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "BATCHABLE_METRICS",
    "ClassAccuracy",
    "class_accuracy_for",
    "PendingOutputs",
    "batchable",
    "resolve_weighted_metrics",
    "check_metric_values",
    "load_metric_state",
    "metric_state",
    "METRIC_NAMES",
    "check_binary_accuracy_inputs",
    "mean_absolute_error",
    "mean_squared_error",
    "resolve_metric",
    "EpochMetrics",
    "RESERVED_NAMES",
    "accuracy",
    "binary_accuracy_logits",
    "copy_metrics",
    "is_stateful_metric",
    "normalise_metrics",
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
    convention). It returns counts, ``[correct, counted]``, and the epoch's value is the sum
    of the first over the sum of the second: token accuracy over labelled tokens, not a mean
    of per-batch means.

    ``class_dim`` is where the class scores are: 1 for torch's losses ``(N, C, ...)``, -1 for
    a Hugging Face net's logits ``(N, T, C)``.

    >>> ClassAccuracy()(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, -100]))
    tensor([1., 2.])
    """

    counts = True  # returns [numerator, denominator]; the epoch divides their sums

    def __init__(self, ignore_index: int | None = -100, class_dim: int = 1) -> None:
        self.ignore_index = ignore_index
        self.class_dim = class_dim
        self.__name__ = "accuracy"

    def __call__(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dim = self.class_dim if preds.dim() > 2 else -1
        predicted = preds.argmax(dim)
        if self.ignore_index is None:
            counted = torch.ones_like(target, dtype=torch.bool)
        else:
            counted = target != self.ignore_index
        correct = ((predicted == target) & counted).sum()
        return torch.stack([correct, counted.sum()]).float()

    def __repr__(self) -> str:
        return f"ClassAccuracy(ignore_index={self.ignore_index}, class_dim={self.class_dim})"


def class_accuracy_for(loss: Any) -> ClassAccuracy:
    """The accuracy named metrics use with a classification loss (its ``ignore_index``) or
    with a net's own loss (Hugging Face: -100, logits with the classes last)."""
    if loss is None:
        return ClassAccuracy(-100, class_dim=-1)
    return ClassAccuracy(getattr(loss, "ignore_index", -100), class_dim=1)


_CLASSIFICATION_LOSSES = ("CrossEntropyLoss", "NLLLoss")
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
    loss_name = type(loss).__name__
    if isinstance(metric, str):
        key = metric.lower()
        if key in ("mae", "mean_absolute_error"):
            return mean_absolute_error
        if key in ("mse", "mean_squared_error"):
            return mean_squared_error
        if key in ("auc", "f1", "precision", "recall"):
            from torchhouse.named_metrics import NamedMetric, kind_of_loss

            ignore = -100 if loss is None else getattr(loss, "ignore_index", None)
            return NamedMetric(
                key, kind_of_loss(loss), ignore_index=ignore, class_dim=-1 if loss is None else 1
            )
        if key not in ("accuracy", "acc"):
            raise ConfigError(
                f"metrics[{name!r}]: {metric!r} is not a metric name torchhouse resolves; use one of "
                f"{list(METRIC_NAMES)}, a th.metrics function or a torchmetrics object"
            )
        if loss is not None and loss_name not in (*_CLASSIFICATION_LOSSES, "BCEWithLogitsLoss", "BCELoss"):
            raise ConfigError(
                f"metrics[{name!r}]: 'accuracy' follows the loss, and {loss_name} is not a classification "
                "loss (CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss or BCELoss); pass th.metrics.accuracy "
                "or binary_accuracy_logits yourself"
            )
        metric = accuracy
    if metric is accuracy and loss_name == "BCEWithLogitsLoss":
        return binary_accuracy_logits  # the net outputs logits: threshold them at 0
    if metric is accuracy and (loss is None or loss_name in _CLASSIFICATION_LOSSES):
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
            elif key in ("accuracy", "acc") and loss_name in _CLASSIFICATION_LOSSES:
                metric = _per_sample_categorical
            elif key in ("accuracy", "acc") and loss_name in ("BCEWithLogitsLoss", "BCELoss"):
                metric = _per_sample_threshold(0.0 if loss_name == "BCEWithLogitsLoss" else 0.5)
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
        expected = 2 if getattr(metric, "counts", False) else 1
        if not isinstance(value, torch.Tensor) or value.numel() != expected:
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


class EpochMetrics:
    """Loss and metrics of one epoch (or one evaluation), accumulated on the device.

    >>> acc = EpochMetrics({"acc": accuracy}, torch.device("cpu"), capacity=2)
    >>> acc.update({"loss": torch.tensor(1.0), "preds": torch.tensor([[0.0, 1.0]]),
    ...             "target": torch.tensor([1])}, 1)
    >>> acc.compute()
    {'loss': 1.0, 'acc': 1.0}
    """

    def __init__(
        self,
        metrics: Mapping[str, MetricLike],
        device: torch.device,
        capacity: int,
        loss_reduction: str = "mean",
        weighted: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.device = device
        # Weighted metrics (Keras' weighted_metrics): per-sample functions, averaged with
        # the sample weights over the epoch: sum(w * value) / sum(w).
        self.weighted: dict[str, Callable[..., Any]] = dict(weighted or {})
        self.stateful = {n: m for n, m in metrics.items() if is_stateful_metric(m)}
        # Metrics known to count (or concatenate) what they are given get the outputs of
        # several steps in one update: Metric.update costs more than a small net's whole
        # step, and for these the result does not depend on how the samples are split
        # (`batchable`). Every other metric is updated at every step, as a hand loop does.
        self.batched = {n: m for n, m in self.stateful.items() if batchable(m)}
        self.per_step = {n: m for n, m in self.stateful.items() if n not in self.batched}
        self._pending = PendingOutputs()
        self.functions: dict[str, Callable[..., Any]] = {
            n: m for n, m in metrics.items() if not is_stateful_metric(m) and not getattr(m, "counts", False)
        }
        # Functions that return [numerator, denominator] (ClassAccuracy): two summed columns
        self.counting: dict[str, Callable[..., Any]] = {
            n: m for n, m in metrics.items() if not is_stateful_metric(m) and getattr(m, "counts", False)
        }
        for metric in self.stateful.values():
            if hasattr(metric, "to"):
                metric.to(device)
        self.has_metrics = bool(metrics) or bool(self.weighted)
        self.loss_reduction = loss_reduction
        self.ignore_nonfinite = False  # on_nonfinite="skip": skipped batches are not counted
        self.sync = False  # under several processes: sum the epoch's values over all ranks
        self.nonfinite = 0  # non-finite training losses in the epoch, set by compute()
        self.capacity = max(int(capacity), 1)
        self._flag_host: torch.Tensor | None = None  # pinned; nonfinite_seen's flag on the host
        self.reset()

    # -- per step (no host sync) ----------------------------------------------------------

    def reset(self) -> None:
        self.count = 0
        self._flag_ready: Any = None  # a CUDA event: the last nonfinite_seen copy is done
        self.sizes: list[int] = []
        self._pending.clear()
        names = (
            "loss",
            *self.functions,
            *self.weighted,
            *(_WEIGHT_SUM + n for n in self.weighted),
            *self.counting,
            *(_COUNT + n for n in self.counting),
        )
        old: dict[str, torch.Tensor] = getattr(self, "columns", {})
        # The buffers of the last epoch are reused when they still fit: only [:count] is read,
        # so they need no clearing; a custom step's extra keys start afresh (NaN where absent).
        self.columns: dict[str, torch.Tensor] = {
            name: old[name]
            if name in old and old[name].shape[0] == self.capacity
            else torch.empty(self.capacity, device=self.device)
            for name in names
        }
        self._spare = {n: c for n, c in old.items() if n not in self.columns and c.shape[0] == self.capacity}
        for metric in self.stateful.values():
            metric.reset()

    def update(self, out: Mapping[str, Any], n: int) -> None:
        """Record one step's output: ``out`` holds ``loss`` and, for metrics, ``preds`` and ``target``."""
        i = self.count
        if i == self.capacity:
            self._grow()
        columns = self.columns
        columns["loss"][i] = out["loss"].detach()
        if self.has_metrics:
            preds = out["preds"]
            preds = preds.detach() if isinstance(preds, torch.Tensor) else tree_map(_detach, preds)
            target = out["target"]
            if self.batched:
                self._add_pending(preds, target)
            for metric in self.per_step.values():
                metric.update(preds, target)
            for name, fn in self.functions.items():
                columns[name][i] = fn(preds, target).detach()
            for name, fn in self.counting.items():
                counted = fn(preds, target).detach()
                columns[name][i] = counted[0]
                columns[_COUNT + name][i] = counted[1]
            if self.weighted:
                weight = out.get("sample_weight")
                for name, fn in self.weighted.items():
                    values = fn(preds, target).detach().reshape(-1).double()
                    w = torch.ones_like(values) if weight is None else weight.detach().reshape(-1).double()
                    # stored per sample, so the epoch's size-weighted mean sums w * value and w
                    columns[name][i] = (w * values).sum() / n
                    columns[_WEIGHT_SUM + name][i] = w.sum() / n
        if not _STEP_KEYS.issuperset(out):
            self._update_extras(out, i)
        self.sizes.append(n)
        self.count = i + 1

    def _add_pending(self, preds: Any, target: Any) -> None:
        """Keep a copy of this step's outputs for the batched metrics; update them every few steps."""
        if not self._pending.add(preds, target):
            self.flush()
            if not self._pending.add(preds, target):  # not two batch tensors of one length
                for metric in self.batched.values():
                    metric.update(preds, target)
        if self._pending.full:
            self.flush()

    def flush(self) -> None:
        """Give the batched metrics the outputs kept since their last update."""
        taken = self._pending.take()
        if taken is None:
            return
        preds, target = taken
        for metric in self.batched.values():
            metric.update(preds, target)

    def _update_extras(self, out: Mapping[str, Any], i: int) -> None:
        # Extra scalar tensors returned by a custom train_step/eval_step (e.g. "d_loss").
        for name, value in out.items():
            if name in _STEP_KEYS or not isinstance(value, torch.Tensor):
                continue
            if value.numel() != 1:
                continue
            column = self.columns.get(name)
            if column is None:
                spare = self._spare.pop(name, None)
                column = self.columns[name] = (
                    spare.fill_(float("nan"))
                    if spare is not None
                    else torch.full((self.capacity,), float("nan"), device=self.device)
                )
            column[i] = value.detach().reshape(())

    def _grow(self) -> None:
        self.capacity *= 2
        for name, column in self.columns.items():
            grown = torch.empty(self.capacity, device=self.device)
            grown[: column.shape[0]] = column
            self.columns[name] = grown

    # -- reads (each one host sync) -------------------------------------------------------

    def _read(self, scalars: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, list[float]]:
        """The columns' first ``count`` values as one (columns, count) float64 tensor on
        the CPU, and ``scalars`` as floats: one read of the device for all of them.

        The epoch's sums are then a few CPU operations: on a GPU, reducing each column
        there costs a handful of kernel launches per column, which outweighs a short epoch.
        """
        k = self.count
        table = torch.stack([column[:k] for column in self.columns.values()]).double()
        if not scalars:
            return table.cpu(), []
        device = table.device
        extra = torch.stack([s.detach().to(device, torch.float64).reshape(()) for s in scalars])
        host = torch.cat([table.reshape(-1), extra]).cpu()
        return host[: table.numel()].reshape(table.shape), host[table.numel() :].tolist()

    def _weighted_means(self, table: torch.Tensor, sync: bool = True) -> dict[str, float]:
        """Each column's sample-weighted mean over the epoch (summed over ranks when
        ``sync``); sets ``nonfinite``. ``table`` comes from `_read`."""
        # numpy, not torch: a few small float64 operations, each cheaper there
        rows = table.numpy()
        sizes = np.asarray(self.sizes, dtype=np.float64)
        finite = np.isfinite(rows[list(self.columns).index("loss")])
        if self.ignore_nonfinite:
            sizes = sizes * finite
            rows = np.where(finite, rows, 0.0)
        summed = self._summed
        sums = [
            values.sum() if name in summed else (values * sizes).sum()
            for name, values in zip(self.columns, rows, strict=True)
        ]
        # The count of non-finite losses rides along, so the NaN check costs no extra read
        # (and, summed over ranks, is the same decision on every rank).
        totals = [*sums, sizes.sum(), float((~finite).sum())]
        if self.sync and sync:
            from torchhouse.distributed import all_sum

            totals = all_sum(torch.tensor(totals, dtype=torch.float64, device=self.device)).tolist()
        floats = [float(t) for t in totals]
        self.nonfinite = int(floats[-1])
        samples = floats[-2]
        counts = self._counts
        return {
            name: floats[i] if name in counts else _divide(floats[i], samples)
            for i, name in enumerate(self.columns)
        }

    @property
    def _counts(self) -> set[str]:
        """Columns of counts (a counting metric's two): summed over the epoch, not averaged."""
        return {*self.counting, *(_COUNT + n for n in self.counting)}

    @property
    def _summed(self) -> set[str]:
        """Columns summed as they are, not weighted by the batch sizes."""
        return self._counts | ({"loss"} if self.loss_reduction == "sum" else set())

    def compute(self) -> dict[str, float]:
        """The epoch's values as floats: one host sync for all of them.

        Also sets ``nonfinite``, the number of steps whose loss was NaN or infinite.
        """
        if self.count == 0 and not self.sync:
            self.nonfinite = 0
            return {}
        self.flush()
        names: list[str] = []
        results: list[torch.Tensor] = []
        for name, metric in self.stateful.items():
            result = metric.compute()
            if isinstance(result, Mapping):
                for key, value in result.items():
                    names.append(f"{name}_{key}")
                    results.append(_scalar(value, f"{name}[{key!r}]"))
            else:
                names.append(name)
                results.append(_scalar(result, name))
        table, floats = self._read(results)
        values = self._weighted_means(table)
        for name in self.weighted:
            values[name] = _divide(values[name], values.pop(_WEIGHT_SUM + name))
        for name in self.counting:  # the sum of the numerators over the sum of the denominators
            values[name] = _divide(values[name], values.pop(_COUNT + name))
        values.update(zip(names, floats, strict=True))
        return values

    def partial_loss(self) -> float:
        """The sample-weighted mean loss so far in this epoch (one host sync; for progress)."""
        if self.count == 0:
            return float("nan")
        nonfinite = self.nonfinite
        loss = self._weighted_means(self._read()[0], sync=False)["loss"]
        self.nonfinite = nonfinite  # set by compute() only
        return loss

    def nonfinite_seen(self) -> bool:
        """Whether a loss recorded this epoch was NaN/inf, as far as the device tells
        without being waited for.

        On CUDA the flag is copied to pinned host memory asynchronously and read at a later
        call, once the copy is done: a NaN is seen a call late, and the GPU's queue of work
        is never drained for it. Elsewhere the flag is read now (there is no queue to drain).
        """
        losses = self.columns["loss"][: self.count]
        if self.device.type != "cuda":
            return bool((~torch.isfinite(losses)).any())
        seen = False
        if self._flag_ready is not None and self._flag_ready.query():
            seen = bool(self._flag_host)
            self._flag_ready = None
        if self._flag_ready is None:
            if self._flag_host is None:
                self._flag_host = torch.zeros((), dtype=torch.bool, pin_memory=True)
            self._flag_host.copy_((~torch.isfinite(losses)).any(), non_blocking=True)
            self._flag_ready = torch.cuda.Event()
            self._flag_ready.record()
        return seen

    def first_nonfinite_loss(self) -> tuple[int, float] | None:
        """Index and value of the first non-finite loss recorded so far, or None (one sync)."""
        losses = self.columns["loss"][: self.count]
        bad = ~torch.isfinite(losses)
        if not bool(bad.any()):
            return None
        index = int(bad.nonzero()[0, 0])
        return index, float(losses[index])

    def step_losses(self, start: int, stop: int) -> list[float]:
        """Per-step training losses for steps ``start..stop-1`` of this epoch (one sync)."""
        return self.columns["loss"][start:stop].tolist()

    # -- exact resume ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        k = self.count
        state: dict[str, Any] = {
            "count": k,
            "sizes": list(self.sizes),
            "columns": {n: c[:k].clone() for n, c in self.columns.items()},
            "stateful": {n: metric_state(m, n) for n, m in self.stateful.items()},
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        k = int(state["count"])
        while self.capacity < k:
            self._grow()
        for name, values in state["columns"].items():
            if name not in self.columns:
                self.columns[name] = torch.full((self.capacity,), float("nan"), device=self.device)
            self.columns[name][:k] = values.to(self.device)
        self.count = k
        self.sizes = [int(s) for s in state["sizes"]]
        for name, saved in state["stateful"].items():
            if name not in self.stateful:
                raise CheckpointError(f"the checkpoint has state for an unknown metric {name!r}")
            load_metric_state(self.stateful[name], saved, self.device)


PENDING_STEPS = 16  # steps whose outputs a batched metric gets in one update
PENDING_BYTES = 8 << 20  # ...or fewer, when their outputs reach this size

# torchmetrics classes whose state counts what update is given (integer sums: stat scores,
# confusion matrices) or concatenates it (curves without thresholds): one update with 16
# steps' outputs gives bit for bit the state 16 updates give. Only these exact classes (a
# subclass may override update), and torchhouse's own NamedMetric, which wraps them.
BATCHABLE_METRICS = frozenset(
    f"{task}{name}"
    for task in ("Binary", "Multiclass", "Multilabel")
    for name in (
        "Accuracy",
        "StatScores",
        "Precision",
        "Recall",
        "F1Score",
        "FBetaScore",
        "Specificity",
        "NegativePredictiveValue",
        "ConfusionMatrix",
        "JaccardIndex",
        "HammingDistance",
        "ExactMatch",
        "AUROC",
        "AveragePrecision",
        "ROC",
        "PrecisionRecallCurve",
    )
)


def batchable(metric: Any) -> bool:
    """Whether ``metric`` may get several steps' outputs in one update (see `BATCHABLE_METRICS`).

    >>> batchable(object())
    False
    """
    cls = type(metric)
    if cls.__module__ == "torchhouse.named_metrics" and cls.__qualname__ == "NamedMetric":
        return True
    return cls.__module__.startswith("torchmetrics.") and cls.__qualname__ in BATCHABLE_METRICS


class PendingOutputs:
    """Several steps' ``preds`` and ``target``, copied into buffers this object owns.

    A copy, not a reference: a ``collate_fn`` may reuse its output tensors for the next
    batch, and a net may return a buffer it overwrites. After `take` the buffers belong to
    the metrics (a curve metric keeps what it is given), so each round allocates afresh.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.preds: torch.Tensor | None = None
        self.target: torch.Tensor | None = None
        self.rows = 0
        self.steps = 0

    @property
    def full(self) -> bool:
        return self.steps >= PENDING_STEPS or (self.preds is not None and self.rows == self.preds.shape[0])

    def add(self, preds: Any, target: Any) -> bool:
        """Copy one step's outputs in; False when they do not fit these buffers (flush, then retry)."""
        if not (_batch_tensor(preds) and _batch_tensor(target)) or preds.shape[0] != target.shape[0]:
            return False
        n = preds.shape[0]
        if self.preds is None or self.target is None:
            row_bytes = preds[0].numel() * preds.element_size() + target[0].numel() * target.element_size()
            capacity = max(n, min(n * PENDING_STEPS, PENDING_BYTES // max(row_bytes, 1)))
            self.preds = preds.new_empty((capacity, *preds.shape[1:]))
            self.target = target.new_empty((capacity, *target.shape[1:]))
        elif (
            preds.shape[1:] != self.preds.shape[1:]
            or target.shape[1:] != self.target.shape[1:]
            or preds.dtype != self.preds.dtype
            or target.dtype != self.target.dtype
            or preds.device != self.preds.device
            or target.device != self.target.device
            or self.rows + n > self.preds.shape[0]
        ):
            return False  # another shape (a text batch of another length), or no room left
        self.preds[self.rows : self.rows + n].copy_(preds)
        self.target[self.rows : self.rows + n].copy_(target)
        self.rows += n
        self.steps += 1
        return True

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The outputs kept so far (the buffers are handed over), or None."""
        if self.preds is None or self.target is None or self.rows == 0:
            self.clear()
            return None
        taken = self.preds[: self.rows], self.target[: self.rows]
        self.clear()
        return taken


def _batch_tensor(value: Any) -> bool:
    return type(value) is torch.Tensor and value.dim() > 0


# every other scalar key a step returns is logged
_STEP_KEYS = frozenset({"loss", "preds", "target", "batch_size", "sample_weight"})
_WEIGHT_SUM = "__weight_sum__"  # a weighted metric's helper column: the mean sample weight
_COUNT = "__count__"  # a counting metric's helper column: its denominator


def _divide(total: float, count: float) -> float:
    """``total / count`` as float64 tensors divide (NaN for 0 / 0), without a tensor."""
    if count == 0:
        return math.nan if total == 0 or math.isnan(total) else math.copysign(math.inf, total)
    return total / count


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _scalar(value: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.numel() != 1:
        raise ConfigError(
            f"metric {name!r} computed a tensor of shape {tuple(tensor.shape)}; history "
            "holds one number per metric and epoch (for torchmetrics, use average='macro' "
            "or 'micro' rather than None)"
        )
    return tensor.reshape(())


def metric_state(metric: Any, name: str) -> dict[str, Any]:
    defaults = getattr(metric, "_defaults", None)
    if isinstance(defaults, Mapping):  # torchmetrics.Metric
        state = {key: getattr(metric, key) for key in defaults}
        return {"states": state, "update_count": int(getattr(metric, "_update_count", 0))}
    if callable(getattr(metric, "state_dict", None)):
        return {"state_dict": metric.state_dict()}
    raise ConfigError(
        f"metric {name!r} ({type(metric).__name__}) exposes no state to save mid-epoch; use "
        "checkpoint_every='epoch', or give it state_dict / load_state_dict methods"
    )


def load_metric_state(metric: Any, state: Mapping[str, Any], device: torch.device) -> None:
    if "states" in state:
        for key, value in state["states"].items():
            if isinstance(value, list):
                value = [v.to(device) for v in value]
            elif isinstance(value, torch.Tensor):
                value = value.to(device)
            setattr(metric, key, value)
        metric._update_count = state["update_count"]
        if hasattr(metric, "_computed"):
            metric._computed = None
    else:
        metric.load_state_dict(state["state_dict"])
