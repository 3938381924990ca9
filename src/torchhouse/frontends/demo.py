"""The demo: a small CNN on the bundled handwritten digits, end to end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchhouse.callbacks import EarlyStopping
from torchhouse.datasets import load_digits, train_test_split
from torchhouse.frontends.run_extras import RunExtras
from torchhouse.metrics import accuracy
from torchhouse.models import digits_cnn
from torchhouse.train.model import Model

__all__ = ["digits_cnn", "run_demo"]  # digits_cnn lives in torchhouse.models


def run_demo(
    epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
    run_dir: str | os.PathLike[str] | None = "runs/demo",
    progress: str = "auto",
    device: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the digits CNN, validating on 20% of the training part with early stopping;
    report the held-out test split (20% of the data, used for nothing else).

    Example (this is what ``torchhouse demo`` runs)::

        result = run_demo(epochs=15, run_dir="runs/demo")
        print(result["test"]["acc"])
    """
    torch.manual_seed(seed)
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.2, seed=seed)
    model = Model(
        digits_cnn(),
        loss=nn.CrossEntropyLoss(),
        metrics={"acc": accuracy},
        device=device,
    )
    extras = RunExtras(
        _run_config(run_dir, epochs, batch_size, seed), x_test=x_test, y_test=y_test, plot=True
    )
    # The validation split (which picks the epoch) comes out of the training part; the
    # test split is used once, at the end, for the number the demo reports.
    history = model.fit(
        x_train,
        y_train,
        validation_split=0.2,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        callbacks=[EarlyStopping(monitor="val_acc", patience=5), extras],
        progress=progress,
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        monitor="val_acc",
    )
    result = extras.test if extras.test is not None else model.evaluate(x_test, y_test, batch_size=256)
    return {"history": history, "test": result, "model": model}


def _run_config(run_dir: Any, epochs: int, batch_size: int, seed: int) -> dict[str, Any] | None:
    """How to rebuild the demo's net and data, so `torchhouse app/evaluate` work from the folder."""
    if run_dir is None:
        return None
    return {
        "name": Path(run_dir).name,
        "model": {"factory": "torchhouse.models:digits_cnn", "kwargs": {}},
        "data": {
            "dataset": "digits",
            "test_fraction": 0.2,
            "seed": seed,
            "task": "classification",
            "input_shape": [1, 8, 8],
            "feature_names": None,
            "classes": 10,
        },
        "loss": "CrossEntropyLoss",
        "optimizer": {"name": "AdamW", "lr": 0.001},
        "metrics": {"acc": "accuracy"},
        "fit": {"epochs": epochs, "batch_size": batch_size, "seed": seed},
    }
