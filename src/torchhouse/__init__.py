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

from torchhouse import callbacks, datasets, metrics, models
from torchhouse.distributed import launch
from torchhouse.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    TorchhouseError,
    UntrustedCodeError,
)
from torchhouse.export import ExportError, load_exported
from torchhouse.history import History
from torchhouse.lightning_model import LightModel
from torchhouse.model import Model
from torchhouse.rng import seed_everything
from torchhouse.summary import Summary, summary
from torchhouse.tuning import tune

__version__ = "0.1.0"

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
    "datasets",
    "launch",
    "load_exported",
    "metrics",
    "models",
    "seed_everything",
    "summary",
    "tune",
]
