"""StateCheckpoint: the resumable training states of ``run_dir/checkpoints``, as a built-in callback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchhouse import distributed, rng
from torchhouse.callbacks.base import Callback
from torchhouse.data import to_cpu
from torchhouse.training_state import TrainingState

if TYPE_CHECKING:
    from torchhouse.loop import FitLoop

__all__ = ["StateCheckpoint"]


class StateCheckpoint(Callback):
    """Saves a `TrainingState` after every epoch, and every ``checkpoint_every`` steps.

    Added by ``fit(run_dir=...)`` on every process (each rank's RNG streams and partial
    epoch values are gathered into rank 0's state), last in the callback order, so a
    state holds what every other callback did in its epoch (e.g. EarlyStopping's counter).
    No state is ever written from weights that followed a non-finite loss: a step state is
    written only after the loss flag was read and found clean.
    """

    auto = True

    def __init__(self, fit: FitLoop) -> None:
        assert fit.run_dir is not None
        self.fit = fit
        self.run_dir = fit.run_dir
        self.every = fit.checkpoint_every
        self.needs_batch_end = bool(self.every)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        model, fit = self.model, self.fit
        done = batch + 1
        if not self.every or model.global_step % self.every or done == fit.steps or model.stop_training:
            return  # the epoch's end saves the last batch's state
        if fit.check_nonfinite():
            return  # on_nonfinite="stop" stopped the fit at this batch
        self.save(model.epoch, done)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.fit.nonfinite is None:  # never a state after a NaN
            self.save(epoch + 1, 0, best=self.fit.improved)

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        finished = status in ("finished", "stopped_early")
        if finished and self.fit.sharded:
            # gathering a sharded net is a collective: every rank saves, rank 0 writes
            self.model.save(self.run_dir.path / "model.safetensors")
        if finished and self.fit.is_main:
            self.run_dir.mark_last_state_finished(self.model.stop_training)

    def save(self, epoch: int, batch: int, best: bool = False) -> None:
        """Write the state of the fit now: rank 0 writes, every rank waits for it."""
        model, fit = self.model, self.fit
        state = TrainingState.capture(
            model, epoch=epoch, batch=batch, best=fit.best, fingerprint=fit.fingerprint
        )
        state.callbacks = fit.callbacks.state_dict()
        own = {
            "rng": rng.capture(fit.generators),
            "rng_epoch_start": fit.epoch_rng if batch > 0 else None,
            "train_metrics": model.train_metrics.state_dict() if batch > 0 else None,
            "data_position": fit.data_position(),
        }
        if fit.context is None:
            state.rng, state.rng_epoch_start, state.train_metrics, state.data_position = own.values()
        else:
            state.ranks = distributed.gather_objects(to_cpu(own))
        if fit.sharded:
            # strategy="fsdp": each rank writes its own shards; the state keeps their digests
            from torchhouse.fsdp import split_shards

            shards: dict[str, Any] = {}
            state.model = split_shards(state.model, "model", shards)
            state.optimizers = split_shards(state.optimizers, "optimizers", shards)
            state.grads = split_shards(state.grads, "grads", shards)
            assert fit.context is not None
            name = self.run_dir.state_name(epoch, batch)
            digest = self.run_dir.save_shard(name, fit.context.rank, shards)
            state.shards = distributed.gather_objects(digest)
        if fit.is_main:
            self.run_dir.save_state(state.state_dict(), fit.keep_checkpoints, best=best)
        if fit.context is not None:
            distributed.barrier()
