"""RunFolderWriter: what a fit writes into its ``run_dir``, as a built-in callback."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from torchhouse.callbacks.base import Callback
from torchhouse.data import tree_map

if TYPE_CHECKING:
    from torchhouse.loop import FitLoop

__all__ = ["RunFolderWriter"]


class RunFolderWriter(Callback):
    """Writes ``config.json`` and ``run.json`` at the start, ``history.csv`` every epoch, and at
    the end the status, ``model.safetensors``, ``history.png`` and the serving files.

    Added by ``fit(run_dir=...)`` on the main process. It reads the fit through the
    `FitLoop`'s public attributes (``run_dir``, ``monitor``, ``best``, ``example_batch``,
    ``resumed``), never its private ones. The status is written first at the end, so a second
    Ctrl-C cannot lose it.
    """

    auto = True

    def __init__(self, fit: FitLoop) -> None:
        assert fit.run_dir is not None
        self.fit = fit
        self.run_dir = fit.run_dir

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        self.run_dir.start(self.fit.config(), resumed=self.fit.resumed is not None)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.run_dir.write_history(self.model.history)

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        model, run_dir = self.model, self.run_dir
        if status == "interrupted":  # numbers a person reads count from 1
            run_dir.update(
                status=status, interrupted_at={"epoch": model.epoch + 1, "step": model.global_step}
            )
        finished = status in ("finished", "stopped_early")
        if finished and not self.fit.sharded:  # a sharded net is saved by every rank (StateCheckpoint)
            model.save(run_dir.path / "model.safetensors")
        run_dir.update(
            status=status,
            epochs_done=len(model.history),
            monitor=self.fit.monitor,
            best=self.fit.best,
            best_epoch=self._best_epoch(),
            ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        if len(model.history):
            _write_plot(model.history, self.fit.monitor, run_dir.path / "history.png")
        if finished and self.fit.example_batch is not None and not self.fit.sharded:
            from torchhouse.serving import write_serving_files

            inputs, _ = model.unpack_batch(self.fit.example_batch)
            example = tree_map(lambda t: t[:2].detach(), inputs)
            write_serving_files(run_dir.path, model, example)

    def _best_epoch(self) -> int | None:
        history, monitor = self.model.history, self.fit.monitor
        if monitor not in history.history or not len(history):
            return None
        try:
            return history.best(monitor, self.fit.monitor_mode)[0]
        except ValueError:
            return None


def _write_plot(history: Any, monitor: str, path: Any) -> None:
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        return  # plots are an optional extra
    from torchhouse.plotting import plot_history

    plot_history(history, monitor=monitor, path=path)  # an off-screen figure: no pyplot state
