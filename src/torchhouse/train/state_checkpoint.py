"""StateCheckpoint: the resumable training states of ``run_dir/checkpoints``, as a built-in callback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchhouse.callbacks.base import Callback
from torchhouse.data import rng
from torchhouse.data.trees import to_cpu

if TYPE_CHECKING:
    from torchhouse.train.loop import FitLoop

__all__ = ["StateCheckpoint"]


class StateCheckpoint(Callback):
    """Saves a `TrainingState` after every epoch, and every ``checkpoint_every`` steps.

    Added by ``fit(run_dir=...)`` on every process (each rank's RNG streams and partial
    epoch values are gathered into rank 0's state; under FSDP each rank writes its own
    shards), last in the callback order, so a state holds what every other callback did
    in its epoch (e.g. EarlyStopping's counter). No state is ever written from weights that
    followed a non-finite loss: a step state is written only after the loss flag was read
    and found clean.
    """

    auto = True

    def __init__(self, fit: FitLoop) -> None:
        assert fit.state.run_folder is not None
        self.fit = fit
        self.folder = fit.state.run_folder
        self.every = fit.spec.checkpoint_every
        self.needs_batch_end = bool(self.every)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        model, state = self.model, self.fit.state
        done = batch + 1
        if not self.every or state.global_step % self.every or done == state.steps or model.stop_training:
            return  # the epoch's end saves the last batch's state
        if self.fit.check_nonfinite():
            return  # on_nonfinite="stop" stopped the fit at this batch
        self.save(state.epoch, done)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        state = self.fit.state
        if state.nonfinite is None:  # never a state after a NaN
            self.save(epoch + 1, 0, best=state.improved)

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        if status in ("finished", "stopped_early") and self.fit.state.is_main:
            self.folder.mark_last_state_finished(self.model.stop_training)

    def save(self, epoch: int, batch: int, best: bool = False) -> None:
        """Write the state of the fit now: the main rank writes, every rank waits for it."""
        fit, state = self.fit, self.fit.state
        strategy = state.strategy
        saved = state.snapshot(self.model, epoch, batch)
        saved.callbacks = fit.callbacks.state_dict()
        own = {
            "rng": rng.capture(state.generators),
            "rng_epoch_start": state.epoch_rng if batch > 0 else None,
            "train_metrics": state.train_metrics.state_dict() if batch > 0 else None,
            "data_position": fit.data_position(),
        }
        if strategy.world_size == 1:
            saved.rng, saved.rng_epoch_start, saved.train_metrics, saved.data_position = own.values()
        else:
            saved.ranks = strategy.gather(to_cpu(own))
        strategy.split_state(saved, self.folder, self.folder.state_name(epoch, batch))
        if strategy.is_main:
            self.folder.save_state(saved.state_dict(), fit.spec.keep_checkpoints, best=best)
        strategy.barrier()
