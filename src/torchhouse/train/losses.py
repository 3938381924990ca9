"""A torch loss with per-sample weights, reduced as the loss itself reduces.

``sample_weight`` (and ``class_weight``, and a third batch element) multiply each sample's
loss; the weighted losses are then reduced exactly as the loss object would reduce the
unweighted ones: the mean over elements (``sum(w * loss) / N``, Keras' rule, for one value
per sample), the sum, a ``CrossEntropyLoss(weight=...)``'s division by the summed class
weights, the count of targets that are not ``ignore_index``. So weights of one give the
loss itself, bit for bit (tested for every loss listed here).

Losses not listed (or a ``CrossEntropyLoss`` with ``label_smoothing`` and class-index
targets) are refused with weights: override ``Model.compute_loss`` for them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> preds, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    >>> loss = nn.CrossEntropyLoss()
    >>> torch.equal(weighted_loss(loss, preds, target, torch.ones(4)), loss(preds, target))
    True
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchhouse.data.trees import describe
from torchhouse.errors import ConfigError, DataError

__all__ = ["ELEMENTWISE_LOSSES", "RESCALED_LOSSES", "check_backward_loss", "weighted_loss"]

# Losses torch computes element by element and then reduces with .mean() / .sum(), whose
# gradients are the same computed either way: weighing the elements between the two is
# exact, forward and backward (tests/test_frontier.py checks each, bit for bit).
ELEMENTWISE_LOSSES: tuple[type[nn.Module], ...] = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.KLDivLoss,
    nn.PoissonNLLLoss,
    nn.MultiLabelSoftMarginLoss,
)
# Losses with an element-wise ``weight`` of their own: the sample weights join it there.
RESCALED_LOSSES: tuple[type[nn.Module], ...] = (nn.BCELoss, nn.BCEWithLogitsLoss)

# loss object -> its copy with reduction="none" (a shallow copy shares the loss's buffers)
_unreduced_copies: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def weighted_loss(loss: Any, preds: torch.Tensor, target: Any, weight: torch.Tensor) -> torch.Tensor:
    """``loss(preds, target)`` with each sample's loss multiplied by ``weight`` (one per sample)."""
    reduction = getattr(loss, "reduction", None)
    if reduction not in ("mean", "sum", "batchmean"):
        raise ConfigError(
            f"sample_weight / class_weight: the loss {loss!r} has no 'mean' or 'sum' reduction to weigh "
            "its per-sample values in; use a torch loss or override Model.compute_loss"
        )
    weight = weight.reshape(-1)
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return _weighted_classification(loss, preds, target, weight)
    if isinstance(loss, RESCALED_LOSSES):
        rescale = _per_sample(weight, preds)
        own: torch.Tensor | None = loss.weight  # type: ignore[assignment]
        if own is not None:
            rescale = own * rescale
        if isinstance(loss, nn.BCEWithLogitsLoss):
            return F.binary_cross_entropy_with_logits(
                preds, target, weight=rescale, pos_weight=loss.pos_weight, reduction=str(reduction)
            )
        return F.binary_cross_entropy(preds, target, weight=rescale, reduction=str(reduction))
    if isinstance(loss, ELEMENTWISE_LOSSES):
        unreduced: torch.Tensor = _unreduced(loss)(preds, target)
        weighted = unreduced * _per_sample(weight, unreduced)
        if reduction == "mean":
            return weighted.mean()
        if reduction == "batchmean":  # KLDivLoss: the sum over the batch size, as torch computes it
            return weighted.sum() / preds.shape[0]
        return weighted.sum()
    raise ConfigError(
        f"sample_weight / class_weight: weights are supported for CrossEntropyLoss, NLLLoss and "
        f"{', '.join(c.__name__ for c in (*RESCALED_LOSSES, *ELEMENTWISE_LOSSES))}, where weights of one "
        f"give the loss itself exactly; {type(loss).__name__} is not among them: override "
        "Model.compute_loss to weigh it yourself"
    )


def _weighted_classification(
    loss: nn.CrossEntropyLoss | nn.NLLLoss, preds: torch.Tensor, target: Any, weight: torch.Tensor
) -> torch.Tensor:
    class_weight = loss.weight
    if isinstance(loss, nn.NLLLoss):
        return F.nll_loss(
            preds * _per_sample(weight, preds),
            target,
            weight=class_weight,
            ignore_index=loss.ignore_index,
            reduction=loss.reduction,
        )
    if isinstance(target, torch.Tensor) and target.is_floating_point():  # class probabilities
        if loss.label_smoothing > 0:
            raise ConfigError(
                "sample weights with CrossEntropyLoss(label_smoothing > 0) and probability targets are not "
                "supported (the smoothing would be weighted too); override Model.compute_loss"
            )
        scaled: torch.Tensor = loss(preds, target * _per_sample(weight, target))
        return scaled
    if loss.label_smoothing > 0:
        raise ConfigError(
            "sample weights with CrossEntropyLoss(label_smoothing > 0) are not supported; override "
            "Model.compute_loss, or leave sample_weight / class_weight out"
        )
    # cross_entropy is log_softmax then nll_loss (under autocast, of the float32 input): the
    # weights scale each sample's log-probabilities, and nll_loss reduces as CE does
    device = preds.device.type
    if torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            log_probs = F.log_softmax(preds.float(), 1)
    else:
        log_probs = F.log_softmax(preds, 1)
    return F.nll_loss(
        log_probs * _per_sample(weight, log_probs),
        target,
        weight=class_weight,
        ignore_index=loss.ignore_index,
        reduction=loss.reduction,
    )


