"""th.cross_validate: k-fold cross-validation, one ordinary fit per fold, seeded and resumable.

The folds are drawn once from ``seed``: a seeded permutation of the rows, dealt round-robin
into ``folds`` parts (per class when stratified, so each fold holds every class in its
share, as scikit-learn's ``StratifiedKFold(shuffle=True)`` aims for). Fold K trains a fresh
``build()`` on the other folds and validates on fold K: exactly
``build().fit(x[train], y[train], validation_data=(x[k], y[k]), **fit_kwargs)``. Its
values are ``evaluate`` on fold K with the weights the fit ended with.

With ``run_dir``, fold K is the run folder ``run_dir/fold-K`` and ``run_dir/cv.json`` holds
the folds' rows as each ends: a killed cross-validation run again continues the unfinished
fold from its saved state (``resume=True``) and does not repeat the finished ones.

Example::

    result = th.cross_validate(lambda: th.Model(mlp(), loss=nn.CrossEntropyLoss(), metrics=["acc"]),
                               x, y, folds=5, epochs=20, batch_size=32)
    result.mean["val_acc"], result.std["val_acc"]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchhouse.errors import ConfigError, DataError
from torchhouse.files.checkpoint import atomic_write_json, read_json
from torchhouse.train.model import Model

__all__ = ["CVResult", "cross_validate", "fold_indices"]

CV_FILE = "cv.json"


@dataclass
class CVResult:
    """What `cross_validate` returns: ``folds`` (one row per fold: ``fold``, ``val_loss``,
    ``val_<metric>``), their ``mean`` and ``std`` (population standard deviation, as NumPy's
    default), and ``to_pandas()``."""

    folds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(np.mean([row[k] for row in self.folds])) for k in self._names()}

    @property
    def std(self) -> dict[str, float]:
        return {k: float(np.std([row[k] for row in self.folds])) for k in self._names()}

    def _names(self) -> list[str]:
        return [k for k in (self.folds[0] if self.folds else {}) if k != "fold"]

    def to_pandas(self) -> Any:
        """The folds as a pandas DataFrame (pandas imported only here)."""
        import pandas as pd

        return pd.DataFrame(self.folds)


def fold_indices(n: int, folds: int, seed: int, classes: np.ndarray | None = None) -> list[np.ndarray]:
    """The validation rows of each fold (sorted): a seeded permutation dealt round-robin, per
    class when ``classes`` (one label per row) is given.

    >>> [f.tolist() for f in fold_indices(6, 3, seed=0)]
    [[0, 2], [1, 5], [3, 4]]
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    if classes is None:
        return [np.sort(order[k::folds]) for k in range(folds)]
    dealt: list[list[int]] = [[] for _ in range(folds)]
    position = 0  # continue the deal across classes, so small classes do not all land in fold 0
    for label in np.unique(classes):
        rows = order[classes[order] == label]
        for i, row in enumerate(rows):
            dealt[(position + i) % folds].append(int(row))
        position += len(rows)
    return [np.sort(np.asarray(rows, dtype=np.int64)) for rows in dealt]


def _classes(y: Any, stratify: bool | None) -> np.ndarray | None:
    labels = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
    is_class = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    if stratify is None:
        return labels if is_class else None
    if stratify and not is_class:
        raise ConfigError("cross_validate: stratify=True needs class targets (one integer per row)")
    return labels if stratify else None


def _take(data: Any, rows: np.ndarray) -> Any:
    if isinstance(data, torch.Tensor):
        return data[torch.as_tensor(rows)]
    if isinstance(data, dict):
        return {k: _take(v, rows) for k, v in data.items()}
    if isinstance(data, tuple):
        return tuple(_take(v, rows) for v in data)
    if hasattr(data, "iloc"):
        return data.iloc[rows]
    return np.asarray(data)[rows]


def _length(x: Any) -> int:
    if isinstance(x, dict):
        return _length(next(iter(x.values())))
    if isinstance(x, tuple):
        return _length(x[0])
    return len(x)


def cross_validate(
    build: Callable[[], Model],
    x: Any,
    y: Any = None,
    *,
    folds: int = 5,
    stratify: bool | None = None,
    seed: int = 0,
    run_dir: str | os.PathLike[str] | None = None,
    **fit_kwargs: Any,
) -> CVResult:
    """K-fold cross-validation of the models ``build()`` makes (see the module docstring).

    ``x`` and ``y`` are arrays, tensors or DataFrames (a tuple or dict of them for several
    inputs); ``stratify`` None stratifies integer class targets; ``fit_kwargs`` go to every
    fold's `Model.fit` (``validation_data``, ``validation_split`` and ``run_dir`` are the
    folds' own).
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"cross_validate: folds must be an int >= 2, got {folds!r}")
    taken = sorted({"validation_data", "validation_split", "resume", "overwrite"} & set(fit_kwargs))
    if taken:
        raise ConfigError(f"cross_validate: {taken} are the folds' own; leave them out")
    if y is None:
        raise DataError(
            "cross_validate: y is missing (arrays and their targets; a Dataset cannot be split here)"
        )
    n = _length(x)
    if n != _length(y):
        raise DataError(f"cross_validate: x has {n} rows and y {_length(y)}")
    if n < folds:
        raise DataError(f"cross_validate: {n} rows cannot make {folds} folds")
    parts = fold_indices(n, folds, seed, _classes(y, stratify))
    settings = {"folds": folds, "seed": seed, "stratified": _classes(y, stratify) is not None, "rows": n}
    root, done = _open(run_dir, settings)
    result = CVResult(folds=list(done))
    for k in range(len(done), folds):
        val_rows = parts[k]
        train_rows = np.setdiff1d(np.arange(n), val_rows)
        model = build()
        if not isinstance(model, Model):
            raise ConfigError(f"cross_validate: build() must return a th.Model, got {type(model).__name__}")
        options = dict(fit_kwargs, seed=fit_kwargs.get("seed", seed))
        if root is not None:
            options.update(run_dir=root / f"fold-{k}", resume=True)
        x_val, y_val = _take(x, val_rows), _take(y, val_rows)
        model.fit(_take(x, train_rows), _take(y, train_rows), validation_data=(x_val, y_val), **options)
        values = model.evaluate(x_val, y_val, batch_size=fit_kwargs.get("batch_size", 32))
        result.folds.append({"fold": k, **{f"val_{name}": value for name, value in values.items()}})
        if root is not None:
            atomic_write_json(root / CV_FILE, {**settings, "done": result.folds})
    return result


def _open(run_dir: str | os.PathLike[str] | None, settings: dict[str, Any]) -> tuple[Path | None, list[Any]]:
    """The cross-validation's folder and the folds it finished already (refused when it was
    made with other settings)."""
    if run_dir is None:
        return None, []
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    file = root / CV_FILE
    if not file.exists():
        atomic_write_json(file, {**settings, "done": []})
        return root, []
    saved = read_json(file)
    if not isinstance(saved, dict) or {k: saved.get(k) for k in settings} != settings:
        was = {k: saved.get(k) for k in settings} if isinstance(saved, dict) else saved
        raise ConfigError(f"cross_validate: {root} holds a cross-validation made with {was}, not {settings}")
    done = saved.get("done") or []
    if not all(
        isinstance(row, dict) and all(isinstance(v, (int, float)) for v in row.values()) for row in done
    ):
        raise ConfigError(f"cross_validate: {file} is damaged (its fold rows are not numbers)")
    return root, list(done)
