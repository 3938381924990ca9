"""Config-driven training: `torchhouse fit config.yaml` and friends.

A config names everything by import path or by a short name, so a run folder can rebuild
the net and its data without the code that trained it::

    name: digits-cnn
    model:
      factory: torchhouse.demo:digits_cnn      # module:callable returning an nn.Module
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
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchhouse.errors import ConfigError

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
TRAINER_KEYS = {
    "device",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "compile",
    "lr_scheduler_interval",
    "lr_scheduler_monitor",
}
FIT_KEYS = {
    "epochs",
    "batch_size",
    "shuffle",
    "seed",
    "validation_split",
    "progress",
    "checkpoint_every",
    "keep_checkpoints",
    "monitor",
    "on_nonfinite",
    "tensorboard",
}
BUNDLED = ("digits", "breast_cancer", "sentiment_words")
TEXT_DATASETS = ("sentiment_words",)
CLASSIFICATION_LOSSES = ("CrossEntropyLoss", "NLLLoss")
BINARY_LOSSES = ("BCEWithLogitsLoss", "BCELoss")


# --------------------------------------------------------------------------- reading


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML or JSON config and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such config file")
    text = file.read_text()
    try:
        if file.suffix == ".json":
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{file}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a mapping of sections at the top, got {type(config).__name__}")
    config = _numbers(config)
    for item in overrides or []:
        apply_override(config, item)
    return config


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


def _check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
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


def _resolve(name: str, namespaces: list[Any], where: str) -> Any:
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


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check a config and return it with defaults filled in. Raises ConfigError naming the key."""
    config = copy.deepcopy(config)
    for key, value in config.items():
        if key not in SECTIONS:
            raise ConfigError(f"config: unknown section {key!r}; allowed: {sorted(SECTIONS)}")
        if not isinstance(value, SECTIONS[key]):
            raise ConfigError(f"config: {key!r} has the wrong type ({type(value).__name__})")
    for required in ("model", "data", "loss"):
        if required not in config:
            raise ConfigError(f"config: the section {required!r} is missing")
    config.setdefault("name", "run")
    config.setdefault("optimizer", {"name": "AdamW", "lr": 1e-3})
    config.setdefault("fit", {})
    config.setdefault("trainer", {})
    model = config["model"]
    _check_keys(model, MODEL_KEYS, "model")
    factory = import_object(model.get("factory", ""), "model.factory")
    if not callable(factory):
        raise ConfigError(f"model.factory: {model['factory']!r} is not callable")
    if not isinstance(model.setdefault("kwargs", {}), dict):
        raise ConfigError("model.kwargs: expected a mapping of keyword arguments")
    _check_kwargs(factory, model["kwargs"], "model.kwargs")
    data = config["data"]
    _check_keys(data, DATA_KEYS, "data")
    sources = [k for k in ("dataset", "csv", "factory") if k in data]
    if len(sources) != 1:
        raise ConfigError(f"data: give exactly one of dataset, csv or factory (got {sources or 'none'})")
    if "dataset" in data and data["dataset"] not in BUNDLED:
        raise ConfigError(f"data.dataset: {data['dataset']!r} is not bundled; choose from {list(BUNDLED)}")
    if "csv" in data and "target" not in data:
        raise ConfigError("data.target: a csv source needs the name of its target column")
    if "factory" in data:
        import_object(data["factory"], "data.factory")
    fraction = data.setdefault("test_fraction", 0.2)
    if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"data.test_fraction: expected a number in [0, 1), got {fraction!r}")
    loss_name, loss_kwargs = _named(config["loss"], "loss")
    loss_cls = _resolve(loss_name, [nn], "loss")
    _check_kwargs(loss_cls, loss_kwargs, "loss")
    opt_name, opt_kwargs = _named(config["optimizer"], "optimizer")
    opt_cls = _resolve(opt_name, [torch.optim], "optimizer")
    _check_kwargs(opt_cls, opt_kwargs, "optimizer", skip=1)
    if config.get("lr_scheduler"):
        name, kwargs = _named(config["lr_scheduler"], "lr_scheduler")
        kwargs.pop("interval", None)
        _check_kwargs(_resolve(name, [torch.optim.lr_scheduler], "lr_scheduler"), kwargs, "lr_scheduler", 1)
    for metric_name, spec in (config.get("metrics") or {}).items():
        name, _ = _named(spec, f"metrics.{metric_name}")
        _metric_factory(name, f"metrics.{metric_name}")
    from torchhouse import callbacks as th_callbacks

    for i, spec in enumerate(config.get("callbacks") or []):
        name, kwargs = _named(spec, f"callbacks[{i}]")
        _check_kwargs(_resolve(name, [th_callbacks], f"callbacks[{i}]"), kwargs, f"callbacks[{i}]")
    _check_keys(config["trainer"], TRAINER_KEYS, "trainer")
    _check_keys(config["fit"], FIT_KEYS, "fit")
    epochs = config["fit"].get("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"fit.epochs: expected an int >= 0, got {epochs!r}")
    return config


def _metric_factory(name: str, where: str) -> Any:
    from torchhouse import metrics as th_metrics

    if ":" in name or "." in name:
        return import_object(name, where)
    if hasattr(th_metrics, name) and callable(getattr(th_metrics, name)):
        return getattr(th_metrics, name)
    raise ConfigError(f"{where}: {name!r} is not in torchhouse.metrics; use 'module:name' for your own")


# --------------------------------------------------------------------------- building


@dataclass
class Data:
    """The prepared splits of a config's data."""

    x_train: Any
    y_train: Any
    x_test: Any = None
    y_test: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def task_of(config: dict[str, Any]) -> str:
    loss_name, _ = _named(config["loss"], "loss")
    base = loss_name.rpartition(":")[2]
    if base in CLASSIFICATION_LOSSES:
        return "classification"
    if base in BINARY_LOSSES:
        return "binary"
    return "regression"


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
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
        return _read_csv(handle, "benign", None, "data.dataset")


def _read_csv(
    handle: Any, target: str | None, features: list[str] | None, where: str
) -> tuple[Any, Any, list[str]]:
    rows = list(csv.reader(handle))
    if not rows:
        raise ConfigError(f"{where}: the CSV file is empty")
    header, body = rows[0], rows[1:]
    if target is not None and target not in header:
        raise ConfigError(f"data.target: no column {target!r} in the CSV; columns: {header}")
    names = features or [h for h in header if h != target]
    missing = [n for n in names if n not in header]
    if missing:
        raise ConfigError(f"{where}: the CSV has no column(s) {missing}; columns: {header}")
    index = [header.index(n) for n in names]
    try:
        x = np.array([[float(r[i]) for i in index] for r in body], dtype=np.float32)
        y = None if target is None else np.array([float(r[header.index(target)]) for r in body])
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{where}: every feature and target value must be a number ({exc})") from exc
    if len(body) == 0:
        raise ConfigError(f"{where}: the CSV has a header but no rows")
    return x, y, names


def load_data(config: dict[str, Any]) -> Data:
    """Load and split the config's data; returns splits and the info needed to predict later."""
    data = config["data"]
    names: list[str] | None = None
    if "dataset" in data:
        x, y, names = _bundled(data["dataset"])
    elif "csv" in data:
        path = Path(data["csv"])
        if not path.is_file():
            raise ConfigError(f"data.csv: {path}: no such file")
        with path.open(newline="") as handle:
            if data.get("text"):
                x, y = _read_text_csv(handle, data["text"], data["target"], "data.csv")
            else:
                x, y, names = _read_csv(handle, data["target"], data.get("features"), "data.csv")
    else:
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
    if is_text:
        from torchhouse.text import TrigramVocabulary

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
    if data.get("standardize"):
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0) + 1e-8
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        info.update(mean=mean.tolist(), std=std.tolist())
    return Data(x_train, y_train, x_test if n_test else None, y_test if n_test else None, info)


