"""Fine-tuning tools: freeze and unfreeze parts of a net, and optimizer groups by submodule name.

Example::

    th.freeze(net.backbone)                       # train only the head
    optimizer = torch.optim.AdamW(th.param_groups(net, {"backbone": 1e-5, "head": 1e-3}))
    model = th.Model(net, loss=nn.CrossEntropyLoss(), optimizer=optimizer)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from torchhouse.errors import ConfigError

__all__ = ["freeze", "is_frozen", "param_groups", "submodule", "unfreeze"]

_NORMS = (nn.modules.batchnorm._BatchNorm,)
_FROZEN_NORM_HOOK = "_torchhouse_frozen_norm_hook"


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False  # a frozen BatchNorm neither updates its statistics nor uses the batch's


def freeze(module: nn.Module) -> nn.Module:
    """Stop training ``module``: its parameters get ``requires_grad=False``, and its BatchNorm
    layers stay in eval mode (their running statistics kept) even when the net is
    put in training mode. Returns ``module``.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> _ = freeze(net); any(p.requires_grad for p in net.parameters())
    False
    """
    _check_module("freeze", module)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    for norm in module.modules():
        if isinstance(norm, _NORMS) and not hasattr(norm, _FROZEN_NORM_HOOK):
            setattr(norm, _FROZEN_NORM_HOOK, norm.register_forward_pre_hook(_keep_eval))
            norm.training = False
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Train ``module`` again (``requires_grad=True``; its BatchNorm layers follow the net's mode).

    >>> net = freeze(nn.Linear(2, 2)); _ = unfreeze(net); net.weight.requires_grad
    True
    """
    _check_module("unfreeze", module)
    for parameter in module.parameters():
        if parameter.is_floating_point() or parameter.is_complex():
            parameter.requires_grad_(True)
    for norm in module.modules():
        handle = getattr(norm, _FROZEN_NORM_HOOK, None)
        if handle is not None:
            handle.remove()
            delattr(norm, _FROZEN_NORM_HOOK)
            norm.training = module.training
    return module


def is_frozen(module: nn.Module) -> bool:
    """Whether no parameter of ``module`` requires grad (a module without parameters is not frozen)."""
    parameters = list(module.parameters())
    return bool(parameters) and not any(p.requires_grad for p in parameters)


def submodule(net: nn.Module, name: str, owner: str) -> nn.Module:
    """``net``'s submodule at the dotted ``name`` (``"backbone"``, ``"encoder.layers"``), or a
    `ConfigError` from ``owner`` listing the top-level names."""
    try:
        found = net.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in net.named_children()]
        raise ConfigError(
            f"{owner}: the net has no submodule {name!r}; its children are {children}"
        ) from None
    return found


def param_groups(
    net: nn.Module, lrs: Mapping[str, float], default_lr: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups by submodule name, for discriminative learning rates.

    Each key of ``lrs`` is a prefix of parameter names (``"backbone"`` matches
    ``backbone.0.weight``; the longest matching prefix wins); each group gets its ``lr`` and
    a ``name``. Parameters no key matches form a last group, with ``default_lr`` when given
    (else the optimizer's own ``lr``). A key that matches no parameter is refused (a typo
    would otherwise train that part at the default rate without a word).

    >>> net = nn.Sequential()
    >>> net.add_module("backbone", nn.Linear(4, 4)); net.add_module("head", nn.Linear(4, 2))
    >>> groups = param_groups(net, {"backbone": 1e-4, "head": 1e-3})
    >>> tuple((g["name"], g["lr"], len(g["params"])) for g in groups)
    (('backbone', 0.0001, 2), ('head', 0.001, 2))
    """
    _check_module("param_groups", net)
    if not isinstance(lrs, Mapping) or not lrs:
        raise ConfigError(f"param_groups: expected a mapping of submodule name -> lr, got {lrs!r}")
    for prefix, lr in lrs.items():
        if not isinstance(prefix, str) or isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
            raise ConfigError(f"param_groups: {prefix!r}: {lr!r} must be a name and an lr >= 0")
    groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in lrs}
    rest: list[nn.Parameter] = []
    for name, parameter in net.named_parameters():
        matches = [p for p in lrs if name == p or name.startswith(p + ".") or p == ""]
        if matches:
            groups[max(matches, key=len)].append(parameter)
        else:
            rest.append(parameter)
    empty = [prefix for prefix, params in groups.items() if not params]
    if empty:
        names = sorted({n.split(".")[0] for n, _ in net.named_parameters()})
        raise ConfigError(
            f"param_groups: {empty} match no parameter of the net; its top-level names are {names}"
        )
    result: list[dict[str, Any]] = [
        {"params": params, "lr": float(lrs[prefix]), "name": prefix} for prefix, params in groups.items()
    ]
    if rest:
        last: dict[str, Any] = {"params": rest, "name": "default"}
        if default_lr is not None:
            last["lr"] = float(default_lr)
        result.append(last)
    return result


def _check_module(owner: str, module: Any) -> None:
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{owner}: expected a torch.nn.Module, got {type(module).__name__}")
