"""EpochMetrics: one epoch's loss and metrics, accumulated on the device.

Each step's loss and function-metric values go into preallocated device buffers (one slot
per step), so the step loop never waits for the device; the epoch's values are read in
one transfer when it ends (`compute`), or when the progress bar refreshes. Metric objects
(torchmetrics) are updated on the device; those known to count what they are given get
several steps' outputs in one update (`batchable`), copied into buffers owned here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torchhouse.data.trees import batch_size_of, tree_map
from torchhouse.errors import CheckpointError, ConfigError
from torchhouse.metrics.functions import is_stateful_metric
from torchhouse.metrics.states import load_metric_state, metric_state

__all__ = [
    "float32_rounded",
    "BATCHABLE_METRICS",
    "PENDING_BYTES",
    "PENDING_STEPS",
    "EpochMetrics",
    "PendingOutputs",
    "batchable",
    "num_samples",
]


class EpochMetrics:
    """Loss and metrics of one epoch (or one evaluation), accumulated on the device.

    >>> from torchhouse.metrics import accuracy
    >>> acc = EpochMetrics({"acc": accuracy}, torch.device("cpu"), capacity=2)
    >>> acc.update({"loss": torch.tensor(1.0), "preds": torch.tensor([[0.0, 1.0]]),
    ...             "target": torch.tensor([1])}, 1)
    >>> acc.compute()
    {'loss': 1.0, 'acc': 1.0}
    """

    def __init__(
        self,
        metrics: Mapping[str, Any],
        device: torch.device,
        capacity: int,
        loss_reduction: str = "mean",
        weighted: Mapping[str, Callable[..., Any]] | None = None,
        sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ignore_nonfinite: bool = False,
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
        self.ignore_nonfinite = ignore_nonfinite  # on_nonfinite="skip": skipped batches are not counted
        # under several processes: adds up the epoch's sums over all ranks (the strategy's)
        self.sum_over_ranks = sum_over_ranks
        self.nonfinite = 0  # non-finite training losses in the epoch, set by compute()
        self.capacity = max(int(capacity), 1)
        self._flag_host: torch.Tensor | None = None  # pinned; nonfinite_seen's flag on the host
        self.reset()

    # -- per step (no host sync) ----------------------------------------------------------

    def reset(self, capacity: int | None = None) -> None:
        """Start a new epoch (``capacity``: the steps it will have, when known)."""
        if capacity is not None:
            self.capacity = max(int(capacity), 1)
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
            detach = torch.Tensor.detach
            preds = preds.detach() if isinstance(preds, torch.Tensor) else tree_map(detach, preds)
            target = out["target"]
            if self.batched:
                self._add_pending(preds, target)
            for metric in self.per_step.values():
                metric.update(preds, target)
            for name, fn in self.functions.items():
                columns[name][i] = fn(preds, target).detach()
            for name, fn in self.counting.items():
                columns[name][i], columns[_COUNT + name][i] = fn(preds, target)
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
        if self.sum_over_ranks is not None and sync:
            over_ranks = self.sum_over_ranks(torch.tensor(totals, dtype=torch.float64, device=self.device))
            totals = over_ranks.tolist()
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
        if self.count == 0 and self.sum_over_ranks is None:
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
        missing = sorted(set(self.columns) - set(state["columns"]))
        if missing:  # a resume may then fall back to the epoch's start, which needs none of them
            raise CheckpointError(
                f"the state's partial-epoch values lack the columns {missing} this version keeps "
                "(a state written by torchhouse 0.1, whose accuracy kept per-batch fractions, not "
                "counts); a state saved at an epoch's start resumes exactly"
            )
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
    if cls.__module__ == "torchhouse.metrics.named" and cls.__qualname__ == "NamedMetric":
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


def num_samples(out: Mapping[str, Any], batch: Any) -> int:
    """How many samples a step's values stand for: its target's length, else its
    ``batch_size``, else the batch's first tensor's."""
    target = out.get("target")
    if type(target) is torch.Tensor and target.dim() > 0:
        return target.shape[0]
    size = out.get("batch_size")
    if size is not None:
        return int(size)
    return batch_size_of(target if target is not None else batch)


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


def _scalar(value: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.numel() != 1:
        raise ConfigError(
            f"metric {name!r} computed a tensor of shape {tuple(tensor.shape)}; history "
            "holds one number per metric and epoch (for torchmetrics, use average='macro' "
            "or 'micro' rather than None)"
        )
    return tensor.reshape(())


def float32_rounded(values: Mapping[str, float]) -> dict[str, float]:
    """``values`` with each one that a float32 holds exactly written as float32 prints it:
    a torchmetrics result of 0.925 is the float32 0.925000011920929, and is given as 0.925.
    Values computed in float64 (a count's ratio such as 1/3) are left as they are."""
    rounded = {}
    for name, value in values.items():
        single = np.float32(value)
        rounded[name] = float(str(single)) if math.isfinite(value) and float(single) == value else value
    return rounded
