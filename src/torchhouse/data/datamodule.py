"""A Lightning DataModule's habit: an object with ``train_dataloader()`` (and maybe
``val_dataloader()``, ``test_dataloader()``, ``predict_dataloader()``, ``prepare_data()``,
``setup(stage)``) given to `fit`, `evaluate` or `predict` as the data.

It is recognised by its methods, without importing Lightning, so a plain class with those
methods works too. ``fit(datamodule)`` calls ``prepare_data()`` and ``setup("fit")`` as
Lightning's Trainer does, then trains on ``train_dataloader()`` and validates on
``val_dataloader()`` (when the class defines it and no ``validation_data`` is given).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> class Digits:
    ...     def setup(self, stage):
    ...         self.data = TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    ...     def train_dataloader(self):
    ...         return DataLoader(self.data, batch_size=4)
    >>> loaders = datamodule_loaders(Digits(), "fit")
    >>> len(loaders["train"])
    2
"""

from __future__ import annotations

from typing import Any

from torchhouse.errors import DataError

__all__ = ["datamodule_loaders", "defines", "is_datamodule"]

STAGE_LOADERS = {
    "fit": ("train_dataloader", "val_dataloader"),
    "validate": ("val_dataloader",),
    "test": ("test_dataloader",),
    "predict": ("predict_dataloader",),
}


def is_datamodule(x: Any) -> bool:
    """Whether ``x`` is a DataModule (has a callable ``train_dataloader``) and not a loader itself."""
    return callable(getattr(x, "train_dataloader", None)) and not hasattr(x, "__iter__")


def defines(x: Any, method: str) -> bool:
    """Whether ``x``'s own class (not Lightning's base class, whose hooks raise) defines ``method``."""
    for klass in type(x).__mro__:
        if method in vars(klass):
            return klass.__module__.split(".")[0] not in ("lightning", "pytorch_lightning")
    return False


def datamodule_loaders(x: Any, stage: str) -> dict[str, Any]:
    """``prepare_data()`` and ``setup(stage)`` (when defined), then the stage's loaders that
    the class defines: ``{"train": ..., "val": ...}`` for "fit", ``{"test": ...}`` for
    "test", ``{"predict": ...}`` for "predict"."""
    for hook, args in (("prepare_data", ()), ("setup", (stage,))):
        if defines(x, hook):
            getattr(x, hook)(*args)
    loaders = {}
    for method in STAGE_LOADERS[stage]:
        if defines(x, method):
            loader = getattr(x, method)()
            if loader is None:
                continue
            if isinstance(loader, (list, tuple)):
                raise DataError(
                    f"{type(x).__name__}.{method}() returned {len(loader)} loaders; torchhouse takes one "
                    "(combine them into one DataLoader)"
                )
            loaders[method.removesuffix("_dataloader")] = loader
    return loaders
