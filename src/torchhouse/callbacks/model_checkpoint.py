"""ModelCheckpoint: save the model's weights (safetensors + JSON) when a value improves."""

from __future__ import annotations

import math
import os
from typing import Any

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError
from torchhouse.files.checkpoint import check_writable_parent
from torchhouse.metrics.monitor import check_monitor, is_improvement, resolve_mode

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Save weights to ``path`` at the end of an epoch, or every ``save_freq`` batches.

    ``path`` must end in ``.safetensors`` and may hold ``{epoch}`` (counted from 1, as
    Keras does), ``{batch}`` (the batch within the epoch, from 1; with ``save_freq=N``)
    and any logged name, e.g. ``"ckpt/{epoch:03d}-{val_loss:.3f}.safetensors"``.
    With ``save_best_only=True`` (the default) a file is written only when ``monitor``
    improves (and beats ``initial_value_threshold`` when given); NaN never does. With
    ``save_best_only=False`` every epoch (or every N batches) is saved and the monitor need
    not be logged. With ``save_freq=N`` the only monitor is ``loss``, the running mean of
    the epoch so far (read once per save, not per step). Files are written atomically, so
    a crash never leaves a half-written file. The path and monitor are checked before the
    first batch.

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
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ) -> None:
        if save_best_only and monitor is None:
            raise ConfigError("ModelCheckpoint: save_best_only=True needs a monitor")
        if not os.fspath(path).endswith(".safetensors"):
            raise ConfigError(
                f"ModelCheckpoint: the path must end in .safetensors (weights are saved as "
                f"safetensors + JSON, never pickled), got {os.fspath(path)!r}"
            )
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ConfigError(f"ModelCheckpoint: save_freq must be 'epoch' or an int >= 1, got {save_freq!r}")
        if initial_value_threshold is not None and not math.isfinite(initial_value_threshold):
            raise ConfigError(
                "ModelCheckpoint: initial_value_threshold must be a finite number, "
                f"got {initial_value_threshold!r}"
            )
        self.path = os.fspath(path)
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self.needs_batch_end = save_freq != "epoch"  # a per-step call only when saving by steps
        self.initial_value_threshold = initial_value_threshold
        self.best: float | None = initial_value_threshold
        self.best_epoch: int | None = None
        self.last_saved: str | None = None
        self._direction = "min"

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        names = list(self.model.log_names)
        if self.save_freq != "epoch" and self.save_best_only and self.monitor != "loss":
            raise ConfigError(
                f"ModelCheckpoint: with save_freq={self.save_freq} the only monitor is 'loss' (the running "
                f"mean of the epoch so far), got {self.monitor!r}; use save_best_only=False or monitor='loss'"
            )
        if self.monitor is not None and self.save_best_only:
            check_monitor("ModelCheckpoint", self.monitor, names)
        if self.monitor is not None:
            self._direction = resolve_mode(self.monitor, self.mode, self.model.metrics)
        try:  # fail now, not after the first epoch has trained
            check_writable_parent(
                "ModelCheckpoint", self.path.format(epoch=1, batch=1, **{n: 0.0 for n in names})
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"ModelCheckpoint: cannot fill in the path {self.path!r}: {exc}; it may use "
                "{epoch}, {batch} and " + ", ".join(names)
            ) from exc

    def _save(self, value: float | None, epoch: int, batch: int, logs: dict[str, Any]) -> None:
        if self.monitor is not None and value is not None:
            improved = is_improvement(value, self.best, self._direction)
            if improved:
                self.best, self.best_epoch = value, epoch
            if self.save_best_only and not improved:
                return
        elif self.save_best_only:
            return
        try:
            path = self.path.format(epoch=epoch + 1, batch=batch, **logs)  # a person's numbers
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"ModelCheckpoint: cannot fill in the path {self.path!r}: {exc}; it may use "
                "{epoch}, {batch} and " + ", ".join(logs)
            ) from exc
        self.model.save(path)
        self.last_saved = path

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        assert isinstance(self.save_freq, int)
        if self.model.global_step % self.save_freq:
            return
        loss = self.model.train_metrics.partial_loss()  # one read of the device, once per save
        self._save(loss, self.model.epoch, batch + 1, {"loss": loss})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.save_freq == "epoch":
            value = logs.get(self.monitor) if self.monitor is not None else None
            self._save(value, epoch, 0, logs)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "last_saved": self.last_saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.last_saved = state["last_saved"]
