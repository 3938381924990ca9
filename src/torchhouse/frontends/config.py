"""Config-driven training: `torchhouse fit config.yaml` and friends.

A config names everything by import path or by a short name, so a run folder can rebuild
the net and its data without the code that trained it::

    name: digits-cnn
    model:
      factory: torchhouse.models:digits_cnn    # module:callable returning an nn.Module
      kwargs: {channels: 16}
    data:
      dataset: digits                          # or csv: path + target, or factory: module:fn
      test_fraction: 0.2
    loss: CrossEntropyLoss                     # a torch.nn loss name, or module:callable
    optimizer: {name: AdamW, lr: 0.001}        # any torch.optim class and its arguments
    lr_scheduler: {name: StepLR, step_size: 5} # optional; interval: epoch | step
    metrics: {acc: accuracy}                   # torchhouse.metrics names, or module:callable
    callbacks: [{name: EarlyStopping, monitor: val_loss, patience: 3}]
    trainer: {precision: "32", device: cpu}    # other Model arguments
    fit: {epochs: 10, batch_size: 64, seed: 0, validation_split: 0.2}

Everything is checked (unknown keys, wrong types, names that do not import) before any
training starts, and each error names the key.
"""

from __future__ import annotations

import copy
import csv
import importlib
import inspect
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchhouse.errors import ConfigError
from torchhouse.files.safety import (
    CALLBACK_PATH_ARGUMENTS,
    MAX_CONFIG_BYTES,
    allowed_name,
    check_run_name,
    contained_path,
    current_factory_name,
    safe_yaml_load,
    untrusted_name_error,
)
from torchhouse.frontends.run_extras import RunExtras
from torchhouse.metrics.tasks import task_of_loss_name
from torchhouse.runs.folder import (
    CHECKSUM_KEY,
    RUN_CONFIG,
    TEST_SPLIT,
    read_run_config,
    read_test_split,
    write_run_config,
)
from torchhouse.train.model import Model

__all__ = [
    "BUNDLED",
    "CODE_ONLY",
    "CHECKSUM_KEY",
    "DATA_KEYS",
    "Data",
    "FIT_KEYS",
    "MODEL_KEYS",
    "RUN_CONFIG",
    "TEST_SPLIT",
    "SECTIONS",
    "TRAINER_KEYS",
    "apply_override",
    "build_callbacks",
    "build_model",
    "build_net",
    "import_object",
    "load_config",
    "load_data",
    "prepare_inputs",
    "read_csv",
    "read_run_config",
    "read_test_split",
    "read_text_csv",
    "task_of",
    "train_from_config",
    "validate",
    "write_run_config",
]

SECTIONS: dict[str, Any] = {
    "name": str,
    "run_dir": str,
    "model": dict,
    "data": dict,
    "loss": (str, dict),
    "optimizer": (str, dict),
    "lr_scheduler": (str, dict, type(None)),
    "metrics": (dict, type(None)),
    "callbacks": (list, type(None)),
    "trainer": dict,
    "fit": dict,
    "search": dict,
}
MODEL_KEYS = {"factory", "kwargs"}
DATA_KEYS = {
    "validation_csv",
    "test_csv",
    "text",
    "vocabulary",
    "max_length",
    "min_count",
    "dataset",
    "csv",
    "target",
    "features",
    "factory",
    "kwargs",
    "test_fraction",
    "standardize",
    "seed",
    "input_shape",
    "feature_names",
    "mean",
    "std",
    "task",
    "classes",
}
# The keywords of `Model` and `Model.fit` a config cannot hold, and why; every other one is a
# key of the config's ``trainer:`` / ``fit:`` section (tests/test_config.py checks both ways).
CODE_ONLY = {
    "Model": {
        "net": "the model section builds it",
        "loss": "the loss section",
        "optimizer": "the optimizer section",
        "metrics": "the metrics section",
        "lr_scheduler": "the lr_scheduler section",
    },
    "fit": {
        "x": "the data section",
        "y": "the data section",
        "validation_data": "the data section (validation_split, or a data factory)",
        "callbacks": "the callbacks section",
        "run_dir": "the run_dir key, or --run-dir",
        "resume": "--resume",
        "overwrite": "--overwrite",
        "sample_weight": "one weight per sample: arrays, not a value a config holds",
        "collate_fn": "a function (a tokenizer's padding collator): code, not a value",
    },
}


