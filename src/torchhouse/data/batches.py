"""User data -> batches.

`fit`, `evaluate` and `predict` accept many kinds of data. This module turns each into a
`Batches` object with one job: yield `(inputs, target)` batches for one epoch, starting
at any batch (so a resumed run can continue mid-epoch).

- Arrays, tensors and DataFrames become `ArrayBatches`: the whole data set is converted
  to tensors once, and a batch is a slice (or, when shuffling, an `index_select` of a
  seeded permutation). No per-sample ``__getitem__``, no collate.
- A `Dataset` becomes a `DataLoader` built here with a seeded generator.
- A `DataLoader` is used as it is (`LoaderBatches`).

The batch rule: a batch is ``(inputs, target)``. A tensor input calls ``net(x)``, a
tuple or list calls ``net(*x)``, a dict calls ``net(**x)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
)

from torchhouse.data.convert import named_leaves, to_tensor, to_tensor_tree, tree_length
from torchhouse.data.fingerprint import dataset_fingerprint, dataset_length, describe_sampler
from torchhouse.data.trees import Batch, Tree, batch_size_of, describe, move_to, tree_leaves, tree_map
from torchhouse.errors import DataError

__all__ = [
    "ArrayBatches",
    "Batches",
    "LoaderBatches",
    "as_pair",
    "batch_weights",
    "check_collate_fn",
    "explain_ragged",
    "inputs_of",
    "is_hf_dataset",
    "make_batches",
    "nonfinite_data",
    "split_validation",
    "torch_columns",
    "validation_batches",
]


# --------------------------------------------------------------------------- conversion


# --------------------------------------------------------------------------- batches


class Batches:
    """One epoch's worth of ``(inputs, target)`` batches; see the module docstring."""

    num_samples: int | None
    on_device: bool = False  # True when batches are already on the training device

    def __len__(self) -> int:
        raise NotImplementedError

    def has_len(self) -> bool:
        return True

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        """Yield the batches of one epoch from batch index ``start`` on.

        ``generator`` drives shuffling; its state at the call fully determines the order.
        """
        raise NotImplementedError

    def generators(self) -> list[torch.Generator]:
        """Random generators the data pipeline owns (saved for exact resume)."""
        return []

    def needs_transfer(self, device: torch.device) -> bool:
        """Whether each batch must be moved to ``device`` (loaders yield CPU tensors)."""
        return not self.on_device and device.type != "cpu"

    # Under several processes each rank sees every K-th sample of the epoch order, padded
    # (as DistributedSampler pads) so that all ranks run the same number of steps. The
    # padded samples sit at the end of a rank's last batch and are left out of the logs.
    rank: int = 0
    world: int = 1

    def shard(self, rank: int, world: int, seed: int) -> Batches:
        """Keep only this rank's share of each epoch."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Tell a DistributedSampler which epoch it is (its shuffle depends on it)."""

    def position(self) -> dict[str, Any] | None:
        """Where a stream read on across epochs stands (saved for exact resume), or None."""
        return None

    def seek(self, position: dict[str, Any]) -> None:
        """Go back to a `position` a saved state recorded (streams only)."""

    def resume_refusal(self) -> str | None:
        """Why a run over this data cannot resume exactly, or None when it can."""
        return None

    def padding(self) -> tuple[int, int] | None:
        """(index of the batch holding padded samples, real samples in it), or None."""
        n = self.num_samples
        if self.world == 1 or n is None or not self.has_len():
            return None
        real = len(range(self.rank, n, self.world))
        per_rank = math.ceil(n / self.world)
        if real == per_rank:
            return None
        last = len(self) - 1
        return last, real - last * self.items_per_batch()

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this data for a resume check (size and batching here)."""
        return {
            "kind": type(self).__name__,
            "num_samples": self.num_samples,
            "steps": len(self) if self.has_len() else None,
            "batch_size": self.items_per_batch(),
            "shuffle": bool(getattr(self, "shuffle", False)),
        }

    def items_per_batch(self) -> int:
        """How many items a full batch holds (the last one may hold fewer)."""
        raise NotImplementedError


class ArrayBatches(Batches):
    """Batches sliced from in-memory tensors."""

    def __init__(
        self,
        inputs: Tree,
        target: Tree | None,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.inputs = inputs
        self.target = target
        self.weights = weights  # per-sample weights: batches are then (inputs, target, weights)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_samples = tree_length(inputs, "x")
        if target is not None:
            n_target = tree_length(target, "y")
            if n_target != self.num_samples:
                hint = ""
                if isinstance(inputs, tuple) and len(inputs) == n_target:
                    hint = (
                        f". x is a list or tuple of {len(inputs)} arrays, read as {len(inputs)} inputs of "
                        f"{self.num_samples} samples each (Keras' rule); if each is one sample, pass "
                        "torch.stack(x)"
                    )
                raise DataError(
                    f"x and y must have the same number of samples, but x has "
                    f"{self.num_samples} and y has {n_target}{hint}"
                )
        if self.num_samples == 0:
            raise DataError("x is empty: expected at least one sample")
        if weights is not None and len(weights) != self.num_samples:
            raise DataError(
                f"sample_weight must have one weight per sample: x has {self.num_samples} samples, "
                f"sample_weight {len(weights)}"
            )

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        assert n is not None
        if self.world > 1:
            n = math.ceil(n / self.world)
        return n // b if self.drop_last else math.ceil(n / b)

    def items_per_batch(self) -> int:
        return self.batch_size

    def fingerprint(self) -> dict[str, Any]:
        """Shapes, dtypes and a hash of a fixed sample of rows: tells other data from the same data."""
        import hashlib

        n = self.num_samples
        assert n is not None
        rows = torch.linspace(0, n - 1, steps=min(n, 32)).long()
        digest = hashlib.sha256()
        described = []
        parts = tuple(p for p in (self.inputs, self.target, self.weights) if p is not None)
        for name, leaf in named_leaves(parts, "data"):
            described.append([name, list(leaf.shape), str(leaf.dtype)])
            sample = leaf[rows.to(leaf.device)].detach().cpu().contiguous()
            digest.update(sample.reshape(-1).view(torch.uint8).numpy().tobytes())
        return {**super().fingerprint(), "tensors": described, "sample_sha256": digest.hexdigest()}

    def shard(self, rank: int, world: int, seed: int) -> ArrayBatches:
        self.rank, self.world = rank, world
        return self

    def to(self, device: torch.device) -> ArrayBatches:
        """Move the whole data set to ``device`` once, so batches need no transfer."""
        self.inputs = move_to(self.inputs, device)
        if self.target is not None:
            self.target = move_to(self.target, device)
        if self.weights is not None:
            self.weights = self.weights.to(device)
        self.on_device = True
        return self

    def epoch_order(self, generator: torch.Generator | None) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        assert self.num_samples is not None
        order = torch.randperm(self.num_samples, generator=generator)
        leaves = tree_leaves(self.inputs)
        return order.to(leaves[0].device) if leaves else order

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        order = self.epoch_order(generator)  # drawn now, not at the first batch
        if self.world > 1:
            n = self.num_samples
            assert n is not None
            if order is None:
                order = torch.arange(n, device=tree_leaves(self.inputs)[0].device)
            total = math.ceil(n / self.world) * self.world
            if total > n:
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank :: self.world]
        return self._slices(order, start)

    def _slices(self, order: torch.Tensor | None, start: int) -> Iterator[Batch]:
        n = self.num_samples if order is None else len(order)
        size = self.batch_size
        assert n is not None
        inputs, target, weights = self.inputs, self.target, self.weights
        for index in range(start, len(self)):
            lo = index * size
            rows: slice | torch.Tensor = slice(lo, min(lo + size, n))
            if order is not None:
                rows = order[rows]
            if weights is None:
                yield _take(inputs, rows), _take(target, rows)
            else:
                yield _take(inputs, rows), _take(target, rows), _take(weights, rows)

    def split(self, fraction: float) -> tuple[ArrayBatches, ArrayBatches]:
        """Split off the last ``fraction`` of the samples (before shuffling), as Keras does."""
        assert self.num_samples is not None
        n_train = math.floor(self.num_samples * (1.0 - fraction))  # Keras' rule
        n_val = self.num_samples - n_train
        if n_val == 0 or n_train == 0:
            raise DataError(
                f"validation_split={fraction} of {self.num_samples} samples leaves "
                f"{n_train} for training and {n_val} for validation; both must be at least 1"
            )

        def part(tree: Tree, lo: int, hi: int) -> Tree:
            return None if tree is None else tree_map(lambda t: t[lo:hi], tree)

        n = self.num_samples
        train = ArrayBatches(
            part(self.inputs, 0, n_train),
            part(self.target, 0, n_train),
            self.batch_size,
            self.shuffle,
            self.drop_last,
            part(self.weights, 0, n_train),
        )
        val = ArrayBatches(
            part(self.inputs, n_train, n),
            part(self.target, n_train, n),
            self.batch_size,
            shuffle=False,
            weights=part(self.weights, n_train, n),
        )
        return train, val


def _take(tree: Tree, rows: slice | torch.Tensor) -> Tree:
    """Rows of every tensor in ``tree``: a view for a slice, a gather for an index tensor."""
    if isinstance(tree, torch.Tensor):
        return tree[rows] if isinstance(rows, slice) else tree.index_select(0, rows)
    if tree is None:
        return None
    return tree_map(lambda t: _take(t, rows), tree)


class LoaderBatches(Batches):
    """Batches from a `DataLoader` (given by the user, or built here from a `Dataset`).

    The fast path: a loader over a `TensorDataset` with the default collate and no worker
    processes yields, per batch, ``default_collate([dataset[i] for i in indices])``, which
    is ``[t[indices] for t in dataset.tensors]``. So the batches are sliced from the tensors
    directly (moved to the device once when they fit), with the index batches drawn from
    the loader's own batch sampler and its base seed drawn as the loader draws it: the same
    order, the same random numbers consumed, bit-identical batches. Any other loader is
    iterated as it is.
    """

    def __init__(self, loader: DataLoader[Any], name: str = "x") -> None:
        self.loader = loader
        self.name = name
        self.tensors: tuple[torch.Tensor, ...] | None = None  # the fast path's (device) copies
        self._source: tuple[tuple[torch.Tensor, int], ...] = ()  # what they were copied from
        self._device, self._max_bytes = torch.device("cpu"), 1 << 30
        self.num_samples = dataset_length(loader.dataset)
        if self.num_samples == 0:
            raise DataError(f"{name}: the dataset is empty; expected at least one sample")
        if self.has_len() and len(self) == 0:
            raise DataError(
                f"{name}: the DataLoader yields no batch (drop_last=True with fewer samples than batch_size?)"
            )

    def has_len(self) -> bool:
        try:
            len(self.loader)
        except TypeError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.loader)

    def items_per_batch(self) -> int:
        return int(self.loader.batch_size or 1)

    def shard(self, rank: int, world: int, seed: int) -> LoaderBatches:
        from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

        loader = self.loader
        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            self.rank, self.world = sampler.rank, sampler.num_replicas
            return self
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            raise DataError(
                f"{self.name}: under several processes torchhouse shards a Dataset with a "
                "DistributedSampler; this DataLoader has an IterableDataset or no batch_size. "
                "Give it a DistributedSampler yourself (or shard the IterableDataset by rank)."
            )
        if not isinstance(sampler, (RandomSampler, SequentialSampler)):
            raise DataError(
                f"{self.name}: under several processes torchhouse replaces the DataLoader's "
                f"sampler with a DistributedSampler, but it has a custom {type(sampler).__name__}; "
                "pass a DataLoader built with sampler=DistributedSampler(...) instead"
            )
        distributed: DistributedSampler[Any] = DistributedSampler(
            loader.dataset,
            num_replicas=world,
            rank=rank,
            shuffle=isinstance(sampler, RandomSampler),
            seed=seed,
        )
        self.loader = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=distributed,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers,
        )
        self.rank, self.world = rank, world
        return self

    def resume_refusal(self) -> str | None:
        loader = self.loader
        if loader.num_workers > 0 and loader.persistent_workers:
            return (
                f"{self.name} is a DataLoader with persistent_workers=True: its worker processes keep their "
                "random state from epoch to epoch, which a new process cannot restore, so a resumed run "
                "would draw other random numbers. Use persistent_workers=False (each epoch's workers are "
                "then seeded from the loader's saved random state)"
            )
        return None

    def fingerprint(self) -> dict[str, Any]:
        """Size and batching, how the loader draws its order, and a hash of sampled items."""
        loader = self.loader
        described = {
            **super().fingerprint(),
            "shuffle": not isinstance(loader.sampler, SequentialSampler),
            "sampler": describe_sampler(loader.sampler),
            "batch_sampler": type(loader.batch_sampler).__name__
            if loader.batch_sampler is not None
            else None,
            "drop_last": loader.drop_last,
        }
        return {**described, **dataset_fingerprint(loader.dataset)}

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.loader.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def generators(self) -> list[torch.Generator]:
        found: list[torch.Generator] = []
        candidates = [
            getattr(self.loader, "generator", None),
            getattr(self.loader.sampler, "generator", None),
            getattr(getattr(self.loader.batch_sampler, "sampler", None), "generator", None),
        ]
        for gen in candidates:
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
        return found

    def sliceable(self) -> bool:
        """Whether the fast path applies (see the class docstring)."""
        loader = self.loader
        dataset = loader.dataset
        return (
            type(loader) is DataLoader
            and type(dataset) is TensorDataset
            and loader.num_workers == 0
            and loader.collate_fn is default_collate
            and loader.batch_sampler is not None
            and len(dataset.tensors) > 0
        )

    def to(self, device: torch.device, max_bytes: int = 1 << 30) -> LoaderBatches:
        """On the fast path, keep the dataset's tensors on ``device`` (when they fit in
        ``max_bytes``), so batches are slices there and need no per-step transfer."""
        if not self.sliceable():
            return self
        dataset: Any = self.loader.dataset
        tensors = tuple(dataset.tensors)
        self._device, self._max_bytes = device, max_bytes
        self._source = tuple((t, t._version) for t in tensors)
        if device.type != "cpu" and sum(t.numel() * t.element_size() for t in tensors) > max_bytes:
            self.tensors = tensors
            return self
        self.tensors = tuple(t.to(device) for t in tensors)
        self.on_device = True
        return self

    def _current_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors to slice: the device copies, made again when the dataset's tensors were
        rebound (``dataset.tensors = ...``) or changed in place since they were made."""
        dataset: Any = self.loader.dataset
        tensors = tuple(dataset.tensors)
        if self.tensors is None:
            return tensors
        same = len(tensors) == len(self._source) and all(
            t is kept and t._version == version for t, (kept, version) in zip(tensors, self._source)
        )
        if not same:
            self.to(self._device, self._max_bytes)
            assert self.tensors is not None
        return self.tensors

    def iterate(self, generator: torch.Generator | None, start: int = 0) -> Iterator[Batch]:
        if self.sliceable():
            return self._slices(start)
        # The loader's sampler draws its order when iteration starts; loading and dropping
        # the first ``start`` batches now (not lazily) reproduces an interrupted epoch.
        iterator: Iterator[Any] = iter(self.loader)
        if self.loader.collate_fn is default_collate:
            iterator = explain_ragged(iterator, self.name)
        for skipped in range(start):
            if next(iterator, None) is None:
                raise DataError(
                    f"{self.name}: cannot resume at batch {start}; the loader yields only {skipped}"
                )
        return iterator

    def _slices(self, start: int) -> Iterator[Any]:
        loader = self.loader
        tensors = self._current_tensors()
        batch_sampler = loader.batch_sampler
        assert batch_sampler is not None
        # In the order DataLoader.__iter__ does it: the sampler's iterator (lazy), then
        # the base seed (one draw from the loader's generator, or the global RNG).
        indices_iter = iter(batch_sampler)
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
        for skipped in range(start):
            if next(indices_iter, None) is None:
                raise DataError(
                    f"{self.name}: cannot resume at batch {start}; the loader yields only {skipped}"
                )
        return self._take(indices_iter, tensors)

    @staticmethod
    def _take(indices_iter: Iterator[Any], tensors: tuple[torch.Tensor, ...]) -> Iterator[Any]:
        device = tensors[0].device
        for indices in indices_iter:
            rows = torch.as_tensor(indices, dtype=torch.long, device=device)
            yield [t.index_select(0, rows) for t in tensors]  # a list, as default_collate gives


