"""``Model(compile="step")`` and ``Model(cuda_graph=True)``: the training step compiled.

Four graphs (``torch.compile``, inductor, ``fullgraph=True``), each compiled per batch shape
when first needed (docs/compile.md has the user's view):

- **train_step**: the whole plain training step, what `Model.forward_backward_step` runs: the
  forward and the loss, ``torch.autograd.grad`` of the loss traced into the graph (dynamo's
  ``trace_autograd_ops``, set only while these graphs are traced), and the optimizer's update
  on those gradients (`torchhouse.train.traced_update`: the functional call torch's Adam,
  AdamW or SGD ``step()`` makes). No autograd graph is built at run time and no backward or
  optimizer kernel is dispatched one by one: on small nets that is most of an eager step.
- **forward_backward**: the same without the update, for a step that is not plain
  (accumulation, clipping, the non-finite skip) or an optimizer the update does not cover; its
  gradients are added into ``.grad`` as ``loss.backward()`` adds them; `Model.optimizer_step`
  then steps with the **update** graph.
- **update**: the optimizer's update alone (`TracedUpdate`) on the gradients in ``.grad``.
  Where it does not apply (a step hook, another optimizer, a parameter's first step, CUDA
  graphs) the optimizer's ``step()`` runs as PyTorch's recipe compiles it (each group's lr in a
  0-d float64 tensor, so a scheduler changes a value, not the graph; a fused optimizer
  eagerly: it is one kernel).
- **forward_and_loss**: the net and the loss, AOTAutograd compiling their backward with them,
  for evaluation and for a custom step that calls ``forward_and_loss`` and ``backward``.

Each steps aside where it would not do what the eager step does (`CompiledStep.train_step`
and `CompiledStep.forward_backward` list when), to the next one down or to eager backward.
Graphs are specialised to each batch shape (static shapes: each batch's tensors are marked
static, and graphs are traced with dynamo's automatic dynamic shapes off; not
``torch.compile(dynamic=False)``, which patches dynamo's settings around every call): the last,
shorter batch of an epoch gets a graph of its own, and a resumed fit runs exactly the graphs
an uninterrupted one runs. Random operations (dropout) draw from torch's generator as eager
ones do (inductor's ``fallback_random``), so seeding and exact resume keep working.

Not taken on trust: each graph's first call for a key, and any trace dynamo starts again for a
change the key does not hold (`CompiledStep._call`), is compared with the eager step from the
same state (`torchhouse.train.compile_check`), and refused with the tensor's name if it differs.

Refused at the first step that meets them, with the reason: a forward or loss that cannot be
one graph (a host sync such as ``.item()``, data-dependent control flow, a ``print``), and
more batch shapes than torch keeps graphs for (``recompile_limit``, 8): pad batches to a few
fixed shapes, or use ``compile=True`` (the net alone, dynamic).

``cuda_graph=True`` (CUDA only) is the same step with inductor's CUDA graphs (``cudagraph
trees``): each batch shape is captured once and replayed, the last shorter batch too; the
optimizer is made capturable and its learning rates live on the device. Outputs (gradients
included) are copied out of the graph's static buffers before anything keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.data.trees import call_net, tree_leaves, tree_map
from torchhouse.errors import ConfigError, warn_user
from torchhouse.train.compile_check import Rewind, check_gradients, compare
from torchhouse.train.dynamo import (
    COMPILE_OPTIONS,
    autograd_traced_by_default,
    is_compile_error,
    mark_static,
    no_recompile,
    own_code,
    traces_autograd,
    tracing,
)
from torchhouse.train.losses import check_backward_loss, check_loss_inputs, weighted_loss
from torchhouse.train.traced_update import IGNORED_KEYS, Group, TracedUpdate

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = [
    "COMPILE_MODES",
    "COMPILE_OPTIONS",
    "CaptureError",
    "CompiledStep",
    "check_compile_settings",
    "float_lrs",
]

COMPILE_MODES = (False, True, "step")

Grads = tuple[torch.Tensor | None, ...]


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


class CaptureError(ConfigError):
    """torch.compile could not capture a graph of the step, and the eager step raised nothing."""


class CompiledStep:
    """The compiled parts of one `Model`'s step; see the module docstring.

    `Model.forward_backward_step` calls `train_step`; `Model.forward_backward`,
    `Model.forward_and_loss` and `Model.optimizer_step` call the methods of the same names.
    ``shapes`` holds the graphs compiled and checked so far, as ``(graph, grad enabled,
    training, what the batch looks like, ...)`` keys (the update graph's: the parameters it
    steps); ``update`` is the optimizer's `TracedUpdate` (None: its update stays out of the
    graphs); ``compiles_optimizer`` whether its ``step()`` is compiled where it runs on its own.
    """

    def __init__(
        self, model: Model, cuda_graph: bool = False, own_forward: bool = False, own_loss: bool = False
    ) -> None:
        self.model = model
        self.cuda_graph = cuda_graph
        options: dict[str, Any] = dict(COMPILE_OPTIONS)
        if cuda_graph:
            options["triton.cudagraphs"] = True
        # the built-in forward and loss are traced directly (no fit state inside the graph);
        # a subclass's overrides (own_forward / own_loss) are traced as written
        self._own_forward, self._own_loss = own_forward, own_loss

        def forward_and_loss(inputs: Any, target: Any, weight: torch.Tensor | None) -> tuple[Any, Any]:
            return self._forward_and_loss(inputs, target, weight)

        def forward_backward(
            inputs: Any, target: Any, weight: torch.Tensor | None, trainable: list[torch.Tensor]
        ) -> tuple[Any, Any, Grads | None]:
            return self._forward_backward(inputs, target, weight, trainable)

        def train_step(
            inputs: Any, target: Any, weight: torch.Tensor | None, groups: list[Group]
        ) -> tuple[Any, Any, Grads | None, bool]:
            return self._train_step(inputs, target, weight, groups)

        def update(groups: list[Group], grads: Grads) -> bool:
            return self._update(groups, grads)

        def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
            return torch.compile(own_code(fn), fullgraph=True, options=options)

        self._graphs = {
            "forward_and_loss": compiled(forward_and_loss),
            "forward_backward": compiled(forward_backward),
            "train_step": compiled(train_step),
            "update": compiled(update),
        }
        self._optimizer_graph = self._set_up_optimizer(model.optimizer, cuda_graph)
        # a sparse embedding's gradient is sparse eagerly, dense from a graph: eager backward for it
        self._sparse = any(getattr(m, "sparse", False) is True for m in model.net.modules())
        # torch before 2.11 cannot trace torch.autograd.grad into a graph: there the step runs the
        # forward-and-loss graph and its compiled backward (checked against eager all the same)
        self._gradient_graphs = traces_autograd()
        # a gradient graph's trace fails outside `dynamo.tracing` (see `_call`), unless this
        # torch traces torch.autograd.grad by default
        self._recompiles_fail = self._gradient_graphs and not autograd_traced_by_default()
        self.shapes: set[Any] = set()
        self._marked: set[int] = set()  # tensors marked with a static address (cuda_graph)
        self._update_error: CaptureError | None = None  # why the update left the train_step graph

    def _set_up_optimizer(self, optimizer: torch.optim.Optimizer, cuda_graph: bool) -> Callable[[], Any]:
        """The optimizer made ready for the graphs; returns its ``step()`` as the step runs it
        outside the train_step graph (compiled, or its own where compiling does not pay)."""
        self._lr_device = self.model.device if cuda_graph else torch.device("cpu")
        if cuda_graph:
            for group in optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = True
        # the optimizer's update traced into the train_step graph (None: an optimizer it does not know)
        self.update = TracedUpdate.of(optimizer)
        # a fused optimizer is one kernel already: compiled alone, it ran 1.7x slower
        # (benchmarks/RESULTS.md), so outside the train_step graph it steps eagerly, unless CUDA
        # graphs must capture it
        self.compiles_optimizer = cuda_graph or not any(
            g.get("fused") or _float_lr_only(g) for g in optimizer.param_groups
        )
        self.tensor_lrs()
        self._settings = _settings(optimizer)  # a change means a scheduler cycles them: see below
        if not self.compiles_optimizer:
            return optimizer.step

        def step() -> None:
            optimizer.step()

        # no random operations in an optimizer: the options only for cudagraphs
        return torch.compile(own_code(step), options={"triton.cudagraphs": True} if cuda_graph else None)

    # ----------------------------------------------------------------------- what is traced

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

    def _forward_backward(
        self, inputs: Any, target: Any, weight: torch.Tensor | None, trainable: list[torch.Tensor]
    ) -> tuple[Any, Any, Grads | None]:
        """The eager step's ``forward_and_loss`` under autocast, then ``backward``, as one graph:
        the gradients of ``trainable``, or None for a loss backward would refuse or skip."""
        model = self.model
        if model.precision == "32":
            preds, loss = self._forward_and_loss(inputs, target, weight)
        else:  # bf16-mixed: 16-mixed is refused (its scaler)
            with torch.autocast(model.device.type, dtype=torch.bfloat16):
                preds, loss = self._forward_and_loss(inputs, target, weight)
        preds = tree_map(torch.Tensor.detach, preds)
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1):
            return preds, loss, None  # checked outside, by backward's own rules
        window = model.accumulate_grad_batches
        grads = torch.autograd.grad(loss / window if window > 1 else loss, trainable, allow_unused=True)
        return preds, loss.detach(), grads

    def _train_step(
        self, inputs: Any, target: Any, weight: torch.Tensor | None, groups: list[Group]
    ) -> tuple[Any, Any, Grads | None, bool]:
        """`_forward_backward`, then the optimizer's update (`TracedUpdate`) on its gradients,
        as one graph. Returns the output, the loss, the gradients where the update did not
        take them (a parameter's first step, whose ``step()`` creates its state; None for a
        loss backward would refuse or skip), and whether the update ran."""
        assert self.update is not None
        trainable = [p for params, *_ in groups for p in params]
        preds, loss, grads = self._forward_backward(inputs, target, weight, trainable)
        if grads is None:
            return preds, loss, None, False
        with torch.no_grad():
            if self.update.apply(groups, grads):
                return preds, loss, None, True
        return preds, loss, grads, False

    def _update(self, groups: list[Group], grads: Grads) -> bool:
        """The optimizer's update (`TracedUpdate`) on the gradients in ``.grad``, as a graph of
        its own: the step after the gradient graph, where the step is not one graph."""
        assert self.update is not None
        with torch.no_grad():
            return self.update.apply(groups, grads)

    # ----------------------------------------------------------------------- calling the graphs

    def forward_and_loss(self, inputs: Any, target: Any, weight: torch.Tensor | None) -> tuple[Any, Any]:
        """The net's output and the loss from the compiled graph (compiled at a new batch shape)."""
        key = self._key("forward_and_loss", inputs, target, weight)
        mark_static(inputs, target, weight)
        if key not in self.shapes:
            preds, loss = self._first_call(key, inputs, target, weight)
        else:
            preds, loss = self._call(key, inputs, target, weight)
        return _copied((preds, loss)) if self.cuda_graph else (preds, loss)

    def forward_backward(
        self, inputs: Any, target: Any, weight: torch.Tensor | None
    ) -> tuple[Any, torch.Tensor] | None:
        """The net's output and the loss from one graph that also computes the gradients, which
        are added into each trainable parameter's ``.grad`` (as ``loss.backward()`` adds them).

        None, with nothing run, where that graph would not do what backward does: no parameter
        is trainable, or one has a gradient hook (``register_hook``,
        ``register_post_accumulate_grad_hook``), which the graph would not run. The caller then
        runs `forward_and_loss` and an eager backward, which runs the hooks.
        """
        trainable = _trainable(self.model)
        if not (trainable and self._gradient_graphs) or self._sparse or any(map(_has_grad_hooks, trainable)):
            return None
        key = (*self._key("forward_backward", inputs, target, weight), tuple(map(id, trainable)))
        mark_static(inputs, target, weight)
        # the parameters are an argument: dynamo then reads each from this list, not by walking
        # the net's parameters once for each of them at every call
        if key not in self.shapes:
            preds, loss, grads = self._first_call(key, inputs, target, weight, trainable)
            if self._update_error is not None:
                reason = self._update_error
                warn_user(f"compile='step': the optimizer's update stays out of the step's graph: {reason}")
                self._update_error = None
        else:
            preds, loss, grads = self._call(key, inputs, target, weight, trainable)
        if self.cuda_graph:
            preds, loss = _copied((preds, loss))
        if grads is None:  # a loss backward cannot take (its error), or a frozen net (nothing to do)
            check_backward_loss(loss, self.model.net)
        else:
            _accumulate(trainable, grads, copy=self.cuda_graph)
        return preds, loss

    def train_step(
        self, inputs: Any, target: Any, weight: torch.Tensor | None
    ) -> tuple[Any, torch.Tensor] | None:
        """Forward, loss, gradients and the optimizer's update from one graph (`_train_step`):
        what `Model.forward_backward` and `Model.optimizer_step` do for a plain step, but the
        step counters and the scheduler (`Model.forward_backward_step` keeps those).

        A parameter's first step (no optimizer state yet) takes the graph's gradients to
        ``step()``, which creates the state. None, with nothing run, where the graph would not
        do what those two do: an optimizer `TracedUpdate` does not know or will not trace now
        (a step hook, a float learning rate...), ``on_nonfinite="skip"`` (the skip reads the
        loss first), a gradient already in a ``.grad`` (backward would add to it), or what
        `forward_backward` steps aside for. The caller then runs those two.
        """
        model = self.model
        self._check_settings()
        if self.update is None or self._sparse or not self._gradient_graphs:
            return None
        if model.fit_state.on_nonfinite == "skip":
            return None
        self.tensor_lrs()
        groups = self.update.inputs()
        if groups is None:
            return None
        trainable = [p for params, *_ in groups for p in params]
        if not trainable or any(p.grad is not None or _has_grad_hooks(p) for p in trainable):
            return None
        if self.cuda_graph:
            self._static_addresses(groups)
        without_state = tuple(state is None for _, states, *_ in groups for state in states)
        key = (*self._key("train_step", inputs, target, weight), tuple(map(id, trainable)), without_state)
        mark_static(inputs, target, weight)
        try:
            if key not in self.shapes:
                preds, loss, grads, updated = self._first_call(key, inputs, target, weight, groups)
            else:
                preds, loss, grads, updated = self._call(key, inputs, target, weight, groups)
        except CaptureError as exc:
            # the forward_backward graph the caller compiles next tells whose fault it was:
            # if it fails too, its error; if not, the update's (it steps as its own graph)
            self.update, self._update_error = None, exc
            return None
        if self.cuda_graph:
            preds, loss = _copied((preds, loss))
        if updated:
            _mark_stepped(model.optimizer)
            return preds, loss
        if grads is None:  # a loss backward cannot take (its error), or nothing reaches the net
            check_backward_loss(loss, model.net)
        else:  # a parameter's first step: step() creates its state
            _accumulate(trainable, grads, copy=self.cuda_graph)
            model.optimizer.step()
            model.optimizer.zero_grad(set_to_none=True)
        return preds, loss

    def _static_addresses(self, groups: list[Group]) -> None:
        """cuda_graph=True: the parameters, optimizer state and learning rates the train_step
        graph updates in place keep their addresses between replays (as PyTorch's compiled
        optimizer marks its state): CUDA graphs then read and write them where they are, where
        they would otherwise copy them in, or not capture a graph that changes its inputs."""
        import torch._dynamo

        for params, states, lr, _ in groups:
            for tensor in (*params, lr, *(t for state in states if state for t in state.values())):
                if id(tensor) not in self._marked:
                    torch._dynamo.mark_static_address(tensor)  # re-recorded if one moves
                    self._marked.add(id(tensor))

    def _key(self, graph: str, inputs: Any, target: Any, weight: torch.Tensor | None) -> tuple[Any, ...]:
        """What a compiled graph is specialised to (computed every step: kept cheap)."""
        training = self.model.net.training
        if type(inputs) is torch.Tensor and type(target) is torch.Tensor and weight is None:
            # the common batch, keyed without walking a tree
            return (
                graph,
                torch.is_grad_enabled(),
                training,
                (inputs.shape, inputs.dtype, target.shape, target.dtype),
            )
        return (graph, torch.is_grad_enabled(), training, (_shapes(inputs), _shapes(target), _shapes(weight)))

    def _call(self, key: tuple[Any, ...], *args: Any) -> Any:
        """A graph compiled before, for this key.

        Dynamo may still compile it again for a change the key does not hold (an attribute the
        forward reads, a parameter's dtype). Such a trace of a training graph fails before
        anything runs: the two gradient graphs need ``trace_autograd_ops`` (set only by
        `torchhouse.train.dynamo.tracing`), and the forward-and-loss graph in training and the
        update graph are called here with dynamo's ``error_on_recompile``. It is then compiled
        by `_first_call` (`_first_update`), with our settings, and checked against eager as a
        new graph is.
        """
        if self._own_loss:  # a new fit's state: its flag stays out of the traced compute_loss
            self.model.fit_state.check_loss_shapes = False
        if self.cuda_graph:
            torch.compiler.cudagraph_mark_step_begin()
        graph = self._graphs[key[0]]
        try:
            if key[1] and (key[0] in ("forward_and_loss", "update") or not self._recompiles_fail):
                with no_recompile():
                    return graph(*args)
            return graph(*args)
        except RuntimeError as exc:
            if not is_compile_error(exc):
                raise
        if key[0] == "update":
            return self._first_update(key, *args)
        return self._first_call(key, *args, again=True)

    def _first_call(self, key: tuple[Any, ...], *args: Any, again: bool = False) -> Any:
        """A graph's first call for ``key`` (``again``: dynamo compiles it once more, see `_call`):
        compiled under our settings and, in training, checked against the eager step."""
        import torch._dynamo.exc  # what compilation raises (no public name yet); loaded with torch.compile

        limit = int(getattr(torch._dynamo.config, "recompile_limit", 8))
        same_graph = [k for k in self.shapes if k[0] == key[0]]
        if len(same_graph) >= limit and not again:
            seen = sorted({_describe_shape(k) for k in same_graph})[:4]
            raise ConfigError(
                f"compile='step' compiles one graph per batch shape, and this batch ({_describe(key)}) "
                f"would be graph {len(same_graph) + 1}, past torch's limit of {limit} "
                f"(torch._dynamo.config.recompile_limit); shapes so far include {', '.join(seen)}. "
                "Pad batches to a few fixed shapes (e.g. padding='max_length'), or use compile=True, "
                "which compiles the net with dynamic shapes"
            )
        # a key is in shapes once its graph passed the check: torch keeps a refused graph, and
        # the key's next call must come here again, to be refused again
        self.shapes.discard(key)
        model = self.model
        model.fit_state.check_loss_shapes = False  # checked below, on the graph's outputs
        # each graph is checked against the eager step, from the state it starts from
        training = torch.is_grad_enabled()
        before = Rewind(self._changed_by(key[0], args))
        try:
            if self.cuda_graph:
                torch.compiler.cudagraph_mark_step_begin()
            with tracing(key[0]):
                if key[0] == "forward_and_loss" and training:
                    self._check_forward_and_loss(key, args)  # compiles it; the state put back
                out = self._graphs[key[0]](*args)
        except torch._dynamo.exc.TorchDynamoException as exc:
            self._explain_failure(exc, key[0], *args[:3])
            raise  # _explain_failure always raises; this keeps mypy and readers sure
        try:
            if model.loss is not None and not self._own_loss:
                check_loss_inputs(model.loss, out[0], args[1])
            if key[0] != "forward_and_loss":
                self._check_against_eager(key, args, out, before)
            elif not training:
                self._check_evaluation(key, args, out, before)
        except BaseException:
            before.restore()  # nothing trained on a refused step
            raise
        self.shapes.add(key)
        return out

    def _check_forward_and_loss(self, key: tuple[Any, ...], args: tuple[Any, ...]) -> None:
        """The forward-and-loss graph in training (a custom step's, or what the step stepped
        aside to): its loss and the gradients its compiled backward gives against eager ones
        (`compile_check.check_gradients`); a backward comes later, so the graph runs once more."""

        def compiled_loss() -> torch.Tensor:
            if self.cuda_graph:
                torch.compiler.cudagraph_mark_step_begin()
            return self._graphs["forward_and_loss"](*args)[1]  # type: ignore[no-any-return]

        params = _trainable(self.model)
        names = {id(p): n for n, p in self.model.net.named_parameters()}
        check_gradients(
            compiled_loss,
            lambda: self._forward_and_loss(*args)[1],
            params,
            [names.get(id(p), "a parameter") for p in params],
            list(self.model.net.buffers()),
            self.model.precision,
            f"compile='step', {_describe(key)}",
        )

    def _check_evaluation(
        self, key: tuple[Any, ...], args: tuple[Any, ...], out: Any, before: Rewind
    ) -> None:
        """An evaluation graph's first call: its output and loss against the eager forward's,
        run from the same state (the compiled results put back after). Validation losses pick
        the best checkpoint and stop a fit early: they are not taken on trust either."""
        after = Rewind(before.tensors)
        before.restore()
        try:
            preds, loss = self._forward_and_loss(*args)
            outputs = list(zip(tree_leaves(out[0]), tree_leaves(preds), strict=False))
            pairs = [("loss", _tensor_or_none(out[1]), _tensor_or_none(loss))]
            for i, (compiled, eager) in enumerate(outputs):
                name = "output" if len(outputs) == 1 else f"output {i}"
                pairs.append((name, _tensor_or_none(compiled), _tensor_or_none(eager)))
            compare(pairs, self.model.precision, f"compile='step', {_describe(key)}")
        finally:
            after.restore()

    def _changed_by(self, graph: str, args: tuple[Any, ...]) -> list[torch.Tensor]:
        """What a training call of ``graph`` changes: the net's buffers (BatchNorm statistics),
        and the parameters and optimizer state the train_step graph updates."""
        changed = list(self.model.net.buffers())
        if graph == "train_step":
            for params, states, _, _ in args[3]:
                changed += params
                changed += [t for state in states if state for t in state.values()]
        return changed

    def _check_against_eager(
        self, key: tuple[Any, ...], args: tuple[Any, ...], out: Any, before: Rewind
    ) -> None:
        """`compile_check`: the same step run eagerly from ``before`` computes the same numbers
        (raises `CompiledStepMismatch` if not); the compiled results are put back after."""
        after = Rewind(before.tensors)
        before.restore()
        names = {id(p): n for n, p in self.model.net.named_parameters()}
        eager = (self._forward_backward if key[0] == "forward_backward" else self._train_step)(*args)
        pairs = [("loss", out[1], eager[1])]
        if key[0] == "train_step" and out[3]:  # the update ran: compare what it derived from the gradients
            assert self.update is not None
            index = {id(t): i for i, t in enumerate(before.tensors)}
            for param, what, tensor in self.update.derived(args[3]):
                start = before.saved[index[id(tensor)]]
                compiled = after.saved[index[id(tensor)]] - start
                label = f"{what} of {names.get(id(param), 'a parameter')}"
                pairs.append((f"change of the {label}", compiled, tensor.detach() - start))
        elif out[2] is not None:
            trainable = args[3] if key[0] == "forward_backward" else [p for ps, *_ in args[3] for p in ps]
            for param, compiled, eagerly in zip(trainable, out[2], eager[2] or (), strict=False):
                pairs.append((f"gradient of {names.get(id(param), 'a parameter')}", compiled, eagerly))
        try:
            compare(pairs, self.model.precision, f"compile='step', {_describe(key)}")
        finally:
            after.restore()

    def _explain_failure(
        self, exc: Exception, graph: str, inputs: Any, target: Any, weight: torch.Tensor | None
    ) -> None:
        """A graph that could not be compiled: the eager step's own error if it has one (a wrong
        shape is a data error, a loss without a gradient is the loss's error, not a compile
        error), else the reason the capture failed. The eager try draws no random number and
        leaves the net's buffers (BatchNorm statistics) as they were."""
        model = self.model
        buffers = [b.detach().clone() for b in model.net.buffers()]
        devices = [model.device] if model.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(graph != "forward_and_loss"):
                with model.autocast():
                    _, loss = self._forward_and_loss(inputs, target, weight)
                if graph != "forward_and_loss":
                    check_backward_loss(loss, model.net)
        finally:
            with torch.no_grad():
                for buffer, saved in zip(model.net.buffers(), buffers):
                    buffer.copy_(saved)
        reason = " ".join(" ".join(str(exc).strip().splitlines()[:3]).split())
        raise CaptureError(
            f"compile='step' cannot capture the step's forward and loss as one graph; torch.compile "
            f"says: {reason[:400]}. The usual cause is a host sync (.item(), float(), print) or a "
            "data-dependent branch in the net's forward or the loss: remove it, or use compile=True "
            "(graph breaks allowed) or compile=False"
        ) from exc

    # ----------------------------------------------------------------------- the optimizer

    def tensor_lrs(self) -> None:
        """Each param group's learning rate as a 0-d tensor where a graph holds the optimizer's
        step (a float set since, by a callback or ``find_lr``, is put back in a tensor of its value)."""
        if not self.compiles_optimizer and self.update is None:
            return
        for group in self.model.optimizer.param_groups:
            lr = group.get("lr")
            if _float_lr_only(group):
                continue
            if isinstance(lr, (int, float)) and not isinstance(lr, bool):
                group["lr"] = torch.tensor(float(lr), dtype=torch.float64, device=self._lr_device)

    def optimizer_step(self) -> None:
        """``optimizer.step()`` on the gradients in ``.grad``, where the step is not one graph
        (accumulation, clipping, the non-finite skip, a custom step): the update graph
        (`TracedUpdate`, checked against ``step()`` like the other graphs) where it applies,
        else the optimizer's own ``step()``, compiled as PyTorch's recipe compiles it (a
        fused optimizer's eagerly: see ``compiles_optimizer``)."""
        self._check_settings()
        self.tensor_lrs()
        if not self._update_step():
            self._optimizer_graph()

    def _update_step(self) -> bool:
        """The update graph's step; False, with nothing run, where ``step()`` must run: an
        optimizer `TracedUpdate` does not take now (a step hook...), a parameter's first step
        (``step()`` creates its state), a sparse gradient, or CUDA graphs (whose capturable
        optimizer step stays torch's)."""
        if self.update is None or self.cuda_graph:
            return False
        groups = self.update.inputs()
        if groups is None:
            return False
        ids, gradients = [], []
        for params, states, _, _ in groups:
            for param, state in zip(params, states, strict=True):
                grad = param.grad
                if grad is not None and (state is None or grad.is_sparse):
                    return False  # a first step (step() creates the state), or a sparse gradient
                ids.append(id(param) if grad is not None else -id(param))
                gradients.append(grad)
        key, grads = ("update", True, False, tuple(ids)), tuple(gradients)
        if key not in self.shapes:
            self._first_update(key, groups, grads)
        else:
            self._call(key, groups, grads)
        _mark_stepped(self.model.optimizer)
        return True

    def _first_update(self, key: tuple[Any, ...], groups: list[Group], grads: Grads) -> None:
        """The update graph's first call for ``key``, checked: the same step run by the
        optimizer's own eager ``step()`` from the same state must change every parameter and
        state tensor by the same amounts within float rounding (`compile_check.compare`)."""
        import torch._dynamo.exc

        self.shapes.discard(key)
        names = {id(p): n for n, p in self.model.net.named_parameters()}
        tensors: list[tuple[str, torch.Tensor]] = []
        for params, states, _, _ in groups:
            for param, state in zip(params, states, strict=True):
                name = names.get(id(param), "a parameter")
                tensors.append((name, param))
                tensors += [(f"{what} of {name}", t) for what, t in (state or {}).items()]
        before = Rewind([t for _, t in tensors])
        try:
            with tracing("update"):
                self._graphs["update"](groups, grads)
        except torch._dynamo.exc.TorchDynamoException as exc:
            before.restore()
            raise CaptureError(
                f"compile='step' cannot capture the optimizer's update as a graph; torch.compile says: "
                f"{' '.join(str(exc).split())[:300]}. Use compile=True or compile=False"
            ) from exc
        after = Rewind(before.tensors)
        before.restore()
        try:
            self.model.optimizer.step()  # eagerly: the reference
            pairs = [
                (f"change of the {name}", compiled - start, tensor.detach() - start)
                for (name, tensor), start, compiled in zip(tensors, before.saved, after.saved, strict=True)
            ]
            compare(pairs, self.model.precision, "compile='step', the optimizer's update")
        except BaseException:
            before.restore()
            raise
        after.restore()
        self.shapes.add(key)

    def _check_settings(self) -> None:
        """An optimizer setting other than the lr changed since the graphs were traced (OneCycleLR
        or CyclicLR cycling the momentum or betas): a graph holds them as constants, so it
        would be traced again at every step. The optimizer steps eagerly from here on."""
        now = _settings(self.model.optimizer)
        if now[: len(self._settings)] == self._settings:  # unchanged, or groups added (finetuning)
            self._settings = now
            return
        warn_user(
            "compile='step': the optimizer's settings other than the lr change between steps (a "
            "scheduler cycling momentum or betas?); its step runs eagerly from here on (compiled, "
            "it would be traced again at every step). Forward and backward stay compiled"
        )
        optimizer = self.model.optimizer
        self.update, self.compiles_optimizer, self._optimizer_graph = None, False, optimizer.step
        self._settings = _settings(optimizer)
        float_lrs(optimizer)


