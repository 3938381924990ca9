"""LivePlot: redraw the history figure in place once per epoch in Jupyter."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torchhouse.callbacks.base import Callback

__all__ = ["LivePlot"]


class LivePlot(Callback):
    """Update one figure of the training curves after every epoch (``fit(plot="live")``).

    In Jupyter the figure is replaced in place (``IPython.display`` with a display id);
    elsewhere there is nothing to update, so it warns once and does nothing.

    Example:
        >>> # model.fit(x, y, validation_split=0.2, epochs=20, plot="live")
    """

    def __init__(self, monitor: str | None = None, display: Callable[..., Any] | None = None) -> None:
        self.monitor = monitor
        self._display = display
        self._handle: Any = None
        self._figure: Any = None

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        if self._display is None:
            from torchhouse.progress import in_notebook

            if not in_notebook():
                warnings.warn("plot='live' draws in Jupyter only; use history.plot() elsewhere", stacklevel=2)
                self._display = lambda *args, **kwargs: None
            else:
                from IPython.display import display

                self._display = display

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        from torchhouse.runs.plots import plot_history, pyplot

        if self._figure is None:
            self._figure = pyplot().figure()
        plot_history(self.model.history, monitor=self.monitor, figure=self._figure)
        assert self._display is not None
        if self._handle is None:
            self._handle = self._display(self._figure, display_id=True)
        elif hasattr(self._handle, "update"):
            self._handle.update(self._figure)

    def on_fit_end(self, logs: dict[str, Any]) -> None:
        if self._figure is not None:
            _close = __import__("matplotlib.pyplot").pyplot.close
            _close(self._figure)
