"""Data that does not fit an epoch of known length: generators, iterables, infinite streams.

Keras' ``steps_per_epoch`` and ``validation_steps``: `limit_steps` caps an epoch at N
batches. Arrays start each capped epoch afresh (so resume stays exact); loaders and
streams keep one iterator across epochs, so an infinite `IterableDataset` or a Python
generator is read on where the last epoch stopped, not restarted (Keras' rule). A stream
that runs out before N batches ends that epoch early (with a warning) and, when it can be
iterated again, starts over in the next one.

Exact resume of a stream read on across epochs: its `position` (the batches drawn from the
current pass, and every RNG state just before that pass began) is saved in each training
state; `seek` restores those RNG states, starts the pass again and draws the same number of
batches, so the pass continues where it stopped (the loop then restores the RNG states of
the moment of the save). This is exact for a loader over a map-style dataset, and for a
stream whose items depend only on what it drew before and on the RNG (docs/callbacks.md).

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

from torchhouse.data import rng
from torchhouse.data.batches import ArrayBatches, Batches, is_hf_dataset
from torchhouse.data.convert import to_tensor_tree
from torchhouse.data.trees import Batch, batch_size_of, describe, tree_leaves
from torchhouse.errors import CheckpointError, DataError, warn_user

__all__ = ["BatchList", "LimitedBatches", "StreamBatches", "batch_list", "is_stream", "limit_steps"]


def is_stream(x: Any) -> bool:
    """A generator, an iterator, or another iterable that is not an array, a tuple/list/dict of
    arrays, a `Dataset` or a `DataLoader`."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(x, (torch.Tensor, Dataset, DataLoader, str, bytes, tuple, list, dict)):
        return False
    if hasattr(x, "__array__") or hasattr(x, "iloc"):  # NumPy arrays, pandas objects
        return False

    if is_hf_dataset(x):  # map-style: batched through a DataLoader
        return False
    return isinstance(x, Iterable)  # iterators and generators included


def batch_list(x: Any, y: Any, name: str) -> BatchList | None:
    """``x`` as a `BatchList` when it is a list and ``y`` is None (or explain), else None."""
    if not isinstance(x, list) or y is not None:
        return None
    if not x:
        raise DataError(f"{name} is an empty list; expected arrays, a Dataset, a DataLoader or batches")
    for i, batch in enumerate(x):
        if not (isinstance(batch, (tuple, list)) and len(batch) in (2, 3)):
            raise DataError(
                f"{name} is a list and y is None, so it is read as a list of (inputs, target) batches, "
                f"but {name}[{i}] is {describe(batch)}. For several inputs pass a tuple (x1, x2) and y; "
                "for one input of many samples, pass an array and y"
            )
    return BatchList(x, name)


