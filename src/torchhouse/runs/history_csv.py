"""``history.csv``: one row per epoch, an ``epoch`` column (counted from 0), then one column per value."""

from __future__ import annotations

import csv
import io
import os
from typing import TYPE_CHECKING

from torchhouse.errors import CheckpointError
from torchhouse.files.checkpoint import atomic_write_bytes, read_regular_file

if TYPE_CHECKING:
    from torchhouse.runs.history import History

__all__ = ["read_history_csv", "write_history_csv"]


def write_history_csv(path: str | os.PathLike[str], history: History) -> None:
    """Write ``history`` as CSV, atomically; values are written with ``repr`` (exact floats, ``nan``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(history.history)
    writer.writerow(["epoch", *names])
    for row, epoch in enumerate(history.epoch):
        writer.writerow([epoch, *(repr(history.history[n][row]) for n in names)])
    atomic_write_bytes(path, buffer.getvalue().encode())


def read_history_csv(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """The columns of a ``history.csv`` as floats (``epoch`` included); a FIFO or device planted
    in its place is refused (`CheckpointError`), never waited on.

    Example::

        read_history_csv("runs/demo/history.csv")["val_loss"]
    """
    text = read_regular_file(path).decode("utf-8", errors="replace")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows:
        return {}
    try:
        return {name: [float(r[name]) for r in rows] for name in rows[0]}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: is not a history written by torchhouse ({exc})") from exc
