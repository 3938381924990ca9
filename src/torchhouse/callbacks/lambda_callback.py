"""LambdaCallback: a callback from plain functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchhouse.callbacks.base import HOOKS, Callback
from torchhouse.errors import ConfigError

__all__ = ["LambdaCallback"]


class LambdaCallback(Callback):
    """Build a callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``.

    Any hook may be given (``on_fit_start``, ``on_epoch_end``, ``on_train_batch_start``,
    ``on_test_batch_end``, ``on_predict_end``, ...; see `Callback`), with the hook's
    arguments. Other keyword arguments become methods of the callback, as in Keras.

    Example:
        >>> seen = []
        >>> cb = LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    """

    def __init__(self, **functions: Callable[..., Any]) -> None:
        for name, function in functions.items():
            if not callable(function):
                raise ConfigError(f"LambdaCallback: {name} must be a function, got {type(function).__name__}")
            setattr(self, name, function)  # hooks given here are the only ones called

    def __repr__(self) -> str:
        given = [name for name in HOOKS if name in vars(self)]
        return f"LambdaCallback({', '.join(given)})"