class BatchList(Batches):
    """A list of ``(inputs, target)`` batches, read as ``for x, y in batches`` reads it: every
    epoch in the list's order (fit's ``shuffle`` does not reorder given batches, as it does not
    reorder a DataLoader's)."""

    def __init__(self, batches: list[Any], name: str) -> None:
        self.batches = [to_tensor_tree(batch, f"{name}[{i}]") for i, batch in enumerate(batches)]
        self.name = name
        self.num_samples = sum(batch_size_of(batch[1]) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def items_per_batch(self) -> int:
        return batch_size_of(self.batches[0][1])

    def shard(self, rank: int, world: int, seed: int) -> Batches:
        raise DataError(
            f"{self.name}: a list of batches cannot be sharded over several processes; give each "
            "process its own share, or pass arrays or a Dataset (torchhouse shards those)"
        )

    def fingerprint(self) -> dict[str, Any]:
        import hashlib

        digest = hashlib.sha256()
        for batch in (self.batches[0], self.batches[-1]):
            for leaf in tree_leaves(batch):
                digest.update(
                    leaf.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                )
        return {
            **super().fingerprint(),
            "first_batch": describe(self.batches[0]),
            "sha256": digest.hexdigest(),
        }

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        return iter(self.batches[start:])


class _Persistent:
    """One iterator over ``source`` kept across epochs; restarted when it runs out (if it can be).

    It counts the items drawn from the current pass and keeps the RNG states of the moment
    the pass began, so a resumed run can draw its way back to the same place (`seek`).
    """

    def __init__(self, source: Any, name: str, generators: list[torch.Generator] | None = None) -> None:
        self.source = source
        self.name = name
        self.one_shot = isinstance(source, Iterator)
        self.iterator: Iterator[Any] | None = None
        self.generators = generators or []
        self.consumed = 0  # items drawn from the current pass
        self.pass_rng: dict[str, Any] | None = None  # every RNG state as the pass began

    def _begin_pass(self) -> Iterator[Any]:
        self.pass_rng = rng.capture(self.generators)
        self.consumed = 0
        self.iterator = iter(self.source)
        return self.iterator

    def position(self) -> dict[str, Any]:
        """Where the current pass stands: ``{"consumed": k, "rng": ...}`` (``rng`` None before any)."""
        return {"consumed": self.consumed, "rng": self.pass_rng}

    def seek(self, position: dict[str, Any]) -> None:
        """Start the saved pass again and draw its ``consumed`` items (see the module docstring)."""
        consumed, pass_rng = int(position["consumed"]), position.get("rng")
        self.iterator, self.consumed, self.pass_rng = None, 0, None
        if pass_rng is None:
            return  # saved before the first pass began
        rng.restore(pass_rng, self.generators)
        iterator = self._begin_pass()
        self.pass_rng = pass_rng
        for drawn in range(consumed):
            if next(iterator, _END) is _END:
                raise CheckpointError(
                    f"{self.name}: cannot resume the saved position: the data yields {drawn} batches "
                    f"this time, the saved run had drawn {consumed} (is it the same data?)"
                )
        self.consumed = consumed

    def take(self, steps: int | None) -> Iterator[Any]:
        if self.iterator is None:
            self._begin_pass()
        assert self.iterator is not None
        count = 0
        while steps is None or count < steps:
            try:
                item = next(self.iterator)
            except StopIteration:
                if not self.one_shot:  # the pass is over: the next one begins when the loop asks
                    self.iterator, self.consumed, self.pass_rng = None, 0, None
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
            self.consumed += 1
            yield item


_END = object()


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

    def items_per_batch(self) -> int:
        return 1

    def shard(self, rank: int, world: int, seed: int) -> Batches:
        raise DataError(
            f"{self.name}: a generator cannot be sharded over several processes; give each process "
            "its own share (e.g. a generator reading every world_size-th item from its rank)"
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "steps": self.steps}

    def position(self) -> dict[str, Any] | None:
        return self.stream.position()

    def seek(self, position: dict[str, Any]) -> None:
        self.stream.seek(position)

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        # a resumed run has already drawn its way to the saved place (seek): ``start`` is done
        for batch in self.stream.take(self.steps - start if self.steps is not None else None):
            yield to_tensor_tree(batch, self.name)


class LimitedBatches(Batches):
    """Another `Batches` capped at ``steps`` batches an epoch (``steps_per_epoch``)."""

    def __init__(self, inner: Batches, steps: int, name: str) -> None:
        self.inner = inner
        self.steps = min(steps, len(inner)) if inner.has_len() else steps
        self.name = name
        self.num_samples = inner.num_samples
        self.on_device = inner.on_device
        self.persistent = (
            _Persistent(_Restartable(inner), name, inner.generators())
            if not _restarts_exactly(inner)
            else None
        )

    def has_len(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.steps

    def items_per_batch(self) -> int:
        return self.inner.items_per_batch()

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

    def position(self) -> dict[str, Any] | None:
        return self.persistent.position() if self.persistent is not None else None

    def seek(self, position: dict[str, Any]) -> None:
        if self.persistent is not None:
            self.persistent.seek(position)

    def resume_refusal(self) -> str | None:
        return self.inner.resume_refusal()

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        if self.persistent is None:  # arrays: each epoch afresh, capped (resume stays exact)
            batches = self.inner.iterate(generator, start)
            return (batch for _, batch in zip(range(self.steps - start), batches))
        # read on across epochs; a resumed run has already drawn its way to the saved place (seek)
        return self.persistent.take(self.steps - start)


class _Restartable:
    def __init__(self, inner: Batches) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Batch]:
        return self.inner.iterate(None)


def _restarts_exactly(batches: Batches) -> bool:

    return isinstance(batches, ArrayBatches)


def limit_steps(batches: Batches, steps: int | None, name: str, argument: str = "steps_per_epoch") -> Batches:
    """``batches`` capped at ``steps`` an epoch (``None``: as they are).

    Data without a length and without ``steps`` is refused: nothing tells when its epoch
    ends, and an infinite stream would never end (``argument`` names the bound to give).
    """
    if steps is None and not batches.has_len():
        raise DataError(
            f"{name} has no length (an IterableDataset, a stream or an iterable without __len__), "
            f"so nothing tells when an epoch ends, and an infinite one never ends: give {argument}=N, "
            "the number of batches to draw per pass (Keras' rule), or give the data a __len__"
        )
    if steps is None or isinstance(batches, StreamBatches):
        return batches
    return LimitedBatches(batches, steps, name)
