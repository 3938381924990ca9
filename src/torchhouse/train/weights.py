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

__all__ = ["load_weights", "save_weights", "weights_metadata"]


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
