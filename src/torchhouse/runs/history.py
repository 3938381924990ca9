"""History: the per-epoch values that fit logged."""

from __future__ import annotations

import math
from typing import Any

from torchhouse.metrics.monitor import resolve_mode

__all__ = ["History"]


class History:
    """What `Model.fit` returns: one float per epoch for the loss and each metric.

    >>> h = History(); h.append(0, {"loss": 0.9, "val_loss": 0.8}); h.append(1, {"loss": 0.5})
    >>> h.history["loss"], h.epoch
    ([0.9, 0.5], [0, 1])
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Add one epoch's values; a key missing in some epochs is padded with NaN."""
        rows = len(self.epoch)
        for name in logs:
            if name not in self.history:
                self.history[name] = [math.nan] * rows
        for name, values in self.history.items():
            values.append(float(logs.get(name, math.nan)))
        self.epoch.append(epoch)

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 6) for k, v in self.history.items()} if self.epoch else {}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def best(self, monitor: str = "val_loss", mode: str = "auto") -> tuple[int, float]:
        """(epoch, value) of the best finite value of ``monitor``.

        >>> h = History(); h.append(0, {"loss": float("nan")}); h.append(1, {"loss": 0.4})
        >>> h.best("loss")
        (1, 0.4)
        """
        if monitor not in self.history:
            raise KeyError(f"{monitor!r} is not in the history; it has {sorted(self.history)}")
        direction = resolve_mode(monitor, mode)
        finite = [(v, e) for v, e in zip(self.history[monitor], self.epoch, strict=True) if math.isfinite(v)]
        if not finite:
            raise ValueError(f"{monitor!r} has no finite value in the history")
        value, epoch = min(finite) if direction == "min" else max(finite, key=lambda p: (p[0], -p[1]))
        return epoch, value

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {k: [float(v) for v in vals] for k, vals in state["history"].items()}
        self.epoch = [int(e) for e in state["epoch"]]

    def to_pandas(self) -> Any:
        """A pandas DataFrame with one row per epoch (pandas is imported only here).

        >>> h = History(); h.append(0, {"loss": 0.5}); list(h.to_pandas().columns)
        ['epoch', 'loss']
        """
        import pandas as pd

        return pd.DataFrame({"epoch": self.epoch, **self.history})

    def plot(self, path: Any = None, monitor: str | None = None, mode: str = "auto") -> Any:
        """Loss and each metric per epoch, train vs validation, best epoch marked (matplotlib).

        Saves a PNG when ``path`` is given; returns the matplotlib figure.
        """
        from torchhouse.runs.plots import plot_history

        return plot_history(self, monitor=monitor, mode=mode, path=path)

    def to_csv(self, path: Any) -> None:
        """Write one row per epoch to ``path`` (no pandas needed)."""
        from torchhouse.runs.history_csv import write_history_csv

        write_history_csv(path, self)
