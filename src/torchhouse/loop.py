"""The epoch loop behind `Model.fit`, `Model.evaluate` and `Model.predict`.

One fit, in order::

    on_fit_start
    for each epoch:
        on_epoch_start
        for each batch:  train_step -> record loss/metrics on the device -> (progress)
        read the epoch's values (one host sync), stop on a NaN/inf loss
        validation (eval_step under no_grad) -> on_validation_end
        scheduler step (per epoch) -> history -> on_epoch_end -> checkpoint
    on_fit_end

Nothing in the batch loop waits for the device: the loss and metrics stay in device
buffers until the epoch ends or the progress bar refreshes.

Exact resume: each saved state holds the RNG states at the start of its epoch and at
the moment it was saved. A resumed epoch restores the first, re-creates the epoch's
batch order (skipping the batches already done), then restores the second.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

import torch

from torchhouse import distributed, rng
from torchhouse.callbacks.base import Callback, CallbackList
from torchhouse.data import Batches, batch_size_of, describe, move_to, nonfinite_data, to_cpu, tree_map
from torchhouse.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, TorchhouseError
from torchhouse.history import History
from torchhouse.metrics import EpochMetrics, check_binary_accuracy_inputs, check_metric_values
from torchhouse.monitor import check_monitor, is_improvement, resolve_mode
from torchhouse.progress import Progress
from torchhouse.progress import resolve_mode as resolve_progress
from torchhouse.runs import RunDir

if TYPE_CHECKING:
    from torchhouse.model import Model

__all__ = ["FitLoop", "concat_outputs", "evaluate", "num_samples", "predict"]

_USER_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AttributeError)
NONFINITE_CHECK_EVERY = 32  # steps between reads of the loss flag: a NaN stops a fit within this many


class FitLoop:
    """Runs one `Model.fit` call; see the module docstring."""

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
        self.model = model
        self.context = context
        self.is_main = context is None or context.is_main
        self.train = train
        self.val = val
        self.epochs = epochs
        if context is not None and not context.is_main:
            # Only rank 0 writes files: drop writers fit added by itself on other ranks.
            callbacks = [c for c in callbacks if not c.auto]
        self.callbacks = CallbackList(callbacks, model)
        self.progress = Progress(resolve_progress(progress) if self.is_main else "none", epochs)
        self.run_dir = RunDir(run_dir) if run_dir is not None else None
        self.resume = resume
        self.overwrite = overwrite
        self.nonfinite: tuple[int, int, float] | None = None  # (epoch, batch, loss) when "stop" stopped
        self.example_batch: Any = None  # the first training batch, for the run folder's exported program
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.generator = generator
        self.generators = [generator, *(g for g in train.generators() if g is not generator)]
        self.monitor = monitor
        self.monitor_mode = "min"
        self.best: float | None = None
        self.fit_config = fit_config
        steps = len(train) if train.has_len() else 64
        self.train_metrics = model.train_metrics
        self.train_metrics.capacity = max(steps, 1)
        self.train_metrics.ignore_nonfinite = model.on_nonfinite == "skip"
        self.train_metrics.sync = model.eval_metrics.sync = context is not None
        self.train_metrics.reset()
        self.fingerprint = self._fingerprint()  # before a resumed state changes the optimizer
        model.net_calls = model.weight_calls = 0

    # ----------------------------------------------------------------------- the fit

    def run(self) -> History:
        model = self.model
        model.history = History()
        model.history.params = {
            "epochs": self.epochs,
            "steps": len(self.train) if self.train.has_len() else None,
        }
        model.global_step = 0
        start_epoch, start_batch = int(self.fit_config.get("initial_epoch", 0)), 0
        state: dict[str, Any] | None = None
        self._prepare_run_dir()
        try:
            if self.run_dir is not None and self.resume:
                state = self._load_resume_state()
            if state is not None:
                start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
                if state.get("finished") and (state.get("stop_training") or start_epoch >= self.epochs):
                    return self._return_finished(state)
            self.monitor_mode = resolve_mode(self.monitor, "auto", model.metrics)
            self._check_scheduler_monitor()
            if self.run_dir is not None and self.is_main:
                self.run_dir.start(self._config(), resumed=state is not None)
            return self._run_epochs(start_epoch, start_batch, state)
        finally:
            if self.run_dir is not None:
                self.run_dir.release()

    def _prepare_run_dir(self) -> None:
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

    def _run_epochs(self, start_epoch: int, start_batch: int, state: dict[str, Any] | None) -> History:
        model = self.model
        model.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, Any] = {}
        status = "crashed"
        try:
            self.callbacks.call("on_fit_start", dict(logs))  # callbacks start afresh (Keras' rule)...
            if state is not None:
                self.callbacks.load_state_dict(state["callbacks"])  # ...unless the fit resumes
            for epoch in range(start_epoch, self.epochs):
                resumed = state if epoch == start_epoch else None
                logs = self._run_epoch(epoch, start_batch if resumed else 0, resumed)
                if model.stop_training:
                    break
            self.callbacks.call("on_fit_end", dict(logs))
            status = "stopped_early" if model.stop_training else "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            if self.run_dir is not None and self.is_main:
                # first, so a second Ctrl-C cannot lose it; numbers a person reads count from 1
                self.run_dir.update(
                    status=status, interrupted_at={"epoch": model.epoch + 1, "step": model.global_step}
                )
            raise
        except Exception as exc:
            optuna = sys.modules.get("optuna")  # loaded if OptunaPruning raised; never imported here
            if optuna is not None and isinstance(exc, optuna.TrialPruned):
                status = "pruned"
            raise
        finally:
            if self.run_dir is not None and self.is_main:
                self._finish_run(status)
            self.progress.close()
        return model.history

    def _run_epoch(self, epoch: int, start: int, resumed: dict[str, Any] | None) -> dict[str, Any]:
        """One epoch in three phases: begin (order, RNG), the batches, end (values, checkpoint)."""
        batches, epoch_rng = self._begin_epoch(epoch, start, resumed)
        lr = _current_lr(self.model.optimizer)  # after on_epoch_start, which may set it
        done = self._train_batches(epoch, batches, start, epoch_rng)
        return self._end_epoch(epoch, done, lr)

    def _begin_epoch(
        self, epoch: int, start: int, resumed: dict[str, Any] | None
    ) -> tuple[Any, dict[str, Any] | None]:
        """This epoch's batches and the RNG snapshot that re-creates them on resume."""
        model, train, acc = self.model, self.train, self.train_metrics
        model.epoch = epoch
        model.net.train()
        train.set_epoch(epoch)
        if resumed is not None and start > 0:
            # Mid-epoch resume: re-create this epoch's order, skip what was done.
            epoch_rng = resumed["rng_epoch_start"]
            rng.restore(epoch_rng, self.generators)
            batches = train.iterate(self.generator, start)
            rng.restore(resumed["rng"], self.generators)
            acc.load_state_dict(resumed["train_metrics"])
            return batches, epoch_rng
        if resumed is not None:
            rng.restore(resumed["rng"], self.generators)
        self.callbacks.call("on_epoch_start", epoch, {})
        epoch_rng = rng.capture(self.generators) if self.checkpoint_every else None
        acc.reset()
        return train.iterate(self.generator, 0), epoch_rng

    def _train_batches(self, epoch: int, batches: Any, start: int, epoch_rng: dict[str, Any] | None) -> int:
        """Run the training steps; returns the number of batches done in this epoch.

        Per step: move the batch, the step, record its values on the device (no host sync),
        callbacks, and now and then the progress bar, the NaN flag and a step checkpoint.
        """
        model, train, acc, callbacks, progress = (
            self.model,
            self.train,
            self.train_metrics,
            self.callbacks,
            self.progress,
        )
        steps = len(train) if train.has_len() else None
        progress.epoch_start(epoch, steps, start)
        every, last = self.checkpoint_every, (steps - 1) if steps is not None else -1
        padded_index, real = train.padding() or (-1, 0)
        transfer, device = train.needs_transfer(model.device), model.device
        train_step, perf_counter = model.train_step, time.perf_counter
        batch_start, batch_end = (
            callbacks.wants("on_train_batch_start"),
            callbacks.wants("on_train_batch_end"),
        )
        index = start
        for batch in batches:
            if transfer:
                batch = move_to(batch, device, non_blocking=device.type == "cuda")
            if batch_start:
                callbacks.call("on_train_batch_start", index, {})
            model.is_last_batch = index == last
            if index == start:
                out = _checked(model, train_step, batch, "training", acc, index == padded_index, real)
                if self.example_batch is None:
                    self.example_batch = batch
                    _check_step_contract(model, self.context is not None, self.run_dir is not None, batch)
            else:
                out = train_step(batch)
                if index == padded_index:
                    _update_without_padding(model, acc, out, batch, real)
                else:
                    acc.update(out, num_samples(out, batch))
            model.global_step += 1
            index += 1
            if batch_end:
                callbacks.call("on_train_batch_end", index - 1, out)
                if model.stop_training and self.context is None:
                    break  # as Keras: stop after this batch (several processes stop at the epoch's end)
            if perf_counter() >= progress.next_refresh:
                progress.refresh(index, acc.partial_loss)
            if model.global_step % NONFINITE_CHECK_EVERY == 0 and self._found_nonfinite(epoch):
                break  # on_nonfinite="stop": stop now, within NONFINITE_CHECK_EVERY steps of it
            if every and model.global_step % every == 0 and index != steps:
                if self._found_nonfinite(epoch):
                    break
                self._save(epoch, index, epoch_rng)
        if index == 0:
            raise DataError("the training data yielded no batch")
        model.is_last_batch = False
        return index

    def _end_epoch(self, epoch: int, done: int, lr: float) -> dict[str, Any]:
        """The epoch's values (one host sync), validation, scheduler, history, callbacks, checkpoint."""
        model, acc, callbacks = self.model, self.train_metrics, self.callbacks
        logs = acc.compute()  # the epoch's one host sync
        if acc.nonfinite and model.on_nonfinite != "skip" and self.nonfinite is None:
            bad = acc.first_nonfinite_loss()  # None on a rank whose losses were all finite
            self._nonfinite_found(epoch, *(bad or (-1, float("nan"))))
        if self.context is not None:
            model.stop_training = distributed.any_rank(model.stop_training, model.device)
        if model.skipped_batches:
            warnings.warn(
                f"epoch {epoch + 1}: skipped {model.skipped_batches} batch(es) with a non-finite "
                "loss (on_nonfinite='skip'); they are left out of the epoch's values",
                stacklevel=6,  # the user's fit call
            )
            model.skipped_batches = 0
        if model.lr_scheduler is not None:
            logs["lr"] = lr
        if self.val is not None and (epoch + 1) % int(self.fit_config.get("validation_freq", 1)) == 0:
            val_logs = {
                f"val_{k}": v for k, v in evaluate(model, self.val, model.eval_metrics, callbacks).items()
            }
            logs.update(val_logs)
            callbacks.call("on_validation_end", val_logs)
        if self.nonfinite is None:
            self._step_scheduler_per_epoch(logs)
        model.history.append(epoch, logs)
        self.progress.epoch_end(epoch, done, logs)
        if self.run_dir is not None and self.is_main:
            self.run_dir.write_history(model.history)
        callbacks.call("on_epoch_end", epoch, logs)
        if self.run_dir is not None and self.nonfinite is None:  # never a state after a NaN
            value = logs.get(self.monitor)
            improved = value is not None and is_improvement(value, self.best, self.monitor_mode)
            if improved:
                self.best = value
            self._save(epoch + 1, 0, None, best=improved)
        return logs

    def _found_nonfinite(self, epoch: int) -> bool:
        """Read the device flag of the epoch's losses (one sync); act on a NaN/inf loss.

        "raise" raises `NonFiniteLossError` naming the first bad batch; "stop" stops the
        fit after this batch (the history keeps the epoch) and returns True. Every rank
        decides together, so none waits for ever in a collective.
        """
        if self.model.on_nonfinite == "skip":
            return False
        bad = self.train_metrics.first_nonfinite_loss()
        if self.context is not None:
            if not distributed.any_rank(bad is not None, self.model.device):
                return False
            bad = bad or (-1, float("nan"))
        if bad is None:
            return False
        self._nonfinite_found(epoch, *bad)
        return True

    def _nonfinite_found(self, epoch: int, batch: int, value: float) -> None:
        if self.model.on_nonfinite != "stop":
            raise NonFiniteLossError(epoch, batch, value, nonfinite_data(self.train))
        self.nonfinite = (epoch, batch, value)
        self.model.stop_training = True
        self._say(
            f"Stopping: the training loss is {value} at epoch {epoch + 1}, batch {batch + 1} "
            "(on_nonfinite='stop'); no state is saved from these weights."
        )

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

    # ----------------------------------------------------------------------- run folder

    def _config(self) -> dict[str, Any]:
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

    def _fingerprint(self) -> dict[str, Any]:
        """Everything that decides this fit's result, compared on resume (`_check_fingerprint`)."""
        model = self.model
        config = self.fit_config
        return {
            "parameters": {k: list(v.shape) for k, v in model.net.state_dict().items()},
            "optimizer": [type(o).__name__ for o in model.optimizers()],
            "param_groups": [len(g["params"]) for o in model.optimizers() for g in o.param_groups],
            "hyperparameters": [_hyperparameters(g) for o in model.optimizers() for g in o.param_groups],
            "loss": repr(model.loss),
            "metrics": sorted([*model.metrics, *model.weighted_metrics]),
            "lr_scheduler": type(model.lr_scheduler).__name__ if model.lr_scheduler is not None else None,
            "lr_scheduler_interval": model.lr_scheduler_interval,
            "precision": model.precision,
            "accumulate_grad_batches": model.accumulate_grad_batches,
            "gradient_clip": [model.gradient_clip_val, model.gradient_clip_algorithm],
            "batch_size": config.get("batch_size"),
            "shuffle": config.get("shuffle"),
            "seed": config.get("seed"),
            "validation_split": config.get("validation_split"),
            "initial_epoch": config.get("initial_epoch", 0),
            "validation_freq": config.get("validation_freq", 1),
            "data": self.train.fingerprint(),
            "num_samples": self.train.num_samples,
            "steps_per_epoch": len(self.train) if self.train.has_len() else None,
            "world_size": 1 if self.context is None else self.context.world_size,
        }

    def _save(self, epoch: int, batch: int, epoch_rng: dict[str, Any] | None, best: bool = False) -> None:
        if self.run_dir is None:
            return
        model = self.model
        state: dict[str, Any] = {
            "epoch": epoch,
            "batch": batch,
            "global_step": model.global_step,
            "fingerprint": self.fingerprint,
            "model": model.net.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in model.optimizers()],
            "lr_scheduler": model.lr_scheduler.state_dict() if model.lr_scheduler else None,
            "scaler": model.scaler.state_dict() if model.scaler else None,
            "grads": {n: p.grad for n, p in model.net.named_parameters() if p.grad is not None},
            "micro_step": model.micro_step,
            "history": model.history.state_dict(),
            "callbacks": self.callbacks.state_dict(),
            "stop_training": model.stop_training,
            "best": self.best,
            "finished": False,
        }
        own = {
            "rng": rng.capture(self.generators),
            "rng_epoch_start": epoch_rng,
            "train_metrics": self.train_metrics.state_dict() if batch > 0 else None,
        }
        if self.context is None:
            state.update(own)
        else:
            # Each rank has its own RNG streams and partial epoch values: keep them all.
            state["ranks"] = distributed.gather_objects(to_cpu(own))
        if self.is_main:
            self.run_dir.save_state(state, self.keep_checkpoints, best=best)
        if self.context is not None:
            distributed.barrier()

    def _finish_run(self, status: str) -> None:
        """Record how the fit ended; the status is written first, so a second Ctrl-C keeps it."""
        assert self.run_dir is not None
        model = self.model
        if self.nonfinite is not None:
            status = "stopped_nonfinite"  # its weights are not saved: they came after a NaN
        finished = status in ("finished", "stopped_early")
        if finished:
            model.save(self.run_dir.path / "model.safetensors")
            self._mark_last_state_finished()
        best_epoch = None
        if self.monitor in model.history.history and len(model.history):
            try:
                best_epoch, _ = model.history.best(self.monitor, self.monitor_mode)
            except ValueError:
                best_epoch = None
        self.run_dir.update(
            status=status,
            epochs_done=len(model.history),
            monitor=self.monitor,
            best=self.best,
            best_epoch=best_epoch,
            ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        if len(model.history):
            _write_plot(model.history, self.monitor, self.run_dir.path / "history.png")
        if finished and self.example_batch is not None:
            from torchhouse.serving import write_serving_files

            inputs, _ = model.unpack_batch(self.example_batch)
            example = tree_map(lambda t: t[:2].detach(), inputs)
            write_serving_files(self.run_dir.path, model, example)

    def _mark_last_state_finished(self) -> None:
        assert self.run_dir is not None
        from torchhouse.checkpoint import STATE_JSON, atomic_write_json, read_json, seal_state_json

        names = self.run_dir.state_names()
        if not names:
            return
        meta_file = self.run_dir.checkpoints / names[-1] / STATE_JSON
        meta = read_json(meta_file)
        meta["state"]["finished"] = True
        meta["state"]["stop_training"] = self.model.stop_training
        atomic_write_json(meta_file, seal_state_json(meta["sha256"], meta["state"]))

    # ----------------------------------------------------------------------- resume

    def _load_resume_state(self) -> dict[str, Any] | None:
        """Restore the newest usable state; a damaged one falls back to the one before it.

        A state that does not match this fit (`_check_fingerprint`) is an error, not damage:
        falling back would silently continue an older run.
        """
        assert self.run_dir is not None
        names = self.run_dir.state_names()
        if not names:
            self._say(f"resume=True: no saved state in {self.run_dir.path}; starting from scratch.")
            return None
        for name, state in self.run_dir.intact_states():
            where = self.run_dir.checkpoints / name
            fingerprint = state.get("fingerprint")
            if not isinstance(fingerprint, dict):
                warnings.warn(f"skipping the damaged checkpoint {name}: it has no fingerprint", stacklevel=3)
                continue
            self._check_fingerprint(fingerprint, where)
            try:
                self._apply_state(state)
            except Exception as exc:  # damage the checksum cannot see, e.g. a state from a bug
                warnings.warn(
                    f"skipping the checkpoint {name}, which cannot be restored ({type(exc).__name__}: "
                    f"{exc}); falling back to an older one",
                    stacklevel=3,
                )
                continue
            self._say(
                f"Resuming {self.run_dir.path} from {name} (epoch {int(state['epoch']) + 1}, "
                f"batch {int(state['batch'])})."
            )
            return state
        raise CheckpointError(
            f"{self.run_dir.checkpoints}: none of the {len(names)} saved states can be used (see the "
            "warnings above); resume is impossible. Start again with overwrite=True (CLI: --overwrite)"
        )

    def _apply_state(self, state: dict[str, Any]) -> None:
        if "ranks" in state:
            state.update(state["ranks"][0 if self.context is None else self.context.rank])
        model = self.model
        model.net.load_state_dict(state["model"])
        for optimizer, saved in zip(model.optimizers(), state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        if model.lr_scheduler is not None and state["lr_scheduler"] is not None:
            model.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if model.scaler is not None and state["scaler"] is not None:
            model.scaler.load_state_dict(state["scaler"])
        params = dict(model.net.named_parameters())
        for pname, grad in state["grads"].items():
            params[pname].grad = grad.to(params[pname].device)
        model.micro_step = int(state["micro_step"])
        model.history.load_state_dict(state["history"])
        self.callbacks.load_state_dict(state["callbacks"])
        model.global_step = int(state["global_step"])
        model.stop_training = bool(state["stop_training"])
        self.best = state["best"]
        int(state["epoch"]), int(state["batch"])
        # The epoch loop restores these again at the right moment; restoring them here
        # finds a damaged RNG or metric state now, while an older state can still be used.
        rng.restore(state["rng"], self.generators)
        if int(state["batch"]) > 0:
            for key in ("rng_epoch_start", "train_metrics"):
                if state.get(key) is None:
                    raise CheckpointError(f"a mid-epoch state without {key!r}")
            rng.restore(state["rng_epoch_start"], self.generators)
            self.train_metrics.load_state_dict(state["train_metrics"])

    def _say(self, message: str) -> None:
        if self.is_main:  # one line, not one per process
            print(message)

    def _check_fingerprint(self, saved: dict[str, Any], where: Any) -> None:
        """Refuse to resume when anything that decides the result differs; list every difference."""
        differences = _differences(_comparable(saved), _comparable(self.fingerprint))
        if differences:
            raise CheckpointError(
                f"{where}: this fit differs from the saved run, so resuming would not continue it "
                "exactly:\n  " + "\n  ".join(differences) + "\nResume with the same settings and data, "
                "or start a new run (overwrite=True / --overwrite, or another run_dir)."
            )

    def _return_finished(self, state: dict[str, Any]) -> History:
        assert self.run_dir is not None
        final = self.run_dir.path / "model.safetensors"
        if final.exists():
            self.model.load_weights(final)
        self._say(f"resume=True: {self.run_dir.path} has already finished; nothing more to train.")
        return self.model.history


# --------------------------------------------------------------------------- evaluation


def evaluate(
    model: Model, batches: Batches, acc: EpochMetrics, callbacks: CallbackList | None = None
) -> dict[str, float]:
    """Loss and metrics of ``model`` over ``batches``, under ``torch.no_grad``.

    ``callbacks`` get the ``on_test_*`` hooks (Keras' names).
    """
    net = model.net
    was_training = net.training
    net.eval()
    if batches.has_len():
        acc.capacity = max(len(batches), 1)
    acc.reset()
    device = model.device
    transfer = batches.needs_transfer(device)
    padded_index, real = batches.padding() or (-1, 0)
    hooks = callbacks if callbacks is not None and _wants_any(callbacks, "on_test") else None
    if hooks is not None:
        hooks.call("on_test_begin", {})
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches.iterate(None)):
                if transfer:
                    batch = move_to(batch, device, non_blocking=device.type == "cuda")
                if hooks is not None:
                    hooks.call("on_test_batch_start", index, {})
                if index == 0:
                    out = _checked(
                        model, model.eval_step, batch, "evaluation", acc, index == padded_index, real
                    )
                else:
                    out = model.eval_step(batch)
                    if index == padded_index:
                        _update_without_padding(model, acc, out, batch, real)
                    else:
                        acc.update(out, num_samples(out, batch))
                if hooks is not None:
                    hooks.call("on_test_batch_end", index, out)
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
    outputs = []
    device = model.device
    transfer = batches.needs_transfer(device)
    hooks = callbacks if callbacks is not None and _wants_any(callbacks, "on_predict") else None
    if hooks is not None:
        hooks.call("on_predict_begin", {})
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches.iterate(None)):
                if transfer:
                    batch = move_to(batch, device, non_blocking=device.type == "cuda")
                if hooks is not None:
                    hooks.call("on_predict_batch_start", index, {})
                outputs.append(model.predict_step(batch))
                if hooks is not None:
                    hooks.call("on_predict_batch_end", index, {"outputs": outputs[-1]})
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


