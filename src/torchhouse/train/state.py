"""FitState: the live state of one fit, in one place, owned by its loop.

`Model` keeps the user's objects (net, loss, optimizer, metrics...) and the step methods;
where the fit in progress stands lives here: the epoch and step counters, the accumulation
window, what the step contract shares with the loop (``docs/steps.md``: ``is_last_batch``,
``on_nonfinite``, ``micro_step``...), the epoch's on-device values, the best monitored
value, the strategy and the run folder. ``Model``'s read-only properties of the same names
read the current state. The loop and the step methods (`Model.forward`,
`Model.optimizer_step`...) write its counters: they are the fit.

A `TrainingState` (``torchhouse.runs.state``) is its saved form: `snapshot` writes one,
`restore` reads one back, field for field.

Example:
    >>> from torch import nn
    >>> import torchhouse as th
    >>> model = th.Model(nn.Linear(2, 1), loss=nn.MSELoss(), device="cpu")
    >>> model.fit_state.global_step, model.global_step
    (0, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.errors import CheckpointError
from torchhouse.metrics.epoch import EpochMetrics
from torchhouse.parallel.strategies import SingleProcess, Strategy
from torchhouse.runs.state import TrainingState
from torchhouse.train.compiled_step import float_lrs
from torchhouse.train.spec import FitSpec

if TYPE_CHECKING:
    from torchhouse.runs.folder import RunFolder
    from torchhouse.train.model import Model

__all__ = ["FitState"]


@dataclass(eq=False)
class FitState:
    """Where one fit stands; see the module docstring. Built by `Model.fit` (or `idle`)."""

    spec: FitSpec
    strategy: Strategy
    train_metrics: EpochMetrics
    eval_metrics: EpochMetrics
    forward_net: Callable[..., Any]  # what the steps run the net through (DDP-wrapped, compiled...)
    log_names: list[str] = field(default_factory=list)
    on_nonfinite: str = "raise"
    class_weight_table: torch.Tensor | None = None
    optimizers_overridden: bool = False  # the model's class overrides Model.optimizers()
    run_folder: RunFolder | None = None
    monitor: str = "loss"
    monitor_mode: str = "min"
    steps: int | None = None  # batches per epoch, None when unknown
    generators: list[torch.Generator] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    report: Any = None  # the validation split's Report, written as report.md when a run folder's fit ends
    train_batches: Any = None  # the fit's training Batches (SWA recomputes BatchNorm statistics on them)
    # counters, and what the step contract shares
    epoch: int = 0
    global_step: int = 0
    micro_step: int = 0  # batches summed into the pending gradients (accumulation)
    optimizer_steps: int = 0  # calls of Model.optimizer_step in this fit
    net_calls: int = 0  # calls of Model.forward (the first step is checked to make one)
    weight_calls: int = 0  # calls of Model.sample_weights (likewise, when batches carry weights)
    skipped_batches: int = 0  # non-finite batches skipped this epoch (on_nonfinite="skip")
    is_last_batch: bool = False  # set by the loop before each training step
    last_step_lr: Any = None  # the learning rate the last optimizer step used (logged as "lr")
    step_loss: torch.Tensor | None = None  # the loss the next optimizer step checks ("skip")
    check_loss_shapes: bool = True  # the loss's first batch is checked for silent broadcasting
    compiled_net_checked: bool = False  # compile=True: the first step was compared with eager
    # the fit's progress
    best: float | None = None
    improved: bool = False  # whether this epoch set the best monitored value
    nonfinite: tuple[int, int, float] | None = None  # (epoch, batch, loss) when "stop" stopped the fit
    example_batch: Any = None  # the fit's first training batch (for serving, and the checks)
    epoch_rng: dict[str, Any] | None = None  # the RNG states this epoch started from
    resumed: TrainingState | None = None  # the state this fit continues
    validated: bool = False  # whether a validation pass ran in this fit
    deadline: float | None = None  # time.monotonic() at which max_time is reached
    time_limited: bool = False  # max_time stopped the fit
    batch: int = 0  # batches done in the epoch the time limit stopped (0: at an epoch's end)

    @classmethod
    def idle(cls, model: Model, strategy: Strategy | None = None) -> FitState:
        """A state outside any fit: what `evaluate`, `predict` and `train_on_batch` step with."""
        return cls(
            spec=FitSpec(),
            strategy=strategy or SingleProcess(model.device),
            train_metrics=model.epoch_metrics(64),
            eval_metrics=model.epoch_metrics(64),
            forward_net=model.compiled_net,
            log_names=model.log_names_for(with_validation=False, logs_lr=None),
        )

    @property
    def is_main(self) -> bool:
        return self.strategy.is_main

    def snapshot(self, model: Model, epoch: int, batch: int) -> TrainingState:
        """The `TrainingState` of this fit now: the model's weights, optimizers, scheduler,
        scaler and pending gradients, and this state's counters (the caller adds the RNG,
        metric, callback and data parts it owns)."""
        return TrainingState(
            epoch=epoch,
            batch=batch,
            global_step=self.global_step,
            micro_step=self.micro_step,
            best=self.best,
            stop_training=model.stop_training,
            fingerprint=self.fingerprint,
            model=model.net.state_dict(),
            optimizers=[optimizer.state_dict() for optimizer in model.optimizers()],
            lr_scheduler=model.lr_scheduler.state_dict() if model.lr_scheduler is not None else None,
            scaler=model.scaler.state_dict() if model.scaler is not None else None,
            grads={n: p.grad for n, p in model.net.named_parameters() if p.grad is not None},
            history=model.history.state_dict(),
        )

    def restore(self, saved: TrainingState, model: Model) -> None:
        """Put a saved state back: weights, optimizer/scheduler/scaler states, gradients, counters."""
        model.net.load_state_dict(saved.model)
        optimizers = model.optimizers()
        if len(optimizers) != len(saved.optimizers):
            raise CheckpointError(
                f"the state has {len(saved.optimizers)} optimizer(s), the model {len(optimizers)}"
            )
        for optimizer, state in zip(optimizers, saved.optimizers, strict=True):
            optimizer.load_state_dict(state)
            # a compiled step's state keeps them in tensors; it wraps them again at its next step
            float_lrs(optimizer)
        if model.lr_scheduler is not None and saved.lr_scheduler is not None:
            model.lr_scheduler.load_state_dict(saved.lr_scheduler)
        if model.scaler is not None and saved.scaler is not None:
            model.scaler.load_state_dict(saved.scaler)
        params = dict(model.net.named_parameters())
        unknown = sorted(set(saved.grads) - set(params))
        if unknown:
            raise CheckpointError(f"the state has gradients for unknown parameters: {unknown[:3]}")
        for name, param in params.items():  # also clears what a state tried before left
            grad = saved.grads.get(name)
            param.grad = grad.to(param.device) if grad is not None else None
        model.history.load_state_dict(saved.history)
        model.stop_training = saved.stop_training
        self.micro_step, self.global_step, self.best = saved.micro_step, saved.global_step, saved.best
