"""Progress display: a tqdm bar in a terminal, the widget in Jupyter, one line per epoch in logs.

The training loop calls `Progress.due()` every step; it only compares two floats. The
loss is read from the device (one host sync) only when the bar actually refreshes, at
most a few times a second.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from torchhouse.errors import ConfigError

__all__ = ["MODES", "Progress", "format_logs", "in_notebook", "resolve_mode"]

MODES = ("auto", "bar", "notebook", "epoch", "none")


def in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def resolve_mode(progress: Any) -> str:
    """Map ``fit(progress=...)`` to one of: bar, notebook, epoch, none."""
    if progress is False or progress is None:
        return "none"
    if progress is True:
        progress = "auto"
    if progress not in MODES:
        raise ConfigError(f"progress: expected one of {MODES} or a bool, got {progress!r}")
    if progress != "auto":
        return str(progress)
    if in_notebook():
        return "notebook"
    return "bar" if sys.stderr.isatty() else "epoch"


def format_logs(logs: Mapping[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4g}" for k, v in logs.items())


class Progress:
    """Shows training progress; see the module docstring."""

    def __init__(self, mode: str, epochs: int, refresh_seconds: float = 0.5) -> None:
        self.mode = mode
        self.epochs = epochs
        self.refresh_seconds = refresh_seconds
        self.next_refresh = float("inf")  # the loop compares against this every step
        self._bar: Any = None
        self._shown = 0
        self._started = 0.0

    @property
    def per_step(self) -> bool:
        return self.mode in ("bar", "notebook")

    def epoch_start(self, epoch: int, steps: int | None, done: int = 0) -> None:
        self._started = time.perf_counter()
        if not self.per_step:
            return
        if self.mode == "notebook":
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
        self._bar = tqdm(
            total=steps,
            initial=done,
            desc=f"Epoch {epoch + 1}/{self.epochs}",
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self._shown = done
        self.next_refresh = time.perf_counter() + self.refresh_seconds

    def refresh(self, done: int, read_loss: Callable[[], float]) -> None:
        """Advance the bar to ``done`` steps and show the running loss (one host sync)."""
        if self._bar is not None:
            self._bar.update(done - self._shown)
            self._shown = done
            self._bar.set_postfix_str(f"loss: {read_loss():.4g}", refresh=True)
        self.next_refresh = time.perf_counter() + self.refresh_seconds

    def epoch_end(self, epoch: int, done: int, logs: Mapping[str, float]) -> None:
        seconds = time.perf_counter() - self._started
        self.next_refresh = float("inf")
        if self._bar is not None:
            self._bar.update(done - self._shown)
            self._bar.set_postfix_str(format_logs(logs), refresh=True)
            self._bar.close()
            self._bar = None
        elif self.mode == "epoch":
            print(
                f"Epoch {epoch + 1}/{self.epochs} - {seconds:.2f}s - {format_logs(logs)}",
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
