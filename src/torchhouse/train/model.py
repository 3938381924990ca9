"""Model: fit / evaluate / predict / save / load over a plain `nn.Module`.

One training step is `Model.train_step`, two readable lines (sample weights aside)::

    inputs, target = self.unpack_batch(batch)
    preds, loss = self.forward_backward_step(inputs, target)  # forward, loss, backward, step

where ``forward_backward_step`` is ``forward_backward`` (``forward_and_loss`` under
``autocast``, then ``backward``) and ``optimizer_step``.

Override one of ``unpack_batch``, ``forward``, ``compute_loss``, ``train_step``,
``eval_step`` or ``predict_step`` to change what a step does. A `Model` holds the user's
objects (net, loss, optimizer, metrics, scheduler) and these step methods; where a fit
stands lives in its `FitState` (read through the properties of the same names), and the
epoch loop around the steps in `torchhouse.train.loop`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchhouse.callbacks.base import Callback
from torchhouse.callbacks.dispatch import CallbackList
from torchhouse.data.batches import as_pair, batch_weights, in_dataset_order, inputs_of
from torchhouse.data.streams import limit_steps
from torchhouse.data.trees import Batch, Tree, call_net, move_to
from torchhouse.errors import ConfigError
from torchhouse.metrics.epoch import EpochMetrics, float32_rounded, num_samples
from torchhouse.metrics.functions import (
    copy_metrics,
    metric_preds,
    normalise_metrics,
    resolve_weighted_metrics,
)
from torchhouse.parallel.strategies import strategy_for
from torchhouse.runs.history import History
from torchhouse.train import batch_loop
from torchhouse.train.activation_checkpointing import apply_activation_checkpointing
from torchhouse.train.building import build_optimizer, build_scheduler, resolve_device
from torchhouse.train.compile_check import (
    CompiledStepMismatch,
    check_compiled_net,
    checked_compiled_output,
    compiled_graph_count,
)
from torchhouse.train.compiled_step import CompiledStep, check_compile_settings
from torchhouse.train.determinism import deterministic_algorithms
from torchhouse.train.dynamo import COMPILE_OPTIONS
from torchhouse.train.fit_data import fit_data, loader_of, model_batches
from torchhouse.train.loop import FitLoop
from torchhouse.train.losses import (
    check_backward_loss,
    check_loss_inputs,
    class_weights_of,
    own_loss,
    weighted_loss,
)
from torchhouse.train.spec import FitSpec, check_positive_int
from torchhouse.train.state import FitState
from torchhouse.train.suggest import refuse_unknown
from torchhouse.train.weights import load_best_weights, load_weights, save_weights

__all__ = ["PRECISIONS", "Model"]

if TYPE_CHECKING:
    from torchhouse.train.lr_finder import LRFinder
    from torchhouse.train.report import Report

PRECISIONS = ("32", "bf16-mixed", "16-mixed")


class _FromFitState:
    """A read-only attribute of `Model` that reads the current `FitState`'s field of the same
    name: the state the step contract shares (docs/steps.md)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, model: Any, owner: type | None = None) -> Any:
        if model is None:
            return self
        return getattr(model.fit_state, self.name)

    def __set__(self, model: Any, value: Any) -> None:
        raise AttributeError(
            f"Model.{self.name} is read-only: it reads the fit's state (model.fit_state.{self.name}), "
            "which the loop owns; pass the fit argument that sets it instead (docs/steps.md)"
        )