def _read_text_csv(handle: Any, text: str, target: str | None, where: str) -> tuple[Any, Any]:
    rows = list(csv.DictReader(handle))
    if not rows:
        raise ConfigError(f"{where}: the CSV has no rows")
    missing = [c for c in (text, target) if c is not None and c not in rows[0]]
    if missing:
        raise ConfigError(f"{where}: the CSV has no column(s) {missing}; columns: {list(rows[0])}")
    texts = np.asarray([r[text] for r in rows], dtype=object)
    if target is None:
        return texts, None
    try:
        return texts, np.asarray([float(r[target]) for r in rows])
    except ValueError as exc:
        raise ConfigError(f"{where}: the target column {target!r} must hold numbers ({exc})") from exc


def prepare_inputs(rows: Any, info: dict[str, Any]) -> np.ndarray:
    """Turn raw rows (feature rows, or texts for a text model) into net inputs, as training did."""
    if info.get("vocabulary") is not None:
        from torchhouse.text import TrigramVocabulary

        texts = [str(t) for t in rows]
        return TrigramVocabulary(info["vocabulary"]).encode(texts, int(info["max_length"])).numpy()
    x: np.ndarray = np.asarray(rows, dtype=np.float32)
    if "mean" in info:
        mean = np.asarray(info["mean"], dtype=np.float32)
        x = (x - mean) / np.asarray(info["std"], dtype=np.float32)
    shape = info.get("input_shape") or []
    return x.reshape(len(x), *shape) if shape else x


