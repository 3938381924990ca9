"""A model's weights in files: safetensors + a JSON sidecar of metadata, nothing pickled.

`save_weights` writes ``m.safetensors`` and ``m.json`` (atomically); under FSDP every rank
gathers the full state (a collective) and rank 0 writes. `load_weights` reads them back,
naming every tensor that does not fit the net, and takes the DataFrame columns the model
was trained on from the sidecar.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.errors import CheckpointError, ConfigError
from torchhouse.files.checkpoint import atomic_save_tensors, atomic_write_json, read_json, read_tensors
from torchhouse.train.building import check_state_matches
from torchhouse.version import __version__

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["load_best_weights", "load_weights", "save_weights", "weights_metadata"]


def save_weights(model: Model, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and its metadata beside it (``.json``),
    with ``extra`` entries added to the metadata."""
    target = Path(path)
    if target.suffix != ".safetensors":
        raise ConfigError(f"save: the path must end in .safetensors, got {os.fspath(path)!r}")
    state = model.net.state_dict()
    if model.strategy == "fsdp" and any(type(t).__name__ == "DTensor" for t in state.values()):
        from torchhouse.parallel.fsdp import full_state_dict

        state = full_state_dict(model.net)  # every rank takes part (call save on every rank)
        if torch.distributed.get_rank() != 0:
            return target  # rank 0 writes the one full file
    atomic_save_tensors(target, state, metadata={"format": "torchhouse-weights"}, content_digest=True)
    atomic_write_json(target.with_suffix(".json"), {**weights_metadata(model, state), **(extra or {})})
    return target


def weights_metadata(model: Model, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What the JSON sidecar says of the weights: versions, the net, its tensors, loss, metrics, history."""
    columns = model.input_columns
    return {
        "format": "torchhouse-weights",
        "torchhouse": __version__,
        "torch": torch.__version__,
        "net": f"{type(model.net).__module__}.{type(model.net).__qualname__}",
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
        "loss": repr(model.loss),
        "metrics": list(model.metrics),
        "input_columns": columns
        if columns is not None and all(isinstance(c, str) for c in columns)
        else None,
        "history": model.history.history,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_weights(model: Model, path: str | os.PathLike[str], strict: bool = True) -> list[str] | None:
    """Load ``path`` into ``model.net``; returns the DataFrame columns its sidecar records (or None)."""
    _refuse_run_folder_parts(Path(path))
    tensors = read_tensors(path)
    from torchhouse.parallel.fsdp import is_sharded

    if model.strategy == "fsdp" and is_sharded(model.net):  # every rank loads the full file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full: dict[str, Any] = dict(tensors)
        set_model_state_dict(model.net, full, options=StateDictOptions(full_state_dict=True, strict=strict))
        return None
    check_state_matches(model.net, tensors, os.fspath(path), strict)
    model.net.load_state_dict(tensors, strict=strict)
    return _recorded_columns(Path(path).with_suffix(".json"))


def _recorded_columns(sidecar: Path) -> list[str] | None:
    if not sidecar.is_file():
        return None
    try:
        meta = read_json(sidecar)
    except CheckpointError:
        return None  # the weights loaded; the sidecar is optional
    columns = meta.get("input_columns") if isinstance(meta, dict) else None
    if isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns):
        return list(columns)
    return None


def _refuse_run_folder_parts(path: Path) -> None:
    """A run folder, or one of its training states, is not a weights file: say what to call."""
    if path.is_dir() and (path / "run.json").is_file():
        raise CheckpointError(
            f"{path} is a run folder, not a weights file: load its final weights with "
            f"model.load_weights('{path / 'model.safetensors'}'), or its best state's with "
            f"model.load_best('{path}')"
        )
    if path.name == "state.safetensors" and path.parent.name.startswith("ckpt-"):
        run = path.parent.parent.parent
        raise CheckpointError(
            f"{path} is a full training state of the run folder {run} (weights, optimizer, RNG...), "
            f"not a weights file: model.load_best('{run}') loads the best state's weights, and "
            f"fit(..., run_dir='{run}', resume=True) continues from the newest"
        )


def load_best_weights(model: Model, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the weights of the best state ``run_dir`` kept (by its fit's ``monitor``) into
    ``model.net``; returns which: ``{"state", "epoch" (counted from 1), "monitor", "value"}``."""
    from torchhouse.files.checkpoint import load_state
    from torchhouse.runs.folder import RunFolder

    folder = RunFolder(run_dir)
    if not (folder.path / "run.json").is_file():
        raise CheckpointError(f"{folder.path}: not a run folder (no run.json)")
    name = folder.best_state_name()
    if name is None or not (folder.checkpoints / name).is_dir():
        raise CheckpointError(
            f"{folder.path}: keeps no best state (checkpoints/best.json names none, or it is gone); "
            "its final weights are model.safetensors"
        )
    state = load_state(folder.checkpoints / name)  # checksums verified
    if state.get("shards"):
        raise CheckpointError(
            f"{folder.path}: the best state {name} is sharded over processes (strategy='fsdp'); load "
            "it with fit(..., resume=True) under the same processes"
        )
    weights = state["model"]
    check_state_matches(model.net, weights, f"{folder.checkpoints / name}", True)
    model.net.load_state_dict(weights)
    info = folder.info()
    return {
        "state": name,
        "epoch": int(state["epoch"]),
        "monitor": info.get("monitor"),
        "value": state.get("best"),
    }
