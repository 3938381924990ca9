"""A metric object's state as tensors and plain values, saved in mid-epoch training states."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from torchhouse.errors import ConfigError

__all__ = ["load_metric_state", "metric_state"]


def metric_state(metric: Any, name: str) -> dict[str, Any]:
    defaults = getattr(metric, "_defaults", None)
    if isinstance(defaults, Mapping):  # torchmetrics.Metric
        state = {key: getattr(metric, key) for key in defaults}
        return {"states": state, "update_count": int(getattr(metric, "_update_count", 0))}
    if callable(getattr(metric, "state_dict", None)):
        return {"state_dict": metric.state_dict()}
    raise ConfigError(
        f"metric {name!r} ({type(metric).__name__}) exposes no state to save mid-epoch; use "
        "checkpoint_every='epoch', or give it state_dict / load_state_dict methods"
    )


def load_metric_state(metric: Any, state: Mapping[str, Any], device: torch.device) -> None:
    if "states" in state:
        for key, value in state["states"].items():
            if isinstance(value, list):
                value = [v.to(device) for v in value]
            elif isinstance(value, torch.Tensor):
                value = value.to(device)
            setattr(metric, key, value)
        metric._update_count = state["update_count"]
        if hasattr(metric, "_computed"):
            metric._computed = None
    else:
        metric.load_state_dict(state["state_dict"])
