"""Learning-rate callbacks with Keras' names and meanings: LearningRateScheduler, ReduceLROnPlateau.

Both set the ``lr`` of every parameter group of every optimizer the model steps
(`Model.optimizers`). The learning rate lives in the optimizer's state, so checkpoints
and resume carry it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError
from torchhouse.metrics.monitor import check_monitor, is_improvement, resolve_mode

__all__ = ["LearningRateScheduler", "ReduceLROnPlateau"]


def _current_lr(callback: Callback) -> float:
    return float(callback.model.optimizers()[0].param_groups[0]["lr"])


def _set_lr(callback: Callback, lr: float) -> None:
    for optimizer in callback.model.optimizers():
        for group in optimizer.param_groups:
            group["lr"] = lr


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch)`` or ``schedule(epoch, lr)``.

    ``epoch`` is 0-based and ``lr`` the current learning rate, as in Keras.

    Example:
        >>> warm_up = LearningRateScheduler(lambda epoch, lr: lr if epoch >= 3 else 1e-4)
        >>> # model.fit(x, y, epochs=10, callbacks=[warm_up])
    """

    logs_lr = True  # fit logs "lr" (the learning rate the epoch's last step used)

    def __init__(self, schedule: Callable[..., float], verbose: bool = False) -> None:
        if not callable(schedule):
            raise ConfigError(f"LearningRateScheduler: schedule must be a function, got {schedule!r}")
        try:
            parameters = inspect.signature(schedule).parameters.values()
            positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            self._takes_lr = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
        except (TypeError, ValueError):  # a builtin without a signature: Keras' order
            self._takes_lr = True
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        lr = self.schedule(epoch, _current_lr(self)) if self._takes_lr else self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ConfigError(
                f"LearningRateScheduler: schedule({epoch}) returned {lr!r}; expected a finite number >= 0"
            )
        _set_lr(self, float(lr))
        if self.verbose:
            self.say(f"Epoch {epoch + 1}: LearningRateScheduler set the learning rate to {lr:.6g}.")


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving, as Keras does.

    After ``patience`` epochs without an improvement larger than ``min_delta`` the
    learning rate becomes ``max(lr * factor, min_lr)``, then ``cooldown`` epochs pass
    before counting again. A NaN never improves. Every fit starts afresh.

    Example:
        >>> plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
        >>> # model.fit(x, y, validation_split=0.2, epochs=50, callbacks=[plateau])
    """

    logs_lr = True  # fit logs "lr" (the learning rate the epoch's last step used)

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        verbose: bool = False,
    ) -> None:
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"ReduceLROnPlateau: mode must be 'auto', 'min' or 'max', got {mode!r}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"ReduceLROnPlateau: {name} must be an int >= 0, got {value!r}")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self.cooldown = cooldown
        self.min_lr = float(min_lr)
        self._direction = "min"
        self.reset()

    def reset(self) -> None:
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        check_monitor("ReduceLROnPlateau", self.monitor, self.model.log_names)
        self._direction = resolve_mode(self.monitor, self.mode, self.model.metrics)
        self.reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor)
        if value is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if is_improvement(value, self.best, self._direction, self.min_delta):
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = _current_lr(self)
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    _set_lr(self, new)
                    if self.verbose:
                        self.say(
                            f"Epoch {epoch + 1}: ReduceLROnPlateau reduced the learning rate to {new:.6g}."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.wait = state["wait"]
        self.cooldown_counter = state["cooldown_counter"]
