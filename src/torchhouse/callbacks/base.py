"""The Callback protocol and the list that dispatches to callbacks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchhouse.model import Model

__all__ = ["Callback", "CallbackList", "overrides"]


class Callback:
    """Base class for callbacks: override any hook you need.

    ``self.model`` is the `Model` being trained. Set ``self.model.stop_training = True``
    to stop after the current epoch. ``logs`` hold Python floats, except in
    ``on_train_batch_end``, where ``logs`` is the step output (``loss``, ``preds``,
    ``target``) as tensors still on the device: reading them forces a host sync, so do
    it only when you need it.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, epoch, logs):
        ...         print(epoch, round(logs["loss"], 3))
    """

    model: Model
    auto = False  # added by fit itself (e.g. TensorBoard for run_dir): not part of resume checks

    def set_model(self, model: Model) -> None:
        self.model = model

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        """Called once before the first epoch (``logs`` is empty, or the resumed state)."""

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        """Called once after the last epoch with the last epoch's logs."""

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called before each epoch (``epoch`` is 0-based)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called after each epoch, validation included, with that epoch's values."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Called after each training step (only for callbacks that override it)."""

    def on_validation_end(self, logs: dict[str, Any]) -> None:
        """Called after each validation pass, with the ``val_*`` values."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints for exact resume (tensors, numbers, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackList:
    """Calls a hook on every callback, in order."""

    def __init__(self, callbacks: Iterable[Callback], model: Model) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)
        # Per-step hooks cost time on every step, so only those who asked get them.
        self.batch_end = [
            c
            for c in self.callbacks
            if overrides(c, "on_train_batch_end") and getattr(c, "needs_batch_end", True)
        ]

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(logs)

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_fit_end(logs)

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        for callback in self.batch_end:
            callback.on_train_batch_end(batch, logs)

    def on_validation_end(self, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_validation_end(logs)

    def _user(self) -> list[Callback]:
        # Callbacks fit added by itself (TensorBoard for run_dir) hold no resumable state.
        return [c for c in self.callbacks if not c.auto]

    def state_dict(self) -> list[dict[str, Any]]:
        """The state of each callback that carries one (stateless callbacks are left out)."""
        states = ({"type": type(c).__name__, "state": c.state_dict()} for c in self._user())
        return [s for s in states if s["state"]]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        """Give each stateful callback its saved state; stateless ones may be added or removed.

        Raises a `CheckpointError` when the stateful callbacks differ from the saved run's
        (by class, in order), since their state decides what happens next.
        """
        from torchhouse.errors import CheckpointError

        stateful = [c for c in self._user() if c.state_dict()]
        names = [type(c).__name__ for c in stateful]
        saved = [str(s.get("type")) if isinstance(s, dict) else "?" for s in states]
        if names != saved:
            raise CheckpointError(
                f"the callbacks that carry state do not match the saved run: saved {saved}, given {names}"
            )
        for callback, state in zip(stateful, states, strict=True):
            callback.load_state_dict(state["state"])
