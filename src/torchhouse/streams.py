"""Data that does not fit an epoch of known length: generators, iterables, infinite streams.

Keras' ``steps_per_epoch`` and ``validation_steps``: `limit_steps` caps an epoch at N
batches. Arrays start each capped epoch afresh (so resume stays exact); loaders and
streams keep one iterator across epochs, so an infinite `IterableDataset` or a Python
generator is read on where the last epoch stopped, not restarted (Keras' rule). A stream
that runs out before N batches ends that epoch early (with a warning) and, when it can be
iterated again, starts over in the next one.

Example:
    >>> import torch
    >>> def forever():
    ...     while True:
    ...         yield torch.randn(4, 3), torch.randn(4, 1)
    >>> batches = StreamBatches(forever(), "x", steps=2)
    >>> len(list(batches.iterate(None)))
    2
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from torchhouse.data import Batch, Batches, to_tensor_tree
from torchhouse.errors import DataError, warn_user

__all__ = ["LimitedBatches", "StreamBatches", "is_stream", "limit_steps"]


def is_stream(x: Any) -> bool:
    """A generator, an iterator, or another iterable that is not an array, a tuple/list/dict of
    arrays, a `Dataset` or a `DataLoader`."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(x, (torch.Tensor, Dataset, DataLoader, str, bytes, tuple, list, dict)):
        return False
    if hasattr(x, "__array__") or hasattr(x, "iloc"):  # NumPy arrays, pandas objects
        return False
    from torchhouse.data import is_hf_dataset

    if is_hf_dataset(x):  # map-style: batched through a DataLoader
        return False
    return isinstance(x, Iterable)  # iterators and generators included


class _Persistent:
    """One iterator over ``source`` kept across epochs; restarted when it runs out (if it can be)."""

    def __init__(self, source: Any, name: str) -> None:
        self.source = source
        self.name = name
        self.one_shot = isinstance(source, Iterator)
        self.iterator: Iterator[Any] | None = None

    def take(self, steps: int | None) -> Iterator[Any]:
        if self.iterator is None:
            self.iterator = iter(self.source)
        count = 0
        while steps is None or count < steps:
            try:
                item = next(self.iterator)
            except StopIteration:
                self.iterator = None if not self.one_shot else self.iterator
                if steps is not None:
                    warn_user(
                        f"{self.name} ran out after {count} of steps={steps} batches in this epoch"
                        + (
                            "; a generator cannot start again"
                            if self.one_shot
                            else "; it starts over next epoch"
                        )
                    )
                if count == 0 and self.one_shot:
                    raise DataError(
                        f"{self.name}: the generator is exhausted; it yields no more batches"
                    ) from None
                return
            count += 1
            yield item


class StreamBatches(Batches):
    """Batches from a Python generator or iterable (each item one batch, like a loader's)."""

    def __init__(self, source: Any, name: str, steps: int | None) -> None:
        if steps is None and isinstance(source, Iterator):
            raise DataError(
                f"{name} is a generator (or iterator): give steps_per_epoch (validation_steps for "
                "validation data), the number of batches to draw per epoch, as in Keras"
            )
        self.stream = _Persistent(source, name)
        self.name = name
        self.steps = steps
        self.num_samples = None

    def has_len(self) -> bool:
        return self.steps is not None

    def __len__(self) -> int:
        assert self.steps is not None
        return self.steps

    def _batch_size(self) -> int:
        return 1

    def shard(self, rank: int, world: int, seed: int) -> Batches:
        raise DataError(
            f"{self.name}: a generator cannot be sharded over several processes; give each process "
            "its own share (e.g. a generator reading every world_size-th item from its rank)"
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "steps": self.steps}

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        if start:
            raise DataError(f"{self.name}: a stream cannot be rewound to resume in the middle of an epoch")
        for batch in self.stream.take(self.steps):
            yield to_tensor_tree(batch, self.name)


class LimitedBatches(Batches):
    """Another `Batches` capped at ``steps`` batches an epoch (``steps_per_epoch``)."""

    def __init__(self, inner: Batches, steps: int, name: str) -> None:
        self.inner = inner
        self.steps = min(steps, len(inner)) if inner.has_len() else steps
        self.name = name
        self.num_samples = inner.num_samples
        self.on_device = inner.on_device
        self.persistent = _Persistent(_Restartable(inner), name) if not _restarts_exactly(inner) else None

    def has_len(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.steps

    def _batch_size(self) -> int:
        return self.inner._batch_size()

    def shard(self, rank: int, world: int, seed: int) -> Batches:
        self.inner = self.inner.shard(rank, world, seed)
        self.rank, self.world = rank, world
        return self

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def generators(self) -> list[torch.Generator]:
        return self.inner.generators()

    def needs_transfer(self, device: torch.device) -> bool:
        return self.inner.needs_transfer(device)

    def fingerprint(self) -> dict[str, Any]:
        return {**self.inner.fingerprint(), "steps_per_epoch": self.steps}

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        if self.persistent is None:  # arrays: each epoch afresh, capped (resume stays exact)
            batches = self.inner.iterate(generator, start)
            return (batch for _, batch in zip(range(self.steps - start), batches))
        if start:
            raise DataError(
                f"{self.name}: with steps_per_epoch a loader is read on across epochs, so a run cannot "
                "resume in the middle of an epoch; checkpoint at epoch ends (checkpoint_every='epoch')"
            )
        return self.persistent.take(self.steps)


class _Restartable:
    def __init__(self, inner: Batches) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Batch]:
        return self.inner.iterate(None)


def _restarts_exactly(batches: Batches) -> bool:
    from torchhouse.data import ArrayBatches

    return isinstance(batches, ArrayBatches)


def limit_steps(batches: Batches, steps: int | None, name: str) -> Batches:
    """``batches`` capped at ``steps`` an epoch (``None``: as they are)."""
    if steps is None or isinstance(batches, StreamBatches):
        return batches
    return LimitedBatches(batches, steps, name)
