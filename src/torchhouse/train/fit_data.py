"""A fit's data: the user's arrays, Datasets, loaders or streams as this process's batches.

`fit_data` makes the training and validation `Batches` of a fit (seeded, split, capped at
``steps_per_epoch``, sharded by the strategy, moved to the device once where they fit);
`model_batches` does the same for `evaluate` and `predict`. DataFrames are matched to the
columns the model was trained on, by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.data.batches import (
    ArrayBatches,
    Batches,
    LoaderBatches,
    make_batches,
    split_validation,
    validation_batches,
)
from torchhouse.data.convert import align_columns, dataframe_columns
from torchhouse.data.datamodule import datamodule_loaders, is_datamodule
from torchhouse.data.rng import seed_everything
from torchhouse.data.streams import StreamBatches, batch_list, is_stream, limit_steps
from torchhouse.data.trees import tree_leaves
from torchhouse.errors import ConfigError, DataError
from torchhouse.parallel.strategies import Strategy
from torchhouse.train.spec import FitSpec

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["FitData", "fit_data", "loader_of", "model_batches"]

ON_DEVICE_BYTES = 1 << 30  # in-memory data up to this size moves to an accelerator once


@dataclass(frozen=True)
class FitData:
    """This process's batches of one fit, and the generator that orders them."""

    train: Batches
    val: Batches | None
    generator: torch.Generator
    input_columns: list[Any] | None  # the DataFrame columns trained on (None: not a DataFrame)


def fit_data(
    model: Model, spec: FitSpec, strategy: Strategy, x: Any, y: Any, validation_data: Any, sample_weight: Any
) -> FitData:
    """The batches of a fit (see the module docstring); seeds everything first when ``spec.seed``."""
    if is_datamodule(x):  # Lightning's habit: its loaders, after prepare_data() and setup("fit")
        x, validation_data = _from_datamodule(x, y, validation_data, spec)
    columns = model.input_columns if model.input_columns is not None else dataframe_columns(x)
    seed = _data_seed(spec, strategy, x)
    generator = torch.Generator().manual_seed(seed)
    train = model_batches(
        model, x, y, spec.batch_size, spec.shuffle, generator, steps=spec.steps_per_epoch,
        sample_weight=sample_weight, columns=columns, collate_fn=spec.collate_fn,
    )  # fmt: skip
    val: Batches | None = None
    if spec.validation_split:
        if isinstance(train, StreamBatches):
            raise ConfigError("validation_split cannot split a generator; pass validation_data")
        train, val = split_validation(train, spec.validation_split)
    elif validation_data is not None:
        val = _validation(model, validation_data, spec, columns)
    train = strategy.shard(limit_steps(train, spec.steps_per_epoch, "x"), seed)
    if val is not None:
        val = strategy.shard(
            limit_steps(val, spec.validation_steps, "validation_data", "validation_steps"), seed
        )
    return FitData(train, val, generator, columns)


def _from_datamodule(datamodule: Any, y: Any, validation_data: Any, spec: FitSpec) -> tuple[Any, Any]:
    if y is not None:
        raise DataError("x is a DataModule, so y must be None (its train_dataloader yields the targets)")
    if spec.validation_split:
        raise ConfigError("validation_split cannot split a DataModule's loader; define its val_dataloader")
    loaders = datamodule_loaders(datamodule, "fit")
    if validation_data is None:
        validation_data = loaders.get("val")
    return loaders["train"], validation_data


def loader_of(x: Any, stage: str) -> Any:
    """For `evaluate` ("test": its test_dataloader, else its val_dataloader) and `predict`
    ("predict"): a DataModule's loader; anything else as it is."""
    if not is_datamodule(x):
        return x
    loaders = datamodule_loaders(x, stage)
    if stage == "test" and "test" not in loaders:
        loaders = datamodule_loaders(x, "validate")
    if not loaders:
        wanted = "test_dataloader (or val_dataloader)" if stage == "test" else "predict_dataloader"
        raise DataError(f"{type(x).__name__} is a DataModule without {wanted}")
    return next(iter(loaders.values()))


