"""EMA: an exponential moving average of the net's weights, kept on the device during a fit."""

from __future__ import annotations

from typing import Any

import torch

from torchhouse.callbacks.base import Callback
from torchhouse.errors import CheckpointError, ConfigError

__all__ = ["EMA"]


class EMA(Callback):
    """Keep an exponential moving average of the net's parameters, updated after each optimizer step.

    The update is ``torch.optim.swa_utils``' own (``get_ema_multi_avg_fn``): the first update
    copies the weights, every later one is ``average.lerp_(weight, 1 - decay)``, so the result
    equals a hand-written loop with ``AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay))``
    bit for bit. Updates start after ``start_step`` optimizer steps and happen every
    ``every_n_steps`` steps (a step the fp16 grad scaler skipped is not a step). Buffers
    (BatchNorm statistics) are not averaged: the net's own are used with the averages.

    With ``validate_with_ema=True`` validation runs on the averaged weights (the training
    weights are put back right after); at the end of fit the averages are in the net (Keras'
    ``use_ema`` behaviour), so the run folder's ``model.safetensors`` holds them. The averages
    are part of every saved state: a resumed fit continues them exactly. Not with
    ``strategy="fsdp"`` (each rank holds only shards of the weights): refused at the start.

    Example::

        model.fit(x, y, epochs=20, callbacks=[th.callbacks.EMA(decay=0.999)])
    """

    def __init__(
        self,
        decay: float = 0.999,
        start_step: int = 0,
        every_n_steps: int = 1,
        validate_with_ema: bool = True,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA: decay must be a number in [0, 1), got {decay!r}")
        for name, value, least in (("start_step", start_step, 0), ("every_n_steps", every_n_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"EMA: {name} must be an int >= {least}, got {value!r}")
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.decay = float(decay)
        self.start_step = start_step
        self.every_n_steps = every_n_steps
        self.validate_with_ema = validate_with_ema
        self._update = get_ema_multi_avg_fn(self.decay)
        self.averages: list[torch.Tensor] | None = None
        self.num_updates = 0  # as AveragedModel's n_averaged
        self.steps = 0  # optimizer steps seen in this fit
        self._stepped = False
        self._hooks: list[Any] = []
        self._held: list[torch.Tensor] | None = None  # the training weights while validating

    def _parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.net.parameters() if torch.is_floating_point(p) or torch.is_complex(p)]

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        if self.model.fit_state.strategy.writes_own_shards:
            raise ConfigError(
                "EMA: not supported with strategy='fsdp' (each process holds only shards of the "
                "weights); use strategy='ddp', or average after the fit"
            )
        refuse_two_final_weights("EMA", self.model)
        self.averages, self.num_updates, self.steps, self._held = None, 0, 0, None
        self._remove_hooks()
        for optimizer in self.model.optimizers():
            self._hooks.append(optimizer.register_step_post_hook(self._mark_step))

    def _mark_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._stepped = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        if not self._stepped:
            return  # inside an accumulation window, or a skipped step
        self._stepped = False
        self.steps += 1
        due = self.steps > self.start_step and (self.steps - self.start_step) % self.every_n_steps == 0
        if due:
            self.update()

    @torch.no_grad()
    def update(self) -> None:
        """Fold the net's current weights into the average (the first call copies them)."""
        params = [p.detach() for p in self._parameters()]
        if self.averages is None or self.num_updates == 0:
            self.averages = [p.clone() for p in params]
        else:
            self._update(self.averages, params, self.num_updates)
        self.num_updates += 1

    @torch.no_grad()
    def _swap_in(self) -> None:
        if self.averages is None or self._held is not None:
            return
        params = self._parameters()
        self._held = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, self.averages)

    @torch.no_grad()
    def _swap_out(self) -> None:
        if self._held is not None:
            torch._foreach_copy_(self._parameters(), self._held)
            self._held = None

    def on_test_begin(self, logs: dict[str, Any]) -> None:
        if self.validate_with_ema and self._hooks:  # only while fitting: evaluate() is left alone
            self._swap_in()

    def on_test_end(self, logs: dict[str, Any]) -> None:
        self._swap_out()

    @torch.no_grad()
    def on_fit_end(self, logs: dict[str, Any]) -> None:
        self._swap_out()
        if self.averages is not None:
            torch._foreach_copy_(self._parameters(), self.averages)

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        self._swap_out()  # a fit that raised during validation keeps its training weights
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def state_dict(self) -> dict[str, Any]:
        averages = None if self.averages is None else {str(i): t for i, t in enumerate(self.averages)}
        return {
            "averages": averages,
            "num_updates": self.num_updates,
            "steps": self.steps,
            "decay": self.decay,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["decay"]) != self.decay:
            raise CheckpointError(
                f"EMA: the saved run averaged with decay={state['decay']}, this one {self.decay}"
            )
        self.num_updates, self.steps = int(state["num_updates"]), int(state["steps"])
        saved = state["averages"]
        if saved is None:
            self.averages = None
            return
        params = self._parameters()
        if len(saved) != len(params):
            raise CheckpointError(f"EMA: the saved averages hold {len(saved)} tensors, the net {len(params)}")
        self.averages = [saved[str(i)].to(p.device, p.dtype).clone() for i, p in enumerate(params)]


def refuse_two_final_weights(owner: str, model: Any) -> None:
    """EMA / SWA put their averages in the net at the end of fit, and EarlyStopping with
    ``restore_best_weights`` its best epoch's weights: with both, the order of the callbacks
    would decide silently which the fit ends with. Refused, with the two ways out."""
    from torchhouse.callbacks.early_stopping import EarlyStopping

    for callback in model.fit_state.spec.callbacks:
        if isinstance(callback, EarlyStopping) and callback.restore_best_weights:
            raise ConfigError(
                f"{owner} and EarlyStopping(restore_best_weights=True) would both choose the weights the fit "
                f"ends with; pass EarlyStopping(restore_best_weights=False) to end with {owner}'s averages, "
                f"or leave {owner} out"
            )
