"""ModelCheckpoint: save the model's weights (safetensors + JSON) when a value improves."""

from __future__ import annotations

import os
from typing import Any

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError
from torchhouse.monitor import check_monitor, is_improvement, resolve_mode

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Save weights to ``path`` at the end of an epoch.

    ``path`` may hold ``{epoch}`` and any logged name, e.g.
    ``"ckpt/{epoch:03d}-{val_loss:.3f}.safetensors"``. With ``save_best_only=True``
    (the default) a file is written only when ``monitor`` improves; NaN never does.
    Files are written atomically, so a crash never leaves a half-written file.

    Example:
        >>> ckpt = ModelCheckpoint("best.safetensors", monitor="val_acc")
        >>> # model.fit(x, y, validation_split=0.2, callbacks=[ckpt])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        monitor: str | None = "val_loss",
        mode: str = "auto",
        save_best_only: bool = True,
    ) -> None:
        if save_best_only and monitor is None:
            raise ConfigError("ModelCheckpoint: save_best_only=True needs a monitor")
        self.path = os.fspath(path)
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last_saved: str | None = None
        self._direction = "min"

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        if self.monitor is not None:
            check_monitor("ModelCheckpoint", self.monitor, self.model.log_names)
            self._direction = resolve_mode(self.monitor, self.mode, self.model.metrics)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.monitor is not None:
            value = logs.get(self.monitor)
            improved = value is not None and is_improvement(value, self.best, self._direction)
            if improved:
                self.best, self.best_epoch = value, epoch
            if self.save_best_only and not improved:
                return
        try:
            path = self.path.format(epoch=epoch, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"ModelCheckpoint: cannot fill in the path {self.path!r}: {exc}; it may use "
                "{epoch} and " + ", ".join(logs)
            ) from exc
        self.model.save(path)
        self.last_saved = path

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "last_saved": self.last_saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.last_saved = state["last_saved"]
