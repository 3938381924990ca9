"""The one batch loop of fit, evaluate and predict, and evaluation and prediction over it.

Per batch: the batch onto the device (`transfer.device_batches`: on CUDA the copy overlaps
the previous step), ``on_{phase}_batch_start``, the step, its values recorded on the device,
``on_{phase}_batch_end``. Nothing here waits for the device: a step's values stay in
`EpochMetrics`' buffers until someone reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.callbacks.dispatch import CallbackList
from torchhouse.data.batches import Batches
from torchhouse.data.transfer import device_batches
from torchhouse.data.trees import concat_outputs, move_to, tree_map
from torchhouse.errors import DataError
from torchhouse.metrics.epoch import EpochMetrics, num_samples
from torchhouse.train.step_checks import first_step

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["Record", "epoch_recorder", "evaluate", "predict", "run_batches", "without_padding"]

Record = Callable[[int, dict[str, Any], Any], None]


def run_batches(
    model: Model,
    batches: Iterable[Any],
    phase: str,
    step: Callable[[Any], Any],
    record: Record,
    *,
    transfer: bool,
    callbacks: CallbackList | None = None,
    start: int = 0,
    check_first: bool = True,
    after: Callable[[int], bool] | None = None,
) -> int:
    """Run ``step`` on each batch and ``record(index, output, batch)``; returns the index after
    the last batch. ``after(index + 1)`` may end the loop by returning True. The first step
    runs through `step_checks.first_step` (when ``check_first``), which explains a failure.
    """
    if transfer:
        batches = device_batches(batches, model.device)
    begin_hook, end_hook = f"on_{phase}_batch_start", f"on_{phase}_batch_end"
    begins = callbacks is not None and callbacks.wants(begin_hook)
    ends = callbacks is not None and callbacks.wants(end_hook)
    what = {"train": "training", "test": "evaluation"}.get(phase, phase)
    index = start
    for batch in batches:
        if begins:
            callbacks.call(begin_hook, index, {})  # type: ignore[union-attr]
        if index == start and check_first:
            out = first_step(model, step, batch, what, lambda o, b: record(start, o, b))
        else:
            out = step(batch)
            record(index, out, batch)
        if ends:
            callbacks.call(end_hook, index, out if phase != "predict" else {"outputs": out})  # type: ignore[union-attr]
        index += 1
        if after is not None and after(index):
            break
    return index


def epoch_recorder(model: Model, acc: EpochMetrics, batches: Batches) -> Record:
    """Adds each step's loss and metrics to ``acc`` (on the device), without a rank's padding."""
    padded_index, real = batches.padding() or (-1, 0)
    update = acc.update

    def record(index: int, out: dict[str, Any], batch: Any) -> None:
        if index == padded_index:
            trimmed = without_padding(model, out, real, batch)
            if trimmed is not None:
                update(trimmed, num_samples(trimmed, batch))
        else:
            update(out, num_samples(out, batch))

    return record


def without_padding(model: Model, out: dict[str, Any], real: int, batch: Any = None) -> dict[str, Any] | None:
    """The step output without the padded samples at the end of a rank's last batch."""
    if real <= 0:
        return None
    if "preds" not in out or "target" not in out:
        return out
    preds = tree_map(lambda t: t[:real], out["preds"])
    target = tree_map(lambda t: t[:real], out["target"])
    weight = model.sample_weights(batch) if batch is not None else None
    with torch.no_grad(), model.autocast():
        if weight is None:
            loss = model.compute_loss(preds, target)
        else:
            loss = model.compute_loss(preds, target, weight[:real])
    return {**out, "loss": loss, "preds": preds, "target": target}


def evaluate(
    model: Model,
    batches: Batches,
    acc: EpochMetrics,
    callbacks: CallbackList | None = None,
    check_first: bool = True,
) -> dict[str, float]:
    """Loss and metrics of ``model`` over ``batches``, under ``torch.no_grad``.

    ``callbacks`` get the ``on_test_*`` hooks (Keras' names). ``check_first``: run the
    first step's checks (`step_checks.first_step`); a fit does so at its first validation.
    """
    net = model.net
    was_training = net.training
    net.eval()
    acc.reset(len(batches) if batches.has_len() else None)
    hooks = callbacks if callbacks is not None and _wants_any(callbacks, "on_test") else None
    if hooks is not None:
        hooks.call("on_test_begin", {})
    try:
        with torch.no_grad():
            run_batches(
                model,
                batches.iterate(None),
                "test",
                model.eval_step,
                epoch_recorder(model, acc, batches),
                transfer=batches.needs_transfer(model.device),
                callbacks=hooks,
                check_first=check_first,
            )
        if acc.count == 0 and acc.sum_over_ranks is None:
            raise DataError("the evaluation data yielded no batch")
        result = acc.compute()
        if hooks is not None:
            hooks.call("on_test_end", dict(result))
        return result
    finally:
        net.train(was_training)


def predict(model: Model, batches: Batches, callbacks: CallbackList | None = None) -> Any:
    """All of the net's outputs for ``batches``, concatenated, on the CPU.

    ``callbacks`` get the ``on_predict_*`` hooks (Keras' names).
    """
    net = model.net
    was_training = net.training
    net.eval()
    outputs: list[Any] = []
    hooks = callbacks if callbacks is not None and _wants_any(callbacks, "on_predict") else None
    if hooks is not None:
        hooks.call("on_predict_begin", {})
    try:
        with torch.no_grad():
            run_batches(
                model,
                batches.iterate(None),
                "predict",
                model.predict_step,
                lambda index, out, batch: outputs.append(out),
                transfer=batches.needs_transfer(model.device),
                callbacks=hooks,
                check_first=False,
            )
    finally:
        net.train(was_training)
    result = move_to(concat_outputs(outputs), torch.device("cpu"))
    if hooks is not None:
        hooks.call("on_predict_end", {})
    return result


def _wants_any(callbacks: CallbackList, prefix: str) -> bool:
    return any(callbacks.wants(hook) for hook in callbacks.hooked if hook.startswith(prefix))
