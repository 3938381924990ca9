"""The loops behind `Model.fit`, `Model.evaluate` and `Model.predict`.

One fit, as `FitLoop._run_epochs` reads::

    on_fit_start
    for each epoch:
        begin:  on_epoch_start, this epoch's batch order (seeded; re-created on resume)
        train:  run_batches(train_step): per batch, the step and its values kept on the device
        end:    the epoch's values (one host sync), validation, scheduler, history, on_epoch_end
    on_fit_end, then on_fit_exit(status) whatever happened

Everything else is an ordered callback (`torchhouse.callbacks.builtin.fit_callbacks`):
the run folder's files, the progress display, the resumable states, TensorBoard. They
read the fit through this loop's public attributes. One batch loop, `run_batches`,
serves training, evaluation and prediction.

Nothing in the batch loop waits for the device: the loss and metrics stay in device
buffers until the epoch ends or the progress bar refreshes; a NaN/inf loss is found by
reading one device flag every `NONFINITE_CHECK_EVERY` steps (on a GPU, copied to the host
without waiting and read at the next check).

Exact resume: each saved `TrainingState` holds the RNG states at the start of its epoch
and at the moment it was saved. A resumed epoch restores the first, re-creates the
epoch's batch order (skipping the batches already done), then restores the second.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from torchhouse import distributed, rng
from torchhouse.callbacks.base import Callback, CallbackList
from torchhouse.data import Batches, batch_size_of, move_to, nonfinite_data, tree_map
from torchhouse.errors import CheckpointError, DataError, NonFiniteLossError, TorchhouseError, warn_user
from torchhouse.history import History
from torchhouse.metrics import EpochMetrics
from torchhouse.monitor import check_monitor, is_improvement, resolve_mode
from torchhouse.progress import resolve_mode as resolve_progress
from torchhouse.resume import fit_fingerprint, load_resume_state
from torchhouse.runs import RunDir
from torchhouse.step_checks import check_step_contract, first_step
from torchhouse.training_state import TrainingState
from torchhouse.transfer import device_batches

if TYPE_CHECKING:
    from torchhouse.model import Model

__all__ = [
    "NONFINITE_CHECK_EVERY",
    "FitLoop",
    "concat_outputs",
    "evaluate",
    "num_samples",
    "predict",
    "run_batches",
]

# steps between reads of the loss flag: a NaN stops a fit within this many (2x on a GPU)
NONFINITE_CHECK_EVERY = 32

Record = Callable[[int, dict[str, Any], Any], None]


def run_batches(
    model: Model,
    batches: Iterable[Any],
    phase: str,
    step: Callable[[Any], Any],
    record: Record,
    *,
    transfer: bool,
    callbacks: CallbackList | None = None,
    start: int = 0,
    check_first: bool = True,
    after: Callable[[int], bool] | None = None,
) -> int:
    """The one batch loop of fit, evaluate and predict; returns the index after the last batch.

    Per batch: move it to the device when it is not there (`transfer.device_batches`:
    on CUDA the copy overlaps the previous step), ``on_{phase}_batch_start``,
    ``step``, ``record(index, output, batch)``, ``on_{phase}_batch_end``, then ``after(index
    + 1)``, which may end the loop by returning True. The first step runs through
    `step_checks.first_step` (when ``check_first``), which explains a failure.
    """
    if transfer:
        batches = device_batches(batches, model.device)
    begin_hook, end_hook = f"on_{phase}_batch_start", f"on_{phase}_batch_end"
    begins = callbacks is not None and callbacks.wants(begin_hook)
    ends = callbacks is not None and callbacks.wants(end_hook)
    what = {"train": "training", "test": "evaluation"}.get(phase, phase)
    index = start
    for batch in batches:
        if begins:
            callbacks.call(begin_hook, index, {})  # type: ignore[union-attr]
        if index == start and check_first:
            out = first_step(model, step, batch, what, lambda o, b: record(start, o, b))
        else:
            out = step(batch)
            record(index, out, batch)
        if ends:
            callbacks.call(end_hook, index, out if phase != "predict" else {"outputs": out})  # type: ignore[union-attr]
        index += 1
        if after is not None and after(index):
            break
    return index


def epoch_recorder(model: Model, acc: EpochMetrics, batches: Batches) -> Record:
    """Adds each step's loss and metrics to ``acc`` (on the device), without a rank's padding."""
    padded_index, real = batches.padding() or (-1, 0)
    update = acc.update

    def record(index: int, out: dict[str, Any], batch: Any) -> None:
        if index == padded_index:
            _update_without_padding(model, acc, out, batch, real)
        else:
            update(out, num_samples(out, batch))

    return record


class FitLoop:
    """Runs one `Model.fit` call; see the module docstring.

    Public attributes, read by the built-in callbacks: ``run_dir`` (a `RunDir` or None),
    ``steps`` (batches per epoch, None when unknown), ``monitor`` / ``monitor_mode`` /
    ``best`` / ``improved`` (the best value so far and whether this epoch set it),
    ``nonfinite`` (epoch, batch, loss) when ``on_nonfinite="stop"`` stopped the fit,
    ``example_batch`` (the first training batch), ``epoch_rng`` (the RNG state this epoch
    started from, for step checkpoints), ``resumed`` (the `TrainingState` resumed from),
    ``fingerprint``, ``generators``, ``callbacks``, ``context``, ``is_main``,
    ``checkpoint_every``, ``keep_checkpoints``; and ``config()`` and ``check_nonfinite()``.
    """

    def __init__(
        self,
        model: Model,
        train: Batches,
        val: Batches | None,
        *,
        epochs: int,
        callbacks: list[Callback],
        progress: Any,
        run_dir: str | os.PathLike[str] | None,
        resume: bool,
        overwrite: bool = False,
        checkpoint_every: int | None,
        keep_checkpoints: int,
        generator: torch.Generator,
        monitor: str,
        fit_config: dict[str, Any],
        context: distributed.Context | None = None,
    ) -> None:
        from torchhouse.callbacks.builtin import fit_callbacks

        self.model = model
        self.context = context
        self.is_main = context is None or context.is_main
        self.train = train
        self.val = val
        self.epochs = epochs
        self.steps = len(train) if train.has_len() else None
        self.run_dir = RunDir(run_dir) if run_dir is not None else None
        self.resume = resume
        self.overwrite = overwrite
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.generator = generator
        self.generators = [generator, *(g for g in train.generators() if g is not generator)]
        self.monitor = monitor
        self.monitor_mode = "min"
        self.best: float | None = None
        self.improved = False
        self.nonfinite: tuple[int, int, float] | None = None
        self.example_batch: Any = None
        self.validated = False  # whether a validation pass ran in this fit
        self.epoch_rng: dict[str, Any] | None = None
        self.resumed: TrainingState | None = None
        self.sharded = context is not None and model.strategy == "fsdp"  # FSDP2: per-rank shard files
        self.fit_config = fit_config
        acc = model.train_metrics
        acc.capacity = max(self.steps or 64, 1)
        acc.ignore_nonfinite = model.on_nonfinite == "skip"
        acc.sync = model.eval_metrics.sync = context is not None
        acc.reset()
        world_size = 1 if context is None else context.world_size
        self.fingerprint = fit_fingerprint(model, train, fit_config, world_size)  # before a resume
        model.net_calls = model.weight_calls = 0
        progress_mode = resolve_progress(progress) if self.is_main else "none"
        self.callbacks = CallbackList(fit_callbacks(self, callbacks, progress_mode), model)

    # ----------------------------------------------------------------------- the fit

    def run(self) -> History:
        model = self.model
        model.history = History()
        model.history.params = {"epochs": self.epochs, "steps": self.steps}
        model.global_step = 0
        self._open_run_dir()
        try:
            self._check_resumable()
            if self.run_dir is not None and self.resume:
                rank = 0 if self.context is None else self.context.rank
                self.resumed = load_resume_state(
                    self.run_dir, self.fingerprint, rank, self._restore, self._say
                )
            state = self.resumed
            if state is not None and state.finished and (state.stop_training or state.epoch >= self.epochs):
                return self._return_finished()
            self.monitor_mode = resolve_mode(self.monitor, "auto", model.metrics)
            self._check_scheduler_monitor()
            start = (state.epoch, state.batch) if state else (int(self.fit_config.get("initial_epoch", 0)), 0)
            return self._run_epochs(*start)
        finally:
            if self.run_dir is not None:
                self.run_dir.release()

    def _run_epochs(self, start_epoch: int, start_batch: int) -> History:
        """The epoch loop; how it ended reaches every callback's ``on_fit_exit``."""
        model, callbacks = self.model, self.callbacks
        model.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, Any] = {}
        status = "crashed"
        try:
            callbacks.call("on_fit_start", {})  # callbacks start afresh (Keras' rule)...
            if self.resumed is not None:
                callbacks.load_state_dict(self.resumed.callbacks)  # ...unless the fit resumes
            for epoch in range(start_epoch, self.epochs):
                start = start_batch if epoch == start_epoch else 0
                batches = self._begin_epoch(epoch, start)
                self._train_epoch(batches, start)
                logs = self._end_epoch(epoch)
                if model.stop_training:
                    break
            callbacks.call("on_fit_end", dict(logs))
            status = "stopped_early" if model.stop_training else "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except Exception as exc:
            status = str(getattr(exc, "run_status", "crashed"))  # OptunaPruning's error says "pruned"
            raise
        finally:
            if self.nonfinite is not None:
                status = "stopped_nonfinite"  # its weights are not saved: they came after a NaN
            callbacks.call("on_fit_exit", status, dict(logs))
        return model.history

    def _begin_epoch(self, epoch: int, start: int) -> Iterable[Any]:
        """This epoch's batches; a resumed epoch re-creates its order and skips ``start`` batches."""
        model, train, resumed = self.model, self.train, self.resumed
        model.epoch = epoch
        model.net.train()
        train.set_epoch(epoch)
        resuming = resumed is not None and epoch == resumed.epoch
        if resuming:
            assert resumed is not None
            self._seek_streams(resumed.data_position)  # before the RNG states of the save come back
        if resuming and start > 0:
            assert resumed is not None
            self.epoch_rng = resumed.part("rng_epoch_start")
            rng.restore(self.epoch_rng, self.generators)
            batches = train.iterate(self.generator, start)
            rng.restore(resumed.part("rng"), self.generators)
            model.train_metrics.load_state_dict(resumed.part("train_metrics"))
        else:
            if resuming:
                assert resumed is not None
                rng.restore(resumed.part("rng"), self.generators)
            self.callbacks.call("on_epoch_start", epoch, {})
            self.epoch_rng = rng.capture(self.generators) if self.checkpoint_every else None
            model.train_metrics.reset()
            batches = train.iterate(self.generator, 0)
        model.last_step_lr = None  # set by each optimizer_step: the lr the step used
        return batches

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

    def _train_epoch(self, batches: Iterable[Any], start: int) -> int:
        """The training steps of one epoch (`run_batches`); returns the batches done."""
        model = self.model
        record = epoch_recorder(model, model.train_metrics, self.train)
        last = (self.steps or 0) - 1

        def count(index: int, out: dict[str, Any], batch: Any) -> None:
            record(index, out, batch)
            model.global_step += 1
            if self.example_batch is None:  # the fit's first step: for serving, and the contract
                self.example_batch = batch
                check_step_contract(model, self.context is not None, self.run_dir is not None, batch)

        def after(done: int) -> bool:
            model.is_last_batch = done == last
            if model.stop_training and (self.context is None or self.nonfinite is not None):
                return True  # as Keras: stop after this batch (several processes at the epoch's end)
            return model.global_step % NONFINITE_CHECK_EVERY == 0 and self.check_nonfinite(wait=False)

        model.is_last_batch = start == last
        done = run_batches(
            model,
            batches,
            "train",
            model.train_step,
            count,
            transfer=self.train.needs_transfer(model.device),
            callbacks=self.callbacks,
            start=start,
            check_first=self.example_batch is None,  # the fit's first step only (its checks read the device)
            after=after,
        )
        model.is_last_batch = False
        if done == 0:
            raise DataError("the training data yielded no batch")
        return done

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's values (one host sync), validation, scheduler, history, best, on_epoch_end."""
        model, callbacks = self.model, self.callbacks
        logs = model.train_metrics.compute()  # the epoch's one host sync
        self._check_epoch_nonfinite(epoch)
        if self.context is not None:
            model.stop_training = distributed.any_rank(model.stop_training, model.device)
        self._warn_skipped(epoch)
        if "lr" in model.log_names:  # the lr the epoch's last step used (Keras logs it too)
            used = model.last_step_lr
            logs["lr"] = float(used) if used is not None else _current_lr(model.optimizer)
        if self.val is not None and (epoch + 1) % int(self.fit_config.get("validation_freq", 1)) == 0:
            # the fit's first validation checks its first step (the checks read the device)
            results = evaluate(model, self.val, model.eval_metrics, callbacks, check_first=not self.validated)
            self.validated = True
            val_logs = {f"val_{k}": v for k, v in results.items()}
            logs.update(val_logs)
            callbacks.call("on_validation_end", val_logs)
        if self.nonfinite is None:
            self._step_scheduler_per_epoch(logs)
        model.history.append(epoch, logs)
        self.improved = self._track_best(logs)
        callbacks.call("on_epoch_end", epoch, logs)
        return logs

    # ----------------------------------------------------------------------- non-finite losses

    def check_nonfinite(self, wait: bool = True) -> bool:
        """Read the device flag of the epoch's losses (one sync); act on a NaN/inf loss.

        "raise" raises `NonFiniteLossError` naming the first bad batch; "stop" stops the
        fit after this batch (the history keeps the epoch) and returns True. Every rank
        decides together, so none waits for ever in a collective. ``wait=False`` (the
        periodic check of one process) does not wait for the device: on a GPU a NaN is
        then found one check later (`EpochMetrics.nonfinite_seen`).
        """
        if self.model.on_nonfinite == "skip":
            return False
        acc = self.model.train_metrics
        if not wait and self.context is None and not acc.nonfinite_seen():
            return False
        bad = acc.first_nonfinite_loss()
        if self.context is not None:
            if not distributed.any_rank(bad is not None, self.model.device):
                return False
            bad = bad or (-1, float("nan"))
        if bad is None:
            return False
        self._nonfinite_found(self.model.epoch, *bad)
        return True

    def _check_epoch_nonfinite(self, epoch: int) -> None:
        acc = self.model.train_metrics
        if acc.nonfinite and self.model.on_nonfinite != "skip" and self.nonfinite is None:
            bad = acc.first_nonfinite_loss()  # None on a rank whose losses were all finite
            self._nonfinite_found(epoch, *(bad or (-1, float("nan"))))

    def _nonfinite_found(self, epoch: int, batch: int, value: float) -> None:
        if self.model.on_nonfinite != "stop":
            raise NonFiniteLossError(epoch, batch, value, nonfinite_data(self.train))
        self.nonfinite = (epoch, batch, value)
        self.model.stop_training = True
        self._say(
            f"Stopping: the training loss is {value} at epoch {epoch + 1}, batch {batch + 1} "
            "(on_nonfinite='stop'); no state is saved from these weights."
        )

    def _warn_skipped(self, epoch: int) -> None:
        model = self.model
        if model.skipped_batches:
            warn_user(
                f"epoch {epoch + 1}: skipped {model.skipped_batches} batch(es) with a non-finite "
                "loss (on_nonfinite='skip'); they are left out of the epoch's values"
            )
            model.skipped_batches = 0

    # ----------------------------------------------------------------------- best value, scheduler

    def _track_best(self, logs: dict[str, Any]) -> bool:
        if self.nonfinite is not None:
            return False
        value = logs.get(self.monitor)
        improved = value is not None and is_improvement(value, self.best, self.monitor_mode)
        if improved:
            self.best = value
        return improved

    def _check_scheduler_monitor(self) -> None:
        """A ReduceLROnPlateau's monitor must be logged: checked before the first batch."""
        model = self.model
        if isinstance(model.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            name = model.lr_scheduler_monitor or ("val_loss" if self.val is not None else "loss")
            check_monitor("lr_scheduler_monitor", name, model.log_names)

    def _step_scheduler_per_epoch(self, logs: dict[str, Any]) -> None:
        model = self.model
        scheduler = model.lr_scheduler
        if scheduler is None or model.lr_scheduler_interval != "epoch":
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            name = model.lr_scheduler_monitor or ("val_loss" if self.val is not None else "loss")
            if name.startswith("val_") and name not in logs and self.val is not None:
                return  # an epoch without validation (validation_freq > 1)
            if name not in logs:
                raise DataError(
                    f"lr_scheduler_monitor={name!r} is not a logged value; fit logs: {', '.join(logs)}"
                )
            scheduler.step(logs[name])
        else:
            scheduler.step()

    # ----------------------------------------------------------------------- run folder, resume

    def _open_run_dir(self) -> None:
        """Rank 0 checks and locks the run folder; every rank learns whether that worked."""
        if self.run_dir is None:
            return
        failure: BaseException | None = None
        if self.is_main:
            try:
                self.run_dir.prepare(self.resume, self.overwrite)
            except TorchhouseError as exc:
                failure = exc
        failed = failure is not None
        others_failed = self.context is not None and distributed.any_rank(failed, self.model.device)
        if others_failed and failure is None:
            raise CheckpointError(f"{self.run_dir.path}: rank 0 could not open the run folder")
        if failure is not None:
            raise failure

    def _check_resumable(self) -> None:
        """Data a run cannot resume on exactly: refused on resume, said at the start otherwise."""
        if self.run_dir is None:
            return
        reasons = [b.resume_refusal() for b in (self.train, self.val) if b is not None]
        reason = next((r for r in reasons if r), None)
        if reason is None:
            return
        if self.resume and self.run_dir.state_names():
            raise CheckpointError(f"{self.run_dir.path}: cannot resume exactly: {reason}")
        warn_user(f"the states of this run in {self.run_dir.path} cannot be resumed exactly: {reason}")

    def config(self) -> dict[str, Any]:
        """What was trained and how: the run folder's ``config.json``."""
        from torchhouse import __version__

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
            "accumulate_grad_batches": model.accumulate_grad_batches,
            "gradient_clip_val": model.gradient_clip_val,
            "monitor": self.monitor,
            "fit": self.fit_config,
        }

    def _restore(self, state: TrainingState, name: str = "") -> None:
        """Restore a saved state; raises on damage, so an older state can be tried instead."""
        if state.shards is not None:
            failure: Exception | None = None
            try:
                self._join_shards(state, name)
            except Exception as exc:  # a damaged shard file: every rank must fall back together
                failure = exc
            if self.context is not None and distributed.any_rank(failure is not None, self.model.device):
                raise failure or CheckpointError(f"another rank could not read its shards of {name}")
            if failure is not None:
                raise failure
        state.restore(self.model)
        self.callbacks.load_state_dict(state.callbacks)
        self.best = state.best
        # The epoch loop restores these again at the right moment; restoring them here
        # finds a damaged RNG or metric state now, while an older state can still be used.
        rng.restore(state.part("rng"), self.generators)
        if state.batch > 0:
            rng.restore(state.part("rng_epoch_start"), self.generators)
            self.model.train_metrics.load_state_dict(state.part("train_metrics"))

    def _join_shards(self, state: TrainingState, name: str) -> None:
        """Put this rank's FSDP shards (its own file, checked by digest) back into ``state``."""
        from torchhouse.fsdp import join_shards, live_parameter

        assert self.run_dir is not None and state.shards is not None
        if not self.sharded or self.context is None or len(state.shards) != self.context.world_size:
            raise CheckpointError(
                "a sharded (strategy='fsdp') state resumes only with the same number of processes"
            )
        shards = self.run_dir.load_shard(name, self.context.rank, str(state.shards[self.context.rank]))
        like = live_parameter(self.model)
        state.model = join_shards(state.model, "model", shards, like)
        state.optimizers = join_shards(state.optimizers, "optimizers", shards, like)
        state.grads = join_shards(state.grads, "grads", shards, like)

    def _return_finished(self) -> History:
        assert self.run_dir is not None
        final = self.run_dir.path / "model.safetensors"
        if final.exists():
            self.model.load_weights(final)
        self._say(f"resume=True: {self.run_dir.path} has already finished; nothing more to train.")
        return self.model.history

    def _say(self, message: str) -> None:
        if self.is_main:  # one line, not one per process
            print(message)


