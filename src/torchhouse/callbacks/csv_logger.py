"""CSVLogger: one row per epoch in a CSV file."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError
from torchhouse.files.checkpoint import check_writable_parent

__all__ = ["CSVLogger"]


class CSVLogger(Callback):
    """Write one row per epoch to ``path``: an ``epoch`` column, then each logged value.

    As Keras' ``CSVLogger``: ``separator`` between fields, and ``append=True`` keeps the
    rows already in the file (a second fit adds below them) instead of starting it again.
    The file is rewritten whole and atomically after every epoch, so a crash never leaves
    a half-written row.

    Example:
        >>> logger = CSVLogger("history.csv", separator=";", append=True)
        >>> # model.fit(x, y, epochs=10, callbacks=[logger])
    """

    def __init__(self, path: str | os.PathLike[str], separator: str = ",", append: bool = False) -> None:
        if not isinstance(separator, str) or len(separator) != 1:
            raise ConfigError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.path = os.fspath(path)
        self.separator = separator
        self.append = append
        self._kept: list[list[str]] = []
        self._header: list[str] | None = None

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        check_writable_parent("CSVLogger", self.path)
        self._kept, self._header = [], None
        if self.append and os.path.isfile(self.path):
            with open(self.path, newline="") as handle:
                rows = list(csv.reader(handle, delimiter=self.separator))
            if rows:
                self._header, self._kept = rows[0], rows[1:]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        from torchhouse.files.checkpoint import atomic_write_bytes

        history = self.model.history
        names = self._header[1:] if self._header else list(history.history)
        names += [n for n in history.history if n not in names]
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.separator)
        writer.writerow(["epoch", *names])
        for row in self._kept:
            writer.writerow(row + [""] * (len(names) + 1 - len(row)))
        for index, number in enumerate(history.epoch):
            values = (repr(history.history[n][index]) if n in history.history else "" for n in names)
            writer.writerow([number, *values])
        atomic_write_bytes(self.path, buffer.getvalue().encode())
