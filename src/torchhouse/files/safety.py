"""What torchhouse may do with a file it did not write: the rules of docs/security.md.

A config, a run folder, an exported program or an upload is data. Opening one never
imports or calls a name it holds unless the caller says ``trust_code=True`` for that
call; every path it holds must stay inside its base folder; every size is capped before
the work it would cost is done.

Example:
    >>> allowed_name("CrossEntropyLoss", "loss")
    True
    >>> allowed_name("subprocess:Popen", "loss")
    False
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from torchhouse.errors import ConfigError, UntrustedCodeError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CSV_ROWS",
    "MAX_IMAGE_PIXELS",
    "TRUSTED_FACTORIES",
    "FACTORY_ALIASES",
    "allowed_name",
    "current_factory_name",
    "check_run_name",
    "contained_path",
    "json_digest",
    "safe_yaml_load",
    "untrusted_name_error",
]

MAX_CONFIG_BYTES = 1 << 20  # a config larger than 1 MB is refused before it is parsed
MAX_CSV_ROWS = 1_000_000  # rows of a CSV given to predict / evaluate / the app
MAX_IMAGE_PIXELS = 4096 * 4096  # an uploaded image larger than this is refused before decoding

# Factories that ship with torchhouse: a run folder or config may name these without trust_code.
TRUSTED_FACTORIES = frozenset(
    {
        "torchhouse.models:digits_cnn",
        "torchhouse.models:mlp",
        "torchhouse.models:bag_of_trigrams",
    }
)
TRUSTED_METRICS = frozenset({"accuracy", "binary_accuracy_logits"})
# Callbacks a config may build by name; their path arguments must stay inside the run folder.
TRUSTED_CALLBACKS = frozenset(
    {
        "BackboneFinetuning",
        "CSVLogger",
        "EMA",
        "EarlyStopping",
        "LivePlot",
        "ModelCheckpoint",
        "Profiler",
        "ReduceLROnPlateau",
        "StochasticWeightAveraging",
        "TensorBoard",
        "TerminateOnNaN",
    }
)
CALLBACK_PATH_ARGUMENTS = ("path", "filepath", "log_dir", "filename", "dir")
# Names that older run folders and configs hold for factories that have moved since.
FACTORY_ALIASES = {"torchhouse.demo:digits_cnn": "torchhouse.models:digits_cnn"}


def current_factory_name(name: Any) -> Any:
    """The name a factory has now (``torchhouse.demo:digits_cnn`` is ``torchhouse.models:digits_cnn``)."""
    return FACTORY_ALIASES.get(name, name) if isinstance(name, str) else name


def _is_subclass(obj: Any, base: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, base)


def allowed_name(name: Any, kind: str) -> bool:
    """Whether a name from a file may be resolved without ``trust_code``.

    ``kind`` is one of "factory", "loss", "optimizer", "lr_scheduler", "metric", "callback".
    Short names resolve only to the classes of that kind in torch / torchhouse; a
    ``module:callable`` path is allowed only for torchhouse's own factories.
    """
    if not isinstance(name, str) or not name:
        return False
    if kind == "factory":
        return current_factory_name(name) in TRUSTED_FACTORIES
    if ":" in name or "." in name:
        return False
    import torch
    from torch import nn

    if kind == "loss":
        return _is_subclass(getattr(nn, name, None), nn.modules.loss._Loss)
    if kind == "optimizer":
        return _is_subclass(getattr(torch.optim, name, None), torch.optim.Optimizer)
    if kind == "lr_scheduler":
        found = getattr(torch.optim.lr_scheduler, name, None)
        return _is_subclass(found, torch.optim.lr_scheduler.LRScheduler) or _is_subclass(
            found, torch.optim.lr_scheduler.ReduceLROnPlateau
        )
    if kind == "metric":
        return name in TRUSTED_METRICS
    if kind == "callback":
        return name in TRUSTED_CALLBACKS
    raise ValueError(f"unknown kind {kind!r}")


def untrusted_name_error(where: str, name: Any, source: str) -> UntrustedCodeError:
    """The error for a name that would import code the user has not trusted."""
    return UntrustedCodeError(
        f"{where}: {name!r} names code outside torchhouse's own list, and {source} is data: "
        "torchhouse does not import or call names from a file unless you trust it. If you "
        "trust this file, pass trust_code=True (CLI: --trust-code). See docs/security.md."
    )


def contained_path(value: Any, base: str | os.PathLike[str], where: str, trust: bool = False) -> Path:
    """``value`` resolved against ``base``; it must stay inside ``base`` unless ``trust``."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    root = Path(base).resolve()
    path = (root / Path(value)).resolve()
    if trust or path == root or root in path.parents:
        return path
    raise UntrustedCodeError(
        f"{where}: {os.fspath(value)!r} points outside {root}; a path read from a file must stay "
        "inside its folder (pass trust_code=True / --trust-code if you trust this file)"
    )


_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_run_name(name: Any, where: str = "name") -> str:
    """A run name becomes a folder under runs/: one plain path component, no ``..``."""
    if not isinstance(name, str) or not _RUN_NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{where}: {name!r} is not a plain folder name (letters, digits, '.', '_', '-'; "
            "no '/' or '..'); it names the run folder under runs/"
        )
    return name


def json_digest(obj: Any) -> str:
    """sha256 of ``obj``'s canonical JSON (sorted keys): a checksum for data held in JSON."""
    text = json.dumps(obj, sort_keys=True, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def safe_yaml_load(text: str) -> Any:
    """Parse YAML with the safe loader, refusing aliases (``*name``).

    Aliases let a few hundred bytes expand into gigabytes (the "billion laughs"); a
    torchhouse config never needs them.
    """
    import yaml

    class NoAliasLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(
                    f"aliases (*{event.anchor}) are not allowed in a torchhouse config "
                    f"(line {event.start_mark.line + 1}); write the value out"
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliasLoader)