def build_net(config: dict[str, Any]) -> nn.Module:
    model = config["model"]
    net = import_object(model["factory"], "model.factory")(**model.get("kwargs", {}))
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"model.factory: {model['factory']!r} returned {type(net).__name__}, not an nn.Module"
        )
    return net


def build_model(config: dict[str, Any], net: nn.Module | None = None) -> Any:
    """The `Model` a (validated) config describes."""
    from torchhouse.model import Model

    loss_name, loss_kwargs = _named(config["loss"], "loss")
    loss = _resolve(loss_name, [nn], "loss")(**loss_kwargs)
    opt_name, opt_kwargs = _named(config["optimizer"], "optimizer")
    opt_cls = _resolve(opt_name, [torch.optim], "optimizer")
    scheduler = None
    trainer = dict(config.get("trainer") or {})
    if config.get("lr_scheduler"):
        name, kwargs = _named(config["lr_scheduler"], "lr_scheduler")
        trainer.setdefault("lr_scheduler_interval", kwargs.pop("interval", "epoch"))
        cls = _resolve(name, [torch.optim.lr_scheduler], "lr_scheduler")
        scheduler = lambda optimizer: cls(optimizer, **kwargs)  # noqa: E731
    metrics = {}
    for metric_name, spec in (config.get("metrics") or {}).items():
        name, kwargs = _named(spec, f"metrics.{metric_name}")
        factory = _metric_factory(name, f"metrics.{metric_name}")
        metrics[metric_name] = factory(**kwargs) if inspect.isclass(factory) else factory
    return Model(
        net if net is not None else build_net(config),
        loss=loss,
        optimizer=lambda params: opt_cls(params, **opt_kwargs),
        metrics=metrics,
        lr_scheduler=scheduler,
        **trainer,
    )


def build_callbacks(config: dict[str, Any]) -> list[Any]:
    from torchhouse import callbacks as th_callbacks

    built = []
    for i, spec in enumerate(config.get("callbacks") or []):
        name, kwargs = _named(spec, f"callbacks[{i}]")
        built.append(_resolve(name, [th_callbacks], f"callbacks[{i}]")(**kwargs))
    return built


RUN_CONFIG = "run_config.json"


def train_from_config(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: str | None = None,
    extra_callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Validate, build, train and evaluate on the held-out split; writes the run folder.

    Returns ``{"model", "history", "test", "run_dir"}``.
    """
    from torchhouse.checkpoint import atomic_write_json

    config = validate(config)
    data = load_data(config)
    folder = Path(run_dir or config.get("run_dir") or Path("runs") / config["name"])
    config["data"].update(data.info)
    config["run_dir"] = str(folder)
    seed = config["fit"].get("seed")
    if seed is not None:
        torch.manual_seed(seed)
    if data.info.get("vocabulary") is not None:
        # a text net's embedding size follows the vocabulary built from the training split
        factory = import_object(config["model"]["factory"], "model.factory")
        if "vocabulary_size" in inspect.signature(factory).parameters:
            config["model"]["kwargs"].setdefault("vocabulary_size", len(data.info["vocabulary"]) + 2)
    model = build_model(config)
    fit_kwargs = dict(config["fit"])
    if progress is not None:
        fit_kwargs["progress"] = progress
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_CONFIG, config)
    history = model.fit(
        data.x_train,
        data.y_train,
        run_dir=folder,
        resume=resume,
        callbacks=build_callbacks(config) + list(extra_callbacks or []),
        **fit_kwargs,
    )
    test = model.evaluate(data.x_test, data.y_test, batch_size=256) if data.x_test is not None else {}
    if test:
        from torchhouse.runs import RunDir

        RunDir(folder).update(test=test)
    return {"model": model, "history": history, "test": test, "run_dir": folder}


def load_run(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], Any]:
    """The resolved config and the trained Model of a run folder written by `train_from_config`."""
    from torchhouse.checkpoint import read_json

    folder = Path(run_dir)
    if not (folder / RUN_CONFIG).exists():
        raise ConfigError(f"{folder}: has no {RUN_CONFIG}; was it trained with `torchhouse fit CONFIG`?")
    config = read_json(folder / RUN_CONFIG)
    model = build_model(config)
    weights = folder / "model.safetensors"
    model.load_weights(weights)
    return config, model
