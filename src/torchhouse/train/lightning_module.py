"""``Model.to_lightning()``: a `Model` as a ``lightning.LightningModule`` (Lightning imported only here).

The module runs the model's own step methods (``unpack_batch``, ``forward``,
``compute_loss``, ``sample_weights``), logs the loss and metrics as sample-weighted epoch
means (as `Model` logs them), and hands Lightning the model's optimizer and scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from torchhouse.data.trees import tree_map
from torchhouse.errors import import_optional
from torchhouse.metrics.epoch import num_samples
from torchhouse.metrics.functions import copy_metrics, is_stateful_metric, metric_preds

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["INSTALL_HINT", "lightning", "lightning_module", "log_step"]

INSTALL_HINT = "LightModel needs PyTorch Lightning: pip install 'torchhouse[lightning]'"


def lightning() -> Any:
    """The ``lightning`` package, or a `ConfigError` saying how to install it."""
    return import_optional("lightning", INSTALL_HINT)


def log_step(module: Any, stage: str, loss: torch.Tensor, preds: Any, target: Any, batch: Any) -> None:
    """Log one step's loss and metrics to Lightning as sample-weighted epoch means (a counting
    metric, such as token accuracy, weighted by what it counted)."""
    n = num_samples({"preds": preds, "target": target}, batch)
    prefix = "" if stage == "train" else "val_"
    options = {"on_step": False, "on_epoch": True, "batch_size": n, "sync_dist": True}
    module.log(f"{prefix}loss", loss.detach(), prog_bar=True, **options)
    detached = tree_map(lambda t: t.detach(), preds)
    for name, fn in module.functions.items():
        if getattr(fn, "counts", False):  # (correct, counted): a mean weighted by the count
            correct, counted = fn(detached, target)
            if int(counted):  # a batch without a counted target adds nothing
                share = torch.as_tensor(correct).float() / int(counted)
                module.log(f"{prefix}{name}", share, **{**options, "batch_size": int(counted)})
        else:
            module.log(f"{prefix}{name}", fn(detached, target).detach().float(), **options)
    for name, metric in module.stage_metrics[f"{stage}_"].items():
        metric.update(detached, target)
        module.log(f"{prefix}{name}", metric, on_step=False, on_epoch=True, batch_size=n)


def lightning_module(model: Model) -> Any:
    """A ``LightningModule`` that trains ``model``'s net with its loss, optimizer and metrics."""
    L = lightning()
    from torch import nn

    class TorchhouseModule(L.LightningModule):  # type: ignore[misc, name-defined]
        """Lightning's view of a `th.Model`: training/validation/predict steps and its optimizer."""

        def __init__(self) -> None:
            super().__init__()
            self.net = model.net
            self.model = model  # not a module: the net above is the one registered
            stateful = {n: m for n, m in model.metrics.items() if is_stateful_metric(m)}
            self.functions: dict[str, Any] = {n: m for n, m in model.metrics.items() if n not in stateful}
            self.stage_metrics = nn.ModuleDict(
                {f"{stage}_": nn.ModuleDict(dict(copy_metrics(stateful))) for stage in ("train", "val")}
            )

        def forward(self, inputs: Any) -> Any:
            return model.forward(inputs)

        def _step(self, batch: Any, stage: str) -> torch.Tensor:
            inputs, target = model.unpack_batch(batch)
            weight = model.sample_weights(batch)
            preds = model.forward(inputs)
            loss = (
                model.compute_loss(preds, target)
                if weight is None
                else model.compute_loss(preds, target, weight)
            )
            log_step(self, stage, loss, metric_preds(preds), target, batch)
            return loss

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._step(batch, "train")

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self._step(batch, "val")

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            return model.predict_step(batch)

        def configure_optimizers(self) -> Any:
            scheduler = model.lr_scheduler
            if scheduler is None:
                return model.optimizer
            settings: dict[str, Any] = {"scheduler": scheduler, "interval": model.lr_scheduler_interval}
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                settings["monitor"] = model.lr_scheduler_monitor or "val_loss"
            return {"optimizer": model.optimizer, "lr_scheduler": settings}

    return TorchhouseModule()
