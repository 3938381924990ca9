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
from torchhouse.train.compile_check import compiled_graph_count

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["INSTALL_HINT", "lightning", "lightning_module", "log_step"]

INSTALL_HINT = "LightModel needs PyTorch Lightning: pip install 'torchhouse[lightning]'"


def lightning() -> Any:
    """The ``lightning`` package, or a `ConfigError` saying how to install it."""
    return import_optional("lightning", INSTALL_HINT)


def log_step(
    module: Any, stage: str, loss: torch.Tensor, preds: Any, target: Any, batch: Any, extras: Any = None
) -> None:
    """Log one step's loss and metrics to Lightning as sample-weighted epoch means (a counting
    metric, such as token accuracy, weighted by what it counted; a weighted metric by the
    batch's sample weights; ``extras``: a custom step's other scalars)."""
    n = num_samples({"preds": preds, "target": target}, batch)
    prefix = "" if stage == "train" else "val_"
    options = {"on_step": False, "on_epoch": True, "batch_size": n, "sync_dist": True}
    module.log(f"{prefix}loss", loss.detach(), prog_bar=True, **options)
    for name, value in (extras or {}).items():
        module.log(f"{prefix}{name}", torch.as_tensor(value).detach().float(), **options)
    detached = tree_map(lambda t: t.detach(), preds)
    weight = module.model.sample_weights(batch) if module.model.weighted_metrics else None
    for name, fn in module.model.weighted_metrics.items():
        values = fn(detached, target).detach().float().reshape(-1)
        w = weight.reshape(-1).float() if weight is not None else torch.ones_like(values)
        total = float(w.sum())
        if total > 0:  # sum(w * value) / sum(w) over the epoch: each batch weighs its sum(w)
            module.log(f"{prefix}{name}", (w * values).sum() / total, **{**options, "batch_size": total})
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


RESERVED_KEYS = ("loss", "preds", "target", "batch_size")


def lightning_module(
    model: Model, with_validation: bool | None = None, manual: bool = False, custom_eval: bool = False
) -> Any:
    """A ``LightningModule`` that trains ``model``'s net with its loss, optimizer and metrics.

    ``with_validation``: whether the fit validates (a ReduceLROnPlateau then watches
    ``val_loss``, else ``loss``; None: assume it does). ``manual``: ``model.train_step`` is
    a custom step, run under Lightning's manual optimization. ``custom_eval``:
    ``model.eval_step`` is a custom step, whose returned dict is logged.
    """
    L = lightning()

    class TorchhouseModule(_TorchhouseSteps, L.LightningModule):  # type: ignore[misc, name-defined]
        """Lightning's view of a `th.Model`: training/validation/predict steps and its optimizer."""

    return TorchhouseModule(model, with_validation, manual, custom_eval)


class _TorchhouseSteps:
    """The steps of `lightning_module`'s class (mixed into ``LightningModule``, which is imported
    only when one is made)."""

    log: Any  # LightningModule's
    automatic_optimization: bool

    def __init__(self, model: Model, with_validation: bool | None, manual: bool, custom_eval: bool) -> None:
        from torch import nn

        super().__init__()
        self.automatic_optimization = not manual
        self.net = model.net
        self.model = model  # not a module: the net above is the one registered
        self.with_validation, self.manual, self.custom_eval = with_validation, manual, custom_eval
        stateful = {n: m for n, m in model.metrics.items() if is_stateful_metric(m)}
        self.functions: dict[str, Any] = {n: m for n, m in model.metrics.items() if n not in stateful}
        self.stage_metrics = nn.ModuleDict(
            {f"{stage}_": nn.ModuleDict(dict(copy_metrics(stateful))) for stage in ("train", "val")}
        )

    def forward(self, inputs: Any) -> Any:
        return self.model.forward(inputs)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        model = self.model
        inputs, target = model.unpack_batch(batch)
        weight = model.sample_weights(batch)
        graphs = 0
        if stage == "train" and model.compiled:  # compile=True: against eager, at each fit's first step
            model.check_compiled_net(inputs, target, weight)
            graphs = compiled_graph_count()
        preds = model.forward(inputs)
        if stage == "train" and model.compiled and compiled_graph_count() != graphs:
            # the forward made torch compile another graph: checked before its gradients are used
            model.check_compiled_net(inputs, target, weight, again=True)
        loss = (
            model.compute_loss(preds, target) if weight is None else model.compute_loss(preds, target, weight)
        )
        log_step(self, stage, loss, metric_preds(preds), target, batch)
        return loss

    def _logged_step(self, step: Any, batch: Any, stage: str) -> torch.Tensor:
        """A custom step's returned dict, logged as the built-in step's values are."""
        out = step(batch)
        extras = {k: v for k, v in out.items() if k not in RESERVED_KEYS}
        if out.get("preds") is None:  # only a loss (and scalars): nothing for the metrics
            prefix = "" if stage == "train" else "val_"
            n = int(out.get("batch_size") or num_samples(out, batch))
            for name, value in {"loss": out["loss"], **extras}.items():
                value = torch.as_tensor(value).detach().float()
                self.log(f"{prefix}{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        else:
            log_step(self, stage, out["loss"], metric_preds(out["preds"]), out.get("target"), batch, extras)
        loss: torch.Tensor = out["loss"]
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.manual:  # the model's own step: backward, clipping and stepping inside it
            self.model.fit_state.is_last_batch = True  # each step is its own window (no accumulation)
            return self._logged_step(self.model.train_step, batch, "train")
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.custom_eval:
            with torch.no_grad():
                self._logged_step(self.model.eval_step, batch, "val")
            return
        self._step(batch, "val")

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self.model.predict_step(batch)

    def configure_optimizers(self) -> Any:
        model = self.model
        scheduler = model.lr_scheduler
        if scheduler is None:
            return model.optimizer
        settings: dict[str, Any] = {"scheduler": scheduler, "interval": model.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            watched = "val_loss" if self.with_validation is not False else "loss"
            settings["monitor"] = model.lr_scheduler_monitor or watched
        return {"optimizer": model.optimizer, "lr_scheduler": settings}
