"""Checks of a loop's first step: a clear error instead of a deep torch one.

The first training and evaluation step of every loop runs through `first_step`, which
turns a failure into a message naming the part that failed (the net, the loss or a
metric) and the shapes it got. After the first training step, `check_step_contract`
refuses the features a custom ``train_step`` would silently bypass (docs/steps.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.data import describe, tree_map
from torchhouse.errors import ConfigError, DataError, TorchhouseError
from torchhouse.metrics import check_binary_accuracy_inputs, check_metric_values

if TYPE_CHECKING:
    from torchhouse.train.model import Model
    from torchhouse.train.state import FitState

__all__ = ["check_step_contract", "first_step"]

_USER_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AttributeError)


def check_step_contract(model: Model, state: FitState, batch: Any) -> None:
    """After the first training step: refuse features a custom step silently bypasses."""
    weighted = (isinstance(batch, (tuple, list)) and len(batch) == 3) or state.class_weight_table is not None
    if weighted and not state.weight_calls:
        raise ConfigError(
            f"{type(model).__name__}.train_step ignores the sample weights (it did not call "
            "self.sample_weights(batch)); pass them to compute_loss as the built-in step does, or "
            "leave sample_weight / class_weight out (docs/steps.md)"
        )
    if state.strategy.world_size > 1 and not state.net_calls:
        raise ConfigError(
            f"{type(model).__name__}.train_step calls the net directly, not through self.forward(...); "
            "under several processes only self.forward runs the DDP-wrapped net that averages "
            "gradients across ranks, so the ranks would drift apart (docs/steps.md)"
        )
    if state.optimizer_steps:
        return  # the step went through optimizer_step(): every feature applies
    if state.run_folder is not None and not state.optimizers_overridden:
        raise ConfigError(
            f"{type(model).__name__}.train_step steps its optimizer(s) itself (it did not call "
            "self.optimizer_step()); list them in an override of Model.optimizers() so checkpoints "
            "save and resume their state (docs/steps.md)"
        )
    needs = []
    if model.accumulate_grad_batches > 1:
        needs.append(f"accumulate_grad_batches={model.accumulate_grad_batches}")
    if model.gradient_clip_val is not None:
        needs.append(f"gradient_clip_val={model.gradient_clip_val}")
    if model.scaler is not None:
        needs.append('precision="16-mixed" (its grad scaler)')
    if state.on_nonfinite == "skip":
        needs.append('on_nonfinite="skip"')
    if model.lr_scheduler is not None and model.lr_scheduler_interval == "step":
        needs.append('lr_scheduler_interval="step"')
    if needs:
        raise ConfigError(
            f"{type(model).__name__}.train_step steps its optimizer(s) itself (it did not call "
            f"self.optimizer_step()), so {', '.join(needs)} cannot apply. Call self.backward(loss) "
            "and self.optimizer_step() in the step, or leave these options out (docs/steps.md)"
        )


def first_step(
    model: Model,
    step: Callable[[Any], Any],
    batch: Any,
    what: str,
    record: Callable[[dict[str, Any], Any], None],
) -> dict[str, Any]:
    """Run the first step of a loop and ``record`` it, turning a deep torch error into a clear one."""
    try:
        out = step(batch)
    except TorchhouseError:
        raise
    except _USER_ERRORS as exc:
        raise _explain(model, batch, exc, what) from exc
    step_name = f"{type(model).__name__}.{'train_step' if what == 'training' else 'eval_step'}"
    if not isinstance(out, dict) or not isinstance(out.get("loss"), torch.Tensor):
        raise DataError(f"{step_name} must return a dict with a 'loss' tensor, got {describe(out)}")
    if out["loss"].numel() != 1:
        raise DataError(
            f"{step_name}: the loss has shape {tuple(out['loss'].shape)}; it must be one number per "
            "batch (a loss with reduction='none' needs a .mean())"
        )
    try:
        check_metric_values(model.metrics, out)
        check_binary_accuracy_inputs(model.metrics, out.get("preds"))
        record(out, batch)
    except TorchhouseError:
        raise
    except _USER_ERRORS as exc:
        raise _explain(model, batch, exc, what) from exc
    return out


def _explain(model: Model, batch: Any, exc: Exception, what: str) -> Exception:
    """Find which part of the first step failed (net, loss or a metric) and say why."""
    try:
        inputs, target = model.unpack_batch(batch)
    except Exception:
        return exc
    with torch.no_grad():
        try:
            preds = model.forward(inputs)
        except Exception as forward_exc:
            shapes = describe(inputs)
            if isinstance(inputs, Mapping) and isinstance(forward_exc, TypeError):
                return DataError(
                    f"the net failed on the first {what} batch, a dict with keys {list(inputs)}: "
                    f"{forward_exc}. A dict batch is the net's keyword arguments, net(**batch), with "
                    "its 'labels' as the target (Hugging Face's convention); for another layout, "
                    "override Model.unpack_batch to return (inputs, target)."
                )
            return DataError(
                f"the net failed on the first {what} batch, whose inputs are {shapes}: "
                f"{forward_exc}. Check that the input shape matches what the net's first "
                "layer expects."
            )
        try:
            if model.loss is not None:
                model.loss(preds, target)
        except Exception as loss_exc:
            return DataError(
                f"the loss {type(model.loss).__name__} failed on preds {describe(preds)} and "
                f"target {describe(target)}: {loss_exc}{_loss_hint(model.loss, preds, target)}"
            )
    for name, metric in model.metrics.items():
        try:
            fn: Any = getattr(metric, "update", metric)
            fn(tree_map(lambda t: t.detach(), preds), target)
        except Exception as metric_exc:
            return DataError(
                f"metric {name!r} failed on preds {describe(preds)} and target "
                f"{describe(target)}: {metric_exc}"
            )
        finally:
            if hasattr(metric, "reset"):
                metric.reset()
    return exc


def _loss_hint(loss: Any, preds: Any, target: Any) -> str:
    if not (isinstance(preds, torch.Tensor) and isinstance(target, torch.Tensor)):
        return ""
    name = type(loss).__name__
    if isinstance(loss, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)):
        if target.is_floating_point() and target.shape != preds.shape:
            return (
                f". Hint: {name} takes class indices as int64 of shape {tuple(preds.shape[:1])}; "
                "convert the target with y.long() (or .astype('int64'))"
            )
        if not target.is_floating_point() and target.dtype not in (torch.int64, torch.uint8):
            return (
                f". Hint: {name} takes class indices as int64 (torch.long), not {target.dtype}; "
                "convert the target with y.long() (or .astype('int64'))"
            )
        if preds.dim() > 2 and target.dim() == 1:
            return (
                f". Hint: the net outputs {tuple(preds.shape)}, and {name} reads dim 1 as the "
                f"classes and the dims after it as positions (N, C, d1, ...), so it wants targets "
                f"of shape (N, d1, ...). For one class per sample the net must output (N, C): "
                "flatten the input (x.reshape(len(x), -1)) or add nn.Flatten() before the last layer"
            )
        if not target.is_floating_point() and target.dim() == preds.dim():
            return (
                f". Hint: class-index targets must have shape (N,), not {tuple(target.shape)}; "
                "use y.squeeze(1) or y.reshape(-1)"
            )
        if not target.is_floating_point() and target.numel() and preds.dim() >= 2:
            return (
                f". Hint: class indices must lie in [0, {preds.shape[1]}) for a net with "
                f"{preds.shape[1]} outputs"
            )
        return f". Hint: {name} expects logits (N, C) and int64 class indices (N,)"
    return ""