def is_hf_dataset(x: Any) -> bool:
    """A Hugging Face ``datasets.Dataset`` (recognised without importing the package)."""
    return type(x).__module__.split(".")[0] == "datasets" and all(
        hasattr(x, name) for name in ("with_format", "column_names", "features", "__getitem__", "__len__")
    )


def torch_columns(dataset: Any) -> Any:
    """The dataset with its numeric columns as torch tensors; text columns are left out (the
    tokenizer's ids stand for them), as Hugging Face's Trainer drops unused columns."""
    columns = [
        name for name, feature in dataset.features.items() if getattr(feature, "dtype", None) != "string"
    ]
    if not columns:
        raise DataError(
            f"the Hugging Face Dataset has only text columns {dataset.column_names}; tokenize it first"
        )
    return dataset.with_format("torch", columns=columns)


def as_pair(batch: Any) -> Batch:
    """Split a batch into ``(inputs, target)`` (a third element is the sample weights), or explain."""
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1]
    raise DataError(
        "a batch must be a pair (inputs, target) (or (inputs, target, sample_weight)), but the data yielded "
        f"{describe(batch)}. Make the Dataset return (inputs, target), or override "
        "Model.unpack_batch to read another batch layout."
    )


def batch_weights(batch: Any) -> torch.Tensor | None:
    """The per-sample weights of an ``(inputs, target, sample_weight)`` batch, or None for a pair.

    A third element is taken as weights (Keras' rule) only when it is a floating vector with
    one value per sample (``(N,)`` or ``(N, 1)``); anything else (an integer row index, a
    mask, another column) is refused, since reading it as weights would change the loss
    without a word.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
        return None
    weight = batch[2]
    n = batch_size_of(batch[1] if batch[1] is not None else batch[0])
    if isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.shape in ((n,), (n, 1)):
        return weight.reshape(-1)
    raise DataError(
        f"the batch's third element is {describe(weight)}: a third element is read as per-sample loss "
        f"weights, (x, y, sample_weight) as in Keras, so it must be a floating vector of the batch's "
        f"{n} samples. To weigh samples, make it float weights of shape (N,) (for arrays: "
        "fit(sample_weight=...)); to carry another column (an index, a mask), yield ((x, extra), y) or a "
        "dict and override Model.unpack_batch (docs/steps.md)"
    )


def inputs_of(batch: Any) -> Tree:
    """The inputs of a prediction batch: ``x``, ``(x,)`` or ``(x, target)``."""
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0]
    return batch


def make_batches(
    x: Any,
    y: Any = None,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    name: str = "x",
    require_target: bool = True,
    sample_weight: Any = None,
    collate_fn: Any = None,
) -> Batches:
    """Turn user data into `Batches`.

    ``x`` may be a tensor, array, DataFrame, a tuple/dict of those, a `Dataset` or a
    `DataLoader`. With arrays, ``y`` holds the targets (``None`` is allowed only when
    ``require_target`` is false, as in `predict`). ``collate_fn`` makes the batches of a
    `Dataset` (a Hugging Face one too) from its rows, as a DataLoader's does (for example
    ``transformers.DataCollatorWithPadding(tokenizer)`` for rows of different lengths).
    """
    check_collate_fn(x, collate_fn, name)
    if sample_weight is not None and (isinstance(x, (DataLoader, Dataset)) or is_hf_dataset(x)):
        raise DataError(
            f"sample_weight is for arrays; {name} is a {type(x).__name__}, which would ignore it. Make its "
            "batches (x, y, sample_weight) instead: the third element is the weights (docs/steps.md)"
        )
    if isinstance(x, DataLoader):
        if y is not None:
            raise DataError(f"{name} is a DataLoader, so y must be None (the loader yields targets)")
        return LoaderBatches(x, name)
    if is_hf_dataset(x):
        if y is not None:
            raise DataError(f"{name} is a Hugging Face Dataset, so y must be None (its 'labels' column is)")
        loader = DataLoader(
            torch_columns(x),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=collate_fn or default_collate,
        )  # rows become dict batches: net(**batch), the "labels" column the target
        return LoaderBatches(loader, name)
    if isinstance(x, Dataset):
        if y is not None:
            raise DataError(f"{name} is a Dataset, so y must be None (the dataset yields targets)")
        length = dataset_length(x)
        if length == 0:
            raise DataError(f"{name}: the dataset is empty; expected at least one sample")
        loader = DataLoader(
            x,
            batch_size=batch_size,
            shuffle=shuffle and not isinstance(x, IterableDataset),
            generator=generator,
            collate_fn=collate_fn or default_collate,
        )
        return LoaderBatches(loader, name)
    if x is None:
        raise DataError(f"{name}: no data given (None); expected arrays, a Dataset or a DataLoader")
    if isinstance(x, (str, bytes)):
        raise DataError(f"{name}: got a string {x!r}; expected arrays, a Dataset or a DataLoader")
    inputs = to_tensor_tree(x, name)
    target = None
    if y is not None:
        target = to_tensor_tree(y, "y")

    elif require_target and not (isinstance(inputs, Mapping) and "labels" in inputs):
        # a dict of arrays with "labels" is a whole batch (Hugging Face's convention)
        raise DataError(
            f"y is missing: {name} is an array, so the targets must be given as y "
            "(or pass a Dataset / DataLoader that yields (inputs, target))"
        )
    weights = None
    if sample_weight is not None:
        weights = to_tensor(sample_weight, "sample_weight").float().reshape(-1)
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise DataError("sample_weight: every weight must be a finite number >= 0")
    return ArrayBatches(inputs, target, batch_size, shuffle, weights=weights)


def check_collate_fn(x: Any, collate_fn: Any, name: str) -> None:
    """``collate_fn`` applies to a Dataset's rows; anything else is refused, never ignored."""
    if collate_fn is None:
        return
    if not callable(collate_fn):
        raise DataError(f"collate_fn: expected a function rows -> batch, got {describe(collate_fn)}")
    if isinstance(x, DataLoader):
        raise DataError(
            f"collate_fn: {name} is a DataLoader, which collates its rows with its own collate_fn; "
            "give the collate_fn to the DataLoader (DataLoader(dataset, collate_fn=...)) instead"
        )
    if not (isinstance(x, Dataset) or is_hf_dataset(x)):
        raise DataError(
            f"collate_fn: {name} is {describe(x)}, which is batched by slicing, not from rows; "
            "collate_fn applies to a Dataset (a torch or Hugging Face one)"
        )


