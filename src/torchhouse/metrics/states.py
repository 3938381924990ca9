"""A metric object's state as tensors and plain values, saved in mid-epoch training states."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from torchhouse.errors import ConfigError

__all__ = ["load_metric_state", "metric_state"]


def metric_state(metric: Any, name: str) -> dict[str, Any]:
    states = getattr(metric, "metric_state", None)
    if isinstance(states, Mapping):  # torchmetrics.Metric: its public state and update count
        return {"states": dict(states), "update_count": int(getattr(metric, "update_count", 0))}
    if callable(getattr(metric, "state_dict", None)):
        return {"state_dict": metric.state_dict()}
    raise ConfigError(
        f"metric {name!r} ({type(metric).__name__}) exposes no state to save mid-epoch; use "
        "checkpoint_every='epoch', or give it state_dict / load_state_dict methods"
    )


def load_metric_state(metric: Any, state: Mapping[str, Any], device: torch.device) -> None:
    if "states" in state:
        states = {
            key: [v.to(device) for v in value] if isinstance(value, list) else value.to(device)
            for key, value in state["states"].items()
        }
        # through torchmetrics' public API: reset() clears its cached result, load_state_dict
        # sets every state it names (persistent or not). The update count starts again from
        # 0; torchmetrics reads it only to warn about compute() before update(), and a
        # mid-epoch state always has a batch left to update with.
        metric.reset()
        metric.load_state_dict(states, strict=False)
    else:
        metric.load_state_dict(state["state_dict"])
