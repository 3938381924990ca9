"""Serving a run folder: what `torchhouse predict/evaluate/app` open, without running its code.

At the end of a fit with ``run_dir``, torchhouse writes two code-free files beside the
weights (`torchhouse.runs.serve_files`): ``model.pt2`` and ``serve.json``, so the run can
be served without the code that trained it.

`load_run` opens a run folder. A ``run_config.json`` that names only torchhouse's own
factories, losses, optimizers and metrics rebuilds the net from those names; one that
names other code is used only with ``trust_code=True``, and otherwise the run is served
from ``model.pt2``. Nothing a folder names is imported without ``trust_code``.

Example::

    config, model = load_run("runs/demo")           # safe: data only
    config, model = load_run("runs/mine", trust_code=True)  # I wrote this folder
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from torchhouse.errors import CheckpointError, ConfigError, UntrustedCodeError
from torchhouse.files.safety import allowed_name
from torchhouse.runs.serve_files import PROGRAM_FILE, SERVE_FILE, read_serve_file
from torchhouse.train.model import Model

__all__ = ["load_program", "load_run"]


def load_run(run_dir: str | os.PathLike[str], trust_code: bool = False) -> tuple[dict[str, Any], Model]:
    """The config and the trained `Model` of a run folder (see the module docstring).

    Raises `UntrustedCodeError` when the folder names code and holds no program to serve
    instead; the message names ``trust_code=True`` / ``--trust-code``.
    """
    from torchhouse.frontends.config import RUN_CONFIG, build_model, read_run_config, validate

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


def load_program(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], Model]:
    """A run folder's exported program as a `Model`, and what ``serve.json`` says of its inputs:
    never the run's code (`torchhouse serve`). A `ConfigError` when the folder has no program."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    if not (folder / SERVE_FILE).is_file() or not (folder / PROGRAM_FILE).is_file():
        raise ConfigError(
            f"{folder}: has no {PROGRAM_FILE} + {SERVE_FILE} to serve (they are written when a fit with "
            "run_dir finishes and its net can be exported)"
        )
    return _from_program(folder, None)


def _from_program(folder: Path, run_config: dict[str, Any] | None) -> tuple[dict[str, Any], Model]:
    from torchhouse import metrics as th_metrics
    from torchhouse.files.export import ExportedNet, load_exported
    from torchhouse.train.model import Model

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
