"""``Model(activation_checkpointing=...)``: blocks of the net run under ``torch.utils.checkpoint``.

A checkpointed block keeps only its input during the forward pass and recomputes its inner
activations in the backward pass: less memory for one more forward of the block. The
gradients are bit-identical to the plain net's (the recomputation replays the same
operations, and the RNG state, so dropout draws the same masks). The net's parameters and
``state_dict`` keys do not change: each chosen block's ``forward`` is wrapped in place. In
eval mode or without grad (validation, predict, export) the block runs as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from torchhouse.errors import ConfigError

__all__ = ["apply_activation_checkpointing", "chosen_blocks"]

_WRAPPED = "_torchhouse_checkpointed_forward"


def chosen_blocks(net: nn.Module, choice: Any) -> list[tuple[str, nn.Module]]:
    """The blocks ``choice`` names: True is the net's children (the items of a ModuleList
    child); a list holds module classes (every outermost module of that class) and names
    (dotted submodule paths).

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]))
    >>> [name for name, _ in chosen_blocks(net, True)]
    ['0', '1.0', '1.1']
    """
    if choice is True:
        found = []
        for name, child in net.named_children():
            if isinstance(child, nn.ModuleList):
                found += [(f"{name}.{i}", item) for i, item in enumerate(child)]
            else:
                found.append((name, child))
        if not found:
            raise ConfigError("activation_checkpointing=True: the net has no child modules to checkpoint")
        return found
    if isinstance(choice, (str, type)) or not isinstance(choice, Sequence) or not choice:
        raise ConfigError(
            "activation_checkpointing: expected True, or a list of module classes and submodule names, "
            f"got {choice!r}"
        )
    types = tuple(c for c in choice if isinstance(c, type) and issubclass(c, nn.Module))
    names = [c for c in choice if isinstance(c, str)]
    odd = [
        c for c in choice if not (isinstance(c, str) or (isinstance(c, type) and issubclass(c, nn.Module)))
    ]
    if odd:
        raise ConfigError(f"activation_checkpointing: {odd} are neither module classes nor submodule names")
    found = []
    for name in names:
        try:
            found.append((name, net.get_submodule(name)))
        except AttributeError:
            children = [n for n, _ in net.named_children()]
            raise ConfigError(
                f"activation_checkpointing: the net has no submodule {name!r} ({children})"
            ) from None
    if types:
        taken: list[str] = []
        for name, module in net.named_modules():
            inside = any(name.startswith(t + ".") for t in taken)
            if name and isinstance(module, types) and not inside:
                taken.append(name)
                found.append((name, module))
        if not taken:
            raise ConfigError(
                f"activation_checkpointing: the net has no module of {[t.__name__ for t in types]}"
            )
    return found


def _checkpointed(module: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    if module.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def apply_activation_checkpointing(net: nn.Module, choice: Any) -> list[str]:
    """Wrap the chosen blocks' ``forward`` (see the module docstring); returns their names.
    ``choice`` False or None: nothing. A block wrapped already is left as it is."""
    if choice is False or choice is None:
        return []
    blocks = chosen_blocks(net, choice)
    for _, module in blocks:
        if not hasattr(module, _WRAPPED):
            original = module.forward
            setattr(module, _WRAPPED, original)
            module.forward = functools.partial(_checkpointed, module, original)
    return [name for name, _ in blocks]
