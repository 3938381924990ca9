"""Profiler: ``torch.profiler`` over a few training steps (imported only when a fit uses it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError

__all__ = ["Profiler"]


class Profiler(Callback):
    """Profile ``active`` training steps after ``wait`` skipped and ``warmup`` discarded ones
    (``torch.profiler.schedule``), once per fit.

    Writes a trace that TensorBoard's profiler plugin and ``chrome://tracing`` /
    Perfetto open (``*.pt.trace.json``) into ``dir`` (default: ``run_dir/profile`` when the
    fit has a run folder; without either, no file), and prints a table of the operators that
    took the most time. ``table`` keeps that text; ``record_shapes`` records input shapes
    (slower). CUDA activity is recorded when the model is on a GPU.

    Example::

        model.fit(x, y, epochs=1, callbacks=[th.callbacks.Profiler(wait=1, warmup=1, active=3)])
    """

    def __init__(
        self,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        dir: str | os.PathLike[str] | None = None,
        record_shapes: bool = False,
        row_limit: int = 15,
    ) -> None:
        for name, value, least in (("wait", wait, 0), ("warmup", warmup, 0), ("active", active, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"Profiler: {name} must be an int >= {least}, got {value!r}")
        self.wait, self.warmup, self.active = wait, warmup, active
        self.dir = None if dir is None else Path(dir)
        self.record_shapes = bool(record_shapes)
        self.row_limit = row_limit
        self.table: str | None = None
        self.trace_dir: Path | None = None
        self._profile: Any = None
        self._steps = 0

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        import torch
        from torch import profiler

        run_folder = self.model.fit_state.run_folder
        self.trace_dir = self.dir or (run_folder.path / "profile" if run_folder is not None else None)
        activities = [profiler.ProfilerActivity.CPU]
        if self.model.device.type == "cuda" and torch.cuda.is_available():
            activities.append(profiler.ProfilerActivity.CUDA)
        handler = None
        if self.trace_dir is not None:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            handler = profiler.tensorboard_trace_handler(str(self.trace_dir))
        self.table, self._steps = None, 0
        self._profile = profiler.profile(
            activities=activities,
            schedule=profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1),
            on_trace_ready=handler,
            record_shapes=self.record_shapes,
        )
        self._profile.start()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        if self._profile is None:
            return
        self._profile.step()
        self._steps += 1
        if self._steps >= self.wait + self.warmup + self.active:
            self._finish()

    def _finish(self) -> None:
        profile, self._profile = self._profile, None
        profile.stop()
        sort = "self_cuda_time_total" if self.model.device.type == "cuda" else "self_cpu_time_total"
        try:
            self.table = profile.key_averages().table(sort_by=sort, row_limit=self.row_limit)
        except (AssertionError, RuntimeError, KeyError):  # nothing was recorded (too few steps)
            self.table = None
        if self.table:
            where = f" (trace in {self.trace_dir})" if self.trace_dir is not None else ""
            self.say(f"Profiler: {self.active} steps{where}\n{self.table}")

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        if self._profile is not None:  # the fit had fewer steps than the schedule
            self._finish()
