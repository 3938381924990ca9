"""Arrays, tensors and DataFrames -> tensors: the conversions every data path shares.

NumPy/pandas float64 becomes float32 (torch's default dtype) and signed integers int64
(what ``nn.CrossEntropyLoss`` and ``nn.Embedding`` expect); tensors are used as they are.
pandas is recognised without importing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from torchhouse.data.trees import Tree
from torchhouse.errors import DataError

__all__ = [
    "align_columns",
    "dataframe_columns",
    "is_dataframe",
    "named_leaves",
    "to_tensor",
    "to_tensor_tree",
    "tree_length",
]


def is_dataframe(obj: Any) -> bool:
    # Recognise pandas objects without importing pandas.
    module = type(obj).__module__
    return module.startswith("pandas") and hasattr(obj, "to_numpy")


def dataframe_columns(value: Any) -> list[Any] | None:
    """The column labels of a pandas DataFrame (recognised without importing pandas), else None."""
    if is_dataframe(value) and hasattr(value, "columns") and getattr(value, "ndim", 2) == 2:
        return list(value.columns)
    return None


def align_columns(frame: Any, names: list[Any], name: str) -> Any:
    """``frame`` with its columns in the order of ``names`` (the training's), matched by name.

    Reordered columns are put back in order; a missing or unknown column is refused, naming it.
    """
    columns = list(frame.columns)
    if columns == names:
        return frame
    missing = [n for n in names if n not in columns]
    unknown = [c for c in columns if c not in names]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing column(s) {[str(n) for n in missing[:5]]}")
        if unknown:
            problems.append(f"unknown column(s) {[str(c) for c in unknown[:5]]}")
        raise DataError(
            f"{name}: the DataFrame's columns are not the ones the model was trained on: "
            f"{'; '.join(problems)}. It was trained on {[str(n) for n in names]} (matched by name)"
        )
    return frame[names]


def to_tensor(value: Any, name: str) -> torch.Tensor:
    """Convert one array-like to a tensor.

    Tensors are used as they are. NumPy arrays, pandas objects and lists are converted:
    float64 becomes float32 (torch's default dtype) and signed integers become int64
    (what ``nn.CrossEntropyLoss`` and ``nn.Embedding`` expect).
    """
    if isinstance(value, torch.Tensor):
        return value
    if is_dataframe(value):
        value = _dataframe_to_numpy(value, name)
    if isinstance(value, (list, tuple)) or np.isscalar(value):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise DataError(
            f"{name}: expected a tensor, a NumPy array or a pandas DataFrame/Series, "
            f"got {type(value).__name__}"
        )
    kind = value.dtype.kind
    if kind in "mM":
        raise DataError(
            f"{name}: has dtype {value.dtype} (dates or times); turn them into numbers first, e.g. "
            "seconds since a start, or day of week / hour as features"
        )
    if kind == "b":
        value = value.astype(np.float32)  # True/False as 1.0/0.0
        kind = "f"
    if kind == "O" or kind in "USV":
        raise DataError(
            f"{name}: has dtype {value.dtype}, which is not numeric; convert the columns "
            "to numbers first (e.g. one-hot encode categories)"
        )
    if kind == "f" and value.dtype == np.float64:
        value = value.astype(np.float32)
    elif kind == "i" and value.dtype != np.int64:
        value = value.astype(np.int64)
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    if not value.flags.writeable:
        value = value.copy()
    return torch.from_numpy(value)


def _dataframe_to_numpy(frame: Any, name: str) -> np.ndarray:
    """A DataFrame / Series as one numeric array; missing values and text columns are named."""
    try:
        missing = frame.isna()
        if bool(missing.to_numpy().any()):
            if hasattr(missing, "columns"):  # a DataFrame
                bad = [str(c) for c in missing.columns if bool(missing[c].any())]
            else:  # a Series
                bad = [str(getattr(frame, "name", None) or name)]
            raise DataError(
                f"{name}: missing values (NA/NaN) in column(s) {bad[:5]}; fill or drop them first "
                "(df.fillna(...) or df.dropna())"
            )
        if hasattr(frame, "dtypes") and hasattr(frame.dtypes, "items"):
            text = [
                str(c) for c, dtype in frame.dtypes.items() if dtype.kind in "OUS" or str(dtype) == "category"
            ]
            if text:
                raise DataError(
                    f"{name}: column(s) {text[:5]} are not numeric; encode them first "
                    "(pd.get_dummies, or .cat.codes for categories)"
                )
        array: np.ndarray = frame.to_numpy()
        if array.dtype.kind == "O":  # mixed numeric dtypes (e.g. nullable ints): as floats
            array = array.astype(np.float64)
        return array
    except DataError:
        raise
    except Exception as exc:  # pandas raises many kinds
        raise DataError(f"{name}: could not convert the DataFrame to an array ({exc})") from exc


def to_tensor_tree(value: Any, name: str) -> Tree:
    """Convert an array, or a tuple / list / dict of arrays, to tensors."""
    if isinstance(value, Mapping):
        return {k: to_tensor(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple) or (
        isinstance(value, list) and value and not np.isscalar(value[0]) and _array_like(value[0])
    ):
        return tuple(to_tensor(v, f"{name}[{i}]") for i, v in enumerate(value))
    return to_tensor(value, name)


def _array_like(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) or is_dataframe(value)


def tree_length(tree: Tree, name: str) -> int:
    lengths = {}
    for path, leaf in named_leaves(tree, name):
        if leaf.dim() == 0:
            raise DataError(f"{path}: is a scalar; expected an array with one row per sample")
        lengths[path] = int(leaf.shape[0])
    if not lengths:
        raise DataError(f"{name}: holds no array")
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{p} has {n}" for p, n in lengths.items())
        raise DataError(f"{name}: its arrays must have the same number of samples, but {sizes}")
    return next(iter(lengths.values()))


def named_leaves(tree: Tree, name: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        return [(name, tree)]
    if isinstance(tree, Mapping):
        return [p for k, v in tree.items() for p in named_leaves(v, f"{name}[{k!r}]")]
    return [p for i, v in enumerate(tree) for p in named_leaves(v, f"{name}[{i}]")]
