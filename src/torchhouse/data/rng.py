"""Seeding, and capturing / restoring every random number generator for exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture", "restore", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and all GPUs).

    >>> seed_everything(0); a = torch.rand(1); seed_everything(0); bool(a == torch.rand(1))
    True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture(generators: list[torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state, as tensors and plain lists (JSON + safetensors friendly)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state: Any = np.random.get_state()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np_state
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators or []],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any], generators: list[torch.Generator] | None = None) -> None:
    """Restore what `capture` returned."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    keys = np.asarray(torch.as_tensor(np_keys).numpy(), dtype=np.uint32)
    np.random.set_state((np_name, keys, int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(state["torch"])
    saved = state.get("generators", [])
    for gen, gen_state in zip(generators or [], saved, strict=False):
        gen.set_state(gen_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