# --------------------------------------------------------------------------- evaluation, prediction


def evaluate(
    model: Model,
    batches: Batches,
    acc: EpochMetrics,
    callbacks: CallbackList | None = None,
    check_first: bool = True,
) -> dict[str, float]:
    """Loss and metrics of ``model`` over ``batches``, under ``torch.no_grad``.

    ``callbacks`` get the ``on_test_*`` hooks (Keras' names). ``check_first``: run the
    first step's checks (`step_checks.first_step`); a fit does so at its first validation.
    """
    net = model.net
    was_training = net.training
    net.eval()
    if batches.has_len():
        acc.capacity = max(len(batches), 1)
    acc.reset()
    hooks = callbacks if callbacks is not None and _wants_any(callbacks, "on_test") else None
    if hooks is not None:
        hooks.call("on_test_begin", {})
    try:
        with torch.no_grad():
            run_batches(
                model,
                batches.iterate(None),
                "test",
                model.eval_step,
                epoch_recorder(model, acc, batches),
                transfer=batches.needs_transfer(model.device),
                callbacks=hooks,
                check_first=check_first,
            )
        if acc.count == 0 and not acc.sync:
            raise DataError("the evaluation data yielded no batch")
        result = acc.compute()
        if hooks is not None:
            hooks.call("on_test_end", dict(result))
        return result
    finally:
        net.train(was_training)


