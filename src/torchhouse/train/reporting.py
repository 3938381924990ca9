"""``Model.report``: one pass over the data for the predictions, targets and per-sample losses."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.data.batches import Batches
from torchhouse.data.transfer import device_batches
from torchhouse.errors import DataError
from torchhouse.metrics.functions import metric_preds
from torchhouse.metrics.tasks import task_of_loss
from torchhouse.train.report import Report, build_report

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["collect_report", "per_sample_loss"]


def per_sample_loss(loss: Any) -> Any:
    """A copy of a torch loss that returns one value per element (``reduction="none"``), or None."""
    if not isinstance(getattr(loss, "reduction", None), str):
        return None
    unreduced = copy.copy(loss)
    unreduced.reduction = "none"
    return unreduced


@torch.no_grad()
def collect_report(model: Model, batches: Batches, labels: Sequence[Any] | None) -> Report:
    """The `Report` of ``model`` over ``batches`` (in eval mode; the net's mode is kept)."""
    net, unreduced = model.net, per_sample_loss(model.loss)
    was_training = net.training
    net.eval()
    outputs, targets, losses = [], [], []
    try:
        stream = batches.iterate(None)
        if batches.needs_transfer(model.device):
            stream = device_batches(stream, model.device)
        for batch in stream:
            inputs, target = model.unpack_batch(batch)
            if target is None:
                raise DataError("report: the data holds no targets; give y (or batches of (x, y))")
            with model.autocast():
                preds = metric_preds(model.forward(inputs))
                if unreduced is not None:
                    values = unreduced(preds, target).float()
                    losses.append(
                        values.reshape(len(values), -1).mean(1).cpu() if values.dim() else values.reshape(1)
                    )
            outputs.append(preds.float().cpu())
            targets.append(target.cpu())
    finally:
        net.train(was_training)
    if not outputs:
        raise DataError("report: the data yielded no batch")
    loss = torch.cat(losses) if losses and len(losses) == len(outputs) else None
    return build_report(task_of_loss(model.loss), torch.cat(outputs), torch.cat(targets), loss, labels)
