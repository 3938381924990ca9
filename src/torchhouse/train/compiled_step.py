"""``Model(compile="step")`` and ``Model(cuda_graph=True)``: the training step compiled.

What is compiled, in two graphs (``torch.compile``, inductor):

- the forward and the loss, ``fullgraph=True``: AOTAutograd compiles their backward with
  them, so ``loss.backward()`` runs a compiled backward graph;
- the optimizer's ``step``, as PyTorch's "compiling the optimizer" recipe does (it breaks the
  graph itself around ``no_grad``, so not ``fullgraph``); each param group's learning rate is
  kept in a 0-d tensor (float64, the precision of the Python float it replaces), so a
  scheduler that changes it changes a tensor's value and nothing recompiles.

The Python between them stays the ordinary `Model` step: the non-finite guard, gradient
accumulation, clipping, sample weights and metrics run as they do eagerly, on the compiled
outputs. Graphs are specialised to each batch shape (``dynamic=False``): the last, shorter
batch of an epoch gets a graph of its own (compiled once), and a resumed fit runs exactly the
graphs an uninterrupted one runs. Random operations (dropout) draw from torch's generator as
eager ones do (inductor's ``fallback_random``), so seeding and exact resume keep working.

What it refuses, at the first step that meets it, with the reason: a forward or loss that
cannot be one graph (a host sync such as ``.item()``, data-dependent control flow, a ``print``)
and more batch shapes than torch keeps compiled graphs for (``recompile_limit``, 8): pad
batches to a fixed shape for such data, or use ``compile=True`` (the net alone, dynamic).

``cuda_graph=True`` (CUDA only) is the same step with inductor's CUDA graphs (``cudagraph
trees``): each batch shape is captured once and replayed, the last shorter batch too; the
optimizer is made capturable and its learning rates live on the device. Outputs are copied
out of the graph's static buffers before the loop keeps them.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.data.trees import call_net, tree_map
from torchhouse.errors import ConfigError
from torchhouse.train.losses import check_loss_inputs, weighted_loss

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["COMPILE_MODES", "CompiledStep", "check_compile_settings", "float_lrs"]

COMPILE_MODES = (False, True, "step")


def check_compile_settings(compile: Any, cuda_graph: Any, precision: str, device: torch.device) -> None:
    """Refuse a compile / cuda_graph setting the step cannot honour, naming what to use instead."""
    if not (isinstance(compile, bool) or compile == "step"):
        raise ConfigError(f"compile: expected False, True or 'step', got {compile!r}")
    if not isinstance(cuda_graph, bool):
        raise ConfigError(f"cuda_graph: expected True or False, got {cuda_graph!r}")
    if cuda_graph and device.type != "cuda":
        raise ConfigError(
            f"cuda_graph=True needs a CUDA device (it replays CUDA graphs); this model is on {device.type}. "
            "On the CPU, compile='step' compiles the whole step"
        )
    if cuda_graph and compile is True:
        raise ConfigError(
            "cuda_graph=True captures the compiled step (compile='step'); compile=True compiles only the "
            "net: leave compile out or pass compile='step'"
        )
    if (compile == "step" or cuda_graph) and precision == "16-mixed":
        raise ConfigError(
            "compile='step' / cuda_graph=True do not take precision='16-mixed': its grad scaler reads the "
            "device every step to skip an inf step, which no graph can hold. Use precision='bf16-mixed' "
            "(no scaler), or compile=True"
        )


class CompiledStep:
    """The compiled parts of one `Model`'s step; see the module docstring.

    `Model.forward_and_loss` and `Model.optimizer_step` call `forward_and_loss` and
    `optimizer_step` here; nothing else changes.
    """

    def __init__(
        self, model: Model, cuda_graph: bool = False, own_forward: bool = False, own_loss: bool = False
    ) -> None:
        self.model = model
        self.cuda_graph = cuda_graph
        options: dict[str, Any] = {"fallback_random": True}  # dropout draws as eager does
        if cuda_graph:
            options["triton.cudagraphs"] = True
        # the built-in forward and loss are traced directly (no fit state inside the graph);
        # a subclass's overrides (own_forward / own_loss) are traced as written
        self._own_forward, self._own_loss = own_forward, own_loss

        def forward_and_loss(inputs: Any, target: Any, weight: torch.Tensor | None) -> tuple[Any, Any]:
            return self._forward_and_loss(inputs, target, weight)

        self._graph = torch.compile(
            _own_code(forward_and_loss), fullgraph=True, dynamic=False, options=options
        )
        optimizer = model.optimizer
        self._lr_device = model.device if cuda_graph else torch.device("cpu")
        if cuda_graph:
            for group in optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = True
        self.tensor_lrs()

        def step() -> None:
            optimizer.step()

        # no random operations in an optimizer: the options (applied on each call) only for cudagraphs
        self._optimizer_graph = torch.compile(
            _own_code(step), dynamic=False, options={"triton.cudagraphs": True} if cuda_graph else None
        )
        self.shapes: set[Any] = set()  # the (mode, batch shape) keys compiled so far

    # ----------------------------------------------------------------------- forward and loss

    def _forward_and_loss(self, inputs: Any, target: Any, weight: torch.Tensor | None) -> tuple[Any, Any]:
        model = self.model
        preds = model.forward(inputs) if self._own_forward else call_net(model.net, inputs)
        if self._own_loss:
            loss = (
                model.compute_loss(preds, target)
                if weight is None
                else model.compute_loss(preds, target, weight)
            )
        elif model.loss is None:
            loss = model.compute_loss(preds, target, weight)  # the net's own loss (or its message)
        elif weight is None:
            loss = model.loss(preds, target)
        else:
            loss = weighted_loss(model.loss, preds, target, weight)
        return preds, loss

    def forward_and_loss(self, inputs: Any, target: Any, weight: torch.Tensor | None) -> tuple[Any, Any]:
        """The net's output and the loss from the compiled graph (compiled at a new batch shape)."""
        training = self.model.net.training
        if type(inputs) is torch.Tensor and type(target) is torch.Tensor and weight is None:
            # the common batch, keyed without walking a tree (this runs every step)
            key: Any = (
                torch.is_grad_enabled(),
                training,
                inputs.shape,
                inputs.dtype,
                target.shape,
                target.dtype,
            )
        else:
            key = (torch.is_grad_enabled(), training, _shapes(inputs), _shapes(target), _shapes(weight))
        if key not in self.shapes:
            return self._first_call(key, inputs, target, weight)
        if self._own_loss:  # a new fit's state: its flag stays out of the traced compute_loss
            self.model.fit_state.check_loss_shapes = False
        if self.cuda_graph:
            torch.compiler.cudagraph_mark_step_begin()
            return _copied(self._graph(inputs, target, weight))
        return self._graph(inputs, target, weight)  # type: ignore[no-any-return]

    def _first_call(self, key: Any, inputs: Any, target: Any, weight: torch.Tensor | None) -> tuple[Any, Any]:
        import torch._dynamo.exc  # what compilation raises (no public name yet); loaded with torch.compile

        limit = int(getattr(torch._dynamo.config, "recompile_limit", 8))
        if len(self.shapes) >= limit:
            seen = sorted({str(tuple(k[2])) for k in self.shapes})[:4]
            raise ConfigError(
                f"compile='step' compiles one graph per batch shape, and this batch ({_describe(key)}) "
                f"would be graph {len(self.shapes) + 1}, past torch's limit of {limit} "
                f"(torch._dynamo.config.recompile_limit); shapes so far include {', '.join(seen)}. "
                "Pad batches to a few fixed shapes (e.g. padding='max_length'), or use compile=True, "
                "which compiles the net with dynamic shapes"
            )
        model = self.model
        model.fit_state.check_loss_shapes = False  # checked below, on the graph's outputs
        try:
            if self.cuda_graph:
                torch.compiler.cudagraph_mark_step_begin()
            preds, loss = self._graph(inputs, target, weight)
        except torch._dynamo.exc.TorchDynamoException as exc:
            self._explain_failure(exc, inputs, target, weight)
            raise  # _explain_failure always raises; this keeps mypy and readers sure
        if model.loss is not None and not self._own_loss:
            check_loss_inputs(model.loss, preds, target)  # before backward: nothing trained on it
        self.shapes.add(key)
        return _copied((preds, loss)) if self.cuda_graph else (preds, loss)

    def _explain_failure(self, exc: Exception, inputs: Any, target: Any, weight: torch.Tensor | None) -> None:
        """A graph that could not be compiled: the eager step's own error if it has one (a wrong
        shape is a data error, not a compile error), else the reason the capture failed."""
        with torch.no_grad():
            self._forward_and_loss(inputs, target, weight)
        reason = " ".join(str(exc).strip().splitlines()[:3])
        raise ConfigError(
            f"compile='step' cannot capture the step's forward and loss as one graph: {reason[:400]}. "
            "Remove the host sync (.item(), float(), print) or the data-dependent branch from the "
            "net's forward and the loss, or use compile=True (graph breaks allowed) or compile=False"
        ) from exc

    # ----------------------------------------------------------------------- the optimizer

    def tensor_lrs(self) -> None:
        """Each param group's learning rate as a 0-d tensor (a float set since, by a callback or
        ``find_lr``, is put back in a tensor of its value)."""
        for group in self.model.optimizer.param_groups:
            lr = group.get("lr")
            if isinstance(lr, (int, float)) and not isinstance(lr, bool):
                group["lr"] = torch.tensor(float(lr), dtype=torch.float64, device=self._lr_device)

    def optimizer_step(self) -> None:
        """The compiled ``optimizer.step()``."""
        self.tensor_lrs()
        self._optimizer_graph()