def predict(model: Model, batches: Batches, callbacks: CallbackList | None = None) -> Any:
    """All of the net's outputs for ``batches``, concatenated, on the CPU.

    ``callbacks`` get the ``on_predict_*`` hooks (Keras' names).
    """
    net = model.net
    was_training = net.training
    net.eval()
    outputs: list[Any] = []
    hooks = callbacks if callbacks is not None and _wants_any(callbacks, "on_predict") else None
    if hooks is not None:
        hooks.call("on_predict_begin", {})
    try:
        with torch.no_grad():
            run_batches(
                model,
                batches.iterate(None),
                "predict",
                model.predict_step,
                lambda index, out, batch: outputs.append(out),
                transfer=batches.needs_transfer(model.device),
                callbacks=hooks,
                check_first=False,
            )
    finally:
        net.train(was_training)
    result = move_to(concat_outputs(outputs), torch.device("cpu"))
    if hooks is not None:
        hooks.call("on_predict_end", {})
    return result


def _wants_any(callbacks: CallbackList, prefix: str) -> bool:
    return any(callbacks.wants(hook) for hook in callbacks.hooked if hook.startswith(prefix))


def concat_outputs(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs) if first.dim() > 0 else torch.stack(outputs)
    if isinstance(first, dict):
        return {k: concat_outputs([o[k] for o in outputs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concat_outputs([o[i] for o in outputs]) for i in range(len(first)))
    raise DataError(f"predict: the net returned {type(first).__name__}; expected tensors")


# --------------------------------------------------------------------------- helpers


def _update_without_padding(
    model: Model, acc: EpochMetrics, out: dict[str, Any], batch: Any, real: int
) -> None:
    trimmed = without_padding(model, out, real, batch)
    if trimmed is not None:
        acc.update(trimmed, num_samples(trimmed, batch))


def without_padding(model: Model, out: dict[str, Any], real: int, batch: Any = None) -> dict[str, Any] | None:
    """The step output without the padded samples at the end of a rank's last batch."""
    if real <= 0:
        return None
    if "preds" not in out or "target" not in out:
        return out
    preds = tree_map(lambda t: t[:real], out["preds"])
    target = tree_map(lambda t: t[:real], out["target"])
    weight = model.sample_weights(batch) if batch is not None else None
    with torch.no_grad(), model.autocast():
        if weight is None:
            loss = model.compute_loss(preds, target)
        else:
            loss = model.compute_loss(preds, target, weight[:real])
    return {**out, "loss": loss, "preds": preds, "target": target}


def num_samples(out: dict[str, Any], batch: Any) -> int:
    target = out.get("target")
    if type(target) is torch.Tensor and target.dim() > 0:
        return target.shape[0]
    size = out.get("batch_size")
    if size is not None:
        return int(size)
    return batch_size_of(target if target is not None else batch)


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0].get("lr", float("nan"))
    return float(lr)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))
