"""torchhouse: a Keras-style Model over plain PyTorch objects.

    import torchhouse as th
    model = th.Model(net, loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy})
    history = model.fit(x, y, validation_split=0.2, epochs=10)
    model.evaluate(x_test, y_test)
    model.predict(x_new)
    model.save("model.safetensors")

Importing torchhouse imports torch, numpy, safetensors and nothing heavy: torchmetrics,
pandas, matplotlib, tensorboard, optuna and streamlit are imported only when used, and
so are the front ends (`config`, `tuning`, `tune`), at their first use.
"""

import importlib
from typing import Any

from torchhouse import callbacks, datasets, metrics, models, runs
from torchhouse.data.rng import seed_everything
from torchhouse.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    TorchhouseError,
    UntrustedCodeError,
)
from torchhouse.files.export import ExportError, load_exported
from torchhouse.finetune import freeze, param_groups, unfreeze
from torchhouse.parallel.distributed import launch
from torchhouse.runs.history import History
from torchhouse.summary import Summary, summary
from torchhouse.train.lightning import LightModel
from torchhouse.train.model import Model
from torchhouse.version import __version__

__all__ = [
    "LightModel",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "History",
    "Model",
    "NonFiniteLossError",
    "Summary",
    "TorchhouseError",
    "UntrustedCodeError",
    "__version__",
    "callbacks",
    "config",
    "cross_validate",
    "CVResult",
    "datasets",
    "freeze",
    "launch",
    "load_exported",
    "metrics",
    "models",
    "param_groups",
    "seed_everything",
    "summary",
    "TuneResult",
    "tune",
    "tuning",
    "runs",
    "unfreeze",
]

# name -> (module, attribute or None for the module itself): loaded at first use
_LAZY = {
    "config": ("torchhouse.config", None),
    "tuning": ("torchhouse.frontends.tuning", None),  # th.tuning.TuneResult, as before the folders
    "tune": ("torchhouse.frontends.tuning", "tune"),
    "cross_validate": ("torchhouse.frontends.cross_validation", "cross_validate"),
    "CVResult": ("torchhouse.frontends.cross_validation", "CVResult"),
    "TuneResult": ("torchhouse.frontends.tuning", "TuneResult"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'torchhouse' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
