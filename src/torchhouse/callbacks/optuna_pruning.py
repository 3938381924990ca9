"""OptunaPruning: report a monitored value to an Optuna trial and stop pruned trials."""

from __future__ import annotations

import math
from typing import Any

import torch

from torchhouse.callbacks.base import Callback
from torchhouse.errors import import_optional
from torchhouse.metrics.monitor import check_monitor

__all__ = ["INSTALL_HINT", "OptunaPruning", "import_optuna"]

INSTALL_HINT = "tuning needs Optuna: pip install 'torchhouse[tune]'"


def import_optuna() -> Any:
    return import_optional("optuna", INSTALL_HINT)


class OptunaPruning(Callback):
    """Report ``monitor`` to an Optuna trial after every epoch and stop a pruned trial at once.

    Raises ``optuna.TrialPruned`` out of ``fit`` when the pruner says so (the run folder is
    marked "pruned"). Under torchrun, rank 0 reports and decides, and the decision is
    broadcast so that every rank stops together; other ranks may pass ``trial=None``.

    Example::

        def objective(trial):
            model = th.Model(net, loss=..., optimizer=...)
            model.fit(x, y, validation_split=0.2, epochs=20,
                      callbacks=[th.callbacks.OptunaPruning(trial, monitor="val_loss")])
            return model.history.best("val_loss")[1]
    """

    def __init__(self, trial: Any = None, monitor: str = "val_loss") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        check_monitor("OptunaPruning", self.monitor, self.model.log_names)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        from torchhouse.parallel import distributed

        optuna = import_optuna()
        value = logs.get(self.monitor, math.nan)
        prune = False
        if self.trial is not None:
            if math.isfinite(value):
                self.trial.report(value, epoch)
            prune = bool(self.trial.should_prune())
        context = distributed.setup(self.model.device) if torch.distributed.is_initialized() else None
        if context is not None:
            prune = bool(distributed.broadcast_object(prune, src=0))
        if prune:
            self.pruned_at = epoch
            error = optuna.TrialPruned(f"pruned at epoch {epoch + 1} with {self.monitor}={value:.6g}")
            error.run_status = "pruned"  # fit's on_fit_exit status (the run folder says "pruned")
            raise error
