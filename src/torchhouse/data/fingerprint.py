"""Fingerprints of data for the resume check: what tells other data from the same data.

A resume must be refused when the data changed (same size, other values), when a loader
draws its order otherwise (another sampler, another shuffle), or when a dataset's items
differ. Items are read under a fixed seed, every RNG restored afterwards, so a dataset
that augments at random hashes the same in every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, TensorDataset

from torchhouse.data import rng  # the module, not the package's names

__all__ = ["dataset_fingerprint", "dataset_length", "describe_sampler"]


def describe_sampler(sampler: Any) -> dict[str, Any]:
    """What decides a sampler's order, for a resume check (not the rank of a DistributedSampler)."""

    described: dict[str, Any] = {"class": f"{type(sampler).__module__}.{type(sampler).__qualname__}"}
    for key in ("replacement", "num_samples", "shuffle", "seed", "drop_last", "num_replicas"):
        value = getattr(sampler, key, None)
        if isinstance(value, (bool, int, float, str)):
            described[key] = value
    for key in ("weights", "indices"):
        value = getattr(sampler, key, None)
        if value is not None:
            array = torch.as_tensor(list(value) if not isinstance(value, torch.Tensor) else value)
            described[f"{key}_sha256"] = hashlib.sha256(array.double().numpy().tobytes()).hexdigest()
    return described


def _hash_leaves(value: Any, digest: Any) -> bool:
    """Add the tensors, arrays and numbers in ``value`` to ``digest``; False if it holds anything else."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(value).detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return True
    if isinstance(value, (bool, int, float, str)):
        digest.update(repr(value).encode())
        return True
    if isinstance(value, Mapping):
        return all(_hash_leaves(v, digest) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
    if isinstance(value, (tuple, list)):
        return all(_hash_leaves(v, digest) for v in value)
    return False


def dataset_fingerprint(dataset: Any, samples: int = 32) -> dict[str, Any]:
    """A hash of a few items at fixed positions, so a resume on other data of the same size is
    refused. The items are read with every RNG seeded (and restored afterwards), so a dataset
    that augments at random hashes the same in every run; None for a stream, or for items
    that are not tensors, arrays or numbers."""

    n = dataset_length(dataset)
    if n is None or n == 0:
        return {"items_sha256": None}
    if type(dataset) is TensorDataset:  # no item reads: rows of the tensors themselves
        rows = torch.linspace(0, n - 1, steps=min(n, 32)).long()
        digest = hashlib.sha256()
        for tensor in dataset.tensors:
            _hash_leaves(tensor[rows.to(tensor.device)], digest)
        return {"items_sha256": digest.hexdigest()}
    saved = rng.capture()
    digest = hashlib.sha256()
    try:
        rng.seed_everything(0)
        hashable = all(
            _hash_leaves(dataset[int(i)], digest)
            for i in torch.linspace(0, n - 1, steps=min(n, samples)).long()
        )
    except Exception:  # an item that cannot be read here: the size and sampler still count
        hashable = False
    finally:
        rng.restore(saved)
    return {"items_sha256": digest.hexdigest() if hashable else None}


def dataset_length(dataset: Any) -> int | None:
    if isinstance(dataset, IterableDataset):
        return None
    try:
        return len(dataset)
    except TypeError:
        return None
