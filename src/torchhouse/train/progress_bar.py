"""ProgressBar: the fit's progress display, as a built-in callback."""

from __future__ import annotations

import time
from typing import Any

from torchhouse.callbacks.base import Callback
from torchhouse.progress import Progress

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Drives `torchhouse.progress.Progress`: a bar per epoch, or a line per epoch.

    Added by ``fit(progress=...)`` on the main process; not meant to be given by hand.
    The per-step work is one float comparison; the running loss is read from the device
    (one host sync) only when the bar refreshes, a few times a second.
    """

    auto = True

    def __init__(self, mode: str, epochs: int, steps: int | None) -> None:
        self.progress = Progress(mode, epochs)
        self.steps = steps
        self.epoch = -1  # the epoch the bar shows
        self.done = 0
        self.needs_batch_end = self.progress.per_step  # epoch lines need no per-step call
        self.epoch_first_step, self.epoch_done_before = 0, 0  # to count an epoch's steps at its end

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        self.progress.started = time.perf_counter()  # times an epoch resumed mid-way, too
        resumed = self.model.fit_state.resumed
        self._mark(resumed.batch if resumed is not None else 0)

    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        self._start(epoch, 0)
        self._mark(0)

    def _mark(self, done_before: int) -> None:
        self.epoch_first_step, self.epoch_done_before = self.model.global_step, done_before

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        if self.epoch != self.model.epoch:  # an epoch resumed mid-way: no on_epoch_start
            self._start(self.model.epoch, batch)
        self.done = batch + 1
        if time.perf_counter() >= self.progress.next_refresh:
            self.progress.refresh(self.done, self.model.train_metrics.partial_loss, self.epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self.needs_batch_end:  # no per-step call: the steps done, from the step counter
            self.done = self.epoch_done_before + self.model.global_step - self.epoch_first_step
        self.progress.epoch_end(epoch, self.done, logs)

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        self.progress.close(self.done)

    def _start(self, epoch: int, done: int) -> None:
        self.epoch, self.done = epoch, done
        self.progress.epoch_start(epoch, self.steps, done)