def _data_seed(spec: FitSpec, strategy: Strategy, x: Any) -> int:
    """The seed of the epochs' order: ``spec.seed``, else one draw from torch's RNG; nothing is
    drawn when the order is a loader's own or there is no shuffling, so the global RNG runs
    exactly as in the textbook loop over the same data."""
    if spec.seed is not None:
        seed_everything(spec.seed)
        return spec.seed
    if isinstance(x, torch.utils.data.DataLoader) or not spec.shuffle:
        seed = torch.initial_seed() % 2**62
    else:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return int(strategy.broadcast(seed))  # every rank: one epoch order


def _validation(model: Model, validation_data: Any, spec: FitSpec, columns: list[Any] | None) -> Batches:
    if is_stream(validation_data):
        return StreamBatches(validation_data, "validation_data", spec.validation_steps)
    pair = isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)
    if pair and columns is not None and dataframe_columns(validation_data[0]) is not None:
        aligned = align_columns(validation_data[0], columns, "validation_data[0]")
        validation_data = (aligned, *validation_data[1:])
    if isinstance(validation_data, list) and not _pair(validation_data):
        found = batch_list(validation_data, None, "validation_data")
        assert found is not None
        return found
    return on_device(model, validation_batches(validation_data, spec.batch_size, spec.collate_fn))


def _pair(data: Any) -> bool:
    """``[x_val, y_val]`` (two arrays in a list): validation data as a pair, not two batches."""
    return len(data) in (2, 3) and not all(isinstance(item, (tuple, list)) for item in data)


def model_batches(
    model: Model,
    x: Any,
    y: Any,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    *,
    require_target: bool = True,
    steps: int | None = None,
    sample_weight: Any = None,
    columns: list[Any] | None = None,
    collate_fn: Any = None,
) -> Batches:
    """``x`` (and ``y``) as batches for ``model``: a stream or a list of batches as it comes,
    anything else through `make_batches`, on the device when it fits. A DataFrame's columns are
    matched by name to ``columns`` (default: the model's ``input_columns``)."""
    columns = columns if columns is not None else model.input_columns
    if columns is not None and dataframe_columns(x) is not None:
        x = align_columns(x, columns, "x")
    if is_stream(x):
        if y is not None:
            raise DataError("x is a generator (or iterable of batches), so y must be None: it yields them")
        if sample_weight is not None:
            raise DataError(
                "sample_weight is for arrays; x is a generator, which would ignore it: yield "
                "(x, y, sample_weight) batches instead"
            )
        return StreamBatches(x, "x", steps)
    if require_target and (found := batch_list(x, y, "x")) is not None:
        if sample_weight is not None or collate_fn is not None:
            raise DataError(
                "x is a list of batches: give weights as a third element of each batch, not "
                "sample_weight, and collate the batches yourself (collate_fn is for Datasets)"
            )
        return found
    batches = make_batches(
        x, y, batch_size=batch_size, shuffle=shuffle, generator=generator,
        require_target=require_target, sample_weight=sample_weight, collate_fn=collate_fn,
    )  # fmt: skip
    return on_device(model, batches)


def on_device(model: Model, batches: Batches) -> Batches:
    """In-memory data moved to the device once (up to 1 GiB on an accelerator), so batches are
    slices there and need no per-step transfer; a loader over a TensorDataset likewise."""
    device = model.device
    if isinstance(batches, ArrayBatches) and (device.type == "cpu" or _nbytes(batches) <= ON_DEVICE_BYTES):
        batches.to(device)
    elif isinstance(batches, LoaderBatches):
        batches.to(device)  # a loader over a TensorDataset: the same, batch for batch
    return batches


def _nbytes(batches: ArrayBatches) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves((batches.inputs, batches.target)))
