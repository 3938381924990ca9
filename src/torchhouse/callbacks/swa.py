"""StochasticWeightAveraging: torch.optim.swa_utils' AveragedModel and SWALR, as a callback."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchhouse.callbacks.base import Callback
from torchhouse.callbacks.ema import refuse_two_final_weights
from torchhouse.data.transfer import device_batches
from torchhouse.data.trees import call_net
from torchhouse.errors import CheckpointError, ConfigError

__all__ = ["StochasticWeightAveraging"]


class StochasticWeightAveraging(Callback):
    """Stochastic weight averaging (Izmailov et al. 2018), as PyTorch's recipe writes it.

    From epoch ``start_epoch`` (0-based) on, the learning rate follows ``SWALR`` (annealed to
    ``swa_lr`` over ``anneal_epochs`` with ``anneal_strategy`` "cos" or "linear") and the
    weights after each epoch are averaged (``AveragedModel``'s equal-weight average). At the
    end of fit the averages are in the net and its BatchNorm statistics are recomputed with
    one pass over the training data (``update_bn``), so the run folder's final weights are
    the SWA model. It equals the loop of PyTorch's SWA docs bit for bit; its state (the
    averages, their count, SWALR's position) is in every saved state: resumable.

    The model must have no ``lr_scheduler`` (SWALR sets the learning rate; two schedulers
    would fight): refused, as is ``strategy="fsdp"``.

    Example::

        swa = th.callbacks.StochasticWeightAveraging(swa_lr=0.05, start_epoch=15)
        model.fit(x, y, epochs=20, callbacks=[swa])
    """

    def __init__(
        self, swa_lr: float, start_epoch: int, anneal_epochs: int = 1, anneal_strategy: str = "cos"
    ) -> None:
        if isinstance(swa_lr, bool) or not isinstance(swa_lr, (int, float)) or not swa_lr > 0:
            raise ConfigError(f"StochasticWeightAveraging: swa_lr must be a number > 0, got {swa_lr!r}")
        for name, value in (("start_epoch", start_epoch), ("anneal_epochs", anneal_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"StochasticWeightAveraging: {name} must be an int >= 0, got {value!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ConfigError(
                "StochasticWeightAveraging: anneal_strategy must be 'cos' or 'linear', "
                f"got {anneal_strategy!r}"
            )
        self.swa_lr, self.start_epoch = float(swa_lr), start_epoch
        self.anneal_epochs, self.anneal_strategy = anneal_epochs, anneal_strategy
        self.average: Any = None  # torch.optim.swa_utils.AveragedModel, from start_epoch on
        self.scheduler: Any = None

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        from torch.optim.swa_utils import SWALR

        model = self.model
        if model.lr_scheduler is not None:
            raise ConfigError(
                "StochasticWeightAveraging: the model has an lr_scheduler, and SWA sets the learning rate "
                "itself (SWALR) from start_epoch; build the model without one"
            )
        if model.fit_state.strategy.writes_own_shards:
            raise ConfigError("StochasticWeightAveraging: not supported with strategy='fsdp'; use 'ddp'")
        refuse_two_final_weights("StochasticWeightAveraging", model)
        self.average = None
        self.scheduler = SWALR(
            model.optimizer,
            swa_lr=self.swa_lr,
            anneal_epochs=self.anneal_epochs,
            anneal_strategy="cos" if self.anneal_strategy == "cos" else "linear",
        )

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if epoch < self.start_epoch:
            return
        from torch.optim.swa_utils import AveragedModel

        net = self.model.net
        if self.average is None:
            self.average = AveragedModel(net)  # its own update (a formula on CPU, a lerp on CUDA)
        self.average.update_parameters(net)
        self.scheduler.step()

    @property
    def num_averaged(self) -> int:
        """How many epochs' weights the average holds."""
        return 0 if self.average is None else int(self.average.n_averaged)

    @property
    def averages(self) -> list[torch.Tensor] | None:
        return None if self.average is None else list(self.average.module.parameters())

    @torch.no_grad()
    def on_fit_end(self, logs: dict[str, Any]) -> None:
        if self.average is None:
            return
        for param, average in zip(self.model.net.parameters(), self.average.module.parameters(), strict=True):
            param.copy_(average)
        self._update_batch_norm()

    def _update_batch_norm(self) -> None:
        from torch.optim.swa_utils import update_bn

        model, batches = self.model, self.model.fit_state.train_batches
        if batches is None or not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.net.modules()
        ):
            return
        stream = batches.iterate(None)
        if batches.needs_transfer(model.device):
            stream = device_batches(stream, model.device)
        inputs = ([model.unpack_batch(batch)[0]] for batch in stream)  # update_bn takes item [0]
        update_bn(inputs, _Calls(model.net))

    def state_dict(self) -> dict[str, Any]:
        scheduler = self.scheduler
        position = (
            None if scheduler is None else [scheduler.last_epoch, scheduler._step_count, scheduler._last_lr]
        )
        average = None if self.average is None else dict(self.average.state_dict())
        return {"average": average, "scheduler": position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.average = None
        if state["average"] is not None:
            self.average = AveragedModel(self.model.net)
            try:
                self.average.load_state_dict(state["average"])
            except (RuntimeError, KeyError) as exc:
                raise CheckpointError(
                    f"StochasticWeightAveraging: the saved average does not fit the net ({exc})"
                ) from exc
        if state["scheduler"] is not None and self.scheduler is not None:
            last_epoch, step_count, last_lr = state["scheduler"]
            self.scheduler.last_epoch, self.scheduler._step_count = int(last_epoch), int(step_count)
            self.scheduler._last_lr = [float(v) for v in last_lr]


class _Calls(nn.Module):
    """The net called by the batch rule (a tuple of inputs as several arguments), for update_bn."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: Any) -> Any:
        return call_net(self.net, inputs)