_RAGGED = (
    "stack expects each tensor to be equal size",
    "each element in list of batch should be of equal size",
)


def explain_ragged(iterator: Iterator[Any], name: str) -> Iterator[Any]:
    """The batches of a default-collated loader, with its error for rows of different shapes
    turned into one that names the cure (``collate_fn``)."""
    try:
        yield from iterator
    except RuntimeError as exc:
        if not any(text in str(exc) for text in _RAGGED):
            raise
        detail = next(line for line in str(exc).splitlines() if any(t in line for t in _RAGGED))
        raise DataError(
            f"{name}: the rows of a batch have different shapes, so the default collate cannot stack "
            f"them ({detail.strip()}). Pad them into batches with a collate_fn: fit(..., "
            "collate_fn=transformers.DataCollatorWithPadding(tokenizer)) for tokenized text, or "
            "your own function rows -> batch (a DataLoader takes it as DataLoader(..., collate_fn=...))"
        ) from exc


def nonfinite_data(batches: Batches) -> str | None:
    """Where in-memory data holds NaN/inf (``"x holds NaN or inf (first at row 13)"``), or None.

    Read only after a non-finite loss, so the error can blame the data and not the learning rate.
    """
    if not isinstance(batches, ArrayBatches):
        return None
    for name, tree in (("x", batches.inputs), ("y", batches.target)):
        for leaf_name, leaf in named_leaves(tree, name) if tree is not None else []:
            if leaf.is_floating_point() and not bool(torch.isfinite(leaf).all()):
                row = int((~torch.isfinite(leaf)).nonzero()[0, 0])
                return f"{leaf_name} holds NaN or inf values (first at row {row} of the training data)"
    return None


