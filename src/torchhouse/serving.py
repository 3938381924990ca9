"""Serving a run folder: what `torchhouse predict/evaluate/app` open, without running its code.

At the end of a fit with ``run_dir``, torchhouse writes two code-free files beside the
weights, so the run can be served without the code that trained it:

- ``model.pt2``: the net as a torch.export program (written by `Model.export`; loaded
  only through the admit-only checker of `torchhouse.pt2_check`);
- ``serve.json``: the task, input shape, loss and metric names (by allowlisted name
  only) and, for config-trained runs, the data preparation (feature names, scaling,
  vocabulary), with a checksum.

`load_run` opens a run folder. A ``run_config.json`` that names only torchhouse's own
factories, losses, optimizers and metrics rebuilds the net from those names; one that
names other code is used only with ``trust_code=True``, and otherwise the run is served
from ``model.pt2``. Nothing a folder names is imported without ``trust_code``.

Example::

    config, model = load_run("runs/demo")           # safe: data only
    config, model = load_run("runs/mine", trust_code=True)  # I wrote this folder
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchhouse.errors import CheckpointError, ConfigError, TorchhouseError, UntrustedCodeError
from torchhouse.safety import allowed_name, json_digest

if TYPE_CHECKING:
    from torchhouse.model import Model

__all__ = [
    "PROGRAM_FILE",
    "SERVE_FILE",
    "add_data_info",
    "load_run",
    "read_serve_file",
    "write_serving_files",
]

SERVE_FILE = "serve.json"
PROGRAM_FILE = "model.pt2"
_CLASSIFICATION = (nn.CrossEntropyLoss, nn.NLLLoss)


def task_of_loss(loss: Any) -> str:
    """classification (class logits), binary (one logit), probability (BCELoss) or regression."""
    if isinstance(loss, _CLASSIFICATION):
        return "classification"
    if isinstance(loss, nn.BCEWithLogitsLoss):
        return "binary"
    if isinstance(loss, nn.BCELoss):
        return "probability"
    return "regression"


def _metric_names(model: Model) -> dict[str, str]:
    from torchhouse import metrics as th_metrics

    names = {}
    for key, metric in model.metrics.items():
        if isinstance(metric, th_metrics.ClassAccuracy):
            names[key] = "accuracy"
        for public in ("accuracy", "binary_accuracy_logits"):
            if metric is getattr(th_metrics, public):
                names[key] = public
    return names


def write_serving_files(folder: str | os.PathLike[str], model: Model, example_inputs: Any) -> None:
    """Export the net to ``model.pt2`` and describe it in ``serve.json`` (a reason if it cannot be)."""
    from torchhouse.checkpoint import atomic_write_json

    target = Path(folder)
    loss_name = type(model.loss).__name__ if model.loss is not None else None
    info: dict[str, Any] = {
        "format": "torchhouse-serve",
        "version": 1,
        "task": task_of_loss(model.loss),
        "loss": loss_name if loss_name and allowed_name(loss_name, "loss") else None,
        "metrics": _metric_names(model),
        "program": None,
        "data": {},
    }
    if isinstance(example_inputs, torch.Tensor):
        info["data"]["input_shape"] = list(example_inputs.shape[1:])
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model.export(target / PROGRAM_FILE, example_inputs)
        info["program"] = PROGRAM_FILE
    except TorchhouseError as exc:
        info["reason"] = str(exc).splitlines()[0][:500]
        (target / PROGRAM_FILE).unlink(missing_ok=True)
    atomic_write_json(target / SERVE_FILE, {**info, "checksum": json_digest(info)})


def read_serve_file(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``serve.json`` of a run folder, refused when damaged or edited (checksum)."""
    from torchhouse.checkpoint import read_json

    file = Path(folder) / SERVE_FILE
    info = read_json(file)
    if not isinstance(info, dict) or info.get("format") != "torchhouse-serve":
        raise CheckpointError(f"{file}: is not a torchhouse serving description")
    saved = info.pop("checksum", None)
    if saved != json_digest(info):
        raise CheckpointError(f"{file}: its checksum does not match its content (damaged or edited)")
    if not isinstance(info.get("data"), dict):
        raise CheckpointError(f"{file}: its 'data' entry is not a mapping")
    return info


def add_data_info(folder: str | os.PathLike[str], data_info: dict[str, Any]) -> None:
    """Record how a config-trained run prepares its inputs (feature names, scaling, vocabulary)."""
    from torchhouse.checkpoint import atomic_write_json

    if not (Path(folder) / SERVE_FILE).is_file():
        return
    info = read_serve_file(folder)
    info["data"] = {**info["data"], **data_info}
    atomic_write_json(Path(folder) / SERVE_FILE, {**info, "checksum": json_digest(info)})


def load_run(run_dir: str | os.PathLike[str], trust_code: bool = False) -> tuple[dict[str, Any], Model]:
    """The config and the trained `Model` of a run folder (see the module docstring).

    Raises `UntrustedCodeError` when the folder names code and holds no program to serve
    instead; the message names ``trust_code=True`` / ``--trust-code``.
    """
    from torchhouse.config import RUN_CONFIG, build_model, read_run_config, validate

    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    weights = folder / "model.safetensors"
    has_program = (folder / SERVE_FILE).is_file() and (folder / PROGRAM_FILE).is_file()
    if (folder / RUN_CONFIG).is_file():
        raw = read_run_config(folder)
        source = f"the run folder {folder}"
        try:
            config = validate(raw, trust_code, source=source, check_paths=False)
        except UntrustedCodeError:
            if not has_program:
                raise
            return _from_program(folder, raw)
        model = build_model(config, trust_code=trust_code)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: no such file (did the run finish?)")
        model.load_weights(weights)
        return config, model
    if (folder / SERVE_FILE).is_file():
        return _from_program(folder, None)  # says why when the net could not be exported
    raise ConfigError(
        f"{folder}: cannot be served: it has neither {RUN_CONFIG} nor {SERVE_FILE} + {PROGRAM_FILE} "
        "(these are written when a fit with run_dir finishes)"
    )


def _from_program(folder: Path, run_config: dict[str, Any] | None) -> tuple[dict[str, Any], Model]:
    from torchhouse import metrics as th_metrics
    from torchhouse.export import ExportedNet, load_exported
    from torchhouse.model import Model

    info = read_serve_file(folder)
    if info.get("program") != PROGRAM_FILE:
        raise ConfigError(
            f"{folder}: its net could not be exported when it was trained ({info.get('reason')})"
        )
    exported = load_exported(folder / PROGRAM_FILE)
    loss_name = info.get("loss")
    loss = getattr(nn, loss_name)() if loss_name and allowed_name(loss_name, "loss") else None
    metrics = {
        key: th_metrics.resolve_metric(getattr(th_metrics, name), loss, key)
        for key, name in (info.get("metrics") or {}).items()
        if allowed_name(name, "metric")
    }
    data = dict(info["data"])
    data.setdefault("task", info.get("task", "regression"))
    config: dict[str, Any] = {
        "name": folder.name,
        "served_from": PROGRAM_FILE,
        "loss": loss_name,
        "metrics": dict(info.get("metrics") or {}),
        "data": data,
    }
    if run_config is not None and isinstance(run_config.get("data"), dict):
        # only the data preparation of a config that named other code: its names are not used
        config["data"] = {**run_config["data"], **data}
    model = Model(ExportedNet(exported.module), loss=loss, metrics=metrics, device="cpu")
    return config, model
