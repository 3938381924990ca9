"""EarlyStopping: stop when a monitored value stops improving."""

from __future__ import annotations

from typing import Any

import torch

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError
from torchhouse.monitor import check_monitor, is_improvement, resolve_mode

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs.

    A NaN or infinite value never counts as an improvement. With
    ``restore_best_weights=True`` the weights of the best epoch are loaded back when
    fit ends (whether it stopped early or ran all epochs).

    Example:
        >>> stop = EarlyStopping(monitor="val_loss", patience=3)
        >>> # model.fit(x, y, validation_split=0.2, epochs=100, callbacks=[stop])
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
        baseline: float | None = None,
        verbose: bool = True,
    ) -> None:
        if not isinstance(patience, int) or patience < 0:
            raise ConfigError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best_weights = restore_best_weights
        self.baseline = baseline
        self.verbose = verbose
        self.best: float | None = baseline
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._direction = "min"

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        check_monitor("EarlyStopping", self.monitor, self.model.log_names)
        self._direction = resolve_mode(self.monitor, self.mode, self.model.metrics)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor)
        if value is not None and is_improvement(value, self.best, self._direction, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in self.model.net.state_dict().items()
                }
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                if self.best_epoch is not None:
                    best = f"best {self.best:.4g} at epoch {self.best_epoch + 1}"
                elif self.best is not None:
                    best = f"none beat the baseline {self.best:.4g}"
                else:
                    best = "no finite value yet"
                print(
                    f"EarlyStopping: {self.monitor} has not improved for {self.wait} epochs "
                    f"({best}); stopping."
                )

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.net.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best_weights = state["best_weights"]
