"""How torchhouse drives torch.compile for its own graphs (`torchhouse.train.compiled_step`,
and ``compile=True``'s net): inductor's options, dynamo's settings while one of our graphs is
traced, static batch shapes, and a code object per model. Set here only, around our graphs:
a user's own ``torch.compile`` calls keep torch's defaults.

Example:
    >>> COMPILE_OPTIONS["fallback_random"], traces_autograd() in (True, False)
    (True, True)
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from torchhouse.data.trees import tree_leaves

__all__ = [
    "COMPILE_OPTIONS",
    "autograd_traced_by_default",
    "is_compile_error",
    "mark_static",
    "no_recompile",
    "own_code",
    "traces_autograd",
    "tracing",
]

# inductor's settings for every graph torchhouse compiles (compile=True's too). fallback_random:
# dropout draws from torch's generator as eager does (seeds, exact resume, the check against
# eager). pattern_matcher off: torch 2.13's rewrites `add(mm(a, b), c, alpha=k)` as
# `addmm(c, a, b)`, dropping k, which a traced weight decay (`grad.add(param, alpha=wd)`) meets;
# no step time was lost without it here (benchmarks/RESULTS.md)
COMPILE_OPTIONS: dict[str, Any] = {"fallback_random": True, "pattern_matcher": False}


@contextlib.contextmanager
def tracing(graph: str) -> Iterator[None]:
    """Dynamo's settings while one of our graphs is traced (set only here, not for the user's
    own compiles): static shapes, and ``forward_backward`` traces ``torch.autograd.grad`` into
    its graph. A trace dynamo starts on its own (a guard our key does not hold failed) fails
    without the latter, and is traced again under these settings; the tensors marked static keep it static."""
    import torch._dynamo.config

    settings: dict[str, Any] = {"automatic_dynamic_shapes": False}
    if graph != "forward_and_loss":
        settings["trace_autograd_ops"] = True
    with torch._dynamo.config.patch(**settings):
        yield


@contextlib.contextmanager
def no_recompile() -> Iterator[None]:
    """Dynamo raises instead of compiling a graph again (set by hand: ``config.patch`` costs
    more, and this runs at every step where it is needed)."""
    import torch._dynamo.config

    config = torch._dynamo.config
    before = config.error_on_recompile
    config.error_on_recompile = True
    try:
        yield
    finally:
        config.error_on_recompile = before


def autograd_traced_by_default() -> bool:
    """Whether dynamo traces ``torch.autograd.grad`` without being told (a later torch's default)."""
    import torch._dynamo.config

    return bool(getattr(torch._dynamo.config, "trace_autograd_ops", False))


def traces_autograd() -> bool:
    """Whether this torch can trace ``torch.autograd.grad`` into a graph (2.11 and later)."""
    import torch._dynamo.config

    return hasattr(torch._dynamo.config, "trace_autograd_ops")


def mark_static(inputs: Any, target: Any, weight: torch.Tensor | None) -> None:
    """Each batch tensor's sizes static: a graph dynamo traces is specialised to them."""
    import torch._dynamo

    if type(inputs) is torch.Tensor and type(target) is torch.Tensor and weight is None:
        torch._dynamo.mark_static(inputs)
        torch._dynamo.mark_static(target)
        return
    for tensor in (*tree_leaves(inputs), *tree_leaves(target), *tree_leaves(weight)):
        torch._dynamo.mark_static(tensor)


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` is dynamo's (a trace failed), not the step's own error."""
    import torch._dynamo.exc

    return isinstance(exc, torch._dynamo.exc.TorchDynamoException)


def own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own. torch.compile keeps its graphs, and counts them
    against ``recompile_limit``, per code object: without a copy, every model a process builds
    (tuning trials, cross-validation folds) would add graphs to one shared count."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
