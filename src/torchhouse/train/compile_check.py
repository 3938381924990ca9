"""A compiled step compared with the same step run eagerly, once, before its numbers are trusted.

torch.compile has had silent wrong-gradient bugs: torch 2.13 returns zero gradients for the
convolutions of `torchhouse.models.digits_cnn` under a plain ``torch.compile`` on the CPU (its
AOTAutograd backward), and drops ``alpha`` from ``torch.add(a @ b, c, alpha=k)``; pytorch/pytorch
#185509, #180164 and #182012 report others. So the first call of each compiled graph
(`CompiledStep`; a graph dynamo compiles again too), and under ``compile=True`` the first
training step of a fit and any step whose forward compiled a graph, run twice from the
same state — the RNG, the net's buffers, the parameters and the optimizer's state put back in
between — once compiled and once eagerly, and a difference beyond float rounding is refused
with the tensor's name (`CompiledStepMismatch`). The compiled results are kept, so a resumed
fit runs the same numbers. It costs one eager forward and backward per graph.

What is compared: the loss, and the gradients, or, where the graph applies the optimizer's
update itself, the state tensors the update derives from the gradients (`TracedUpdate`); for
an evaluation graph, the loss and the net's output; each as the largest difference relative
to the largest value (`relative_difference`).

Example:
    >>> relative_difference(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7]))
    0.0
    >>> relative_difference(torch.zeros(3), torch.ones(3))
    1.0
    >>> relative_difference(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0]))
    0.0
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.data import rng
from torchhouse.data.trees import Tree, call_net, tree_leaves
from torchhouse.errors import ConfigError

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = [
    "CompiledStepMismatch",
    "Rewind",
    "check_compiled_net",
    "check_gradients",
    "checked_compiled_output",
    "compiled_graph_count",
    "compare",
    "relative_difference",
    "tolerance",
]

# Compilation reorders sums: float32 results differ by a few units in the last place (1e-7
# relative), autocast's bf16 / fp16 ones by up to a few 1e-3. The bugs this catches are off by
# the whole value (zeroed gradients, a dropped factor).
_TOLERANCE = {"32": 1e-3, "bf16-mixed": 5e-2, "16-mixed": 5e-2}


class CompiledStepMismatch(ConfigError):
    """A compiled step computed other numbers than the same step run eagerly."""


def tolerance(precision: str) -> float:
    """The largest relative difference accepted between a compiled and an eager step."""
    return _TOLERANCE.get(precision, 5e-2)


def relative_difference(compiled: torch.Tensor, eager: torch.Tensor) -> float:
    """``max |compiled - eager| / max |eager|``, 0 when both are all zeros; a NaN or an inf
    counts as equal where the other has the same (a non-finite batch is non-finite both ways)."""
    compiled, eager = compiled.detach().double(), eager.detach().double()
    if compiled.shape != eager.shape:
        return float("inf")
    same = (compiled == eager) | (compiled.isnan() & eager.isnan())
    if not bool((same | (compiled.isfinite() & eager.isfinite())).all()):
        return float("inf")  # a NaN or an inf on one side only
    compiled, eager = compiled.where(~same, 0.0), eager.where(~same, 0.0)
    scale = float(eager.abs().max()) if eager.numel() else 0.0
    gap = float((compiled - eager).abs().max()) if eager.numel() else 0.0
    if scale == 0.0:
        return 0.0 if gap == 0.0 else float("inf")
    result = gap / scale
    return 0.0 if result < 1e-12 else round(result, 12)


def compare(
    pairs: Iterable[tuple[str, torch.Tensor | None, torch.Tensor | None]],
    precision: str,
    what: str,
    instead: str = "compile=False",
) -> None:
    """Refuse the first ``(name, compiled, eager)`` pair whose values differ beyond `tolerance`."""
    limit = tolerance(precision)
    for name, compiled, eager in pairs:
        if compiled is None and eager is None:
            continue
        gap = float("inf") if compiled is None or eager is None else relative_difference(compiled, eager)
        if not gap <= limit:
            raise CompiledStepMismatch(
                f"{what}: the compiled step's {name} differs from the eager step's by {gap:.3g} of its "
                f"largest value (float rounding stays under {limit:g}): torch.compile computed it "
                f"wrongly for this net (a torch bug; nothing was trained on it). Use {instead}, or "
                "another torch release; docs/compile.md lists the bugs known here"
            )


class Rewind:
    """Clones of some tensors and every RNG state, to put back (`restore`) as often as needed."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        with torch.no_grad():
            self.saved = [t.detach().clone() for t in self.tensors]
        self.rng = rng.capture()

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in zip(self.tensors, self.saved, strict=True):
            tensor.copy_(saved)
        rng.restore(self.rng)


