"""The files a run folder is served from without its code: ``model.pt2`` and ``serve.json``.

``serve.json`` holds the task, the input shape, the loss and metric names (allowlisted names
only) and, for config-trained runs, the data preparation (feature names, scaling,
vocabulary), sealed with a checksum: `read_serve_file` refuses a damaged or edited one.

Example::

    info = read_serve_file("runs/demo")
    info["task"], info["data"]["input_shape"]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from torchhouse.errors import CheckpointError
from torchhouse.files.checkpoint import read_json
from torchhouse.files.safety import TRUSTED_METRICS, allowed_name, json_digest
from torchhouse.metrics.tasks import task_of_loss

__all__ = ["PROGRAM_FILE", "SERVE_FILE", "metric_names", "read_serve_file", "sealed", "serving_description"]

SERVE_FILE = "serve.json"
PROGRAM_FILE = "model.pt2"
FORMAT = "torchhouse-serve"


def metric_names(metrics: Mapping[str, Any], loss: Any) -> dict[str, str]:
    """Metric key -> the `torchhouse.metrics` name that rebuilds it from the loss (`resolve_metric`),
    for the metrics a folder may name without ``trust_code``; others are left out (their code
    is not in the folder)."""
    from torchhouse import metrics as th_metrics

    names = {}
    for key, metric in metrics.items():
        for public in sorted(TRUSTED_METRICS):
            rebuilt = th_metrics.resolve_metric(getattr(th_metrics, public), loss, key)
            same_class_accuracy = isinstance(metric, th_metrics.ClassAccuracy) and (
                isinstance(rebuilt, th_metrics.ClassAccuracy) and vars(rebuilt) == vars(metric)
            )
            if metric is rebuilt or same_class_accuracy:
                names[key] = public
                break
    return names


def serving_description(
    model: Any, example_inputs: Any, has_program: bool, reason: str | None, data: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``serve.json`` holds for ``model`` (a `torchhouse.Model`): unsealed, see `sealed`."""
    loss_name = type(model.loss).__name__ if model.loss is not None else None
    info: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "task": task_of_loss(model.loss),
        "loss": loss_name if loss_name and allowed_name(loss_name, "loss") else None,
        "metrics": metric_names(model.metrics, model.loss),
        "program": PROGRAM_FILE if has_program else None,
        "data": dict(data),
    }
    if isinstance(example_inputs, torch.Tensor):
        info["data"].setdefault("input_shape", list(example_inputs.shape[1:]))
    if not has_program:
        info["reason"] = (reason or "the net was not exported").splitlines()[0][:500]
    return info


def sealed(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` with its checksum, as ``serve.json`` is written."""
    plain = {k: v for k, v in info.items() if k != "checksum"}
    return {**plain, "checksum": json_digest(plain)}


def read_serve_file(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``serve.json`` of a run folder, refused when damaged or edited (checksum)."""
    file = Path(folder) / SERVE_FILE
    info = read_json(file)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{file}: is not a torchhouse serving description")
    saved = info.pop("checksum", None)
    if saved != json_digest(info):
        raise CheckpointError(f"{file}: its checksum does not match its content (damaged or edited)")
    if not isinstance(info.get("data"), dict):
        raise CheckpointError(f"{file}: its 'data' entry is not a mapping")
    return info