def split_validation(batches: Batches, fraction: float) -> tuple[Batches, Batches]:
    """Hold out the last ``fraction`` of the training samples for validation."""
    if isinstance(batches, ArrayBatches):
        return batches.split(fraction)
    assert isinstance(batches, LoaderBatches)
    loader = batches.loader
    dataset = loader.dataset
    n = dataset_length(dataset)
    if n is None or loader.batch_size is None:
        raise DataError(
            "validation_split needs arrays or a Dataset with a length; for a DataLoader "
            "pass validation_data instead"
        )
    n_val = n - math.floor(n * (1.0 - fraction))  # Keras' rule: the training part is floored
    if n_val == 0 or n_val == n:
        raise DataError(
            f"validation_split={fraction} of {n} samples leaves {n - n_val} for training "
            f"and {n_val} for validation; both must be at least 1"
        )
    sampler = loader.sampler
    if type(sampler) not in (torch.utils.data.SequentialSampler, torch.utils.data.RandomSampler) or (
        isinstance(sampler, torch.utils.data.RandomSampler)
        and (sampler.replacement or sampler.num_samples != n)
    ):
        raise DataError(
            f"validation_split cannot split a DataLoader whose sampler is a {type(sampler).__name__}: "
            "the split would change what it draws (a weighted sampler would train on classes it never "
            "draws). Pass validation_data (a DataLoader of held-out samples) instead"
        )
    train_set = Subset(dataset, range(n - n_val))
    val_set = Subset(dataset, range(n - n_val, n))
    shuffle = isinstance(sampler, torch.utils.data.RandomSampler)
    common: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "worker_init_fn": loader.worker_init_fn,
        "persistent_workers": loader.persistent_workers,
    }
    train = DataLoader(
        train_set,
        batch_size=loader.batch_size,
        shuffle=shuffle,
        generator=loader.generator,
        drop_last=loader.drop_last,
        **common,
    )
    val = DataLoader(val_set, batch_size=loader.batch_size, **common)
    return LoaderBatches(train, batches.name), LoaderBatches(val, "validation_data")