class Model:
    """A Keras-style model over a plain PyTorch `nn.Module`.

    Args:
        net: any ``nn.Module``; it is moved to ``device``.
        loss: a callable ``loss(preds, target) -> tensor`` such as ``nn.CrossEntropyLoss()``.
        optimizer: ``None`` (AdamW, lr=1e-3, fused where the device supports it: see
            `default_optimizer`), a ``torch.optim.Optimizer`` over ``net``'s parameters, or a
            callable ``params -> Optimizer``.
        strategy: under several processes, ``"ddp"`` (default: each process holds the whole
            net) or ``"fsdp"`` (FSDP2: each holds a shard of every parameter, gradient and
            optimizer state; see `torchhouse.fsdp`). Alone, both train the plain net.
        weighted_metrics: as Keras: names (``"accuracy"``, ``"mae"``, ``"mse"``) or per-sample
            functions ``fn(preds, target) -> (N,)``, averaged with the sample weights
            (``sum(w * value) / sum(w)``; weight 1 without them). ``metrics`` stay unweighted.
        metrics: name -> torchmetrics ``Metric``, function ``fn(preds, target)``, or a name
            (``"accuracy"``, ``"mae"``, ``"mse"``) resolved from the loss as Keras does;
            ``th.metrics.accuracy`` with ``BCEWithLogitsLoss`` thresholds the logits at 0.
        lr_scheduler: a torch scheduler (ReduceLROnPlateau included) or a callable
            ``optimizer -> scheduler``. Stepped once per epoch unless
            ``lr_scheduler_interval="step"``.
        device: ``None`` picks cuda, then mps, then cpu.
        precision: "32", "bf16-mixed" or "16-mixed" (autocast; a GradScaler for fp16).
        accumulate_grad_batches: sum gradients over N batches before each optimizer step.
        gradient_clip_val: clip gradients to this norm (or value); no clipping by default.
        gradient_clip_algorithm: "norm" or "value".
        compile: ``True`` runs the net through ``torch.compile``; ``"step"`` compiles the whole
            training step: forward, loss, gradients and the optimizer's update as one graph
            (the learning rates kept in tensors, so a scheduler does not recompile). Each
            compiled graph's first call is checked against the eager step. Eager
            (``False``) is the default; see docs/compile.md for what each mode costs and refuses.
        cuda_graph: ``True`` (CUDA only) captures the compiled step in CUDA graphs, once per
            batch shape (the last, shorter batch of an epoch gets its own), and replays it.
        activation_checkpointing: True runs each top-level block of the net (its children, or
            the items of a ModuleList child) under ``torch.utils.checkpoint``
            (``use_reentrant=False``): activations are recomputed in backward instead of
            kept, for less memory and the same gradients bit for bit; a list of module
            classes and submodule names chooses the blocks.

    Example:
        >>> import torchhouse as th
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> model = th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu")
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> history = model.fit(x, y, epochs=2, progress="none")
        >>> len(history.history["loss"])
        2
    """

    def __init__(
        self,
        net: nn.Module,
        loss: Callable[..., torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        metrics: Mapping[str, Any] | None = None,
        lr_scheduler: Any = None,
        device: str | torch.device | None = None,
        *,
        precision: str = "32",
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        compile: bool | str = False,
        lr_scheduler_interval: str = "epoch",
        lr_scheduler_monitor: str | None = None,
        weighted_metrics: Any = None,
        strategy: str = "ddp",
        activation_checkpointing: bool | Sequence[Any] = False,
        cuda_graph: bool = False,
        **unexpected: Any,
    ) -> None:
        refuse_unknown("th.Model", unexpected, inspect.signature(Model.__init__).parameters)
        _check_construction(net, loss, precision, gradient_clip_val, gradient_clip_algorithm)
        if lr_scheduler_interval not in ("epoch", "step"):
            raise ConfigError(
                f"lr_scheduler_interval: expected 'epoch' or 'step', got {lr_scheduler_interval!r}"
            )
        if strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"strategy: expected 'ddp' or 'fsdp', got {strategy!r}")
        self.device = resolve_device(device)
        check_compile_settings(compile, cuda_graph, precision, self.device)
        self.net = net.to(self.device)
        # the names of the blocks that recompute their activations in backward (less memory)
        self.activation_checkpointing = apply_activation_checkpointing(self.net, activation_checkpointing)
        self.loss = loss
        self.metrics = normalise_metrics(metrics, loss)
        self.weighted_metrics = resolve_weighted_metrics(weighted_metrics, loss, self.metrics)
        self.precision = precision
        self.accumulate_grad_batches = check_positive_int("accumulate_grad_batches", accumulate_grad_batches)
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        # compile="step": the default AdamW is the one torch traces into the step's graph (not fused)
        self.optimizer = build_optimizer(
            self.net, optimizer, fused_default=not (compile == "step" or cuda_graph)
        )
        self.lr_scheduler = build_scheduler(self.optimizer, lr_scheduler)
        self.lr_scheduler_interval = lr_scheduler_interval
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.compiled = compile is True  # the net alone through torch.compile
        self.cuda_graph = cuda_graph
        self.strategy = strategy
        # the net as the steps call it outside a fit's strategy (compiled when compile=True)
        self.compiled_net: Callable[..., Any] = (
            torch.compile(self.net, options=COMPILE_OPTIONS) if self.compiled else self.net
        )
        # compile=True: why the compiled net was found wrong (then every later call of it is refused)
        self._compiled_net_refusal: CompiledStepMismatch | None = None
        # compile="step" / cuda_graph=True: the compiled training step (docs/compile.md)
        self.compiled_step = _compiled_step(self, compile, cuda_graph)
        # ... which computes the gradients in its graph where forward_backward's parts are the
        # built-in ones, and the optimizer's update too where the rest of the step is plain
        self._backward_compiled = _uses_builtin(self, "forward_and_loss", "backward", "autocast")
        self._step_compiled = (
            self._backward_compiled
            and self.accumulate_grad_batches == 1
            and gradient_clip_val is None
            and _uses_builtin(self, "forward_backward", "optimizer_step", "optimizers")
        )
        self._lr_steps_in_place = self.lr_scheduler is not None and lr_scheduler_interval == "step"
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "16-mixed" else None
        self._autocast = _autocast_for(precision, self.device)
        # A plain step (no accumulation, clipping or scaler) takes the shortest path.
        self._plain_step = (
            self.accumulate_grad_batches == 1 and gradient_clip_val is None and self.scaler is None
        )
        # the columns of the DataFrame the model was trained on: later DataFrames are matched by name
        self.input_columns: list[Any] | None = None
        self.history = History()
        self.stop_training = False  # Keras' flag: a callback sets it to stop after this epoch
        self._fit_state = FitState.idle(self)

    # ----------------------------------------------------------------------- the current fit

    @property
    def fit_state(self) -> FitState:
        """The `FitState` of the fit in progress, or of the last one (an idle state before any)."""
        return self._fit_state

    epoch = _FromFitState()
    global_step = _FromFitState()
    micro_step = _FromFitState()
    optimizer_steps = _FromFitState()
    net_calls = _FromFitState()
    weight_calls = _FromFitState()
    skipped_batches = _FromFitState()
    is_last_batch = _FromFitState()
    on_nonfinite = _FromFitState()
    class_weight_table = _FromFitState()
    train_metrics = _FromFitState()
    eval_metrics = _FromFitState()
    log_names = _FromFitState()

    @property
    def fit_params(self) -> dict[str, Any]:
        """The last fit's epochs, batch size, seed and run folder (what trackers record)."""
        spec = self._fit_state.spec
        return {**spec.tracker_params(), "run_dir": spec.run_dir}

    @property
    def overrides_optimizers(self) -> bool:
        """Whether this model's class overrides `optimizers` (a step that steps optimizers of its own)."""
        return type(self).optimizers is not Model.optimizers

    def epoch_metrics(
        self,
        capacity: int,
        sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ignore_nonfinite: bool = False,
    ) -> EpochMetrics:
        """A fresh on-device accumulator of this model's loss and metrics (``sum_over_ranks``:
        the strategy's, under several processes; ``ignore_nonfinite``: skipped batches uncounted)."""
        reduction = str(getattr(self.loss, "reduction", "mean"))
        metrics, weighted = copy_metrics(self.metrics), self.weighted_metrics
        return EpochMetrics(
            metrics, self.device, capacity, reduction, weighted, sum_over_ranks, ignore_nonfinite
        )

    def log_names_for(self, with_validation: bool, logs_lr: bool | None) -> list[str]:
        """The names a fit logs: loss, metrics, ``lr`` when logged, their ``val_`` versions."""
        names = ["loss", *self.metrics, *self.weighted_metrics]
        if logs_lr or (logs_lr is None and self.lr_scheduler is not None):
            names.append("lr")
        if with_validation:
            names += ["val_loss", *(f"val_{n}" for n in (*self.metrics, *self.weighted_metrics))]
        return names

    # ----------------------------------------------------------------------- one step

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision context for forward and loss (a no-op for precision "32")."""
        return self._autocast

    def unpack_batch(self, batch: Any) -> tuple[Tree, Tree]:
        """Split a batch into ``(inputs, target)``. Override for other batch layouts.

        A dict batch (from a tokenizer, a Hugging Face ``datasets`` collator, or ``fit(x=dict)``
        without ``y``) is the inputs as a whole, ``net(**batch)``, and its ``"labels"`` are the
        target the metrics see (Hugging Face's convention).
        """
        if isinstance(batch, Mapping):
            return batch, batch.get("labels")
        inputs, target = as_pair(batch)
        if target is None and isinstance(inputs, Mapping):
            target = inputs.get("labels")
        return inputs, target

    def forward(self, inputs: Tree) -> Any:
        """Run the net: tensor -> net(x), tuple -> net(*x), dict -> net(**x).

        Under several processes this runs the DDP-wrapped net, which averages gradients
        across ranks; a step must call the net through here (docs/steps.md).
        """
        state = self._fit_state
        if not torch.compiler.is_compiling():  # compile="step" counts its graph's call itself
            state.net_calls += 1
        if self.compiled:
            self._refuse_a_wrong_compiled_net()
            if not torch.is_grad_enabled() and state.strategy.world_size == 1:  # evaluation, prediction
                with self._refusing_a_wrong_compiled_net():
                    return checked_compiled_output(self, state.forward_net, inputs)
        return call_net(state.forward_net, inputs)  # type: ignore[arg-type]

    def forward_and_loss(
        self, inputs: Tree, target: Tree, sample_weight: torch.Tensor | None = None
    ) -> tuple[Any, torch.Tensor]:
        """``preds = forward(inputs)``, then ``loss = compute_loss(preds, target, sample_weight)``.

        The built-in steps call this; under ``compile="step"`` it is one compiled graph (its
        backward compiled with it), so a custom ``train_step`` opts in by calling it too.

        Example:
            >>> model = Model(nn.Linear(2, 1), loss=nn.MSELoss(), device="cpu")
            >>> preds, loss = model.forward_and_loss(torch.ones(4, 2), torch.zeros(4, 1))
            >>> tuple(preds.shape), loss.dim()
            ((4, 1), 0)
        """
        compiled = self.compiled_step
        if compiled is None:
            preds = self.forward(inputs)
            if sample_weight is None:
                return preds, self.compute_loss(preds, target)
            return preds, self.compute_loss(preds, target, sample_weight)
        self._fit_state.net_calls += 1
        return compiled.forward_and_loss(inputs, target, sample_weight)

    def forward_backward(
        self, inputs: Tree, target: Tree, sample_weight: torch.Tensor | None = None
    ) -> tuple[Any, torch.Tensor]:
        """`forward_and_loss` under `autocast`, then `backward`: the gradients of one batch
        added into the parameters' ``.grad``. Returns ``(preds, loss)``.

        `forward_backward_step` calls this. Under ``compile="step"`` it is one compiled
        graph that computes the gradients too (no autograd graph is built), unless the class
        overrides `forward_and_loss`, `backward` or `autocast` (then it is those, called as
        written). A custom ``train_step`` that needs the loss's autograd graph (to add another
        loss, say) calls `forward_and_loss` and `backward` instead.

        Example:
            >>> model = Model(nn.Linear(2, 1), loss=nn.MSELoss(), device="cpu")
            >>> preds, loss = model.forward_backward(torch.ones(4, 2), torch.zeros(4, 1))
            >>> model.net.weight.grad.shape
            torch.Size([1, 2])
        """
        compiled = self.compiled_step
        if compiled is not None and self._backward_compiled:
            out = compiled.forward_backward(inputs, target, sample_weight)
            if out is not None:  # None: no gradient to take, or hooks only backward runs
                state = self._fit_state
                state.net_calls += 1
                if state.on_nonfinite == "skip":
                    state.step_loss = out[1]
                return out
        graphs = 0
        if self.compiled:
            self.check_compiled_net(inputs, target, sample_weight)
            graphs = compiled_graph_count()
        with self.autocast():
            preds, loss = self.forward_and_loss(inputs, target, sample_weight)
        if self.compiled and compiled_graph_count() != graphs:
            # torch compiled a graph for this batch (a new shape, an attribute the forward
            # reads changed): the graph is checked before its gradients are used
            self.check_compiled_net(inputs, target, sample_weight, again=True)
        self.backward(loss)
        return preds, loss

    def check_compiled_net(
        self, inputs: Tree, target: Tree, sample_weight: torch.Tensor | None = None, again: bool = False
    ) -> None:
        """With ``compile=True``, once per fit (its first training step), and ``again`` after a
        step whose forward made torch compile another graph: the compiled net and the net
        itself compute the same loss and gradients on this batch, from the same state, or a
        `ConfigError` names what differs (`torchhouse.train.compile_check`). Nothing
        otherwise; in one process only (several would have to agree on it).
        `forward_backward` calls it; so does `LightModel`'s training step."""
        state = self._fit_state
        if not self.compiled or (state.compiled_net_checked and not again) or not torch.is_grad_enabled():
            return
        state.compiled_net_checked = True
        self._refuse_a_wrong_compiled_net()
        if state.strategy.world_size == 1:
            with self._refusing_a_wrong_compiled_net():
                check_compiled_net(self, inputs, target, sample_weight)

    def _refuse_a_wrong_compiled_net(self) -> None:
        if self._compiled_net_refusal is not None:
            raise CompiledStepMismatch(
                f"{self._compiled_net_refusal} (compile=True was refused for this model earlier: torch "
                "keeps the wrong graph, so the compiled net stays refused; build the Model with "
                "compile='step' or compile=False)"
            )

    @contextlib.contextmanager
    def _refusing_a_wrong_compiled_net(self) -> Iterator[None]:
        """A compiled net found wrong stays refused: torch keeps its graph, which a later call
        with the same shapes would run without compiling (and so without a check)."""
        try:
            yield
        except CompiledStepMismatch as refusal:
            self._compiled_net_refusal = refusal
            raise

    def forward_backward_step(
        self, inputs: Tree, target: Tree, sample_weight: torch.Tensor | None = None
    ) -> tuple[Any, torch.Tensor]:
        """`forward_backward`, then `optimizer_step`: the whole training step on one batch.
        Returns ``(preds, loss)``.

        The built-in `train_step` calls this. Under ``compile="step"``, a plain step (no
        accumulation, clipping or ``on_nonfinite="skip"``) of torch's Adam, AdamW or SGD is one
        compiled graph: forward, loss, gradients and the optimizer's update
        (`torchhouse.train.traced_update`); anything else runs the two calls.

        Example:
            >>> model = Model(nn.Linear(2, 1), loss=nn.MSELoss(), device="cpu")
            >>> before = model.net.weight.detach().clone()
            >>> _ = model.forward_backward_step(torch.ones(4, 2), torch.zeros(4, 1))
            >>> bool((model.net.weight != before).all()), model.net.weight.grad is None
            (True, True)
        """
        compiled = self.compiled_step
        if compiled is not None and self._step_compiled:
            out = compiled.train_step(inputs, target, sample_weight)
            if out is not None:  # None: it does not apply to this step (the reasons in its docs)
                self._fit_state.net_calls += 1
                self._count_step()
                self._step_scheduler()
                return out
        preds, loss = self.forward_backward(inputs, target, sample_weight)
        self.optimizer_step()
        return preds, loss

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers this model steps; checkpoints save and restore each of them.

        Override it when ``train_step`` steps optimizers of its own (a GAN), returning all
        of them, so a resumed run continues their state exactly.
        """
        return [self.optimizer]

    def sample_weights(self, batch: Any) -> torch.Tensor | None:
        """The per-sample weights of a batch, or None: its third element (``sample_weight``),
        times ``class_weight[target]`` in training when fit was given ``class_weight``.

        A third element must be a floating vector of the batch's length (`data.batch_weights`).
        The built-in steps pass the weights to `compute_loss`; a custom step should too (fit
        refuses weights a step never asked for, after the first batch).
        """
        state = self._fit_state
        state.weight_calls += 1
        weight = batch_weights(batch) if isinstance(batch, (tuple, list)) and len(batch) == 3 else None
        table = state.class_weight_table if self.net.training else None
        if table is not None:
            _, target = self.unpack_batch(batch)
            from_classes = class_weights_of(table, target)
            weight = from_classes if weight is None else weight.reshape(-1) * from_classes
        return weight

    def compute_loss(
        self, preds: Any, target: Any, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of one batch. Override to combine several losses.

        With ``sample_weight`` each sample's loss is multiplied by its weight and the result
        reduced as the loss reduces (`torchhouse.weighted_loss`): ``sum(w * loss) / N`` for a
        mean (Keras' rule), the loss's own normaliser with class weights or ignored targets;
        weights of one give the unweighted loss bit for bit.
        """
        if self.loss is None:
            own = own_loss(preds)
            if own is None:
                raise ConfigError(
                    "loss=None: the net's output carries no loss (a Hugging Face model computes one "
                    "when the batch holds 'labels'; a dict output needs a 'loss' key); pass loss=... "
                    "or override compute_loss"
                )
            if sample_weight is not None:
                raise ConfigError("sample weights need a torch loss: the net's own loss is already reduced")
            return own
        state = self._fit_state
        if state.check_loss_shapes:
            state.check_loss_shapes = False
            check_loss_inputs(self.loss, preds, target)
        if sample_weight is None:
            return self.loss(preds, target)
        return weighted_loss(self.loss, preds, target, sample_weight)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled for fp16, divided for gradient accumulation).

        The loss is also what the next `optimizer_step` checks with ``on_nonfinite="skip"``.
        """
        reaches_net = check_backward_loss(loss, self.net)
        if self._fit_state.on_nonfinite == "skip":
            self._fit_state.step_loss = loss.detach()
        if not reaches_net:
            return  # a frozen net: nothing to backpropagate into
        if self._plain_step:
            loss.backward()
            return
        if self.accumulate_grad_batches > 1:
            loss = loss / self.accumulate_grad_batches
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def optimizer_step(self) -> bool:
        """Step the optimizer (at the end of an accumulation window); returns True if it stepped.

        Applies, in order: the non-finite skip (``on_nonfinite="skip"``: the loss given to
        the last `backward` is checked, and a non-finite one drops the pending gradients),
        the accumulation window, gradient clipping, the fp16 grad scaler, the optimizer
        step, ``zero_grad`` and a per-step scheduler.
        """
        state = self._fit_state
        self._count_step()
        if state.on_nonfinite == "skip" and not self._step_loss_finite():
            self.optimizer.zero_grad(set_to_none=True)
            state.micro_step = 0
            state.skipped_batches += 1
            return False
        step = self.optimizer.step if self.compiled_step is None else self.compiled_step.optimizer_step
        if self._plain_step:
            step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            state.micro_step += 1
            if state.micro_step < self.accumulate_grad_batches and not state.is_last_batch:
                return False
            state.micro_step = 0
            if self.gradient_clip_val is not None:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                self.clip_gradients()
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                step()
            self.optimizer.zero_grad(set_to_none=True)
        self._step_scheduler()
        return True

    def _count_step(self) -> None:
        """An optimizer step begins: counted, and its learning rate kept for the history."""
        state = self._fit_state
        state.optimizer_steps += 1
        lr = self.optimizer.param_groups[0]["lr"]  # what the history logs as "lr"
        if isinstance(lr, torch.Tensor) and self._lr_steps_in_place:
            lr = lr.clone()  # compile="step": a per-step scheduler fills this tensor in place
        state.last_step_lr = lr

    def _step_scheduler(self) -> None:
        """After an optimizer step: a per-step scheduler steps."""
        if self.lr_scheduler is not None and self.lr_scheduler_interval == "step":
            self.lr_scheduler.step()

    def clip_gradients(self) -> None:
        """Clip gradients by norm or value, as configured."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        assert self.gradient_clip_val is not None
        if self.gradient_clip_algorithm == "norm":
            nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
        else:
            nn.utils.clip_grad_value_(params, self.gradient_clip_val)

    def _step_loss_finite(self) -> bool:
        state = self._fit_state
        if state.step_loss is None:
            return True
        finite = bool(torch.isfinite(state.step_loss).all())  # the one host sync "skip" costs
        state.step_loss = None
        return finite

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One training step: forward, loss, backward, optimizer step.

        Returns a dict with ``loss`` (for the logged epoch loss), and ``preds`` and
        ``target`` (for the metrics). Extra scalar tensors in the dict are logged too.
        """
        inputs, target = self.unpack_batch(batch)
        weight = self.sample_weights(batch)
        preds, loss = self.forward_backward_step(inputs, target, weight)
        out = {"loss": loss, "preds": metric_preds(preds), "target": target}
        return out if weight is None else {**out, "sample_weight": weight}

    def eval_step(self, batch: Batch) -> dict[str, Any]:
        """One evaluation step (run under ``torch.no_grad``): forward and loss."""
        inputs, target = self.unpack_batch(batch)
        weight = self.sample_weights(batch)
        with self.autocast():
            preds, loss = self.forward_and_loss(inputs, target, weight)
        out = {"loss": loss, "preds": metric_preds(preds), "target": target}
        return out if weight is None else {**out, "sample_weight": weight}

    def predict_step(self, batch: Batch) -> Any:
        """One prediction step (run under ``torch.no_grad``): the net's output."""
        if type(self).unpack_batch is Model.unpack_batch:
            inputs = inputs_of(batch)
        else:
            inputs, _ = self.unpack_batch(batch)
        with self.autocast():
            output = self.forward(inputs)
        return metric_preds(output) if self.loss is None else output  # a net with its own loss: its logits

    # ----------------------------------------------------------------------- fit

    def fit(
        self,
        x: Any,
        y: Any = None,
        *,
        validation_data: Any = None,
        validation_split: float = 0.0,
        epochs: int = 1,
        batch_size: int = 32,
        shuffle: bool = True,
        callbacks: Iterable[Callback] | None = None,
        seed: int | None = None,
        progress: str | bool = "auto",
        run_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        checkpoint_every: str | int = "epoch",
        keep_checkpoints: int = 3,
        monitor: str | None = None,
        on_nonfinite: str = "raise",
        plot: str | None = None,
        tensorboard: bool | None = None,
        initial_epoch: int = 0,
        validation_freq: int = 1,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        sample_weight: Any = None,
        class_weight: Mapping[int, float] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        max_time: float | str | None = None,
        deterministic: bool = False,
        validation_every_n_steps: int | None = None,
        **unexpected: Any,
    ) -> History:
        """Train the net and return its `History`.

        Args:
            x: the training data: arrays / tensors / DataFrames (with ``y``), a tuple or dict
                of arrays for several inputs (a dict with ``"labels"`` needs no ``y``), a
                ``Dataset``, a Hugging Face ``datasets.Dataset`` or a ``DataLoader``.
            y: the targets, for arrays; None for the others (they hold their targets).
            validation_data: ``(x_val, y_val)``, a Dataset or a DataLoader.
            validation_split: hold out this last fraction of ``x`` for validation.
            epochs: train until this many epochs are done (a resumed run counts the
                epochs it already did).
            batch_size: samples per batch for arrays and Datasets.
            shuffle: reshuffle the training data every epoch (seeded).
            callbacks: `Callback` objects.
            seed: seeds Python, NumPy and torch and the shuffling, for repeatable runs.
            progress: "auto", "bar", "notebook", "epoch" (a line per epoch) or "none".
            run_dir: a folder for config, history, weights and resumable checkpoints.
            resume: continue from the newest intact state in ``run_dir``. Without it, a
                folder that already holds a run is refused (one run per folder).
            overwrite: replace the run already in ``run_dir`` (its files are removed first).
            checkpoint_every: "epoch", or an int N to also save every N batches.
            keep_checkpoints: how many of the newest states to keep (the best is kept too).
            monitor: the value that picks the best checkpoint (default ``val_loss`` with
                validation data, else ``loss``).
            on_nonfinite: "raise" (default) raises `NonFiniteLossError` at a NaN/inf training
                loss, naming the first bad batch; "stop" stops the fit there and keeps the
                history (as Keras' ``TerminateOnNaN``, which sets it); "skip" skips the
                optimizer step for such a batch (this costs a host sync per step). A
                non-finite loss is found within 32 steps (one read of a device flag; 64 on a GPU), and no
                state or weights file is written from the weights that follow it.
            plot: "live" redraws the training curves once per epoch in Jupyter.
            tensorboard: write TensorBoard events to ``run_dir/tensorboard`` (default: when
                ``run_dir`` is given and the tensorboard package is installed).
            initial_epoch: the (0-based) epoch to start at, as Keras: epochs
                ``initial_epoch .. epochs - 1`` are trained (a resumed run starts where it stopped).
            validation_freq: validate every this many epochs (Keras); the other epochs log no
                ``val_*`` values (NaN in the history).
            steps_per_epoch: batches per epoch (Keras). Needed for a Python generator or an
                infinite ``IterableDataset``; a loader or stream is then read on across
                epochs, arrays start each epoch afresh.
            validation_steps: batches per validation pass (for a generator or infinite data).
            sample_weight: one weight per training sample (arrays), as Keras: the loss is
                ``sum(w * loss) / N`` per batch. A DataLoader or ``validation_data`` may carry
                weights as a third element ``(x, y, w)``. Metrics stay unweighted.
            class_weight: ``{class index: weight}`` for training (missing classes weigh 1);
                multiplied with ``sample_weight`` when both are given.
            collate_fn: makes a batch from a Dataset's rows (for ``x`` and a Dataset given as
                ``validation_data``), as a DataLoader's does: e.g.
                ``transformers.DataCollatorWithPadding(tokenizer)`` pads rows of different
                lengths. A DataLoader brings its own; arrays are sliced, not collated.
            max_time: a time limit for this call, in seconds or ``"HH:MM:SS"``: the fit stops
                after the first step that ends past it (``on_fit_exit`` status
                ``"time_limit"``); with ``run_dir`` it writes a resumable state there, and
                ``resume=True`` continues exactly as if it had never stopped.
            deterministic: run the fit with ``torch.use_deterministic_algorithms(True)`` (and
                ``CUBLAS_WORKSPACE_CONFIG`` on CUDA, cuDNN's deterministic mode), as it was
                before the fit afterwards; an operation without a deterministic version raises.
            validation_every_n_steps: also validate every N training steps inside an epoch
                (Lightning's ``val_check_interval``, Hugging Face's ``eval_steps``): the callbacks
                get ``on_validation_end`` with the values and ``"step"`` (the global step),
                TensorBoard and MLflow record them under the step (``step/val_loss``...). The
                history keeps one row per epoch, from the epoch-end validation, and what
                watches the history (EarlyStopping, ModelCheckpoint, the best state) watches
                those epoch values.

        Example:
            >>> net = nn.Linear(3, 1)
            >>> model = Model(net, loss=nn.MSELoss(), device="cpu")
            >>> h = model.fit(torch.randn(32, 3), torch.randn(32, 1), epochs=3, progress="none")
            >>> h.epoch
            [0, 1, 2]
        """
        refuse_unknown("Model.fit", unexpected, inspect.signature(Model.fit).parameters)
        spec = FitSpec.from_fit(locals())  # every argument checked here: a refused fit changes nothing
        if not any(p.requires_grad for p in self.net.parameters()):
            warnings.warn(
                "fit: the net has no trainable parameters; it reports the loss and changes nothing",
                stacklevel=2,
            )
        strategy = strategy_for(self.device, self.strategy)
        data = fit_data(self, spec, strategy, x, y, validation_data, sample_weight)
        fit_loop = FitLoop(self, spec, data, strategy)
        previous = self.use_fit_state(fit_loop.state)
        try:
            with deterministic_algorithms(spec.deterministic):
                history = fit_loop.run()
        except BaseException:
            if not fit_loop.began:  # refused before the first epoch: the model is as it was
                self.use_fit_state(previous)
            raise
        finally:
            strategy.unwrap(self)
            fit_loop.state.forward_net = self.compiled_net  # the fit's wrapper (DDP) is dropped
        if self.input_columns is None:
            self.input_columns = data.input_columns  # what later DataFrames are matched to
        return history

    def evaluate(
        self,
        x: Any,
        y: Any = None,
        *,
        batch_size: int = 32,
        progress: str | bool = "none",
        callbacks: Iterable[Callback] | None = None,
        steps: int | None = None,
        sample_weight: Any = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        weights: str | None = None,
    ) -> dict[str, float]:
        """Loss and metrics over a whole data set, as sample-weighted means.

        ``weights="best"`` evaluates the best state the last fit's run folder kept (see
        `load_best`) and leaves the model's own weights as they were; ``collate_fn`` as in `fit`.
        A value a float32 holds exactly is given as float32 prints it (a torchmetrics 0.925,
        not 0.925000011920929).

        Example:
            >>> model = Model(nn.Linear(2, 1), loss=nn.MSELoss(), device="cpu")
            >>> sorted(model.evaluate(torch.randn(10, 2), torch.randn(10, 1)))
            ['loss']
        """
        batch_size = check_positive_int("batch_size", batch_size)
        if steps is not None:
            check_positive_int("steps", steps)
        strategy = strategy_for(self.device, self.strategy)
        batches = model_batches(
            self,
            loader_of(x, "test"),
            y,
            batch_size,
            False,
            None,
            steps=steps,
            sample_weight=sample_weight,
            collate_fn=collate_fn,
        )
        batches = strategy.shard(limit_steps(batches, steps, "x", "steps"), 0)
        metrics = self.epoch_metrics(64, strategy.sum_over_ranks)
        with self._weights(weights), self._stepping(FitState.idle(self, strategy)):
            values = batch_loop.evaluate(self, batches, metrics, self._callback_list(callbacks))
        return float32_rounded(values)  # 0.925, not the float32 0.925000011920929

    @contextlib.contextmanager
    def _weights(self, which: str | None) -> Any:
        """The weights to evaluate with: the model's (None) or the run folder's best, for a while."""
        if which is None:
            yield
            return
        if which != "best":
            raise ConfigError(f"weights: expected None or 'best', got {which!r}")
        kept = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        try:
            self.load_best()
            yield
        finally:
            self.net.load_state_dict(kept)

    def predict(
        self,
        x: Any,
        *,
        batch_size: int = 32,
        steps: int | None = None,
        callbacks: Iterable[Callback] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> Any:
        """The net's outputs for ``x``, all batches concatenated, as CPU tensors (``collate_fn``
        as in `fit`).

        ``x`` holds inputs only (arrays, a Dataset, or a DataLoader yielding inputs or
        ``(inputs, target)`` pairs, whose targets are ignored).

        Example:
            >>> model = Model(nn.Linear(2, 3), device="cpu")
            >>> model.predict(torch.randn(5, 2)).shape
            torch.Size([5, 3])
        """
        batch_size = check_positive_int("batch_size", batch_size)
        x = loader_of(x, "predict")
        if isinstance(x, torch.utils.data.DataLoader) and not in_dataset_order(x):
            warnings.warn(
                f"predict: the DataLoader's {type(x.sampler).__name__} shuffles (or picks) its rows, so the "
                "outputs are not in the dataset's order; pass a DataLoader with shuffle=False (a "
                "SequentialSampler) to get one output per row, in order",
                stacklevel=2,
            )
        if steps is not None:
            check_positive_int("steps", steps)
        batches = model_batches(
            self, x, None, batch_size, False, None, require_target=False, steps=steps, collate_fn=collate_fn
        )
        batches = limit_steps(batches, steps, "x", "steps")
        with self._stepping(FitState.idle(self)):
            return batch_loop.predict(self, batches, self._callback_list(callbacks))

    def report(
        self, x: Any, y: Any = None, *, batch_size: int = 32, labels: Sequence[Any] | None = None
    ) -> Report:
        """What the model gets right and wrong on ``x`` (and ``y``): a `Report` with the
        confusion matrix, per-class precision / recall / F1 / support and their means
        (classification, as scikit-learn computes them), or MAE / RMSE / R² (regression),
        ``worst(k)`` (the samples with the highest loss), ``to_markdown()`` and ``plot()``.
        ``labels`` names the classes.

        Example::

            report = model.report(x_test, y_test, labels=["malignant", "benign"])
            print(report.summary["macro_f1"]); report.worst(5)
        """
        from torchhouse.train.reporting import collect_report

        batch_size = check_positive_int("batch_size", batch_size)
        batches = model_batches(self, loader_of(x, "test"), y, batch_size, False, None)
        with self._stepping(FitState.idle(self)):
            return collect_report(self, batches, labels)

    def use_fit_state(self, state: FitState) -> FitState:
        """Make ``state`` the current `FitState` (the one the step methods and the properties
        read) and return the one it replaces; the loops (fit, `LightModel`) call it."""
        previous, self._fit_state = self._fit_state, state
        return previous

    @contextlib.contextmanager
    def _stepping(self, state: FitState) -> Any:
        """Run steps outside a fit under their own `FitState`, then bring the last fit's back."""
        previous = self.use_fit_state(state)
        try:
            yield state
        finally:
            self.use_fit_state(previous)

    def _callback_list(self, callbacks: Iterable[Callback] | None) -> CallbackList | None:
        if not callbacks:
            return None
        given = list(callbacks)
        for callback in given:
            if not isinstance(callback, Callback):
                raise ConfigError(
                    f"callbacks: expected th.callbacks.Callback objects, got {type(callback).__name__}"
                )
        return CallbackList(given, self)

    # ----------------------------------------------------------------------- one batch (Keras)

    def train_on_batch(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        class_weight: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """One training step on one batch, as Keras' ``train_on_batch``; returns its values.

        The values are this batch's: the loss, or ``[loss, *metrics]`` with metrics, or a
        dict with ``return_dict=True``. Each call steps the optimizer (accumulation does not
        span calls). ``sample_weight`` and ``class_weight`` weigh the loss as in `fit`.

        Example:
            >>> model = Model(nn.Linear(3, 1), loss=nn.MSELoss(), device="cpu")
            >>> loss = model.train_on_batch(torch.randn(8, 3), torch.randn(8, 1))
            >>> isinstance(loss, float)
            True
        """
        state = FitState.idle(self)
        state.class_weight_table = FitSpec.from_fit({"class_weight": class_weight}).class_weight_table(
            self.device
        )
        state.is_last_batch = True  # flush any accumulation window
        batch = self._one_batch(x, y, sample_weight)
        self.net.train()
        with self._stepping(state):
            out = self.train_step(batch)
        return self._batch_values(out, batch, return_dict)

    def test_on_batch(
        self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False
    ) -> Any:
        """Loss and metrics of one batch without training, as Keras' ``test_on_batch``.

        Example:
            >>> model = Model(nn.Linear(3, 1), loss=nn.MSELoss(), device="cpu")
            >>> sorted(model.test_on_batch(torch.randn(8, 3), torch.randn(8, 1), return_dict=True))
            ['loss']
        """
        batch = self._one_batch(x, y, sample_weight)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad(), self._stepping(FitState.idle(self)):
                out = self.eval_step(batch)
        finally:
            self.net.train(was_training)
        return self._batch_values(out, batch, return_dict)

    def predict_on_batch(self, x: Any) -> Any:
        """The net's outputs for one batch of inputs, as a CPU tensor (Keras' ``predict_on_batch``).

        Example:
            >>> Model(nn.Linear(3, 2), device="cpu").predict_on_batch(torch.randn(4, 3)).shape
            torch.Size([4, 2])
        """
        batches = model_batches(self, x, None, 2**31 - 1, False, None, require_target=False)
        with self._stepping(FitState.idle(self)):
            return batch_loop.predict(self, batches)

    def _one_batch(self, x: Any, y: Any, sample_weight: Any = None) -> Any:
        batches = model_batches(self, x, y, 2**31 - 1, False, None, sample_weight=sample_weight)
        batch = next(iter(batches.iterate(None)))
        if batches.needs_transfer(self.device):
            batch = move_to(batch, self.device)
        return batch

    def _batch_values(self, out: dict[str, Any], batch: Any, return_dict: bool) -> Any:
        values = self.epoch_metrics(1)
        values.update(out, num_samples(out, batch))
        logs = values.compute()
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    # ----------------------------------------------------------------------- save / load

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the net's weights as safetensors, with a JSON sidecar of metadata.

        ``model.save("m.safetensors")`` writes ``m.safetensors`` and ``m.json``. Both
        writes are atomic. Nothing is pickled. Under ``strategy="fsdp"`` call it on every
        rank: the full weights are gathered and rank 0 writes them.

        Example:
            >>> import tempfile, os
            >>> model = Model(nn.Linear(2, 1), device="cpu")
            >>> path = model.save(os.path.join(tempfile.mkdtemp(), "m.safetensors"))
            >>> model.load_weights(path)
        """
        return save_weights(self, path)

    def load_weights(self, path: str | os.PathLike[str], strict: bool = True) -> None:
        """Load weights saved by `save` (or any safetensors file of a state dict).

        Refuses pickle files (``.pt``/``.pth``) without running them, and names every
        missing, unexpected or mis-shaped tensor when the file does not fit the net.
        """
        columns = load_weights(self, path, strict)
        if columns is not None:
            self.input_columns = columns

    def load_best(self, run_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Load the weights of the best state a run folder kept (Lightning's ``ckpt_path="best"``).

        ``run_dir`` defaults to the last fit's. "Best" is by that fit's ``monitor``; returns
        ``{"state", "epoch" (counted from 1), "monitor", "value"}``.

        Example::

            model.fit(x, y, validation_split=0.2, epochs=20, run_dir="runs/a")
            model.load_best()          # the epoch with the lowest val_loss
            model.evaluate(x_test, y_test)
        """
        folder = run_dir if run_dir is not None else self._fit_state.spec.run_dir
        if folder is None:
            raise ConfigError(
                "load_best: give run_dir (the last fit had none); the best state lives in a run folder"
            )
        return load_best_weights(self, folder)

    def find_lr(
        self,
        x: Any,
        y: Any = None,
        *,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_steps: int = 100,
        batch_size: int = 32,
        stop_factor: float = 4.0,
        seed: int | None = None,
    ) -> LRFinder:
        """The learning-rate range test: train ``num_steps`` steps with the lr growing
        geometrically from ``start_lr`` to ``end_lr`` (stopping early once the smoothed loss
        exceeds ``stop_factor`` times its best), then put everything back: the net's weights
        and gradients, the optimizer's state, the RNG are exactly as before the call.

        Returns an `LRFinder`: ``lrs``, ``losses`` (smoothed), ``suggestion`` (where the loss
        falls fastest) and ``plot()``. Data as for `fit` (shuffled, seeded by ``seed``).

        Example::

            finder = model.find_lr(x, y)
            print(finder.suggestion); finder.plot()
        """
        from torchhouse.train.lr_finder import find_lr

        return find_lr(self, x, y, start_lr, end_lr, num_steps, batch_size, stop_factor, seed)

    def to_lightning(self) -> Any:
        """This model as a ``lightning.LightningModule`` (its net, loss, optimizer, scheduler and
        metrics), to train with any ``lightning.Trainer``; see `torchhouse.LightModel`.

        Example::

            trainer = lightning.Trainer(max_epochs=5, accelerator="gpu", devices=2, strategy="ddp")
            trainer.fit(model.to_lightning(), train_loader, val_loader)
        """
        from torchhouse.train.lightning_module import lightning_module

        return lightning_module(self, custom_eval=type(self).eval_step is not Model.eval_step)

    def export(
        self,
        path: str | os.PathLike[str],
        example_input: Any,
        format: str = "pt2",
        dynamic_batch: bool = True,
    ) -> Path:
        """Write the net as a self-contained program that runs without its Python code.

        ``format="pt2"`` uses ``torch.export`` (load it with ``th.load_exported``);
        ``format="onnx"`` needs the onnx extra. The weights are also written as
        safetensors + JSON beside it. ``example_input`` is one batch of inputs (any batch
        size; the batch dimension stays dynamic). Nets with data-dependent Python control
        flow cannot be exported; the error says why.

        Example::

            model.export("runs/x/model.pt2", x_test[:2])
            th.load_exported("runs/x/model.pt2").predict(x_new)
        """
        from torchhouse.files.export import export_model

        return export_model(self, path, example_input, format=format, dynamic_batch=dynamic_batch)

    def summary(self, input_size: Any = None, input_data: Any = None, **kwargs: Any) -> Any:
        """`torchhouse.summary` of the net (a layer table with output shapes and parameters)."""
        from torchhouse.summary import summary

        return summary(self.net, input_size=input_size, input_data=input_data, device=self.device, **kwargs)


def _check_construction(
    net: Any, loss: Any, precision: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any
) -> None:
    if not isinstance(net, nn.Module):
        raise ConfigError(f"net: expected a torch.nn.Module, got {type(net).__name__}")
    if loss is not None and not callable(loss):
        raise ConfigError(f"loss: expected a callable like nn.CrossEntropyLoss(), got {loss!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if gradient_clip_algorithm not in ("norm", "value"):
        raise ConfigError(
            f"gradient_clip_algorithm: expected 'norm' or 'value', got {gradient_clip_algorithm!r}"
        )
    if gradient_clip_val is not None and not gradient_clip_val > 0:
        raise ConfigError(f"gradient_clip_val: expected a number > 0, got {gradient_clip_val!r}")


def _compiled_step(model: Model, compile: bool | str, cuda_graph: bool) -> CompiledStep | None:
    if compile != "step" and not cuda_graph:
        return None
    own_forward, own_loss = not _uses_builtin(model, "forward"), not _uses_builtin(model, "compute_loss")
    return CompiledStep(model, cuda_graph, own_forward=own_forward, own_loss=own_loss)


def _uses_builtin(model: Model, *names: str) -> bool:
    """Whether ``model``'s class keeps `Model`'s own methods of these names."""
    return all(getattr(type(model), name) is getattr(Model, name) for name in names)


def _autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