def _write_plot(history: History, monitor: str, path: Any) -> None:
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        return  # plots are an optional extra
    from torchhouse.plotting import plot_history

    plot_history(history, monitor=monitor, path=path)  # an off-screen figure: no pyplot state


def _update_without_padding(
    model: Model, acc: EpochMetrics, out: dict[str, Any], batch: Any, real: int
) -> None:
    trimmed = model._trim_padding(out, real, batch)
    if trimmed is not None:
        acc.update(trimmed, num_samples(trimmed, batch))


def num_samples(out: dict[str, Any], batch: Any) -> int:
    target = out.get("target")
    if type(target) is torch.Tensor and target.dim() > 0:
        return target.shape[0]
    size = out.get("batch_size")
    if size is not None:
        return int(size)
    return batch_size_of(target if target is not None else batch)


def _check_step_contract(model: Model, several_processes: bool, checkpoints: bool, batch: Any) -> None:
    """After the first training step: refuse features a custom step silently bypasses."""
    weighted = (isinstance(batch, (tuple, list)) and len(batch) == 3) or model.class_weight_table is not None
    if weighted and not model.weight_calls:
        raise ConfigError(
            f"{type(model).__name__}.train_step ignores the sample weights (it did not call "
            "self.sample_weights(batch)); pass them to compute_loss as the built-in step does, or "
            "leave sample_weight / class_weight out (docs/steps.md)"
        )
    if several_processes and not model.net_calls:
        raise ConfigError(
            f"{type(model).__name__}.train_step calls the net directly, not through self.forward(...); "
            "under several processes only self.forward runs the DDP-wrapped net that averages "
            "gradients across ranks, so the ranks would drift apart (docs/steps.md)"
        )
    if model.optimizer_steps:
        return  # the step went through optimizer_step(): every feature applies
    if checkpoints and type(model).optimizers is _base_optimizers():
        raise ConfigError(
            f"{type(model).__name__}.train_step steps its optimizer(s) itself (it did not call "
            "self.optimizer_step()); list them in an override of Model.optimizers() so checkpoints "
            "save and resume their state (docs/steps.md)"
        )
    needs = []
    if model.accumulate_grad_batches > 1:
        needs.append(f"accumulate_grad_batches={model.accumulate_grad_batches}")
    if model.gradient_clip_val is not None:
        needs.append(f"gradient_clip_val={model.gradient_clip_val}")
    if model.scaler is not None:
        needs.append('precision="16-mixed" (its grad scaler)')
    if model.on_nonfinite == "skip":
        needs.append('on_nonfinite="skip"')
    if model.lr_scheduler is not None and model.lr_scheduler_interval == "step":
        needs.append('lr_scheduler_interval="step"')
    if needs:
        raise ConfigError(
            f"{type(model).__name__}.train_step steps its optimizer(s) itself (it did not call "
            f"self.optimizer_step()), so {', '.join(needs)} cannot apply. Call self.backward(loss) "
            "and self.optimizer_step() in the step, or leave these options out (docs/steps.md)"
        )


