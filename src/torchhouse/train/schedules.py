"""The learning rate and the best value, epoch by epoch: the scheduler's step, the ``lr`` the
history logs, and the NaN-safe best of the monitored value."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.errors import DataError
from torchhouse.metrics.monitor import check_monitor, is_improvement

if TYPE_CHECKING:
    from torchhouse.train.model import Model
    from torchhouse.train.state import FitState

__all__ = ["check_scheduler_monitor", "logged_lr", "step_per_epoch", "track_best"]


def _plateau_monitor(model: Model, with_validation: bool) -> str:
    return model.lr_scheduler_monitor or ("val_loss" if with_validation else "loss")


def check_scheduler_monitor(model: Model, state: FitState, with_validation: bool) -> None:
    """A ReduceLROnPlateau's monitor must be a logged value: checked before the first batch."""
    if isinstance(model.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        check_monitor("lr_scheduler_monitor", _plateau_monitor(model, with_validation), state.log_names)


def step_per_epoch(model: Model, logs: dict[str, Any], with_validation: bool) -> None:
    """Step an epoch scheduler at the epoch's end (a ReduceLROnPlateau with its monitored value)."""
    scheduler = model.lr_scheduler
    if scheduler is None or model.lr_scheduler_interval != "epoch":
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        name = _plateau_monitor(model, with_validation)
        if name.startswith("val_") and name not in logs and with_validation:
            return  # an epoch without validation (validation_freq > 1)
        if name not in logs:
            raise DataError(
                f"lr_scheduler_monitor={name!r} is not a logged value; fit logs: {', '.join(logs)}"
            )
        scheduler.step(logs[name])
    else:
        scheduler.step()


def logged_lr(model: Model, state: FitState) -> float:
    """The learning rate the epoch's last optimizer step used (the current one if none stepped)."""
    used = state.last_step_lr
    if used is None:
        used = model.optimizer.param_groups[0].get("lr", math.nan)
    return float(used)


def track_best(state: FitState, logs: dict[str, Any]) -> bool:
    """Whether this epoch's monitored value is the best so far (a NaN never is); keeps it."""
    if state.nonfinite is not None:
        return False
    value = logs.get(state.monitor)
    improved = value is not None and is_improvement(value, state.best, state.monitor_mode)
    if improved:
        state.best = value
    return improved
