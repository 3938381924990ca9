"""Which way is better for a monitored value, and the NaN-safe comparison behind it.

Used by EarlyStopping, ModelCheckpoint, learning-rate schedulers and tuning, so that a
NaN or infinite value is never taken as the best one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torchhouse.errors import ConfigError

__all__ = ["check_monitor", "is_improvement", "resolve_mode"]

_LOWER = ("loss", "error", "mse", "mae", "rmse", "mape", "perplexity", "distance")
_HIGHER = ("acc", "auc", "auroc", "f1", "precision", "recall", "r2", "iou", "dice", "score", "ap")


def resolve_mode(monitor: str, mode: str, metrics: Mapping[str, Any] | None = None) -> str:
    """Return "min" or "max" for ``monitor``; ``mode="auto"`` infers it from the name.

    A torchmetrics metric's own ``higher_is_better`` wins; otherwise names with loss /
    error / mse / mae mean "min" and names with acc / auc / f1 / precision / recall / r2 /
    score mean "max".

    >>> resolve_mode("val_loss", "auto"), resolve_mode("val_acc", "auto")
    ('min', 'max')
    """
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ConfigError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
    base = monitor[4:] if monitor.startswith("val_") else monitor
    metric = (metrics or {}).get(base)
    higher = getattr(metric, "higher_is_better", None)
    if isinstance(higher, bool):
        return "max" if higher else "min"
    lowered = base.lower()
    if any(word in lowered for word in _LOWER):
        return "min"
    if any(word in lowered for word in _HIGHER):
        return "max"
    raise ConfigError(
        f"mode='auto' cannot tell whether {monitor!r} should go up or down; pass mode='min' or mode='max'"
    )


def is_improvement(current: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True if ``current`` beats ``best`` by more than ``min_delta``. NaN / inf never do.

    >>> is_improvement(float("nan"), None, "min"), is_improvement(0.5, 0.6, "min")
    (False, True)
    """
    if current is None or not math.isfinite(current):
        return False
    if best is None or not math.isfinite(best):
        return True
    if mode == "min":
        return current < best - abs(min_delta)
    return current > best + abs(min_delta)


def check_monitor(owner: str, monitor: str, available: list[str]) -> None:
    """Raise a clear error when ``monitor`` is not among the values fit will log."""
    if monitor in available:
        return
    hint = ""
    if monitor.startswith("val_") and monitor[4:] in available:
        hint = " (there is no validation data: pass validation_data or validation_split)"
    raise ConfigError(
        f"{owner}: monitor={monitor!r} is not a logged value{hint}; fit logs: " + ", ".join(available)
    )