def _per_sample(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``weight`` shaped to broadcast over ``like``'s dimensions after the first."""
    if like.dim() == 0 or like.shape[0] != weight.shape[0]:
        raise ConfigError(
            f"sample weights: {weight.shape[0]} weights for a loss over {tuple(like.shape)} values; "
            "there must be one weight per sample (the first dimension)"
        )
    return weight.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _unreduced(loss: Any) -> Any:
    """A copy of ``loss`` with ``reduction="none"`` (made once per loss object)."""
    unreduced = _unreduced_copies.get(loss)
    if unreduced is None:
        unreduced = copy.copy(loss)
        unreduced.reduction = "none"
        _unreduced_copies[loss] = unreduced
    return unreduced


_ELEMENTWISE_LOSSES = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    nn.SoftMarginLoss,
)


def own_loss(output: Any) -> torch.Tensor | None:
    """The loss a net computed itself: ``output.loss`` or ``output["loss"]`` (Hugging Face), or None."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def class_weights_of(table: torch.Tensor, target: Any) -> torch.Tensor:
    """``class_weight`` per sample: ``table[class]``, 1 for a class the table does not name.

    The class is the argmax of a row of class scores, and the rounded value of one column of
    0/1 labels (Keras' rule); targets outside the table (another class, ``ignore_index``)
    weigh 1.
    """
    if not isinstance(target, torch.Tensor):
        raise DataError(f"class_weight needs the target as a tensor of classes, got {describe(target)}")
    if target.is_floating_point():
        classes = target.argmax(-1) if target.dim() >= 2 and target.shape[-1] > 1 else target.round()
    else:
        classes = target
    if classes.dim() == 2 and classes.shape[1] == 1:
        classes = classes[:, 0]
    if classes.dim() != 1:
        raise DataError(
            f"class_weight weighs each sample by its one class, but the target has shape "
            f"{tuple(target.shape)} (a class per position?); weigh the classes in the loss instead, "
            "e.g. nn.CrossEntropyLoss(weight=...)"
        )
    classes = classes.long()
    known = (classes >= 0) & (classes < table.shape[0])
    return torch.where(known, table[classes.clamp(0, table.shape[0] - 1)], torch.ones_like(table[:1]))


def check_loss_inputs(loss: Any, preds: Any, target: Any) -> None:
    """Catch the silent broadcasting trap of element-wise losses, on the first batch only."""
    if not isinstance(loss, _ELEMENTWISE_LOSSES):
        return
    if not (isinstance(preds, torch.Tensor) and isinstance(target, torch.Tensor)):
        return
    if preds.shape != target.shape:
        raise DataError(
            f"{type(loss).__name__} needs preds and target of the same shape, but preds have "
            f"shape {tuple(preds.shape)} and target {tuple(target.shape)}; torch would "
            "broadcast them and train on the wrong thing. Reshape y (e.g. y.reshape(-1, 1)) "
            "or the net's output to match."
        )
    if not target.is_floating_point():
        raise DataError(
            f"{type(loss).__name__} needs a floating-point target, got {target.dtype}; "
            "convert y with y.float() (or .astype('float32'))"
        )


def check_backward_loss(loss: Any, net: nn.Module) -> bool:
    """Whether ``loss`` has a gradient to take into ``net``: False for a frozen net (nothing to
    backpropagate into); a `DataError` for a loss backward cannot take."""
    if not isinstance(loss, torch.Tensor):
        raise DataError(
            f"the loss is {type(loss).__name__} {loss!r:.40}; it must be a tensor computed from the "
            "net's output with torch operations (a Python number has no gradient: no .item() or "
            "float() in the loss)"
        )
    if loss.numel() != 1:
        raise DataError(
            f"the loss has shape {tuple(loss.shape)}; it must be one number per batch (a loss with "
            "reduction='none' needs a .mean())"
        )
    if loss.requires_grad:
        return True
    if any(p.requires_grad for p in net.parameters()):
        raise DataError(
            "the loss does not require grad, so backward cannot reach the net: it was computed "
            "without the net's output (a .detach(), .item(), float() or torch.no_grad() in the loss?)"
        )
    return False
