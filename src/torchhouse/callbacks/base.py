"""The Callback protocol: the hooks fit, evaluate and predict call (the list that calls them: `dispatch`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["HOOKS", "Callback", "overrides"]


HOOKS = (
    "on_fit_start",
    "on_fit_end",
    "on_fit_exit",
    "on_epoch_start",
    "on_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


class Callback:
    """Base class for callbacks: override any hook you need.

    ``self.model`` is the `Model` being trained. Set ``self.model.stop_training = True``
    to stop (after the current batch when set in a batch hook, as in Keras). ``logs`` hold
    Python floats, except in the batch hooks, where the end hooks get the step output
    (``loss``, ``preds``, ``target``) as tensors still on the device: reading them forces a
    host sync, so do it only when you need it. Batch hooks cost a call per step, so only
    callbacks that override one get it. Epoch numbers are 0-based, as ``history.epoch``.

    The hooks, in the order of a fit: ``on_fit_start``; per epoch ``on_epoch_start``,
    ``on_train_batch_start`` / ``on_train_batch_end`` per batch, then the validation
    (``on_test_begin``, ``on_test_batch_start`` / ``_end``, ``on_test_end``,
    ``on_validation_end``), ``on_epoch_end``; ``on_fit_end``; and ``on_fit_exit(status, logs)``
    whatever happened (an exception or Ctrl-C included). ``evaluate(callbacks=...)``
    calls the ``on_test_*`` hooks, ``predict(callbacks=...)`` the ``on_predict_*`` hooks.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, epoch, logs):
        ...         print(epoch, round(logs["loss"], 3))
    """

    model: Model
    auto = False  # added by fit itself (e.g. TensorBoard for run_dir): not part of resume checks
    on_nonfinite: str | None = None  # what fit does at a NaN/inf loss when given this callback

    def set_model(self, model: Model) -> None:
        self.model = model

    def say(self, message: str) -> None:
        """Print ``message`` once: on rank 0 only under several processes."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            print(message)

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        """Called once before the first epoch (``logs`` is empty)."""

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        """Called once after the last epoch with the last epoch's logs."""

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        """Called once as fit returns or raises, after ``on_fit_end``, for writers that record how
        a run ended. ``status`` is "finished", "stopped_early", "stopped_nonfinite",
        "interrupted" (Ctrl-C), "pruned" or "crashed"; ``logs`` are the last epoch's values."""

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called before each epoch (``epoch`` is 0-based)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called after each epoch, validation included, with that epoch's values."""

    def on_train_batch_start(self, batch: int, logs: dict[str, Any]) -> None:
        """Called before each training step (``logs`` is empty)."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Called after each training step with the step's output."""

    def on_validation_end(self, logs: dict[str, Any]) -> None:
        """Called after each validation pass with the ``val_*`` values."""

    def on_test_begin(self, logs: dict[str, Any]) -> None:
        """Called before an evaluation pass (`evaluate`, or validation in fit)."""

    def on_test_end(self, logs: dict[str, Any]) -> None:
        """Called after an evaluation pass with its values."""

    def on_test_batch_start(self, batch: int, logs: dict[str, Any]) -> None:
        """Called before each evaluation step."""

    def on_test_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Called after each evaluation step with the step's output."""

    def on_predict_begin(self, logs: dict[str, Any]) -> None:
        """Called before `predict` runs its first batch."""

    def on_predict_end(self, logs: dict[str, Any]) -> None:
        """Called after `predict` ran its last batch."""

    def on_predict_batch_start(self, batch: int, logs: dict[str, Any]) -> None:
        """Called before each prediction step."""

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Called after each prediction step (``logs["outputs"]`` is the step's output)."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints for exact resume (tensors, numbers, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` does something in ``hook`` (a method of its class, or one it was given)."""
    if hook in vars(callback):
        return True
    return getattr(type(callback), hook) is not getattr(Callback, hook)
