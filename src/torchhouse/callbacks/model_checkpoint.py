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

    ``path`` must end in ``.safetensors`` and may hold ``{epoch}`` (counted from 1, as
    Keras does) and any logged name, e.g. ``"ckpt/{epoch:03d}-{val_loss:.3f}.safetensors"``.
    With ``save_best_only=True`` (the default) a file is written only when ``monitor``
    improves; NaN never does. With ``save_best_only=False`` every epoch is saved and the
    monitor need not be logged. Files are written atomically, so a crash never leaves a
    half-written file. The path and monitor are checked before the first batch.

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
        if not os.fspath(path).endswith(".safetensors"):
            raise ConfigError(
                f"ModelCheckpoint: the path must end in .safetensors (weights are saved as "
                f"safetensors + JSON, never pickled), got {os.fspath(path)!r}"
            )
        self.path = os.fspath(path)
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last_saved: str | None = None
        self._direction = "min"

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        if self.monitor is not None and self.save_best_only:
            check_monitor("ModelCheckpoint", self.monitor, self.model.log_names)
        if self.monitor is not None:
            self._direction = resolve_mode(self.monitor, self.mode, self.model.metrics)
        names = {name: 0.0 for name in self.model.log_names}
        try:  # fail now, not after the first epoch has trained
            self.path.format(epoch=1, **names)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"ModelCheckpoint: cannot fill in the path {self.path!r}: {exc}; it may use "
                "{epoch} and " + ", ".join(self.model.log_names)
            ) from exc

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.monitor is not None:
            value = logs.get(self.monitor)
            improved = value is not None and is_improvement(value, self.best, self._direction)
            if improved:
                self.best, self.best_epoch = value, epoch
            if self.save_best_only and not improved:
                return
        try:
            path = self.path.format(epoch=epoch + 1, **logs)  # a person's epoch number
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
