"""BackboneFinetuning: train the head first, then the backbone too, at a lower learning rate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError
from torchhouse.finetune import freeze, submodule, unfreeze

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["BackboneFinetuning"]


class BackboneFinetuning(Callback):
    """Freeze ``net.<backbone>`` until epoch ``unfreeze_at_epoch`` (0-based), then train it with
    ``lr_factor`` times the learning rate of the group it was in (Lightning's and fastai's recipe).

    The backbone's parameters get an optimizer group of their own when the fit is set up
    (before a resume loads the optimizer's state, so a resumed fit has the same groups): they
    are moved out of a group they share with the head, or added when the optimizer was built
    without them (a net frozen before ``Model(...)``). With an ``lr_scheduler`` that move
    would break the scheduler, so the backbone must already have its own group
    (`torchhouse.param_groups`). While frozen its BatchNorm layers stay in eval mode.

    Example::

        net = nn.Sequential(); net.add_module("backbone", body); net.add_module("head", nn.Linear(64, 10))
        model.fit(x, y, epochs=10, callbacks=[th.callbacks.BackboneFinetuning(unfreeze_at_epoch=3)])
    """

    def __init__(self, unfreeze_at_epoch: int, backbone: str = "backbone", lr_factor: float = 0.1) -> None:
        if (
            isinstance(unfreeze_at_epoch, bool)
            or not isinstance(unfreeze_at_epoch, int)
            or unfreeze_at_epoch < 0
        ):
            raise ConfigError(
                f"BackboneFinetuning: unfreeze_at_epoch must be an int >= 0, got {unfreeze_at_epoch!r}"
            )
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or lr_factor <= 0:
            raise ConfigError(f"BackboneFinetuning: lr_factor must be a number > 0, got {lr_factor!r}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone = backbone
        self.lr_factor = float(lr_factor)
        self.unfrozen = False

    def set_model(self, model: Model) -> None:
        super().set_model(model)
        self._own_group(model)

    def _own_group(self, model: Model) -> None:
        """Give the backbone's parameters one optimizer group of their own (see the class docstring)."""
        module = submodule(model.net, self.backbone, "BackboneFinetuning")
        backbone = {id(p) for p in module.parameters()}
        optimizer = model.optimizer
        groups = [g for g in optimizer.param_groups if any(id(p) in backbone for p in g["params"])]
        if len(groups) == 1 and all(id(p) in backbone for p in groups[0]["params"]):
            return  # already its own group
        if model.lr_scheduler is not None:
            raise ConfigError(
                "BackboneFinetuning: the backbone's parameters share an optimizer group with others (or are "
                "not in the optimizer), and moving them would break the lr_scheduler; build the optimizer "
                f"with th.param_groups(net, {{{self.backbone!r}: lr}}) so the backbone has its own group"
            )
        source = groups[0] if groups else optimizer.param_groups[0]
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in backbone]
        settings = {k: v for k, v in source.items() if k not in ("params", "initial_lr")}
        settings["lr"] = source["lr"] * self.lr_factor
        settings["params"] = list(module.parameters())
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        optimizer.add_param_group(settings)

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        self.unfrozen = False
        freeze(submodule(self.model.net, self.backbone, "BackboneFinetuning"))

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        if epoch >= self.unfreeze_at_epoch and not self.unfrozen:
            self._unfreeze()

    def _unfreeze(self) -> None:
        module = submodule(self.model.net, self.backbone, "BackboneFinetuning")
        unfreeze(module)
        module.train(self.model.net.training)
        self.unfrozen = True

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        if not self.unfrozen:  # a fit that ended before the epoch leaves the backbone trainable again
            self._unfreeze()

    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen": self.unfrozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["unfrozen"] and not self.unfrozen:
            self._unfreeze()