def float_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Learning rates as Python floats again: a state saved by a compiled step holds tensors,
    which an eager optimizer (a foreach one on CUDA) may refuse."""
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor):
            group["lr"] = float(lr)


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own. torch.compile keeps its graphs, and counts them
    against ``recompile_limit``, per code object: without a copy, every model a process builds
    (tuning trials, cross-validation folds) would add graphs to one shared count."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _shapes(tree: Any) -> Any:
    """What a compiled graph is specialised to: each tensor's shape, dtype and device."""
    if isinstance(tree, torch.Tensor):
        return (tuple(tree.shape), tree.dtype, tree.device.type)
    if isinstance(tree, Mapping):
        return tuple((k, _shapes(v)) for k, v in tree.items())
    if isinstance(tree, (tuple, list)):
        return tuple(_shapes(v) for v in tree)
    return tree if isinstance(tree, (int, float, str, bool, type(None))) else type(tree)


def _describe(key: Any) -> str:
    mode = "training" if key[0] else "evaluation"
    if len(key) == 6:  # (grad, training, inputs shape, dtype, target shape, dtype)
        return f"{mode}, inputs {tuple(key[2])} {key[3]}, target {tuple(key[4])} {key[5]}"
    return f"{mode}, inputs {key[2]}, target {key[3]}"


def _copied(out: tuple[Any, Any]) -> tuple[Any, Any]:
    """The outputs copied out of a CUDA graph's static buffers (the next replay overwrites them)."""
    clone: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.clone()  # noqa: E731
    preds, loss = out
    return tree_map(clone, preds), loss.clone()
