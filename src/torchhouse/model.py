"""Model: fit / evaluate / predict / save / load over a plain `nn.Module`.

One training step is `Model.train_step`, five readable lines::

    inputs, target = self.unpack_batch(batch)
    with self.autocast():
        preds = self.forward(inputs)
        loss = self.compute_loss(preds, target)
    self.backward(loss)
    self.optimizer_step()

Override one of ``unpack_batch``, ``forward``, ``compute_loss``, ``train_step``,
``eval_step`` or ``predict_step`` to change what a step does. The epoch loop around the
steps lives in `torchhouse.loop`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchhouse import distributed, loop
from torchhouse.callbacks.base import Callback, CallbackList
from torchhouse.checkpoint import atomic_save_tensors, atomic_write_json, read_json, read_tensors
from torchhouse.data import (
    Batch,
    Batches,
    Tree,
    align_columns,
    as_pair,
    batch_weights,
    call_net,
    dataframe_columns,
    describe,
    inputs_of,
    make_batches,
    move_to,
    split_validation,
    tree_leaves,
    validation_batches,
)
from torchhouse.errors import CheckpointError, ConfigError, DataError
from torchhouse.history import History
from torchhouse.metrics import EpochMetrics, copy_metrics, normalise_metrics, resolve_weighted_metrics
from torchhouse.streams import StreamBatches, is_stream, limit_steps
from torchhouse.suggest import refuse_unknown
from torchhouse.weighted_loss import weighted_loss

__all__ = [
    "Model",
    "PRECISIONS",
    "check_state_matches",
    "default_device",
    "default_optimizer",
    "metric_preds",
    "own_loss",
]

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
_ELEMENTWISE_LOSSES = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    nn.SoftMarginLoss,
)


def default_device() -> torch.device:
    """cuda if available (``cuda:LOCAL_RANK`` under torchrun), else mps, else cpu."""
    if torch.cuda.is_available():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_optimizer(params: list[torch.nn.Parameter], lr: float = 1e-3) -> torch.optim.Optimizer:
    """``optimizer=None``: AdamW with its fused kernel where the parameters' device has one.

    The fused step is one kernel for all parameters (20-25% faster than the default
    for-each step on CPU here); its rounding differs from the for-each step's, so a hand
    loop that matches ``optimizer=None`` bit for bit uses ``AdamW(params, lr=1e-3,
    fused=True)``. Parameters the fused kernel cannot take (another dtype or device) fall
    back to the default AdamW.

    >>> default_optimizer(list(nn.Linear(2, 1).parameters())).defaults["fused"]
    True
    """
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr)


def own_loss(output: Any) -> torch.Tensor | None:
    """The loss a net computed itself: ``output.loss`` or ``output["loss"]`` (Hugging Face), or None."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def metric_preds(output: Any) -> Any:
    """What the metrics see of a net's output: its ``logits`` when it is a mapping that has them
    (a Hugging Face ``ModelOutput`` or a dict), else the output itself."""
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    return output


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)  # NumPy integers are welcome


