"""Callbacks: hooks into fit. Subclass `Callback` and override the hooks you need."""

from torchhouse.callbacks.base import Callback
from torchhouse.callbacks.csv_logger import CSVLogger
from torchhouse.callbacks.dispatch import CallbackList
from torchhouse.callbacks.early_stopping import EarlyStopping
from torchhouse.callbacks.ema import EMA
from torchhouse.callbacks.finetuning import BackboneFinetuning
from torchhouse.callbacks.lambda_callback import LambdaCallback
from torchhouse.callbacks.learning_rate import LearningRateScheduler, ReduceLROnPlateau
from torchhouse.callbacks.live_plot import LivePlot
from torchhouse.callbacks.model_checkpoint import ModelCheckpoint
from torchhouse.callbacks.optuna_pruning import OptunaPruning
from torchhouse.callbacks.profiler import Profiler
from torchhouse.callbacks.swa import StochasticWeightAveraging
from torchhouse.callbacks.tensorboard import TensorBoard
from torchhouse.callbacks.terminate_on_nan import TerminateOnNaN
from torchhouse.callbacks.trackers import MLflowLogger, WandbLogger

__all__ = [
    "EMA",
    "BackboneFinetuning",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LambdaCallback",
    "LearningRateScheduler",
    "LivePlot",
    "MLflowLogger",
    "ModelCheckpoint",
    "OptunaPruning",
    "Profiler",
    "ReduceLROnPlateau",
    "StochasticWeightAveraging",
    "TensorBoard",
    "TerminateOnNaN",
    "WandbLogger",
]