def _keywords(function: Any, code_only: Mapping[str, str]) -> frozenset[str]:
    """The keyword parameters of ``function`` that a config may set (all but ``code_only``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(function).parameters.values()
    return frozenset(p.name for p in parameters if p.kind in kinds and p.name != "self") - set(code_only)


TRAINER_KEYS = _keywords(Model.__init__, CODE_ONLY["Model"])
FIT_KEYS = _keywords(Model.fit, CODE_ONLY["fit"])
BUNDLED = ("digits", "breast_cancer", "sentiment_words")


# --------------------------------------------------------------------------- reading


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML or JSON config and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such config file")
    size = file.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: is {size} bytes; a config may hold at most {MAX_CONFIG_BYTES} bytes")
    try:
        text = file.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: is not a text file (UTF-8)") from exc
    try:
        config = json.loads(text) if file.suffix == ".json" else safe_yaml_load(text)
    except Exception as exc:
        raise ConfigError(f"{file}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a mapping of sections at the top, got {type(config).__name__}")
    checked: dict[str, Any] = _numbers(config)
    for item in overrides or []:
        apply_override(checked, item)
    return checked


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _numbers(obj: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` as a string; read such strings as the floats they mean."""
    if isinstance(obj, str) and _FLOAT.match(obj):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def apply_override(config: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in ``config`` (value parsed as YAML: numbers, lists, true/false)."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. fit.epochs=5")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: the key {key!r} is not a dotted path like optimizer.lr")
    try:
        value = _numbers(yaml.safe_load(raw))
    except yaml.YAMLError:
        value = raw
    target = config
    for part in parts[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        target = child
    target[parts[-1]] = value


# --------------------------------------------------------------------------- checking


def import_object(spec: str, where: str) -> Any:
    """Import ``module:attr`` (or ``module.attr``), naming ``where`` in the error."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{where}: expected an import path like 'package.module:name', got {spec!r}")
    module_name, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}: {spec!r} is not an import path like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import module {module_name!r} ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def _check_keys(section: dict[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _named(spec: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A "Name" or {name: Name, arg: value, ...} spec -> (name, kwargs)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ConfigError(f"{where}: a mapping needs a 'name' key, got keys {sorted(spec)}")
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "kwargs")}
        kwargs.update(spec.get("kwargs") or {})
        return str(spec["name"]), kwargs
    raise ConfigError(f"{where}: expected a name or a mapping with 'name', got {type(spec).__name__}")


def _resolve(name: str, namespaces: list[Any], where: str, kind: str, trust: bool, source: str) -> Any:
    """The class ``name`` stands for: a short name of ``kind`` in ``namespaces``, or ``module:name``.

    Without ``trust`` only torchhouse's allowlist (`torchhouse.safety.allowed_name`) resolves.
    """
    if not trust and not allowed_name(name, kind):
        if ":" in name or "." in name:
            raise untrusted_name_error(where, name, source)
        known = ", ".join(n.__name__ for n in namespaces)
        raise ConfigError(f"{where}: {name!r} is not a {kind} in {known}; use 'module:name' for your own")
    if ":" in name:
        return import_object(name, where)
    for namespace in namespaces:
        if hasattr(namespace, name):
            return getattr(namespace, name)
    known = ", ".join(n.__name__ for n in namespaces)
    raise ConfigError(f"{where}: {name!r} is not a name in {known}; use 'module:name' for your own")


def _check_kwargs(fn: Any, kwargs: dict[str, Any], where: str, skip: int = 0) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = {p.name for p in params}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(f"{where}: {getattr(fn, '__name__', fn)} takes no argument(s) {unknown}")


def _check_data(config: dict[str, Any], trust_code: bool, source: str, base: Path, check_paths: bool) -> None:
    """The ``data`` section: one source, contained paths, the separate validation / test CSVs."""
    data = config["data"]
    _check_keys(data, DATA_KEYS, "data")
    sources = [k for k in ("dataset", "csv", "factory") if k in data]
    if len(sources) != 1:
        raise ConfigError(f"data: give exactly one of dataset, csv or factory (got {sources or 'none'})")
    if "dataset" in data and data["dataset"] not in BUNDLED:
        raise ConfigError(f"data.dataset: {data['dataset']!r} is not bundled; choose from {list(BUNDLED)}")
    if "csv" in data:
        if "target" not in data:
            raise ConfigError("data.target: a csv source needs the name of its target column")
        if check_paths:
            contained_path(data["csv"], base, "data.csv", trust_code)
    for key in ("validation_csv", "test_csv"):
        if key in data:
            if "csv" not in data:
                raise ConfigError(f"data.{key}: a separate CSV goes with data.csv (the same columns)")
            if check_paths:
                contained_path(data[key], base, f"data.{key}", trust_code)
    if "test_csv" in data:
        if data.get("test_fraction"):
            raise ConfigError(
                "data: give test_csv or test_fraction, not both (test_csv is the held-out split)"
            )
        data["test_fraction"] = 0
    if "validation_csv" in data and config.get("fit", {}).get("validation_split"):
        raise ConfigError("give data.validation_csv or fit.validation_split, not both")
    if "factory" in data:
        if not trust_code:
            raise untrusted_name_error("data.factory", data["factory"], source)
        import_object(data["factory"], "data.factory")
    fraction = data.setdefault("test_fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"data.test_fraction: expected a number in [0, 1), got {fraction!r}")


def validate(
    config: dict[str, Any],
    trust_code: bool = False,
    source: str = "the config",
    base: Any = None,
    check_paths: bool = True,
) -> dict[str, Any]:
    """Check a config and return it with defaults filled in. Raises ConfigError naming the key.

    Without ``trust_code`` the config is data: it may name only torchhouse's own factories,
    torch's losses / optimizers / schedulers by short name, torchhouse metrics and
    callbacks, and its paths must stay inside ``base`` (default: the current folder).
    Nothing it names is imported before these checks pass. ``check_paths=False`` leaves
    the paths to be checked where they are used (a run folder's recorded data path).
    """
    config = copy.deepcopy(config)
    config.pop(CHECKSUM_KEY, None)
    for key, value in config.items():
        if key not in SECTIONS:
            raise ConfigError(f"config: unknown section {key!r}; allowed: {sorted(SECTIONS)}")
        if not isinstance(value, SECTIONS[key]):
            raise ConfigError(f"config: {key!r} has the wrong type ({type(value).__name__})")
    for required in ("model", "data", "loss"):
        if required not in config:
            raise ConfigError(f"config: the section {required!r} is missing")
    config.setdefault("name", "run")
    check_run_name(config["name"])
    base = Path.cwd() if base is None else Path(base)
    if "run_dir" in config and check_paths:
        contained_path(config["run_dir"], base, "run_dir", trust_code)
    config.setdefault("optimizer", {"name": "AdamW", "lr": 1e-3})
    config.setdefault("fit", {})
    config.setdefault("trainer", {})
    model = config["model"]
    _check_keys(model, MODEL_KEYS, "model")
    factory_name = model["factory"] = current_factory_name(model.get("factory", ""))
    if not trust_code and not allowed_name(factory_name, "factory"):
        if not isinstance(factory_name, str) or not factory_name:
            raise ConfigError(
                f"model.factory: expected an import path like 'package.module:name', got {factory_name!r}"
            )
        raise untrusted_name_error("model.factory", factory_name, source)
    factory = import_object(factory_name, "model.factory")
    if not callable(factory):
        raise ConfigError(f"model.factory: {model['factory']!r} is not callable")
    if not isinstance(model.setdefault("kwargs", {}), dict):
        raise ConfigError("model.kwargs: expected a mapping of keyword arguments")
    _check_kwargs(factory, model["kwargs"], "model.kwargs")
    _check_data(config, trust_code, source, base, check_paths)
    loss_name, loss_kwargs = _named(config["loss"], "loss")
    loss_cls = _resolve(loss_name, [nn], "loss", "loss", trust_code, source)
    _check_kwargs(loss_cls, loss_kwargs, "loss")
    opt_name, opt_kwargs = _named(config["optimizer"], "optimizer")
    opt_cls = _resolve(opt_name, [torch.optim], "optimizer", "optimizer", trust_code, source)
    _check_kwargs(opt_cls, opt_kwargs, "optimizer", skip=1)
    if config.get("lr_scheduler"):
        name, kwargs = _named(config["lr_scheduler"], "lr_scheduler")
        kwargs.pop("interval", None)
        scheduler_cls = _resolve(
            name, [torch.optim.lr_scheduler], "lr_scheduler", "lr_scheduler", trust_code, source
        )
        _check_kwargs(scheduler_cls, kwargs, "lr_scheduler", 1)
    for metric_name, spec in (config.get("metrics") or {}).items():
        name, _ = _named(spec, f"metrics.{metric_name}")
        _metric_factory(name, f"metrics.{metric_name}", trust_code, source)
    from torchhouse import callbacks as th_callbacks

    for i, spec in enumerate(config.get("callbacks") or []):
        name, kwargs = _named(spec, f"callbacks[{i}]")
        callback_cls = _resolve(name, [th_callbacks], f"callbacks[{i}]", "callback", trust_code, source)
        _check_kwargs(callback_cls, kwargs, f"callbacks[{i}]")
        for key in CALLBACK_PATH_ARGUMENTS:
            if key in kwargs and check_paths:
                # resolved against the run folder when built; checked against a stand-in here
                contained_path(kwargs[key], base / "run", f"callbacks[{i}].{key}", trust_code)
    _check_keys(config["trainer"], TRAINER_KEYS, "trainer")
    _check_keys(config["fit"], FIT_KEYS, "fit")
    class_weight = config["fit"].get("class_weight")
    if isinstance(class_weight, dict):  # JSON keys are strings: "0" is the class 0
        config["fit"]["class_weight"] = {
            int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in class_weight.items()
        }
    epochs = config["fit"].get("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"fit.epochs: expected an int >= 0, got {epochs!r}")
    return config


def _metric_factory(name: str, where: str, trust: bool = False, source: str = "the config") -> Any:
    from torchhouse import metrics as th_metrics

    if ":" in name or "." in name:
        if not trust:
            raise untrusted_name_error(where, name, source)
        return import_object(name, where)
    if not trust and not allowed_name(name, "metric"):
        raise ConfigError(f"{where}: {name!r} is not a torchhouse metric; use 'module:name' for your own")
    if hasattr(th_metrics, name) and callable(getattr(th_metrics, name)):
        return getattr(th_metrics, name)
    raise ConfigError(f"{where}: {name!r} is not in torchhouse.metrics; use 'module:name' for your own")


# --------------------------------------------------------------------------- building


@dataclass
class Data:
    """The prepared splits of a config's data (validation: from ``data.validation_csv``)."""

    x_train: Any
    y_train: Any
    x_test: Any = None
    y_test: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    x_val: Any = None
    y_val: Any = None


def task_of(config: dict[str, Any]) -> str:
    """The task the config's loss implies (`torchhouse.metrics.tasks`)."""
    loss_name, _ = _named(config["loss"], "loss")
    return task_of_loss_name(loss_name)


def _bundled(name: str) -> tuple[np.ndarray, Any, list[str] | None]:
    from importlib import resources

    from torchhouse.datasets import load_digits

    if name == "digits":
        x, y = load_digits()
        return x.numpy(), y.numpy(), None
    if name == "sentiment_words":
        from torchhouse.datasets import load_sentiment_words

        words, labels, _ = load_sentiment_words()
        return np.asarray(words, dtype=object), labels, None
    file = resources.files("torchhouse.datasets").joinpath("breast_cancer.csv")
    with file.open("r") as handle:
        return read_csv(handle, "benign", None, "data.dataset")


def _csv_rows(handle: Any, where: str, max_rows: int | None) -> list[list[str]]:
    rows: list[list[str]] = []
    try:
        for row in csv.reader(handle):
            rows.append(row)
            if max_rows is not None and len(rows) > max_rows + 1:
                raise ConfigError(
                    f"{where}: the CSV has more than {max_rows:,} rows; split it into smaller files"
                )
    except csv.Error as exc:
        limit = csv.field_size_limit()
        raise ConfigError(
            f"{where}: line {len(rows) + 1} of the CSV cannot be read ({exc}); a field may hold at "
            f"most {limit:,} characters"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: the file is not a text CSV (UTF-8)") from exc
    return rows


def read_csv(
    handle: Any,
    target: str | None,
    features: list[str] | None,
    where: str,
    max_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Feature rows (float32), target values (or None) and feature names from a CSV with a header.

    Every value must be a finite number; an error names the row and column otherwise.
    """
    rows = _csv_rows(handle, where, max_rows)
    if not rows:
        raise ConfigError(f"{where}: the CSV file is empty")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if target is not None and target not in header:
        raise ConfigError(f"{where}: no target column {target!r} in the CSV; columns: {header}")
    names = features or [h for h in header if h != target]
    missing = [n for n in names if n not in header]
    if missing:
        raise ConfigError(f"{where}: the CSV has no column(s) {missing}; columns: {header}")
    if len(body) == 0:
        raise ConfigError(f"{where}: the CSV has a header but no rows")
    columns = [*names, *([target] if target is not None else [])]
    index = [header.index(n) for n in columns]
    values = np.empty((len(body), len(columns)), dtype=np.float64)
    for line, row in enumerate(body, start=2):
        for j, i in enumerate(index):
            try:
                values[line - 2, j] = float(row[i])
            except IndexError:
                raise ConfigError(f"{where}: row {line} has no value for column {columns[j]!r}") from None
            except ValueError:
                raise ConfigError(
                    f"{where}: row {line}, column {columns[j]!r}: expected a number, got {row[i][:40]!r}"
                ) from None
    finite = np.isfinite(values)
    if not finite.all():
        line, j = (int(v) for v in np.argwhere(~finite)[0])
        raise ConfigError(
            f"{where}: row {line + 2}, column {columns[j]!r} is {values[line, j]}; every value must be a "
            "finite number (no nan or inf)"
        )
    x = values[:, : len(names)].astype(np.float32)
    y = values[:, len(names)] if target is not None else None
    return x, y, names


def load_data(config: dict[str, Any], trust_code: bool = False, base: Any = None) -> Data:
    """Load and split the config's data; returns splits and the info needed to predict later.

    ``data.csv`` must lie inside ``base`` (default: the current folder) unless ``trust_code``;
    ``data.factory`` is code and needs ``trust_code``.
    """
    data = config["data"]
    names: list[str] | None = None
    if "dataset" in data:
        if data["dataset"] not in BUNDLED:
            raise ConfigError(
                f"data.dataset: {data['dataset']!r} is not bundled; choose from {list(BUNDLED)}"
            )
        x, y, names = _bundled(data["dataset"])
    elif "csv" in data:
        x, y, names = _read_table(data, "csv", trust_code, base, None)
    else:
        if not trust_code:
            raise untrusted_name_error("data.factory", data.get("factory"), "the config")
        produced = import_object(data["factory"], "data.factory")(**(data.get("kwargs") or {}))
        if isinstance(produced, dict):
            produced = (produced.get("x"), produced.get("y"))
        if not (isinstance(produced, (tuple, list)) and len(produced) == 2):
            raise ConfigError("data.factory: must return (x, y) arrays or a dict with 'x' and 'y'")
        x, y = (np.asarray(v) if not isinstance(v, torch.Tensor) else v.numpy() for v in produced)
    task = task_of(config)
    y = np.asarray(y)
    y = y.astype(np.int64) if task == "classification" else y.astype(np.float32).reshape(len(y), -1)
    x = np.asarray(x)
    is_text = x.dtype.kind in "OUS"
    x = x.astype(np.float32) if x.dtype.kind == "f" else x
    info: dict[str, Any] = {"task": task, "input_shape": list(x.shape[1:]), "feature_names": names}
    if task == "classification":
        info["classes"] = int(y.max()) + 1
    seed = int(data.get("seed", 0))
    # the same split as torchhouse.datasets.train_test_split (and so as the demo)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).numpy()
    n_test = round(len(x) * float(data["test_fraction"]))
    test, train = order[:n_test], order[n_test:]
    x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    extra = {
        key: _read_split(data, key, trust_code, base, names, task) for key in ("validation_csv", "test_csv")
    }
    if extra["test_csv"] is not None:
        (x_test, y_test), n_test = extra["test_csv"], len(extra["test_csv"][0])
    x_val, y_val = extra["validation_csv"] if extra["validation_csv"] is not None else (None, None)
    if is_text:
        from torchhouse.data.text import TrigramVocabulary

        vocabulary = TrigramVocabulary.build([str(t) for t in x_train], int(data.get("min_count", 2)))
        length = int(data.get("max_length", 16))
        info.update(
            vocabulary=vocabulary.grams,
            max_length=length,
            input_shape=[length],
            text=data.get("text", "text"),
        )
        x_train = vocabulary.encode([str(t) for t in x_train], length).numpy()
        x_test = vocabulary.encode([str(t) for t in x_test], length).numpy()
        if x_val is not None:
            x_val = vocabulary.encode([str(t) for t in x_val], length).numpy()
    if data.get("standardize"):  # with the training split's statistics, for every split
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0) + 1e-8
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        x_val = (x_val - mean) / std if x_val is not None else None
        info.update(mean=mean.tolist(), std=std.tolist())
    if not n_test:
        x_test, y_test = None, None
    return Data(x_train, y_train, x_test, y_test, info, x_val=x_val, y_val=y_val)


def _read_table(
    data: dict[str, Any], key: str, trust_code: bool, base: Any, features: list[str] | None
) -> tuple[Any, Any, list[str] | None]:
    """The rows of the CSV ``data[key]`` (its features, or ``features`` when given, and target)."""
    path = contained_path(data[key], Path.cwd() if base is None else base, f"data.{key}", trust_code)
    if not path.is_file():
        raise ConfigError(f"data.{key}: {path}: no such file")
    with path.open(newline="") as handle:
        if data.get("text"):
            x, y = read_text_csv(handle, data["text"], data["target"], f"data.{key}")
            return x, y, None
        return read_csv(handle, data["target"], features or data.get("features"), f"data.{key}")


def _read_split(
    data: dict[str, Any], key: str, trust_code: bool, base: Any, names: list[str] | None, task: str
) -> tuple[Any, Any] | None:
    """A separate validation or test CSV, read with the training CSV's columns, in their order."""
    if key not in data:
        return None
    try:
        x, y, _ = _read_table(data, key, trust_code, base, names)
    except ConfigError as exc:
        if key == "test_csv" and "no target column" in str(exc):
            raise ConfigError(
                f"{exc}. data.test_csv holds labelled rows to evaluate on; rows to predict (such as a "
                "Kaggle test.csv) go to: torchhouse predict RUN FILE.csv --id-column ID"
            ) from None
        raise
    y = np.asarray(y)
    y = y.astype(np.int64) if task == "classification" else y.astype(np.float32).reshape(len(y), -1)
    x = np.asarray(x)
    return (x.astype(np.float32) if x.dtype.kind == "f" else x), y


def read_text_csv(
    handle: Any, text: str, target: str | None, where: str, max_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Texts (and numeric targets, or None) from a CSV with a header."""
    rows = _csv_rows(handle, where, max_rows)
    if len(rows) < 2:
        raise ConfigError(f"{where}: the CSV has no rows")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in (text, target) if c is not None and c not in header]
    if missing:
        raise ConfigError(f"{where}: the CSV has no column(s) {missing}; columns: {header}")
    text_index = header.index(text)
    try:
        texts = np.asarray([r[text_index] for r in rows[1:]], dtype=object)
    except IndexError as exc:
        raise ConfigError(f"{where}: a row has no value for the column {text!r}") from exc
    if target is None:
        return texts, None
    column = header.index(target)
    lines = [target] + [r[column] if column < len(r) else "" for r in rows[1:]]
    _, y, _ = read_csv(io.StringIO("\n".join(lines)), target, None, where)
    return texts, y


def prepare_inputs(rows: Any, info: dict[str, Any]) -> np.ndarray:
    """Turn raw rows (feature rows, or texts for a text model) into net inputs, as training did."""
    if info.get("vocabulary") is not None:
        from torchhouse.data.text import TrigramVocabulary

        texts = [str(t) for t in rows]
        return TrigramVocabulary(info["vocabulary"]).encode(texts, int(info["max_length"])).numpy()
    x: np.ndarray = np.asarray(rows, dtype=np.float32)
    if "mean" in info:
        mean = np.asarray(info["mean"], dtype=np.float32)
        x = (x - mean) / np.asarray(info["std"], dtype=np.float32)
    shape = info.get("input_shape") or []
    return x.reshape(len(x), *shape) if shape else x


def build_net(config: dict[str, Any], trust_code: bool = False) -> nn.Module:
    """The net a (validated) config's model section describes."""
    model = config["model"]
    factory = current_factory_name(model["factory"])
    if not trust_code and not allowed_name(factory, "factory"):
        raise untrusted_name_error("model.factory", factory, "the config")
    net = import_object(factory, "model.factory")(**model.get("kwargs", {}))
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"model.factory: {model['factory']!r} returned {type(net).__name__}, not an nn.Module"
        )
    return net


def build_model(config: dict[str, Any], net: nn.Module | None = None, trust_code: bool = False) -> Any:
    """The `Model` a (validated) config describes; names resolve as `validate` allows them."""
    source = "the config"
    loss_name, loss_kwargs = _named(config["loss"], "loss")
    loss = _resolve(loss_name, [nn], "loss", "loss", trust_code, source)(**loss_kwargs)
    opt_name, opt_kwargs = _named(config["optimizer"], "optimizer")
    opt_cls = _resolve(opt_name, [torch.optim], "optimizer", "optimizer", trust_code, source)
    scheduler = None
    trainer = dict(config.get("trainer") or {})
    if config.get("lr_scheduler"):
        name, kwargs = _named(config["lr_scheduler"], "lr_scheduler")
        trainer.setdefault("lr_scheduler_interval", kwargs.pop("interval", "epoch"))
        cls = _resolve(name, [torch.optim.lr_scheduler], "lr_scheduler", "lr_scheduler", trust_code, source)
        scheduler = lambda optimizer: cls(optimizer, **kwargs)  # noqa: E731
    metrics = {}
    for metric_name, spec in (config.get("metrics") or {}).items():
        name, kwargs = _named(spec, f"metrics.{metric_name}")
        factory = _metric_factory(name, f"metrics.{metric_name}", trust_code, source)
        metrics[metric_name] = factory(**kwargs) if inspect.isclass(factory) else factory
    return Model(
        net if net is not None else build_net(config, trust_code),
        loss=loss,
        optimizer=lambda params: opt_cls(params, **opt_kwargs),
        metrics=metrics,
        lr_scheduler=scheduler,
        **trainer,
    )


def build_callbacks(config: dict[str, Any], run_dir: Any, trust_code: bool = False) -> list[Any]:
    """The config's callbacks; their path arguments are taken relative to ``run_dir``."""
    from torchhouse import callbacks as th_callbacks

    built = []
    for i, spec in enumerate(config.get("callbacks") or []):
        name, kwargs = _named(spec, f"callbacks[{i}]")
        cls = _resolve(name, [th_callbacks], f"callbacks[{i}]", "callback", trust_code, "the config")
        for key in CALLBACK_PATH_ARGUMENTS:
            if key in kwargs:
                kwargs[key] = contained_path(kwargs[key], run_dir, f"callbacks[{i}].{key}", trust_code)
        built.append(cls(**kwargs))
    return built


def train_from_config(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: str | None = None,
    extra_callbacks: list[Any] | None = None,
    trust_code: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Validate, build, train and evaluate on the held-out split; writes the run folder.

    ``trust_code=True`` lets the config name your own code (``module:callable``) and paths
    outside the current folder; see docs/security.md. Returns ``{"model", "history",
    "test", "run_dir"}``.
    """
    config = validate(config, trust_code)
    data = load_data(config, trust_code)
    for key in ("csv", "validation_csv", "test_csv"):  # absolute: the run folder may be opened elsewhere
        if key in config["data"]:
            config["data"][key] = str(Path(config["data"][key]).resolve())
    folder = Path(run_dir or config.get("run_dir") or Path("runs") / config["name"])
    config["data"].update(data.info)
    config["run_dir"] = str(folder)
    seed = config["fit"].get("seed")
    if seed is not None:
        torch.manual_seed(seed)
    if data.info.get("vocabulary") is not None:
        # a text net's embedding size follows the vocabulary built from the training split
        factory = import_object(current_factory_name(config["model"]["factory"]), "model.factory")
        if "vocabulary_size" in inspect.signature(factory).parameters:
            config["model"]["kwargs"].setdefault("vocabulary_size", len(data.info["vocabulary"]) + 2)
    model = build_model(config, trust_code=trust_code)
    fit_kwargs = dict(config["fit"])
    if progress is not None:
        fit_kwargs["progress"] = progress
    extras = RunExtras(
        config, data.info, data.x_test, data.y_test, plot=True
    )  # written while the fit holds the folder
    callbacks = [*build_callbacks(config, folder, trust_code), *(extra_callbacks or []), extras]
    if data.x_val is not None:
        fit_kwargs["validation_data"] = (data.x_val, data.y_val)
    history = model.fit(
        data.x_train,
        data.y_train,
        run_dir=folder,
        resume=resume,
        overwrite=overwrite,
        callbacks=callbacks,
        **fit_kwargs,
    )
    test = extras.test
    if test is None:  # the run had finished before: evaluated now, nothing written
        test = model.evaluate(data.x_test, data.y_test, batch_size=256) if data.x_test is not None else {}
    return {"model": model, "history": history, "test": test, "run_dir": folder}