def validation_batches(validation_data: Any, batch_size: int, collate_fn: Any = None) -> Batches:
    """Turn ``validation_data`` (``(x_val, y_val)``, ``(x_val, y_val, sample_weight)``, a Dataset
    or a DataLoader) into batches; ``collate_fn`` applies to a Dataset, as for the training data."""
    if isinstance(validation_data, (Dataset, Mapping)) or is_hf_dataset(validation_data):
        return make_batches(
            validation_data,
            batch_size=batch_size,
            shuffle=False,
            generator=None,
            name="validation_data",
            collate_fn=collate_fn,
        )
    if isinstance(validation_data, DataLoader):  # its own collate_fn: fit's is for Datasets
        return make_batches(
            validation_data, batch_size=batch_size, shuffle=False, generator=None, name="validation_data"
        )
    if isinstance(validation_data, Sequence) and len(validation_data) in (2, 3):
        return make_batches(
            validation_data[0],
            validation_data[1],
            batch_size=batch_size,
            shuffle=False,
            generator=None,
            name="validation_data[0]",
            sample_weight=validation_data[2] if len(validation_data) == 3 else None,
        )
    raise DataError(
        "validation_data: expected (x_val, y_val), (x_val, y_val, sample_weight), a Dataset or a DataLoader, "
        f"got {describe(validation_data)}"
    )


def in_dataset_order(loader: torch.utils.data.DataLoader[Any]) -> bool:
    """Whether ``loader`` yields its dataset's rows in order, each once (a SequentialSampler)."""
    from torch.utils.data import BatchSampler, IterableDataset, SequentialSampler

    if isinstance(loader.dataset, IterableDataset):
        return True  # a stream's own order
    batches = loader.batch_sampler
    return type(loader.sampler) is SequentialSampler and (batches is None or type(batches) is BatchSampler)
