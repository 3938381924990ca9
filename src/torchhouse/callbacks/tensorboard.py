"""TensorBoard: per-epoch scalars, step losses, histograms, graph and hparams (real event files)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError

__all__ = ["INSTALL_HINT", "TensorBoard", "tensorboard_available"]

INSTALL_HINT = "TensorBoard logging needs the tensorboard package: pip install 'torchhouse[tensorboard]'"


def tensorboard_available() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorboard") is not None


class TensorBoard(Callback):
    """Write what fit logs as TensorBoard event files under ``log_dir``.

    - Every logged value each epoch, as ``epoch/<name>``: training values under
      ``log_dir/train`` and validation values under ``log_dir/validation``, so TensorBoard
      draws train and validation of one value in one chart. The learning rate of the
      first parameter group is ``epoch/lr`` every epoch (with or without a scheduler).
    - ``log_every_n_steps=N``: the training loss every N steps as ``step/loss``. The
      losses stay in the device buffer and are read at most every ``flush_seconds``
      (and at the epoch's end), never with a host sync per step.
    - ``histograms=True``: weight and gradient histograms once per epoch.
    - ``graph=True``: the net's graph, traced on the first training batch.
    - ``hparams``: a dict of hyperparameters, written with the final values of every
      logged metric when fit ends (defaults: optimizer, lr, batch size, epochs).

    Uses the real ``tensorboard`` package (optional extra). ``fit(run_dir=...)`` adds one
    writing to ``run_dir/tensorboard`` when the package is installed.

    Example::

        tb = TensorBoard("runs/exp1/tensorboard", log_every_n_steps=10)
        model.fit(x, y, callbacks=[tb])   # then: torchhouse tensorboard runs/exp1
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        log_every_n_steps: int | None = None,
        histograms: bool = False,
        graph: bool = False,
        hparams: dict[str, Any] | None = None,
        flush_seconds: float = 10.0,
    ) -> None:
        every = log_every_n_steps
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ConfigError(f"TensorBoard: log_every_n_steps must be an int >= 1, got {every!r}")
        if not tensorboard_available():
            raise ConfigError(INSTALL_HINT)
        self.log_dir = os.fspath(log_dir)
        self.log_every_n_steps = log_every_n_steps
        self.histograms = histograms
        self.graph = graph
        self.hparams = hparams
        self._writers: dict[str, Any] = {}
        self.flush_seconds = flush_seconds
        self.needs_batch_end = log_every_n_steps is not None
        self._written_step = 0
        self._next_flush = 0.0
        self._graph_input: Any = None
        self._graph_hook: Any = None
        self._grad_hook: Any = None
        self._grads: dict[str, torch.Tensor] = {}

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[name] = SummaryWriter(os.path.join(self.log_dir, name))
        return self._writers[name]

    # -- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        model = self.model
        self._written_step = model.global_step  # a resumed run wrote the earlier steps already
        self._next_flush = time.perf_counter() + self.flush_seconds
        if self.graph:

            def capture(module: Any, args: Any) -> None:
                if self._graph_input is None:
                    self._graph_input = tuple(a.detach() for a in args if isinstance(a, torch.Tensor))

            self._graph_hook = model.net.register_forward_pre_hook(capture)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        # Called only when log_every_n_steps is set (needs_batch_end); reads the device at
        # most every flush_seconds, like the progress bar, never once per step.
        if time.perf_counter() >= self._next_flush:
            self._flush_steps()
            self._next_flush = time.perf_counter() + self.flush_seconds

    def _flush_steps(self) -> None:
        """Write the step losses recorded since the last flush (one read of the device buffer)."""
        model = self.model
        acc = model.train_metrics
        first_in_buffer = model.global_step - acc.count + 1  # global step of buffer row 0
        start = max(self._written_step + 1, first_in_buffer)
        if start > model.global_step:
            return
        train = self._writer("train")
        for offset, loss in enumerate(acc.step_losses(start - first_in_buffer, acc.count)):
            step = start + offset
            if step % self.log_every_n_steps == 0:
                train.add_scalar("step/loss", loss, step)
        train.flush()  # visible in TensorBoard now, not at the epoch's end
        self._written_step = model.global_step

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.histograms:
            # Gradients exist only between backward and zero_grad: copy them once per epoch,
            # just before the optimizer's first step of the epoch.
            self._grads = {}

            def snapshot(optimizer: Any, args: Any, kwargs: Any) -> None:
                if not self._grads:
                    self._grads = {
                        n: p.grad.detach().float().cpu()
                        for n, p in self.model.net.named_parameters()
                        if p.grad is not None
                    }

            self._grad_hook = self.model.optimizer.register_step_pre_hook(snapshot)

    def on_validation_end(self, logs: dict[str, Any]) -> None:
        if "step" not in logs:
            return  # the epoch's validation: written with the epoch's values
        validation = self._writer("validation")
        for name, value in logs.items():
            if name.startswith("val_"):
                validation.add_scalar(f"step/{name[4:]}", value, int(logs["step"]))
        validation.flush()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        model = self.model
        step = epoch + 1
        train, validation = self._writer("train"), None
        for name, value in logs.items():
            if name.startswith("val_"):
                validation = validation or self._writer("validation")
                validation.add_scalar(f"epoch/{name[4:]}", value, step)
            else:
                train.add_scalar(f"epoch/{name}", value, step)
        if "lr" not in logs:
            train.add_scalar("epoch/lr", float(model.optimizer.param_groups[0].get("lr", 0.0)), step)
        if self.log_every_n_steps:
            self._flush_steps()
        if self.histograms:
            self._remove_hooks(graph=False)
            for name, param in model.net.named_parameters():
                train.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
            for name, grad in self._grads.items():
                train.add_histogram(f"gradients/{name}", grad, step)
        if self.graph and self._graph_input is not None:
            self._remove_hooks(grads=False)
            was_training = model.net.training
            model.net.eval()
            try:
                train.add_graph(model.net, self._graph_input)
            finally:
                model.net.train(was_training)
            self.graph = False
        for writer in self._writers.values():
            writer.flush()

    def _remove_hooks(self, graph: bool = True, grads: bool = True) -> None:
        if graph and self._graph_hook is not None:
            self._graph_hook.remove()
            self._graph_hook = None
        if grads and self._grad_hook is not None:
            self._grad_hook.remove()
            self._grad_hook = None

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        self._remove_hooks()
        hparams = dict(self.hparams) if self.hparams else self._default_hparams()
        final = {f"hparam/{k}": v for k, v in logs.items() if isinstance(v, float)}
        if final:
            self._writer("train").add_hparams(
                {k: _hparam_value(v) for k, v in hparams.items()}, final, run_name="hparams"
            )
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _default_hparams(self) -> dict[str, Any]:
        model = self.model
        group = model.optimizer.param_groups[0]
        return {
            "optimizer": type(model.optimizer).__name__,
            "lr": float(group.get("lr", 0.0)),
            "batch_size": model.fit_params.get("batch_size"),
            "epochs": model.fit_params.get("epochs"),
            "precision": model.precision,
        }


def _hparam_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    return str(value)