class Model:
    """A Keras-style model over a plain PyTorch `nn.Module`.

    Args:
        net: any ``nn.Module``; it is moved to ``device``.
        loss: a callable ``loss(preds, target) -> tensor`` such as ``nn.CrossEntropyLoss()``.
        optimizer: ``None`` (AdamW, lr=1e-3, fused where the device supports it: see
            `default_optimizer`), a ``torch.optim.Optimizer`` over ``net``'s parameters, or a
            callable ``params -> Optimizer``.
        strategy: under several processes, ``"ddp"`` (default: each process holds the whole
            net) or ``"fsdp"`` (FSDP2: each holds a shard of every parameter, gradient and
            optimizer state; see `torchhouse.fsdp`). Alone, both train the plain net.
        weighted_metrics: as Keras: names (``"accuracy"``, ``"mae"``, ``"mse"``) or per-sample
            functions ``fn(preds, target) -> (N,)``, averaged with the sample weights
            (``sum(w * value) / sum(w)``; weight 1 without them). ``metrics`` stay unweighted.
        metrics: name -> torchmetrics ``Metric``, function ``fn(preds, target)``, or a name
            (``"accuracy"``, ``"mae"``, ``"mse"``) resolved from the loss as Keras does;
            ``th.metrics.accuracy`` with ``BCEWithLogitsLoss`` thresholds the logits at 0.
        lr_scheduler: a torch scheduler (ReduceLROnPlateau included) or a callable
            ``optimizer -> scheduler``. Stepped once per epoch unless
            ``lr_scheduler_interval="step"``.
        device: ``None`` picks cuda, then mps, then cpu.
        precision: "32", "bf16-mixed" or "16-mixed" (autocast; a GradScaler for fp16).
        accumulate_grad_batches: sum gradients over N batches before each optimizer step.
        gradient_clip_val: clip gradients to this norm (or value); no clipping by default.
        gradient_clip_algorithm: "norm" or "value".
        compile: run the net through ``torch.compile`` (eager is the default).

    Example:
        >>> import torchhouse as th
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> model = th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu")
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> history = model.fit(x, y, epochs=2, progress="none")
        >>> len(history.history["loss"])
        2
    """

    def __init__(
        self,
        net: nn.Module,
        loss: Callable[..., torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        metrics: Mapping[str, Any] | None = None,
        lr_scheduler: Any = None,
        device: str | torch.device | None = None,
        *,
        precision: str = "32",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        compile: bool = False,
        lr_scheduler_interval: str = "epoch",
        lr_scheduler_monitor: str | None = None,
        weighted_metrics: Any = None,
        strategy: str = "ddp",
        **unexpected: Any,
    ) -> None:
        refuse_unknown("th.Model", unexpected, inspect.signature(Model.__init__).parameters)
        if strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"strategy: expected 'ddp' or 'fsdp', got {strategy!r}")
        if not isinstance(net, nn.Module):
            raise ConfigError(f"net: expected a torch.nn.Module, got {type(net).__name__}")
        if loss is not None and not callable(loss):
            raise ConfigError(f"loss: expected a callable like nn.CrossEntropyLoss(), got {loss!r}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ConfigError(
                f"gradient_clip_algorithm: expected 'norm' or 'value', got {gradient_clip_algorithm!r}"
            )
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ConfigError(f"gradient_clip_val: expected a number > 0, got {gradient_clip_val!r}")
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ConfigError(
                f"lr_scheduler_interval: expected 'epoch' or 'step', got {lr_scheduler_interval!r}"
            )
        self.device = self._resolve_device(device)
        self.net = net.to(self.device)
        self.loss = loss
        self.metrics = normalise_metrics(metrics, loss)
        self.weighted_metrics = resolve_weighted_metrics(weighted_metrics, loss, self.metrics)
        self.precision = precision
        self.accumulate_grad_batches = _check_positive_int("accumulate_grad_batches", accumulate_grad_batches)
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.optimizer = self._build_optimizer(optimizer)
        self.lr_scheduler = self._build_scheduler(lr_scheduler)
        self.lr_scheduler_interval = lr_scheduler_interval
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.compiled = compile
        self.strategy = strategy
        self._forward_net: Callable[..., Any] = torch.compile(self.net) if compile else self.net
        self.scaler = self._build_scaler()
        self._autocast = self._build_autocast()
        # A plain step (no accumulation, clipping or scaler) takes the shortest path.
        self._plain_step = (
            self.accumulate_grad_batches == 1 and gradient_clip_val is None and self.scaler is None
        )
        self._check_loss_shapes = True
        self._step_loss: torch.Tensor | None = None
        # State the loop and the step share (the step contract, docs/steps.md):
        self.on_nonfinite = "raise"  # set by fit: "raise", "skip" or "stop"
        self.is_last_batch = False  # set by the loop before each training step
        self.micro_step = 0  # batches summed into the pending gradients (accumulation)
        self.optimizer_steps = 0  # calls of optimizer_step() in this fit
        self.last_step_lr: Any = None  # the learning rate the last optimizer_step used
        self.net_calls = 0  # calls of forward() (the loop checks the first step made one)
        self.weight_calls = 0  # calls of sample_weights() (likewise, when batches carry weights)
        self.class_weight_table: torch.Tensor | None = None  # set by fit(class_weight=...)
        self.train_metrics = self._epoch_metrics(64)
        self.eval_metrics = self._epoch_metrics(64)
        # the column names of the DataFrame the model was trained on: later DataFrames are
        # matched to them by name (predict, evaluate, a second fit)
        self.input_columns: list[Any] | None = None
        self.history = History()
        self.stop_training = False
        self.skipped_batches = 0
        self.epoch = 0
        self.global_step = 0
        self.log_names: list[str] = []
        self.fit_params: dict[str, Any] = {}

    # ----------------------------------------------------------------------- construction

    @staticmethod
    def _resolve_device(device: str | torch.device | None) -> torch.device:
        if device is None:
            return default_device()
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                f"device: expected 'cpu', 'cuda', 'cuda:0', 'mps' or a torch.device, got {device!r}"
            ) from exc
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: this torch sees no CUDA GPU; use device='cpu' (or None)")
        if (
            resolved.type == "cuda"
            and resolved.index is not None
            and resolved.index >= torch.cuda.device_count()
        ):
            raise ConfigError(f"device={device!r}: there are {torch.cuda.device_count()} CUDA GPU(s)")
        mps = getattr(torch.backends, "mps", None)
        if resolved.type == "mps" and not (mps is not None and mps.is_available()):
            raise ConfigError(f"device={device!r}: MPS (Apple GPU) is not available here; use device='cpu'")
        if resolved.type == "meta":
            raise ConfigError(
                "device='meta': meta tensors hold no data, so nothing can be trained; use 'cpu'"
            )
        return resolved

    def _build_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if optimizer is None:
            if not params:
                # A frozen or weightless net can still be evaluated, used to predict, and
                # fitted (which reports the loss and changes nothing): a no-op stands in.
                return torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=0.0)
            return default_optimizer(params)
        if isinstance(optimizer, torch.optim.Optimizer):
            owned = {id(p) for p in self.net.parameters()}
            for group in optimizer.param_groups:
                if any(id(p) not in owned for p in group["params"]):
                    raise ConfigError(
                        "optimizer: it holds parameters that are not net's; build it from "
                        "net.parameters() (after creating the net), or pass a callable "
                        "params -> optimizer"
                    )
            return optimizer
        if callable(optimizer):
            built = optimizer(params)
            if not isinstance(built, torch.optim.Optimizer):
                raise ConfigError(
                    f"optimizer: the callable returned {type(built).__name__}, expected a "
                    "torch.optim.Optimizer"
                )
            owned = {id(p) for p in self.net.parameters()}
            given = [p for group in built.param_groups for p in group["params"]]
            if given and not any(id(p) in owned for p in given):
                raise ConfigError(
                    "optimizer: the callable built an optimizer over parameters that are not the "
                    "net's, so training would change nothing; build it from the params it is given"
                )
            return built
        raise ConfigError(
            f"optimizer: expected None, a torch.optim.Optimizer or a callable params -> "
            f"optimizer, got {type(optimizer).__name__}"
        )

    def _build_scheduler(self, scheduler: Any) -> Any:
        if scheduler is None:
            return None
        if not hasattr(scheduler, "step") and callable(scheduler):
            scheduler = scheduler(self.optimizer)
        if not callable(getattr(scheduler, "step", None)):
            raise ConfigError(
                f"lr_scheduler: expected a torch LR scheduler or a callable optimizer -> "
                f"scheduler, got {type(scheduler).__name__}"
            )
        if getattr(scheduler, "optimizer", self.optimizer) is not self.optimizer:
            raise ConfigError("lr_scheduler: it was built for another optimizer than the model's")
        return scheduler

    def _build_scaler(self) -> torch.amp.GradScaler | None:
        if self.precision != "16-mixed":
            return None
        return torch.amp.GradScaler(self.device.type)

    def _build_autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _epoch_metrics(self, capacity: int) -> EpochMetrics:
        return EpochMetrics(
            copy_metrics(self.metrics), self.device, capacity, self._loss_reduction(), self.weighted_metrics
        )

    def _loss_reduction(self) -> str:
        return str(getattr(self.loss, "reduction", "mean"))

    # ----------------------------------------------------------------------- one step

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision context for forward and loss (a no-op for precision "32")."""
        return self._autocast

    def unpack_batch(self, batch: Any) -> tuple[Tree, Tree]:
        """Split a batch into ``(inputs, target)``. Override for other batch layouts.

        A dict batch (from a tokenizer, a Hugging Face ``datasets`` collator, or ``fit(x=dict)``
        without ``y``) is the inputs as a whole, ``net(**batch)``, and its ``"labels"`` are the
        target the metrics see (Hugging Face's convention).
        """
        if isinstance(batch, Mapping):
            return batch, batch.get("labels")
        inputs, target = as_pair(batch)
        if target is None and isinstance(inputs, Mapping):
            target = inputs.get("labels")
        return inputs, target

    def forward(self, inputs: Tree) -> Any:
        """Run the net: tensor -> net(x), tuple -> net(*x), dict -> net(**x).

        Under several processes this runs the DDP-wrapped net, which averages gradients
        across ranks; a step must call the net through here (docs/steps.md).
        """
        self.net_calls += 1
        return call_net(self._forward_net, inputs)  # type: ignore[arg-type]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers this model steps; checkpoints save and restore each of them.

        Override it when ``train_step`` steps optimizers of its own (a GAN), returning all
        of them, so a resumed run continues their state exactly.
        """
        return [self.optimizer]

    def sample_weights(self, batch: Any) -> torch.Tensor | None:
        """The per-sample weights of a batch, or None: its third element (``sample_weight``),
        times ``class_weight[target]`` in training when fit was given ``class_weight``.

        A third element must be a floating vector of the batch's length (`data.batch_weights`).
        The built-in steps pass the weights to `compute_loss`; a custom step should too (fit
        refuses weights a step never asked for, after the first batch).
        """
        self.weight_calls += 1
        weight = batch_weights(batch)
        table = self.class_weight_table if self.net.training else None
        if table is not None:
            _, target = self.unpack_batch(batch)
            from_classes = class_weights_of(table, target)
            weight = from_classes if weight is None else weight.reshape(-1) * from_classes
        return weight

    def compute_loss(
        self, preds: Any, target: Any, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of one batch. Override to combine several losses.

        With ``sample_weight`` each sample's loss is multiplied by its weight and the result
        reduced as the loss reduces (`torchhouse.weighted_loss`): ``sum(w * loss) / N`` for a
        mean (Keras' rule), the loss's own normaliser with class weights or ignored targets;
        weights of one give the unweighted loss bit for bit.
        """
        if self.loss is None:
            own = own_loss(preds)
            if own is None:
                raise ConfigError(
                    "loss=None: the net's output carries no loss (a Hugging Face model computes one "
                    "when the batch holds 'labels'; a dict output needs a 'loss' key); pass loss=... "
                    "or override compute_loss"
                )
            if sample_weight is not None:
                raise ConfigError("sample weights need a torch loss: the net's own loss is already reduced")
            return own
        if self._check_loss_shapes:
            self._check_loss_shapes = False
            _check_loss_inputs(self.loss, preds, target)
        if sample_weight is None:
            return self.loss(preds, target)
        return weighted_loss(self.loss, preds, target, sample_weight)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled for fp16, divided for gradient accumulation).

        The loss is also what the next `optimizer_step` checks with ``on_nonfinite="skip"``.
        """
        if not isinstance(loss, torch.Tensor):
            raise DataError(
                f"the loss is {type(loss).__name__} {loss!r:.40}; it must be a tensor computed from the "
                "net's output with torch operations (a Python number has no gradient: no .item() or "
                "float() in the loss)"
            )
        if self.on_nonfinite == "skip":
            self._step_loss = loss.detach()
        if loss.numel() != 1:
            raise DataError(
                f"the loss has shape {tuple(loss.shape)}; it must be one number per batch (a loss with "
                "reduction='none' needs a .mean())"
            )
        if not loss.requires_grad:
            if any(p.requires_grad for p in self.net.parameters()):
                raise DataError(
                    "the loss does not require grad, so backward cannot reach the net: it was computed "
                    "without the net's output (a .detach(), .item(), float() or torch.no_grad() in the loss?)"
                )
            return  # a frozen net: nothing to backpropagate into
        if self._plain_step:
            loss.backward()
            return
        if self.accumulate_grad_batches > 1:
            loss = loss / self.accumulate_grad_batches
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def optimizer_step(self) -> bool:
        """Step the optimizer (at the end of an accumulation window); returns True if it stepped.

        Applies, in order: the non-finite skip (``on_nonfinite="skip"``: the loss given to
        the last `backward` is checked, and a non-finite one drops the pending gradients),
        the accumulation window, gradient clipping, the fp16 grad scaler, the optimizer
        step, ``zero_grad`` and a per-step scheduler.
        """
        self.optimizer_steps += 1
        self.last_step_lr = self.optimizer.param_groups[0]["lr"]  # what the history logs as "lr"
        if self.on_nonfinite == "skip" and not self._step_loss_finite():
            self.optimizer.zero_grad(set_to_none=True)
            self.micro_step = 0
            self.skipped_batches += 1
            return False
        if self._plain_step:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.micro_step += 1
            if self.micro_step < self.accumulate_grad_batches and not self.is_last_batch:
                return False
            self.micro_step = 0
            if self.gradient_clip_val is not None:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                self.clip_gradients()
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None and self.lr_scheduler_interval == "step":
            self.lr_scheduler.step()
        return True

    def clip_gradients(self) -> None:
        """Clip gradients by norm or value, as configured."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        assert self.gradient_clip_val is not None
        if self.gradient_clip_algorithm == "norm":
            nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
        else:
            nn.utils.clip_grad_value_(params, self.gradient_clip_val)

    def _step_loss_finite(self) -> bool:
        if self._step_loss is None:
            return True
        finite = bool(torch.isfinite(self._step_loss).all())  # the one host sync "skip" costs
        self._step_loss = None
        return finite

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One training step: forward, loss, backward, optimizer step.

        Returns a dict with ``loss`` (for the logged epoch loss), and ``preds`` and
        ``target`` (for the metrics). Extra scalar tensors in the dict are logged too.
        """
        inputs, target = self.unpack_batch(batch)
        weight = self.sample_weights(batch)
        with self.autocast():
            preds = self.forward(inputs)
            loss = (
                self.compute_loss(preds, target)
                if weight is None
                else self.compute_loss(preds, target, weight)
            )
        self.backward(loss)
        self.optimizer_step()
        out = {"loss": loss, "preds": metric_preds(preds), "target": target}
        return out if weight is None else {**out, "sample_weight": weight}

    def eval_step(self, batch: Batch) -> dict[str, Any]:
        """One evaluation step (run under ``torch.no_grad``): forward and loss."""
        inputs, target = self.unpack_batch(batch)
        weight = self.sample_weights(batch)
        with self.autocast():
            preds = self.forward(inputs)
            loss = (
                self.compute_loss(preds, target)
                if weight is None
                else self.compute_loss(preds, target, weight)
            )
        out = {"loss": loss, "preds": metric_preds(preds), "target": target}
        return out if weight is None else {**out, "sample_weight": weight}

    def predict_step(self, batch: Batch) -> Any:
        """One prediction step (run under ``torch.no_grad``): the net's output."""
        if type(self).unpack_batch is Model.unpack_batch:
            inputs = inputs_of(batch)
        else:
            inputs, _ = self.unpack_batch(batch)
        with self.autocast():
            output = self.forward(inputs)
        return metric_preds(output) if self.loss is None else output  # a net with its own loss: its logits

    # ----------------------------------------------------------------------- fit

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        validation_data: Any = None,
        validation_split: float = 0.0,
        epochs: int = 1,
        batch_size: int = 32,
        shuffle: bool = True,
        callbacks: Iterable[Callback] | None = None,
        seed: int | None = None,
        progress: str | bool = "auto",
        run_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        checkpoint_every: str | int = "epoch",
        keep_checkpoints: int = 3,
        monitor: str | None = None,
        on_nonfinite: str = "raise",
        plot: str | None = None,
        tensorboard: bool | None = None,
        initial_epoch: int = 0,
        validation_freq: int = 1,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        sample_weight: Any = None,
        class_weight: Mapping[int, float] | None = None,
        **unexpected: Any,
    ) -> History:
        """Train the net and return its `History`.

        Args:
            x: the training data: arrays / tensors / DataFrames (with ``y``), a tuple or dict
                of arrays for several inputs (a dict with ``"labels"`` needs no ``y``), a
                ``Dataset``, a Hugging Face ``datasets.Dataset`` or a ``DataLoader``.
            y: the targets, for arrays; None for the others (they hold their targets).
            validation_data: ``(x_val, y_val)``, a Dataset or a DataLoader.
            validation_split: hold out this last fraction of ``x`` for validation.
            epochs: train until this many epochs are done (a resumed run counts the
                epochs it already did).
            batch_size: samples per batch for arrays and Datasets.
            shuffle: reshuffle the training data every epoch (seeded).
            callbacks: `Callback` objects.
            seed: seeds Python, NumPy and torch and the shuffling, for repeatable runs.
            progress: "auto", "bar", "notebook", "epoch" (a line per epoch) or "none".
            run_dir: a folder for config, history, weights and resumable checkpoints.
            resume: continue from the newest intact state in ``run_dir``. Without it, a
                folder that already holds a run is refused (one run per folder).
            overwrite: replace the run already in ``run_dir`` (its files are removed first).
            checkpoint_every: "epoch", or an int N to also save every N batches.
            keep_checkpoints: how many of the newest states to keep (the best is kept too).
            monitor: the value that picks the best checkpoint (default ``val_loss`` with
                validation data, else ``loss``).
            on_nonfinite: "raise" (default) raises `NonFiniteLossError` at a NaN/inf training
                loss, naming the first bad batch; "stop" stops the fit there and keeps the
                history (as Keras' ``TerminateOnNaN``, which sets it); "skip" skips the
                optimizer step for such a batch (this costs a host sync per step). A
                non-finite loss is found within 32 steps (one read of a device flag; 64 on a GPU), and no
                state or weights file is written from the weights that follow it.
            plot: "live" redraws the training curves once per epoch in Jupyter.
            tensorboard: write TensorBoard events to ``run_dir/tensorboard`` (default: when
                ``run_dir`` is given and the tensorboard package is installed).
            initial_epoch: the (0-based) epoch to start at, as Keras: epochs
                ``initial_epoch .. epochs - 1`` are trained (a resumed run starts where it stopped).
            validation_freq: validate every this many epochs (Keras); the other epochs log no
                ``val_*`` values (NaN in the history).
            steps_per_epoch: batches per epoch (Keras). Needed for a Python generator or an
                infinite ``IterableDataset``; a loader or stream is then read on across
                epochs, arrays start each epoch afresh.
            validation_steps: batches per validation pass (for a generator or infinite data).
            sample_weight: one weight per training sample (arrays), as Keras: the loss is
                ``sum(w * loss) / N`` per batch. A DataLoader or ``validation_data`` may carry
                weights as a third element ``(x, y, w)``. Metrics stay unweighted.
            class_weight: ``{class index: weight}`` for training (missing classes weigh 1);
                multiplied with ``sample_weight`` when both are given.

        Example:
            >>> net = nn.Linear(3, 1)
            >>> model = Model(net, loss=nn.MSELoss(), device="cpu")
            >>> h = model.fit(torch.randn(32, 3), torch.randn(32, 1), epochs=3, progress="none")
            >>> h.epoch
            [0, 1, 2]
        """
        refuse_unknown("Model.fit", unexpected, inspect.signature(Model.fit).parameters)
        epochs = _check_positive_int("epochs", epochs, minimum=0)
        initial_epoch = _check_positive_int("initial_epoch", initial_epoch, minimum=0)
        validation_freq = _check_positive_int("validation_freq", validation_freq)
        batch_size = _check_positive_int("batch_size", batch_size)
        keep_checkpoints = _check_positive_int("keep_checkpoints", keep_checkpoints)
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
            raise ConfigError(f"validation_split: expected a float in [0, 1), got {validation_split!r}")
        if not 0.0 <= validation_split < 1.0:
            raise ConfigError(f"validation_split: expected a float in [0, 1), got {validation_split}")
        if validation_split and validation_data is not None:
            raise ConfigError("give either validation_data or validation_split, not both")
        if on_nonfinite not in ("raise", "skip", "stop"):
            raise ConfigError(f"on_nonfinite: expected 'raise', 'skip' or 'stop', got {on_nonfinite!r}")
        if not (checkpoint_every == "epoch" or (isinstance(checkpoint_every, int) and checkpoint_every > 0)):
            raise ConfigError(
                f"checkpoint_every: expected 'epoch' or an int > 0 (batches), got {checkpoint_every!r}"
            )
        if resume and run_dir is None:
            raise ConfigError("resume=True needs run_dir, the folder of the run to continue")
        if run_dir is not None and not os.fspath(run_dir).strip():
            raise ConfigError("run_dir: an empty path would write into the current folder; name a folder")
        if resume and overwrite:
            raise ConfigError("resume=True and overwrite=True contradict each other; choose one")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed: expected an int or None, got {seed!r}")
        callback_list = list(callbacks or [])
        for callback in callback_list:
            if not isinstance(callback, Callback):
                raise ConfigError(
                    f"callbacks: expected th.callbacks.Callback objects, got {type(callback).__name__}"
                )
        if not any(p.requires_grad for p in self.net.parameters()):
            warnings.warn(
                "fit: the net has no trainable parameters; it reports the loss and changes nothing",
                stacklevel=2,
            )
        wanted = {c.on_nonfinite for c in callback_list if c.on_nonfinite is not None}
        if wanted:  # e.g. TerminateOnNaN, which asks for "stop" as Keras' callback does
            if len(wanted) > 1 or (on_nonfinite != "raise" and wanted != {on_nonfinite}):
                raise ConfigError(
                    f"the callbacks ask for on_nonfinite={sorted(wanted)} but fit was given "
                    f"on_nonfinite={on_nonfinite!r}: choose one"
                )
            on_nonfinite = wanted.pop()
        from torchhouse.callbacks.builtin import automatic_callbacks

        callback_list += automatic_callbacks(callback_list, run_dir, plot, tensorboard)
        context = distributed.setup(self.device)
        if seed is not None:
            from torchhouse.rng import seed_everything

            seed_everything(seed)
            data_seed = seed
        elif isinstance(x, torch.utils.data.DataLoader) or not shuffle:
            # The loader shuffles itself (or nothing is shuffled): draw nothing, so the global
            # RNG runs exactly as in the textbook loop over the same data.
            data_seed = torch.initial_seed() % 2**62
        else:
            data_seed = int(torch.randint(0, 2**62, (1,)).item())
        if context is not None and seed is None:
            data_seed = int(distributed.broadcast_object(data_seed))  # every rank: one epoch order
        generator = torch.Generator().manual_seed(data_seed)

        for name, steps in (("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)):
            if steps is not None:
                _check_positive_int(name, steps)
        self.class_weight_table = _class_weight_table(class_weight, self.device)
        train = self._batches(
            x, y, batch_size, shuffle, generator, steps=steps_per_epoch, sample_weight=sample_weight
        )
        if self.input_columns is None:
            self.input_columns = dataframe_columns(x)  # what later DataFrames are matched against
        val: Batches | None = None
        if validation_split:
            if isinstance(train, StreamBatches):
                raise ConfigError("validation_split cannot split a generator; pass validation_data")
            train, val = split_validation(train, validation_split)
        elif validation_data is not None:
            if is_stream(validation_data):
                val = StreamBatches(validation_data, "validation_data", validation_steps)
            else:
                if (
                    isinstance(validation_data, (tuple, list))
                    and self.input_columns is not None
                    and dataframe_columns(validation_data[0]) is not None
                ):
                    aligned = align_columns(validation_data[0], self.input_columns, "validation_data[0]")
                    validation_data = (aligned, *validation_data[1:])
                val = self._prepare(validation_batches(validation_data, batch_size))
        train = limit_steps(train, steps_per_epoch, "x")
        if val is not None:
            val = limit_steps(val, validation_steps, "validation_data", "validation_steps")
        if context is not None:
            train = train.shard(context.rank, context.world_size, data_seed)
            if val is not None:
                val = val.shard(context.rank, context.world_size, data_seed)

        self.stop_training = False
        self.on_nonfinite = on_nonfinite
        self.optimizer_steps = 0
        self.fit_params = {
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "run_dir": os.fspath(run_dir) if run_dir is not None else None,
        }
        logs_lr = self.lr_scheduler is not None or any(getattr(c, "logs_lr", False) for c in callback_list)
        self.log_names = self._log_names(val is not None, logs_lr)
        config = {
            "epochs": epochs,
            "batch_size": batch_size,
            "shuffle": shuffle,
            "seed": seed,
            "validation_split": validation_split,
            "initial_epoch": initial_epoch,
            "validation_freq": validation_freq,
            "steps_per_epoch": steps_per_epoch,
            "validation_steps": validation_steps,
            "sample_weight": sample_weight is not None,
            "class_weight": {str(k): float(v) for k, v in (class_weight or {}).items()},
            "num_samples": train.num_samples,
            "checkpoint_every": checkpoint_every,
        }
        fit_loop = loop.FitLoop(
            self,
            train,
            val,
            epochs=epochs,
            callbacks=callback_list,
            progress=progress,
            run_dir=run_dir,
            resume=resume,
            overwrite=overwrite,
            checkpoint_every=None if checkpoint_every == "epoch" else int(checkpoint_every),
            keep_checkpoints=keep_checkpoints,
            generator=generator,
            monitor=monitor or ("val_loss" if val is not None else "loss"),
            fit_config=config,
            context=context,
        )
        plain_forward = self._forward_net
        if context is not None and self.strategy == "fsdp":
            from torchhouse.fsdp import shard

            shard(self)  # in place: the net stays sharded after fit (save gathers it)
            self._forward_net = plain_forward = self.net
        elif context is not None:
            self._forward_net = self._wrap_ddp()
        try:
            return fit_loop.run()
        finally:
            self.on_nonfinite = "raise"
            self.class_weight_table = None  # class weights belong to the fit that was given them
            self._forward_net = plain_forward  # fit drops its DDP wrapper when it returns

    def _wrap_ddp(self) -> Callable[..., Any]:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(self.net, device_ids=device_ids)
        return torch.compile(wrapped) if self.compiled else wrapped

    def _log_names(self, with_validation: bool, logs_lr: bool | None = None) -> list[str]:
        names = ["loss", *self.metrics, *self.weighted_metrics]
        if logs_lr or (logs_lr is None and self.lr_scheduler is not None):
            names.append("lr")
        if with_validation:
            names += ["val_loss", *(f"val_{n}" for n in (*self.metrics, *self.weighted_metrics))]
        return names

    def _batches(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        require_target: bool = True,
        steps: int | None = None,
        sample_weight: Any = None,
    ) -> Batches:
        columns = dataframe_columns(x)
        if columns is not None and self.input_columns is not None:
            x = align_columns(x, self.input_columns, "x")
        if is_stream(x):
            if y is not None:
                raise DataError(
                    "x is a generator (or iterable of batches), so y must be None: it yields them"
                )
            if sample_weight is not None:
                raise DataError(
                    "sample_weight is for arrays; x is a generator, which would ignore it: yield "
                    "(x, y, sample_weight) batches instead"
                )
            return StreamBatches(x, "x", steps)
        batches = make_batches(
            x,
            y,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            require_target=require_target,
            sample_weight=sample_weight,
        )
        return self._prepare(batches)

    def _prepare(self, batches: Batches) -> Batches:
        from torchhouse.data import ArrayBatches, LoaderBatches

        # In-memory data moves to the device once (up to 1 GiB on an accelerator), so
        # batches are slices there and need no per-step transfer.
        if isinstance(batches, ArrayBatches) and (self.device.type == "cpu" or _nbytes(batches) <= 1 << 30):
            batches.to(self.device)
        elif isinstance(batches, LoaderBatches):
            batches.to(self.device)  # a loader over a TensorDataset: the same, batch for batch
        return batches

    # ----------------------------------------------------------------------- evaluate / predict

    def evaluate(
        self,
        x: Any,
        y: Any = None,
        *,
        batch_size: int = 32,
        progress: str | bool = "none",
        callbacks: Iterable[Callback] | None = None,
        steps: int | None = None,
        sample_weight: Any = None,
    ) -> dict[str, float]:
        """Loss and metrics over a whole data set, as sample-weighted means.

        Example:
            >>> model = Model(nn.Linear(2, 1), loss=nn.MSELoss(), device="cpu")
            >>> sorted(model.evaluate(torch.randn(10, 2), torch.randn(10, 1)))
            ['loss']
        """
        batch_size = _check_positive_int("batch_size", batch_size)
        if steps is not None:
            _check_positive_int("steps", steps)
        batches = self._batches(
            x, y, batch_size, shuffle=False, generator=None, steps=steps, sample_weight=sample_weight
        )
        batches = limit_steps(batches, steps, "x", "steps")
        context = distributed.setup(self.device)
        if context is not None:
            batches = batches.shard(context.rank, context.world_size, 0)
        self._check_loss_shapes = True
        self.eval_metrics.sync = context is not None
        return loop.evaluate(self, batches, self.eval_metrics, self._callback_list(callbacks))

    def predict(
        self,
        x: Any,
        *,
        batch_size: int = 32,
        steps: int | None = None,
        callbacks: Iterable[Callback] | None = None,
    ) -> Any:
        """The net's outputs for ``x``, all batches concatenated, as CPU tensors.

        ``x`` holds inputs only (arrays, a Dataset, or a DataLoader yielding inputs or
        ``(inputs, target)`` pairs, whose targets are ignored).

        Example:
            >>> model = Model(nn.Linear(2, 3), device="cpu")
            >>> model.predict(torch.randn(5, 2)).shape
            torch.Size([5, 3])
        """
        batch_size = _check_positive_int("batch_size", batch_size)
        if isinstance(x, torch.utils.data.DataLoader) and not in_dataset_order(x):
            warnings.warn(
                f"predict: the DataLoader's {type(x.sampler).__name__} shuffles (or picks) its rows, so the "
                "outputs are not in the dataset's order; pass a DataLoader with shuffle=False (a "
                "SequentialSampler) to get one output per row, in order",
                stacklevel=2,
            )
        if steps is not None:
            _check_positive_int("steps", steps)
        batches = self._batches(
            x, None, batch_size, shuffle=False, generator=None, require_target=False, steps=steps
        )
        batches = limit_steps(batches, steps, "x", "steps")
        return loop.predict(self, batches, self._callback_list(callbacks))

    def _callback_list(self, callbacks: Iterable[Callback] | None) -> CallbackList | None:
        if not callbacks:
            return None
        given = list(callbacks)
        for callback in given:
            if not isinstance(callback, Callback):
                raise ConfigError(
                    f"callbacks: expected th.callbacks.Callback objects, got {type(callback).__name__}"
                )
        return CallbackList(given, self)

    # ----------------------------------------------------------------------- one batch (Keras)

    def train_on_batch(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        class_weight: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """One training step on one batch, as Keras' ``train_on_batch``; returns its values.

        The values are this batch's: the loss, or ``[loss, *metrics]`` with metrics, or a
        dict with ``return_dict=True``. Each call steps the optimizer (accumulation does not
        span calls). ``sample_weight`` and ``class_weight`` weigh the loss as in `fit`.

        Example:
            >>> model = Model(nn.Linear(3, 1), loss=nn.MSELoss(), device="cpu")
            >>> loss = model.train_on_batch(torch.randn(8, 3), torch.randn(8, 1))
            >>> isinstance(loss, float)
            True
        """
        self.class_weight_table = _class_weight_table(class_weight, self.device)
        batch = self._one_batch(x, y, sample_weight)
        self.net.train()
        self.is_last_batch = True  # flush any accumulation window
        out = self.train_step(batch)
        self.is_last_batch = False
        return self._batch_values(out, batch, return_dict)

    def test_on_batch(
        self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False
    ) -> Any:
        """Loss and metrics of one batch without training, as Keras' ``test_on_batch``.

        Example:
            >>> model = Model(nn.Linear(3, 1), loss=nn.MSELoss(), device="cpu")
            >>> sorted(model.test_on_batch(torch.randn(8, 3), torch.randn(8, 1), return_dict=True))
            ['loss']
        """
        batch = self._one_batch(x, y, sample_weight)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                out = self.eval_step(batch)
        finally:
            self.net.train(was_training)
        return self._batch_values(out, batch, return_dict)

    def predict_on_batch(self, x: Any) -> Any:
        """The net's outputs for one batch of inputs, as a CPU tensor (Keras' ``predict_on_batch``).

        Example:
            >>> Model(nn.Linear(3, 2), device="cpu").predict_on_batch(torch.randn(4, 3)).shape
            torch.Size([4, 2])
        """
        batches = self._batches(x, None, 2**31 - 1, shuffle=False, generator=None, require_target=False)
        return loop.predict(self, batches)

    def _one_batch(self, x: Any, y: Any, sample_weight: Any = None) -> Any:
        batches = self._batches(x, y, 2**31 - 1, shuffle=False, generator=None, sample_weight=sample_weight)
        batch = next(iter(batches.iterate(None)))
        if batches.needs_transfer(self.device):
            batch = move_to(batch, self.device)
        return batch

    def _batch_values(self, out: dict[str, Any], batch: Any, return_dict: bool) -> Any:
        values = self._epoch_metrics(1)
        values.update(out, loop.num_samples(out, batch))
        logs = values.compute()
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    # ----------------------------------------------------------------------- save / load

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the net's weights as safetensors, with a JSON sidecar of metadata.

        ``model.save("m.safetensors")`` writes ``m.safetensors`` and ``m.json``. Both
        writes are atomic. Nothing is pickled.

        Example:
            >>> import tempfile, os
            >>> model = Model(nn.Linear(2, 1), device="cpu")
            >>> path = model.save(os.path.join(tempfile.mkdtemp(), "m.safetensors"))
            >>> model.load_weights(path)
        """
        target = Path(path)
        if target.suffix != ".safetensors":
            raise ConfigError(f"save: the path must end in .safetensors, got {os.fspath(path)!r}")
        state = self.net.state_dict()
        if self.strategy == "fsdp" and any(type(t).__name__ == "DTensor" for t in state.values()):
            from torchhouse.fsdp import full_state_dict

            state = full_state_dict(self.net)  # every rank takes part (call save on every rank)
            if torch.distributed.get_rank() != 0:
                return target  # rank 0 writes the one full file
        atomic_save_tensors(target, state, metadata={"format": "torchhouse-weights"}, content_digest=True)
        atomic_write_json(target.with_suffix(".json"), self._metadata(state))
        return target

    def _metadata(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        from torchhouse import __version__

        return {
            "format": "torchhouse-weights",
            "torchhouse": __version__,
            "torch": torch.__version__,
            "net": f"{type(self.net).__module__}.{type(self.net).__qualname__}",
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
            "loss": repr(self.loss),
            "metrics": list(self.metrics),
            "input_columns": self.input_columns
            if self.input_columns is not None and all(isinstance(c, str) for c in self.input_columns)
            else None,
            "history": self.history.history,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def to_lightning(self) -> Any:
        """This model as a ``lightning.LightningModule`` (its net, loss, optimizer, scheduler and
        metrics), to train with any ``lightning.Trainer``; see `torchhouse.LightModel`.

        Example::

            trainer = lightning.Trainer(max_epochs=5, accelerator="gpu", devices=2, strategy="ddp")
            trainer.fit(model.to_lightning(), train_loader, val_loader)
        """
        from torchhouse.lightning_model import lightning_module

        return lightning_module(self)

    def export(
        self,
        path: str | os.PathLike[str],
        example_input: Any,
        format: str = "pt2",
        dynamic_batch: bool = True,
    ) -> Path:
        """Write the net as a self-contained program that runs without its Python code.

        ``format="pt2"`` uses ``torch.export`` (load it with ``th.load_exported``);
        ``format="onnx"`` needs the onnx extra. The weights are also written as
        safetensors + JSON beside it. ``example_input`` is one batch of inputs (any batch
        size; the batch dimension stays dynamic). Nets with data-dependent Python control
        flow cannot be exported; the error says why.

        Example::

            model.export("runs/x/model.pt2", x_test[:2])
            th.load_exported("runs/x/model.pt2").predict(x_new)
        """
        from torchhouse.export import export_model

        return export_model(self, path, example_input, format=format, dynamic_batch=dynamic_batch)

    def load_weights(self, path: str | os.PathLike[str], strict: bool = True) -> None:
        """Load weights saved by `save` (or any safetensors file of a state dict).

        Refuses pickle files (``.pt``/``.pth``) without running them, and names every
        missing, unexpected or mis-shaped tensor when the file does not fit the net.
        """
        tensors = read_tensors(path)
        from torchhouse.fsdp import is_sharded

        if self.strategy == "fsdp" and is_sharded(self.net):  # every rank loads the full file
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            full: dict[str, Any] = dict(tensors)
            set_model_state_dict(
                self.net, full, options=StateDictOptions(full_state_dict=True, strict=strict)
            )
            return
        check_state_matches(self.net, tensors, os.fspath(path), strict)
        self.net.load_state_dict(tensors, strict=strict)
        self._read_input_columns(Path(path).with_suffix(".json"))

    def _read_input_columns(self, sidecar: Path) -> None:
        """The DataFrame columns the saved model was trained on, from its JSON sidecar (if any)."""
        if not sidecar.is_file():
            return
        try:
            meta = read_json(sidecar)
        except CheckpointError:
            return  # the weights loaded; the sidecar is optional
        columns = meta.get("input_columns") if isinstance(meta, dict) else None
        if isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns):
            self.input_columns = list(columns)

    def summary(self, input_size: Any = None, input_data: Any = None, **kwargs: Any) -> Any:
        """`torchhouse.summary` of the net (a layer table with output shapes and parameters)."""
        from torchhouse.summary import summary

        return summary(self.net, input_size=input_size, input_data=input_data, device=self.device, **kwargs)


def in_dataset_order(loader: torch.utils.data.DataLoader[Any]) -> bool:
    """Whether ``loader`` yields its dataset's rows in order, each once (a SequentialSampler)."""
    from torch.utils.data import BatchSampler, IterableDataset, SequentialSampler

    if isinstance(loader.dataset, IterableDataset):
        return True  # a stream's own order
    batches = loader.batch_sampler
    return type(loader.sampler) is SequentialSampler and (batches is None or type(batches) is BatchSampler)


def check_state_matches(
    net: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, strict: bool = True
) -> None:
    """Raise a CheckpointError naming every tensor that does not fit ``net``."""
    expected = net.state_dict()
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if strict and missing:
        problems.append(f"missing {_few(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    for key, value in tensors.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            file_shape, net_shape = tuple(value.shape), tuple(expected[key].shape)
            problems.append(f"{key} has shape {file_shape} in the file but {net_shape} in the net")
    if problems:
        raise CheckpointError(
            f"{source}: does not match the net ({type(net).__name__}): " + "; ".join(problems[:6])
        )


def _class_weight_table(
    class_weight: Mapping[int, float] | None, device: torch.device
) -> torch.Tensor | None:
    """``{class: weight}`` as a lookup tensor (classes not named weigh 1), checked."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise ConfigError(f"class_weight: expected a dict {{class index: weight}}, got {class_weight!r}")
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise ConfigError(f"class_weight: keys must be class indices (ints >= 0), got {key!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value >= 0
            or value == float("inf")
        ):
            raise ConfigError(f"class_weight[{key}]: expected a finite weight >= 0, got {value!r}")
    table = torch.ones(int(max(class_weight)) + 1, device=device)
    for key, value in class_weight.items():
        table[int(key)] = float(value)
    return table


def class_weights_of(table: torch.Tensor, target: Any) -> torch.Tensor:
    """``class_weight`` per sample: ``table[class]``, 1 for a class the table does not name.

    The class is the argmax of a row of class scores, and the rounded value of one column of
    0/1 labels (Keras' rule); targets outside the table (another class, ``ignore_index``)
    weigh 1.
    """
    if not isinstance(target, torch.Tensor):
        raise DataError(f"class_weight needs the target as a tensor of classes, got {describe(target)}")
    if target.is_floating_point():
        classes = target.argmax(-1) if target.dim() >= 2 and target.shape[-1] > 1 else target.round()
    else:
        classes = target
    if classes.dim() == 2 and classes.shape[1] == 1:
        classes = classes[:, 0]
    if classes.dim() != 1:
        raise DataError(
            f"class_weight weighs each sample by its one class, but the target has shape "
            f"{tuple(target.shape)} (a class per position?); weigh the classes in the loss instead, "
            "e.g. nn.CrossEntropyLoss(weight=...)"
        )
    classes = classes.long()
    known = (classes >= 0) & (classes < table.shape[0])
    return torch.where(known, table[classes.clamp(0, table.shape[0] - 1)], torch.ones_like(table[:1]))


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _nbytes(batches: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves((batches.inputs, batches.target)))


def _check_loss_inputs(loss: Any, preds: Any, target: Any) -> None:
    """Catch the silent broadcasting trap of element-wise losses, on the first batch only."""
    if not isinstance(loss, _ELEMENTWISE_LOSSES):
        return
    if not (isinstance(preds, torch.Tensor) and isinstance(target, torch.Tensor)):
        return
    if preds.shape != target.shape:
        raise DataError(
            f"{type(loss).__name__} needs preds and target of the same shape, but preds have "
            f"shape {tuple(preds.shape)} and target {tuple(target.shape)}; torch would "
            "broadcast them and train on the wrong thing. Reshape y (e.g. y.reshape(-1, 1)) "
            "or the net's output to match."
        )
    if not target.is_floating_point():
        raise DataError(
            f"{type(loss).__name__} needs a floating-point target, got {target.dtype}; "
            "convert y with y.float() (or .astype('float32'))"
        )
