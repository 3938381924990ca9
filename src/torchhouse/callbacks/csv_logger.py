"""CSVLogger: append one row per epoch to a CSV file."""

from __future__ import annotations

import os
from typing import Any

from torchhouse.callbacks.base import Callback

__all__ = ["CSVLogger"]


class CSVLogger(Callback):
    """Write the history to ``path`` after every epoch (the whole file, atomically).

    Example:
        >>> logger = CSVLogger("history.csv")
        >>> # model.fit(x, y, epochs=10, callbacks=[logger])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        from torchhouse.runs import write_history_csv

        write_history_csv(self.path, self.model.history)