def _base_optimizers() -> Any:
    from torchhouse.model import Model

    return Model.optimizers


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """An optimizer group's settings as given (``initial_lr`` when a scheduler moved ``lr``)."""
    settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
    if "initial_lr" in group:
        settings["lr"] = group["initial_lr"]
    plain: dict[str, Any] = _comparable(settings)
    return plain


def _comparable(value: Any) -> Any:
    """JSON-like plain values: tuples as lists, tensors as numbers."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """'key: saved A, now B' for each differing entry, descending into mappings."""
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for key in now:
            name = f"{prefix}{key}"
            if key not in saved:
                found.append(f"{name}: not recorded in the saved run, now {_short(now[key])}")
            else:
                found += _differences(saved[key], now[key], f"{name}.")
        return found
    if saved != now:
        return [f"{prefix.rstrip('.')}: saved {_short(saved)}, now {_short(now)}"]
    return []


def _short(value: Any) -> str:
    text = repr(_comparable(value))
    return text if len(text) <= 120 else text[:117] + "..."


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0].get("lr", float("nan"))
    return float(lr)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))


def _checked(
    model: Model,
    step: Any,
    batch: Any,
    what: str,
    acc: EpochMetrics,
    padded: bool = False,
    real: int = 0,
) -> dict[str, Any]:
    """Run the first step of a loop and record it, turning a deep torch error into a clear one."""
    try:
        out = step(batch)
    except TorchhouseError:
        raise
    except _USER_ERRORS as exc:
        raise _explain(model, batch, exc, what) from exc
    step_name = f"{type(model).__name__}.{'train_step' if what == 'training' else 'eval_step'}"
    if not isinstance(out, dict) or not isinstance(out.get("loss"), torch.Tensor):
        raise DataError(f"{step_name} must return a dict with a 'loss' tensor, got {describe(out)}")
    if out["loss"].numel() != 1:
        raise DataError(
            f"{step_name}: the loss has shape {tuple(out['loss'].shape)}; it must be one number per "
            "batch (a loss with reduction='none' needs a .mean())"
        )
    try:
        check_metric_values(model.metrics, out)
        check_binary_accuracy_inputs(model.metrics, out.get("preds"))
        if padded:
            _update_without_padding(model, acc, out, batch, real)
        else:
            acc.update(out, num_samples(out, batch))
    except TorchhouseError:
        raise
    except _USER_ERRORS as exc:
        raise _explain(model, batch, exc, what) from exc
    return out


def _explain(model: Model, batch: Any, exc: Exception, what: str) -> Exception:
    """Find which part of the first step failed (net, loss or a metric) and say why."""
    try:
        inputs, target = model.unpack_batch(batch)
    except Exception:
        return exc
    with torch.no_grad():
        try:
            preds = model.forward(inputs)
        except Exception as forward_exc:
            shapes = describe(inputs)
            return DataError(
                f"the net failed on the first {what} batch, whose inputs are {shapes}: "
                f"{forward_exc}. Check that the input shape matches what the net's first "
                "layer expects."
            )
        try:
            if model.loss is not None:
                model.loss(preds, target)
        except Exception as loss_exc:
            return DataError(
                f"the loss {type(model.loss).__name__} failed on preds {describe(preds)} and "
                f"target {describe(target)}: {loss_exc}{_loss_hint(model.loss, preds, target)}"
            )
    for name, metric in model.metrics.items():
        try:
            fn: Any = getattr(metric, "update", metric)
            fn(tree_map(lambda t: t.detach(), preds), target)
        except Exception as metric_exc:
            return DataError(
                f"metric {name!r} failed on preds {describe(preds)} and target "
                f"{describe(target)}: {metric_exc}"
            )
        finally:
            if hasattr(metric, "reset"):
                metric.reset()
    return exc


def _loss_hint(loss: Any, preds: Any, target: Any) -> str:
    if not (isinstance(preds, torch.Tensor) and isinstance(target, torch.Tensor)):
        return ""
    name = type(loss).__name__
    if isinstance(loss, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)):
        if target.is_floating_point() and target.shape != preds.shape:
            return (
                f". Hint: {name} takes class indices as int64 of shape {tuple(preds.shape[:1])}; "
                "convert the target with y.long() (or .astype('int64'))"
            )
        if not target.is_floating_point() and target.dim() == preds.dim():
            return (
                f". Hint: class-index targets must have shape (N,), not {tuple(target.shape)}; "
                "use y.squeeze(1) or y.reshape(-1)"
            )
        if not target.is_floating_point() and target.numel() and preds.dim() >= 2:
            return (
                f". Hint: class indices must lie in [0, {preds.shape[1]}) for a net with "
                f"{preds.shape[1]} outputs"
            )
        return f". Hint: {name} expects logits (N, C) and int64 class indices (N,)"
    return ""
