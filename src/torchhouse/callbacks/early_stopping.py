"""EarlyStopping: stop when a monitored value stops improving."""

from __future__ import annotations

from typing import Any

import torch

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError, warn_user
from torchhouse.metrics.monitor import check_monitor, is_improvement, resolve_mode

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs, as Keras does.

    Every fit starts afresh (a reused instance carries nothing from the last fit; a resumed
    fit continues the saved state). A NaN or infinite value never counts as an improvement.
    ``baseline``: an epoch must also beat it to reset the patience count. Epochs before
    ``start_from_epoch`` are not watched. With ``restore_best_weights=True`` the weights of
    the best watched epoch are loaded back when fit ends, whether it stopped early or ran
    all epochs, and also when no epoch beat the baseline; `restored_epoch` (0-based) then says
    which, and a run folder records it in ``run.json`` (``weights``).

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
        start_from_epoch: int = 0,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ConfigError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if (
            isinstance(start_from_epoch, bool)
            or not isinstance(start_from_epoch, int)
            or start_from_epoch < 0
        ):
            raise ConfigError(
                f"EarlyStopping: start_from_epoch must be an int >= 0, got {start_from_epoch!r}"
            )
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = abs(float(min_delta))
        self.restore_best_weights = restore_best_weights
        self.baseline = baseline
        self.verbose = verbose
        self.start_from_epoch = start_from_epoch
        self._direction = "min"
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: called when a fit begins."""
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.restored_epoch: int | None = None  # the epoch whose weights fit ended with

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        check_monitor("EarlyStopping", self.monitor, self.model.log_names)
        self._direction = resolve_mode(self.monitor, self.mode, self.model.metrics)
        self.reset()
        state = self.model.fit_state
        if self.restore_best_weights and state.run_folder is not None and state.monitor != self.monitor:
            warn_user(
                f"EarlyStopping watches {self.monitor} and ends the fit with its best epoch's weights, "
                f"while fit's monitor={state.monitor!r} picks the run folder's best state: two different "
                f"'best' epochs. Pass fit(monitor={self.monitor!r}) so both mean the same; run.json "
                "records which monitor chose the final weights"
            )

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.net.state_dict().items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor)
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self._snapshot(), epoch  # the first watched epoch
        self.wait += 1
        if is_improvement(value, self.best, self._direction, self.min_delta):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self._snapshot()
            if self.baseline is None or is_improvement(value, self.baseline, self._direction, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                if self.best is None:
                    best = "no finite value yet"
                elif self.baseline is not None and not is_improvement(
                    self.best, self.baseline, self._direction, self.min_delta
                ):
                    best = f"best {self.best:.4g} at epoch {(self.best_epoch or 0) + 1}, under the baseline"
                else:
                    best = f"best {self.best:.4g} at epoch {(self.best_epoch or 0) + 1}"
                self.say(
                    f"EarlyStopping: {self.monitor} has not improved for {self.wait} epochs ({best}); stop."
                )

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.net.load_state_dict(self.best_weights)
            self.restored_epoch = self.best_epoch

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
