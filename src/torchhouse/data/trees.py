"""Nested batches: tensors, and tuples / lists / dicts of them (the batch rule's trees).

The batch rule: a tensor input calls ``net(x)``, a tuple or list ``net(*x)``, a dict
``net(**x)`` (`call_net`). Everything here walks such trees without caring how deep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from torchhouse.errors import DataError

__all__ = [
    "Batch",
    "Tree",
    "batch_size_of",
    "call_net",
    "concat_outputs",
    "describe",
    "move_to",
    "to_cpu",
    "tree_leaves",
    "tree_map",
]

Tree = Any  # a tensor, or a tuple / list / dict of tensors
Batch = tuple[Tree, ...]  # (inputs, target), or (inputs, target, sample_weight)


def tree_map(fn: Any, tree: Tree) -> Tree:
    """Apply ``fn`` to every tensor in a nested tuple / list / dict."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def tree_leaves(tree: Tree) -> list[torch.Tensor]:
    """All tensors in a nested tuple / list / dict, in order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [leaf for v in tree.values() for leaf in tree_leaves(v)]
    if isinstance(tree, (tuple, list)):
        return [leaf for v in tree for leaf in tree_leaves(v)]
    return []


def move_to(tree: Tree, device: torch.device, non_blocking: bool = False) -> Tree:
    """Move every tensor of ``tree`` to ``device`` (a no-op for tensors already there)."""
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), tree)


def to_cpu(tree: Any) -> Any:
    """``tree`` with every tensor detached and on the CPU (for saving or sending)."""
    return tree_map(lambda t: t.detach().cpu(), tree)


def batch_size_of(tree: Tree) -> int:
    """Number of samples in a batch: the first dimension of its first tensor."""
    leaves = tree_leaves(tree)
    if not leaves or leaves[0].dim() == 0:
        return 1
    return int(leaves[0].shape[0])


def describe(obj: Any) -> str:
    """A short description of a value for error messages: type, shape and dtype."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor(shape={tuple(obj.shape)}, dtype={obj.dtype})"
    if isinstance(obj, np.ndarray):
        return f"ndarray(shape={obj.shape}, dtype={obj.dtype})"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(describe(v) for v in obj[:4])
        more = ", ..." if len(obj) > 4 else ""
        return f"{type(obj).__name__}({inner}{more})"
    return type(obj).__name__


def call_net(net: torch.nn.Module, inputs: Tree) -> Any:
    """Call ``net`` by the batch rule: tensor -> net(x), tuple/list -> net(*x), dict -> net(**x)."""
    if isinstance(inputs, torch.Tensor):
        return net(inputs)
    if isinstance(inputs, Mapping):
        return net(**inputs)
    if isinstance(inputs, (tuple, list)):
        return net(*inputs)
    return net(inputs)


def concat_outputs(outputs: list[Any]) -> Any:
    """The outputs of several batches as one: tensors concatenated along the batch dimension."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs) if first.dim() > 0 else torch.stack(outputs)
    if isinstance(first, dict):
        return {k: concat_outputs([o[k] for o in outputs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concat_outputs([o[i] for o in outputs]) for i in range(len(first)))
    raise DataError(f"predict: the net returned {type(first).__name__}; expected tensors")
