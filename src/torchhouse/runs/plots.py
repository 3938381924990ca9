"""History plots with matplotlib (imported only here): loss and each metric, train vs validation."""

from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING, Any

from torchhouse.errors import ConfigError, import_optional

if TYPE_CHECKING:
    from torchhouse.runs.history import History

__all__ = ["INSTALL_HINT", "offscreen_figure", "plot_history", "pyplot"]

INSTALL_HINT = "plots need matplotlib: pip install 'torchhouse[plot]'"


def pyplot() -> Any:
    """matplotlib.pyplot with the user's own backend (torchhouse never switches it)."""
    return import_optional("matplotlib.pyplot", INSTALL_HINT)


def offscreen_figure(**kwargs: Any) -> Any:
    """A figure drawn with the Agg canvas and no pyplot state: for files, never shown."""
    import_optional("matplotlib", INSTALL_HINT)  # the install hint when it is missing
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class ShownFigure(Figure):
        """A Figure that shows itself as a notebook cell's value, without pyplot's inline backend."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

    figure = ShownFigure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def plot_history(
    history: History,
    monitor: str | None = None,
    mode: str = "auto",
    path: str | os.PathLike[str] | None = None,
    figure: Any = None,
) -> Any:
    """Draw one panel per value (loss, each metric, lr): train and validation as two lines.

    The best epoch of ``monitor`` (default ``val_loss`` if logged, else ``loss``) is
    marked in every panel. Saves a PNG when ``path`` is given; returns the figure. A
    figure made here (no ``figure`` given) is a plain matplotlib ``Figure`` outside
    pyplot's state: it never changes the backend, shows once as a notebook cell's value,
    and ``figure.show()`` / ``plt.show()`` are the user's to call.
    """
    from torchhouse.metrics.monitor import resolve_mode

    names = [n for n in history.history if not n.startswith("val_")]
    names += [n[4:] for n in history.history if n.startswith("val_") and n[4:] not in names]
    if not names:
        raise ConfigError("the history is empty: nothing to plot")
    columns = min(len(names), 3)
    rows = math.ceil(len(names) / columns)
    if figure is None:
        figure = offscreen_figure(figsize=(4.6 * columns, 3.4 * rows))
    figure.clear()
    epochs = [e + 1 for e in history.epoch]
    monitor = monitor or ("val_loss" if "val_loss" in history.history else "loss")
    best = None
    if monitor in history.history:
        try:
            best = history.best(monitor, resolve_mode(monitor, mode)) if history.epoch else None
        except (ValueError, ConfigError):
            best = None
    for i, name in enumerate(names):
        axis = figure.add_subplot(rows, columns, i + 1)
        if name in history.history:
            axis.plot(epochs, history.history[name], marker="o", markersize=3, label="train")
        if f"val_{name}" in history.history:
            axis.plot(epochs, history.history[f"val_{name}"], marker="o", markersize=3, label="validation")
        if best is not None:
            axis.axvline(
                best[0] + 1,
                color="0.5",
                linestyle="--",
                linewidth=1,
                label=f"best {monitor} (epoch {best[0] + 1})",
            )
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    if path is not None:
        import io

        from torchhouse.files.checkpoint import atomic_write_bytes

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        atomic_write_bytes(path, buffer.getvalue())
    return figure
