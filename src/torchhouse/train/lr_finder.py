"""``Model.find_lr``: the learning-rate range test (Smith 2015; fastai's and Lightning's LR finder).

The learning rate grows geometrically from ``start_lr`` to ``end_lr`` over ``num_steps``
training steps; the smoothed loss of each step is recorded, and the search stops early when
it exceeds ``stop_factor`` times the best so far. Afterwards the net's weights and gradients,
the optimizer's state and learning rates, the grad scaler and every RNG are exactly as they
were before the call: searching changes nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchhouse.data import rng
from torchhouse.data.transfer import device_batches
from torchhouse.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["LRFinder", "find_lr"]

SMOOTHING = 0.98  # fastai's: an exponential moving average of the loss, debiased


@dataclass
class LRFinder:
    """What `Model.find_lr` returns: ``lrs`` and ``losses`` (smoothed), one per step, and the
    ``suggestion``: the learning rate where the smoothed loss falls fastest (None when the
    search ran fewer than 5 steps)."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggestion: float | None = None

    def plot(self) -> Any:
        """Loss against learning rate (log scale), the suggestion marked: a matplotlib Figure."""
        from torchhouse.runs.plots import offscreen_figure

        figure = offscreen_figure(figsize=(5.5, 3.6))
        axis = figure.add_subplot(1, 1, 1)
        axis.plot(self.lrs, self.losses)
        axis.set_xscale("log")
        axis.set_xlabel("learning rate")
        axis.set_ylabel("loss (smoothed)")
        if self.suggestion is not None:
            axis.axvline(
                self.suggestion, color="0.5", linestyle="--", label=f"suggestion {self.suggestion:.2e}"
            )
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        return figure


def steepest_descent(lrs: list[float], losses: list[float]) -> float | None:
    """The lr where the smoothed loss falls fastest against log(lr), leaving out the first tenth
    of the steps (the smoothing's start) and the last step (where it may blow up)."""
    if len(losses) < 5:
        return None
    skip = max(1, len(losses) // 10)
    values = np.asarray(losses[skip:-1], dtype=np.float64)
    slope = np.gradient(values, np.log10(np.asarray(lrs[skip:-1], dtype=np.float64)))
    return float(lrs[skip + int(np.argmin(slope))])


def _check(start_lr: float, end_lr: float, num_steps: int, stop_factor: float) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr), ("stop_factor", stop_factor)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"find_lr: {name} must be a number > 0, got {value!r}")
    if not start_lr < end_lr:
        raise ConfigError(f"find_lr: start_lr ({start_lr}) must be below end_lr ({end_lr})")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError(f"find_lr: num_steps must be an int >= 2, got {num_steps!r}")


def find_lr(
    model: Model,
    x: Any,
    y: Any,
    start_lr: float,
    end_lr: float,
    num_steps: int,
    batch_size: int,
    stop_factor: float,
    seed: int | None,
) -> LRFinder:
    """See `Model.find_lr`."""
    from torchhouse.train.fit_data import model_batches

    _check(start_lr, end_lr, num_steps, stop_factor)
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    batches = model_batches(model, x, y, batch_size, True, generator)
    saved = _Saved(model)
    result = LRFinder()
    try:
        model.net.train()
        best, smoothed, step = math.inf, 0.0, 0
        while step < num_steps:
            produced = False
            stream = batches.iterate(generator)
            if batches.needs_transfer(model.device):
                stream = device_batches(stream, model.device)
            for batch in stream:
                produced = True
                lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
                value = _step(model, batch, lr, saved.lrs)
                if not math.isfinite(value):
                    break
                smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * value
                loss = smoothed / (1 - SMOOTHING ** (step + 1))
                result.lrs.append(lr)
                result.losses.append(loss)
                best = min(best, loss)
                step += 1
                if step >= num_steps or loss > stop_factor * best:
                    step = num_steps
                    break
            if not produced:
                raise DataError("find_lr: the data yielded no batch")
            if result.lrs and not math.isfinite(value):
                break
    finally:
        saved.restore(model)
    result.suggestion = steepest_descent(result.lrs, result.losses)
    return result


def _step(model: Model, batch: Any, lr: float, base_lrs: list[float]) -> float:
    """One plain training step at ``lr`` (the groups keep their ratios to the first); the loss."""
    optimizer = model.optimizer
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = lr * (base / base_lrs[0]) if base_lrs[0] > 0 else lr
    optimizer.zero_grad(set_to_none=True)
    inputs, target = model.unpack_batch(batch)
    with model.autocast():
        loss = model.compute_loss(model.forward(inputs), target)
    value = float(loss.detach())  # one host sync per step: a search, not a fit
    if not math.isfinite(value):
        return value
    if model.scaler is not None:
        model.scaler.scale(loss).backward()
        model.scaler.step(optimizer)
        model.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return value


class _Saved:
    """Everything a search changes, to put back exactly."""

    def __init__(self, model: Model) -> None:
        net, optimizer = model.net, model.optimizer
        self.weights = {k: v.detach().clone() for k, v in net.state_dict(keep_vars=True).items()}
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in net.parameters()]
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.scaler = copy.deepcopy(model.scaler.state_dict()) if model.scaler is not None else None
        self.rng = rng.capture()
        self.training = net.training
        self.calls = (model.fit_state.net_calls, model.fit_state.weight_calls)

    @torch.no_grad()
    def restore(self, model: Model) -> None:
        net = model.net
        for name, tensor in net.state_dict(keep_vars=True).items():
            tensor.copy_(self.weights[name])
        for parameter, grad in zip(net.parameters(), self.grads, strict=True):
            parameter.grad = grad
        model.optimizer.load_state_dict(self.optimizer)
        if self.scaler is not None and model.scaler is not None:
            model.scaler.load_state_dict(self.scaler)
        rng.restore(self.rng)
        net.train(self.training)
        model.fit_state.net_calls, model.fit_state.weight_calls = self.calls
