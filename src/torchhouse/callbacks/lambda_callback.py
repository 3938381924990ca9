"""LambdaCallback: a callback from plain functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchhouse.callbacks.base import Callback

__all__ = ["LambdaCallback"]

LogsFn = Callable[[dict[str, Any]], None]
EpochFn = Callable[[int, dict[str, Any]], None]


class LambdaCallback(Callback):
    """Build a callback from functions, e.g. ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``.

    Example:
        >>> seen = []
        >>> cb = LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    """

    def __init__(
        self,
        on_fit_start: LogsFn | None = None,
        on_fit_end: LogsFn | None = None,
        on_epoch_start: EpochFn | None = None,
        on_epoch_end: EpochFn | None = None,
        on_validation_end: LogsFn | None = None,
    ) -> None:
        self._fit_start = on_fit_start
        self._fit_end = on_fit_end
        self._epoch_start = on_epoch_start
        self._epoch_end = on_epoch_end
        self._validation_end = on_validation_end

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        if self._fit_start:
            self._fit_start(logs)

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        if self._fit_end:
            self._fit_end(logs)

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._epoch_start:
            self._epoch_start(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._epoch_end:
            self._epoch_end(epoch, logs)

    def on_validation_end(self, logs: dict[str, Any]) -> None:
        if self._validation_end:
            self._validation_end(logs)
