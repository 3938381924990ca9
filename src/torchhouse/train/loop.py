"""The epoch loop behind `Model.fit`.

One fit, as `FitLoop._run_epochs` reads::

    on_fit_start
    for each epoch:
        begin:  on_epoch_start, this epoch's batch order (seeded; re-created on resume)
        train:  run_batches(train_step): per batch, the step and its values kept on the device
        end:    the epoch's values (one host sync), validation, scheduler, history, on_epoch_end
    on_fit_end, then on_fit_exit(status) whatever happened

Everything else is an ordered callback (`torchhouse.train.builtins.fit_callbacks`): the
run folder's files, the progress display, the resumable states, TensorBoard. The loop
holds the fit's `FitState` and asks its `Strategy` whenever processes must agree.

Nothing in the batch loop waits for the device: the loss and metrics stay in device
buffers until the epoch ends or the progress bar refreshes; a NaN/inf loss is found by
reading one device flag every `NONFINITE_CHECK_EVERY` steps (on a GPU, copied to the host
without waiting and read at the next check).

Exact resume: each saved `TrainingState` holds the RNG states at the start of its epoch
and at the moment it was saved. A resumed epoch restores the first, re-creates the
epoch's batch order (skipping the batches already done), then restores the second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.callbacks.dispatch import CallbackList
from torchhouse.data import rng
from torchhouse.data.batches import nonfinite_data
from torchhouse.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    TorchhouseError,
    warn_user,
)
from torchhouse.metrics.monitor import resolve_mode
from torchhouse.parallel.strategies import Strategy
from torchhouse.progress import resolve_mode as resolve_progress
from torchhouse.runs.folder import RunFolder
from torchhouse.runs.history import History
from torchhouse.runs.resume import load_resume_state
from torchhouse.runs.state import TrainingState
from torchhouse.train import schedules
from torchhouse.train.batch_loop import epoch_recorder, evaluate, run_batches
from torchhouse.train.builtins import fit_callbacks
from torchhouse.train.spec import FitSpec, fit_fingerprint
from torchhouse.train.state import FitState
from torchhouse.train.state_checkpoint import StateCheckpoint
from torchhouse.train.step_checks import check_step_contract
from torchhouse.version import __version__

if TYPE_CHECKING:
    from torchhouse.train.fit_data import FitData
    from torchhouse.train.model import Model

__all__ = ["NONFINITE_CHECK_EVERY", "FitLoop"]

# steps between reads of the loss flag: a NaN stops a fit within this many (2x on a GPU)
NONFINITE_CHECK_EVERY = 32


class FitLoop:
    """Runs one `Model.fit` call; see the module docstring.

    Its public parts, for the built-in callbacks: ``state`` (the `FitState`), ``callbacks``,
    ``train`` / ``val`` (the batches), ``spec``, ``began``, and ``config()``,
    ``check_nonfinite()`` and ``data_position()``.
    """

    def __init__(self, model: Model, spec: FitSpec, data: FitData, strategy: Strategy) -> None:
        self.model, self.spec, self.train, self.val = model, spec, data.train, data.val
        self.generator = data.generator
        if spec.validation_every_n_steps and self.val is None:
            raise ConfigError(
                "validation_every_n_steps: there is nothing to validate on; "
                "give validation_data or validation_split"
            )
        if model.compiled_step is not None and strategy.world_size > 1:
            raise ConfigError(
                "compile='step' / cuda_graph=True train in one process for now; under several "
                "processes use compile=True (the net compiled inside DDP / FSDP) or compile=False"
            )
        self.began = False  # whether the first epoch began (before it, a refused fit changes nothing)
        steps = len(self.train) if self.train.has_len() else None
        logs_lr = model.lr_scheduler is not None or any(getattr(c, "logs_lr", False) for c in spec.callbacks)
        self.state = state = FitState(
            spec=spec,
            strategy=strategy,
            train_metrics=model.epoch_metrics(
                max(steps or 64, 1), strategy.sum_over_ranks, ignore_nonfinite=spec.on_nonfinite == "skip"
            ),
            eval_metrics=model.epoch_metrics(64, strategy.sum_over_ranks),
            forward_net=strategy.wrap(model),
            log_names=model.log_names_for(self.val is not None, logs_lr),
            on_nonfinite=spec.on_nonfinite,
            class_weight_table=spec.class_weight_table(model.device),
            optimizers_overridden=model.overrides_optimizers,
            run_folder=RunFolder(spec.run_dir) if spec.run_dir is not None else None,
            monitor=spec.monitor or ("val_loss" if self.val is not None else "loss"),
            steps=steps,
            generators=[data.generator, *(g for g in self.train.generators() if g is not data.generator)],
            train_batches=self.train,
        )
        state.fingerprint = fit_fingerprint(model, spec, self.train, strategy.world_size)  # before a resume
        progress_mode = resolve_progress(spec.progress) if strategy.is_main else "none"
        self.callbacks = CallbackList(fit_callbacks(self, list(spec.callbacks), progress_mode), model)

    # ----------------------------------------------------------------------- the fit

    def run(self) -> History:
        model, state = self.model, self.state
        previous = model.history, model.stop_training
        model.history = History()
        model.history.params = {"epochs": self.spec.epochs, "steps": state.steps}
        try:
            self._open_run_folder()
        except BaseException:
            model.history, model.stop_training = previous
            raise
        try:
            self._check_resumable()
            state.monitor_mode = resolve_mode(state.monitor, "auto", model.metrics)
            schedules.check_scheduler_monitor(model, state, self.val is not None)
            if state.run_folder is not None and self.spec.resume:
                state.resumed = load_resume_state(
                    state.run_folder, state.fingerprint, state.strategy.rank, self._restore, self.say
                )
            resumed = state.resumed
            if (
                resumed is not None
                and resumed.finished
                and (resumed.stop_training or resumed.epoch >= self.spec.epochs)
            ):
                return self._return_finished()
            start = (resumed.epoch, resumed.batch) if resumed else (self.spec.initial_epoch, 0)
            return self._run_epochs(*start)
        except BaseException:
            if not self.began:  # refused before the first epoch: the model keeps its history
                model.history, model.stop_training = previous
            raise
        finally:
            if state.run_folder is not None:
                state.run_folder.release()

    def _run_epochs(self, start_epoch: int, start_batch: int) -> History:
        """The epoch loop; how it ended reaches every callback's ``on_fit_exit``."""
        model, callbacks, state = self.model, self.callbacks, self.state
        self.began = True
        model.stop_training = False
        if state.resumed is None:  # a resumed fit has its pending gradients back (FitState.restore)
            model.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, Any] = {}
        status = "crashed"
        try:
            callbacks.call("on_fit_start", {})  # callbacks start afresh (Keras' rule)...
            if state.resumed is not None:
                callbacks.load_state_dict(state.resumed.callbacks)  # ...unless the fit resumes
            state.deadline = time.monotonic() + self.spec.max_time if self.spec.max_time else None
            for epoch in range(start_epoch, self.spec.epochs):
                start = start_batch if epoch == start_epoch else 0
                batches = self._begin_epoch(epoch, start)
                done = self._train_epoch(batches, start)
                if state.time_limited and done != state.steps:
                    self._stop_inside_epoch(epoch, done)
                    break
                logs = self._end_epoch(epoch)
                state.time_limited = state.time_limited and epoch + 1 < self.spec.epochs  # the last one: done
                if model.stop_training or state.time_limited:
                    break
            callbacks.call("on_fit_end", dict(logs))
            status = "stopped_early" if model.stop_training else "finished"
            if state.time_limited and not model.stop_training:
                status = "time_limit"
                self.say(self._time_limit_message())
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except Exception as exc:
            status = str(getattr(exc, "run_status", "crashed"))  # OptunaPruning's error says "pruned"
            raise
        finally:
            if state.nonfinite is not None:
                status = "stopped_nonfinite"  # its weights are not saved: they came after a NaN
            callbacks.call("on_fit_exit", status, dict(logs))
        return model.history

    def _begin_epoch(self, epoch: int, start: int) -> Iterable[Any]:
        """This epoch's batches; a resumed epoch re-creates its order and skips ``start`` batches."""
        model, state, train, resumed = self.model, self.state, self.train, self.state.resumed
        state.epoch = epoch
        model.net.train()
        train.set_epoch(epoch)
        resuming = resumed is not None and epoch == resumed.epoch
        if resumed is not None and resuming:
            self._seek_streams(resumed.data_position)  # before the RNG states of the save come back
        if resumed is not None and resuming and start > 0:
            state.epoch_rng = resumed.part("rng_epoch_start")
            rng.restore(state.epoch_rng, state.generators)
            batches = train.iterate(self.generator, start)
            rng.restore(resumed.part("rng"), state.generators)
            state.train_metrics.load_state_dict(resumed.part("train_metrics"))
        else:
            if resumed is not None and resuming:
                rng.restore(resumed.part("rng"), state.generators)
            self.callbacks.call("on_epoch_start", epoch, {})
            mid_epoch_states = self.spec.checkpoint_every or self.spec.max_time
            state.epoch_rng = rng.capture(state.generators) if mid_epoch_states else None
            state.train_metrics.reset()
            batches = train.iterate(self.generator, 0)
        state.last_step_lr = None  # set by each optimizer_step: the lr the step used
        return batches

    def _train_epoch(self, batches: Iterable[Any], start: int) -> int:
        """The training steps of one epoch (`run_batches`); returns the batches done."""
        model, state = self.model, self.state
        record = epoch_recorder(model, state.train_metrics, self.train)
        last = (state.steps or 0) - 1

        def count(index: int, out: dict[str, Any], batch: Any) -> None:
            record(index, out, batch)
            state.global_step += 1
            if state.example_batch is None:  # the fit's first step: for serving, and the contract
                state.example_batch = batch
                check_step_contract(model, state, batch)

        def after(done: int) -> bool:
            state.is_last_batch = done == last
            if model.stop_training and (not state.strategy.stops_at_epoch_end or state.nonfinite is not None):
                return True  # as Keras: stop after this batch (several processes: at the epoch's end)
            if state.deadline is not None and self._past_deadline():
                state.time_limited = True
                return True
            if every and state.global_step % every == 0 and done != state.steps:
                self._validate_inside_epoch()
            return state.global_step % NONFINITE_CHECK_EVERY == 0 and self.check_nonfinite(wait=False)

        every = self.spec.validation_every_n_steps if self.val is not None else None
        state.is_last_batch = start == last
        done = run_batches(
            model,
            batches,
            "train",
            model.train_step,
            count,
            transfer=self.train.needs_transfer(model.device),
            callbacks=self.callbacks,
            start=start,
            check_first=state.example_batch is None,  # the fit's first step only (its checks read the device)
            after=after,
        )
        state.is_last_batch = False
        if done == 0:
            raise DataError("the training data yielded no batch")
        return done

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's values (one host sync), validation, scheduler, history, best, on_epoch_end."""
        model, callbacks, state = self.model, self.callbacks, self.state
        logs = state.train_metrics.compute()  # the epoch's one host sync
        self._check_epoch_nonfinite(epoch)
        model.stop_training = state.strategy.any_rank(model.stop_training)
        self._warn_skipped(epoch)
        if "lr" in state.log_names:  # the lr the epoch's last step used (Keras logs it too)
            logs["lr"] = schedules.logged_lr(model, state)
        if self.val is not None and (epoch + 1) % self.spec.validation_freq == 0:
            # the fit's first validation checks its first step (the checks read the device)
            results = evaluate(
                model, self.val, state.eval_metrics, callbacks, check_first=not state.validated
            )
            state.validated = True
            val_logs = {f"val_{k}": v for k, v in results.items()}
            logs.update(val_logs)
            callbacks.call("on_validation_end", val_logs)
        if state.nonfinite is None:
            schedules.step_per_epoch(model, logs, self.val is not None)
        model.history.append(epoch, logs)
        state.improved = schedules.track_best(state, logs)
        callbacks.call("on_epoch_end", epoch, logs)
        return logs

    def _validate_inside_epoch(self) -> None:
        """``validation_every_n_steps``: a validation pass between two training steps; its values
        reach ``on_validation_end`` with the global step, not the history."""
        state, val = self.state, self.val
        assert val is not None  # checked when the loop was made
        results = evaluate(
            self.model, val, state.eval_metrics, self.callbacks, check_first=not state.validated
        )
        state.validated = True
        logs: dict[str, Any] = {f"val_{k}": v for k, v in results.items()}
        self.callbacks.call("on_validation_end", {**logs, "step": state.global_step})

    # ----------------------------------------------------------------------- the time limit

    def _past_deadline(self) -> bool:
        """Whether ``max_time`` has passed; several processes agree every 32 steps (a collective),
        so every rank stops after the same step."""
        state = self.state
        if state.strategy.world_size == 1:
            return time.monotonic() >= (state.deadline or 0.0)
        if state.global_step % NONFINITE_CHECK_EVERY:
            return False
        return state.strategy.any_rank(time.monotonic() >= (state.deadline or 0.0))

    def _stop_inside_epoch(self, epoch: int, done: int) -> None:
        """The time limit inside an epoch: a resumable state of this very step (never one after
        a NaN), no epoch row for the unfinished epoch."""
        state = self.state
        state.batch = done
        if self.check_nonfinite():
            return  # on_nonfinite="stop" stopped the fit at an earlier batch
        for callback in self.callbacks.callbacks:
            if isinstance(callback, StateCheckpoint):
                callback.save(epoch, done)

    def _time_limit_message(self) -> str:
        state = self.state
        where = f"epoch {state.epoch + 1}" + (f", batch {state.batch}" if state.batch else "")
        again = (
            f"; fit(..., run_dir={self.spec.run_dir!r}, resume=True) continues it exactly"
            if self.spec.run_dir is not None
            else " (no run_dir: nothing was saved to continue from)"
        )
        return f"fit: stopped at the time limit (max_time={self.spec.max_time:g} s) in {where}{again}"

    # ----------------------------------------------------------------------- non-finite losses

    def check_nonfinite(self, wait: bool = True) -> bool:
        """Read the device flag of the epoch's losses (one sync); act on a NaN/inf loss.

        "raise" raises `NonFiniteLossError` naming the first bad batch; "stop" stops the
        fit after this batch (the history keeps the epoch) and returns True. Every rank
        decides together, so none waits for ever in a collective. ``wait=False`` (the
        periodic check of one process) does not wait for the device: on a GPU a NaN is
        then found one check later (`EpochMetrics.nonfinite_seen`).
        """
        state = self.state
        if state.on_nonfinite == "skip":
            return False
        acc = state.train_metrics
        strategy = state.strategy
        if not wait and not strategy.checks_together and not acc.nonfinite_seen():
            return False
        bad = acc.first_nonfinite_loss()
        if not strategy.any_rank(bad is not None):
            return False
        self._nonfinite_found(state.epoch, *(bad or (-1, float("nan"))))
        return True

    def _check_epoch_nonfinite(self, epoch: int) -> None:
        state = self.state
        if state.train_metrics.nonfinite and state.on_nonfinite != "skip" and state.nonfinite is None:
            bad = state.train_metrics.first_nonfinite_loss()  # None on a rank whose losses were all finite
            self._nonfinite_found(epoch, *(bad or (-1, float("nan"))))

    def _nonfinite_found(self, epoch: int, batch: int, value: float) -> None:
        if self.state.on_nonfinite != "stop":
            raise NonFiniteLossError(epoch, batch, value, nonfinite_data(self.train))
        self.state.nonfinite = (epoch, batch, value)
        self.model.stop_training = True
        self.say(
            f"Stopping: the training loss is {value} at epoch {epoch + 1}, batch {batch + 1} "
            "(on_nonfinite='stop'); no state is saved from these weights."
        )

    def _warn_skipped(self, epoch: int) -> None:
        state = self.state
        if state.skipped_batches:
            warn_user(
                f"epoch {epoch + 1}: skipped {state.skipped_batches} batch(es) with a non-finite "
                "loss (on_nonfinite='skip'); they are left out of the epoch's values"
            )
            state.skipped_batches = 0

    # ----------------------------------------------------------------------- run folder, resume

    def _open_run_folder(self) -> None:
        """The main rank checks and locks the run folder; every rank learns whether that worked."""
        folder, strategy = self.state.run_folder, self.state.strategy
        if folder is None:
            return
        failure: BaseException | None = None
        if strategy.is_main:
            try:
                folder.prepare(self.spec.resume, self.spec.overwrite)
            except TorchhouseError as exc:
                failure = exc
        if strategy.any_rank(failure is not None) and failure is None:
            raise CheckpointError(f"{folder.path}: rank 0 could not open the run folder")
        if failure is not None:
            raise failure

    def _check_resumable(self) -> None:
        """Data a run cannot resume on exactly: refused on resume, said at the start otherwise."""
        folder = self.state.run_folder
        if folder is None:
            return
        reasons = [b.resume_refusal() for b in (self.train, self.val) if b is not None]
        reason = next((r for r in reasons if r), None)
        if reason is None:
            return
        if self.spec.resume and folder.state_names():
            raise CheckpointError(f"{folder.path}: cannot resume exactly: {reason}")
        warn_user(f"the states of this run in {folder.path} cannot be resumed exactly: {reason}")

    def config(self) -> dict[str, Any]:
        """What was trained and how: the run folder's ``config.json``."""
        model = self.model
        optimizer = model.optimizer
        return {
            "torchhouse": __version__,
            "torch": torch.__version__,
            "net": {
                "class": f"{type(model.net).__module__}.{type(model.net).__qualname__}",
                "parameters": sum(p.numel() for p in model.net.parameters()),
                "repr": repr(model.net),
            },
            "loss": repr(model.loss),
            "optimizer": {
                "class": type(optimizer).__name__,
                "defaults": {k: v for k, v in optimizer.defaults.items() if _jsonable(v)},
            },
            "lr_scheduler": type(model.lr_scheduler).__name__ if model.lr_scheduler else None,
            "metrics": list(model.metrics),
            "device": str(model.device),
            "precision": model.precision,
            "compile": "step" if model.compiled_step is not None else model.compiled,
            "cuda_graph": model.cuda_graph,
            "accumulate_grad_batches": model.accumulate_grad_batches,
            "gradient_clip_val": model.gradient_clip_val,
            "monitor": self.state.monitor,
            "fit": {**self.spec.config(), **self._data_facts()},
            # where TensorBoard events go: run_dir/tensorboard, or a TensorBoard callback's own log_dir
            "tensorboard": [str(c.log_dir) for c in self.callbacks.callbacks if hasattr(c, "log_dir")],
        }

    def _data_facts(self) -> dict[str, Any]:
        """What the training data really does (a DataLoader's own order and batch size, not
        fit's ``shuffle`` and ``batch_size``, which it does not read)."""
        data = self.state.fingerprint.get("data", {})
        facts = {"num_samples": self.train.num_samples, "data": data.get("kind")}
        for key in ("shuffle", "batch_size"):
            if key in data:
                facts[key] = data[key]
        return facts

    def _restore(self, saved: TrainingState, name: str = "") -> None:
        """Restore a saved state; raises on damage, so an older state can be tried instead."""
        state = self.state
        assert state.run_folder is not None
        state.strategy.join_state(saved, state.run_folder, name, self.model)
        state.restore(saved, self.model)
        self.callbacks.load_state_dict(saved.callbacks)
        # The epoch loop restores these again at the right moment; restoring them here
        # finds a damaged RNG or metric state now, while an older state can still be used.
        rng.restore(saved.part("rng"), state.generators)
        if saved.batch > 0:
            rng.restore(saved.part("rng_epoch_start"), state.generators)
            state.train_metrics.load_state_dict(saved.part("train_metrics"))

    def data_position(self) -> dict[str, Any] | None:
        """Where the streams read on across epochs stand (saved in each state), or None."""
        positions = {
            name: batches.position()
            for name, batches in (("train", self.train), ("validation", self.val))
            if batches is not None and batches.position() is not None
        }
        return positions or None

    def _seek_streams(self, positions: dict[str, Any] | None) -> None:
        for name, batches in (("train", self.train), ("validation", self.val)):
            if batches is not None and positions is not None and name in positions:
                batches.seek(positions[name])

    def _return_finished(self) -> History:
        folder = self.state.run_folder
        assert folder is not None
        final = folder.path / "model.safetensors"
        if final.exists():
            self.model.load_weights(final)
        self.say(f"resume=True: {folder.path} has already finished; nothing more to train.")
        return self.model.history

    def say(self, message: str) -> None:
        if self.state.strategy.is_main:  # one line, not one per process
            print(message)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))