def check_gradients(
    compiled_loss: Callable[[], torch.Tensor],
    eager_loss: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    names: Sequence[str],
    changes: Sequence[torch.Tensor],
    precision: str,
    what: str,
    instead: str = "compile=False",
) -> None:
    """Run ``compiled_loss()`` and ``eager_loss()`` from the same state (the RNG and ``changes``,
    e.g. the net's buffers, put back after each) and compare their losses and gradients with
    respect to ``params``; the state is as before when it returns."""
    before = Rewind(changes)
    try:
        results = []
        for loss_of in (compiled_loss, eager_loss):
            loss = loss_of()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                return  # what backward refuses: its own error says so, at the step
            grads: Sequence[torch.Tensor | None] = (
                torch.autograd.grad(loss, params, allow_unused=True)
                if loss.requires_grad
                else [None] * len(params)
            )
            results.append((loss.detach(), grads))
            before.restore()
    finally:
        before.restore()
    (loss_c, grads_c), (loss_e, grads_e) = results
    pairs: list[tuple[str, torch.Tensor | None, torch.Tensor | None]] = [("loss", loss_c, loss_e)]
    pairs += [(f"gradient of {name}", c, e) for name, c, e in zip(names, grads_c, grads_e, strict=True)]
    compare(pairs, precision, what, instead)


def compiled_graph_count() -> int:
    """How many graphs torch.compile has compiled in this process so far (dynamo's own count,
    read in a few hundred nanoseconds; 0 where a torch release does not keep it): a change
    over a step means that step's forward ran a graph no check has seen."""
    counters = getattr(sys.modules.get("torch._dynamo.utils"), "counters", None)
    return int(counters["stats"]["unique_graphs"]) if counters is not None else 0


def check_compiled_net(model: Model, inputs: Tree, target: Tree, sample_weight: torch.Tensor | None) -> None:
    """``compile=True``: the loss and gradients of ``model.compiled_net`` on this batch against
    those of ``model.net`` itself (`check_gradients`), the step's autocast and loss around both."""

    def loss_through(net: Callable[..., Any]) -> Callable[[], torch.Tensor]:
        def loss() -> torch.Tensor:
            with model.autocast():
                preds = call_net(net, inputs)  # type: ignore[arg-type]  # a compiled net too
                if sample_weight is None:
                    return model.compute_loss(preds, target)
                return model.compute_loss(preds, target, sample_weight)

        return loss

    named = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
    check_gradients(
        loss_through(model.compiled_net),
        loss_through(model.net),
        [p for _, p in named],
        [n for n, _ in named],
        list(model.net.buffers()),
        model.precision,
        "compile=True, the first training step",
        instead="compile='step' or compile=False",
    )


def checked_compiled_output(model: Model, compiled_net: Callable[..., Any], inputs: Tree) -> Any:
    """``compile=True`` without gradients (evaluation, prediction): the compiled net's output
    on ``inputs``; where this call made torch compile a graph, first compared with the net's
    own output from the same state (the RNG and the net's buffers put back after it)."""
    graphs = compiled_graph_count()
    # in training mode (MC dropout at prediction) the eager run must draw what the compiled one drew
    seeds = rng.capture() if getattr(model.net, "training", False) else None
    out = call_net(compiled_net, inputs)  # type: ignore[arg-type]  # a compiled net too
    if compiled_graph_count() == graphs:
        return out
    after = Rewind(list(model.net.buffers()))
    try:
        if seeds is not None:
            rng.restore(seeds)
        eager = call_net(model.net, inputs)
    finally:
        after.restore()
    compiled_leaves, eager_leaves = tree_leaves(out), tree_leaves(eager)
    compare(
        [
            (f"output {i}" if len(eager_leaves) > 1 else "output", c, e)
            for i, (c, e) in enumerate(zip(compiled_leaves, eager_leaves, strict=False))
            if isinstance(c, torch.Tensor) and isinstance(e, torch.Tensor)
        ],
        model.precision,
        "compile=True, a forward without gradients (evaluation, prediction)",
        instead="compile='step' or compile=False",
    )
    return out
