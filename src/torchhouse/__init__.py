"""torchhouse: a Keras-style Model over plain PyTorch objects.

    import torchhouse as th
    model = th.Model(net, loss=nn.CrossEntropyLoss(), metrics={"acc": th.metrics.accuracy})
    history = model.fit(x, y, validation_split=0.2, epochs=10)
    model.evaluate(x_test, y_test)
    model.predict(x_new)
    model.save("model.safetensors")

Importing torchhouse imports torch, numpy, safetensors and nothing heavy: torchmetrics,
pandas, matplotlib, tensorboard, optuna and streamlit are imported only when used.
"""

from torchhouse import callbacks, config, datasets, metrics, models
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
from torchhouse.frontends import tuning  # th.tuning.TuneResult, as before the package had folders
from torchhouse.frontends.tuning import TuneResult, tune
from torchhouse.parallel.distributed import launch
from torchhouse.summary import Summary, summary
from torchhouse.train.history import History
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
    "datasets",
    "launch",
    "load_exported",
    "metrics",
    "models",
    "seed_everything",
    "summary",
    "TuneResult",
    "tune",
    "tuning",
]