def _settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """What a graph holds as constants of each param group (a tensor setting is an input:
    only its identity counts)."""
    return [
        {k: id(v) if isinstance(v, torch.Tensor) else v for k, v in group.items() if k not in _NOT_CONSTANT}
        for group in optimizer.param_groups
    ]


_NOT_CONSTANT = frozenset({"params", "lr", *IGNORED_KEYS})


def float_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Learning rates as Python floats again: a state saved by a compiled step holds tensors,
    which an eager optimizer (a foreach one on CUDA) may refuse."""
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor):
            group["lr"] = float(lr)


def _mark_stepped(optimizer: torch.optim.Optimizer) -> None:
    """What ``step()`` tells an LR scheduler (torch keeps it in ``_opt_called``, read at the
    scheduler's first step): without it, the scheduler warns that it stepped before the
    optimizer, which the graph's update did step."""
    if not getattr(optimizer, "_opt_called", False):
        optimizer._opt_called = True  # type: ignore[attr-defined]


def _float_lr_only(group: Mapping[str, Any]) -> bool:
    """A for-each group that is not capturable: torch refuses a tensor learning rate there."""
    return bool(group.get("foreach")) and not group.get("capturable")


def _trainable(model: Model) -> list[torch.Tensor]:
    """The parameters the optimizers step that require grad, each once, in the optimizers'
    order: the gradients the graph computes. (A parameter no optimizer holds gets no ``.grad``;
    eagerly, backward fills one that nothing reads.)"""
    seen: set[int] = set()
    trainable = []
    for optimizer in model.optimizers():
        for group in optimizer.param_groups:
            for tensor in group["params"]:
                if tensor.requires_grad and id(tensor) not in seen:
                    seen.add(id(tensor))
                    trainable.append(tensor)
    return trainable


def _has_grad_hooks(tensor: torch.Tensor) -> bool:
    # torch keeps a tensor's hooks in these attributes (no public way to ask); a tensor that
    # never had one holds None
    hooks = getattr(tensor, "_backward_hooks", None), getattr(tensor, "_post_accumulate_grad_hooks", None)
    return any(hooks)


@torch.no_grad()
def _accumulate(params: list[torch.Tensor], grads: Grads, copy: bool) -> None:
    """Add the graph's gradients into ``.grad`` as autograd's AccumulateGrad does: the gradient
    itself where there is none yet, summed into it otherwise (an accumulation window); a
    parameter the loss does not reach keeps its ``.grad``."""
    for param, grad in zip(params, grads, strict=True):
        if grad is None:
            continue
        if param.grad is None:
            param.grad = grad.clone() if copy else grad
        else:
            param.grad.add_(grad)


def _shapes(tree: Any) -> Any:
    """What a compiled graph is specialised to: each tensor's shape, dtype and device."""
    if isinstance(tree, torch.Tensor):
        return (tuple(tree.shape), tree.dtype, tree.device.type)
    if isinstance(tree, Mapping):
        return tuple((k, _shapes(v)) for k, v in tree.items())
    if isinstance(tree, (tuple, list)):
        return tuple(_shapes(v) for v in tree)
    return tree if isinstance(tree, (int, float, str, bool, type(None))) else type(tree)


def _tensor_or_none(value: Any) -> torch.Tensor | None:
    return value if isinstance(value, torch.Tensor) else None


def _describe_shape(key: tuple[Any, ...]) -> str:
    batch = key[3]
    if len(batch) == 4:  # (inputs shape, dtype, target shape, dtype)
        return str(tuple(batch[0]))
    return str(batch[0])


def _describe(key: tuple[Any, ...]) -> str:
    mode = "training" if key[2] else "evaluation"
    batch = key[3]
    if len(batch) == 4:
        return f"{mode}, inputs {tuple(batch[0])} {batch[1]}, target {tuple(batch[2])} {batch[3]}"
    return f"{mode}, inputs {batch[0]}, target {batch[1]}"


def _copied(out: tuple[Any, Any]) -> tuple[Any, Any]:
    """The outputs copied out of a CUDA graph's static buffers (the next replay overwrites them)."""
    clone: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.clone()  # noqa: E731
    preds, loss = out
    return tree_map(clone, preds), loss.clone()
