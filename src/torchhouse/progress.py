"""Progress display: a tqdm bar in a terminal, a text display in Jupyter, a line per epoch in logs.

The `ProgressBar` callback drives it: per step it only compares two floats
(``perf_counter() >= next_refresh``). The loss is read from the device (one host sync)
only when the display actually refreshes, at most a few times a second.

In Jupyter the whole fit is one output, updated in place through a display id: the
finished epochs' lines and the running epoch's. What a saved notebook stores is that
output's last state, so GitHub, nbviewer or a saved Kaggle version show the final
metrics without widget state. Off a terminal (a notebook's stderr, a log file), "bar"
writes one finished line per epoch instead of a stream of carriage returns. Under
``th.launch`` from a notebook, rank 0 relays its display to the parent process, which
draws it: a forked process must not send messages to the kernel.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from torchhouse.errors import ConfigError

__all__ = ["MODES", "NotebookDisplay", "Progress", "format_logs", "in_notebook", "resolve_mode", "set_relay"]

MODES = ("auto", "bar", "notebook", "epoch", "none")

_relay: Callable[[list[str], str], None] | None = None  # set in a th.launch child that relays to the parent


def set_relay(relay: Callable[[list[str], str], None] | None) -> None:
    """Send this process's progress text to ``relay(lines, current)`` instead of showing it."""
    global _relay
    _relay = relay


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
    if progress == "notebook" and _relay is None:
        from importlib.util import find_spec

        if find_spec("IPython") is None:
            raise ConfigError("progress='notebook' draws in Jupyter; IPython is not installed here")
    if progress != "auto":
        return str(progress)
    if _relay is not None or in_notebook():
        return "notebook"
    return "bar" if sys.stderr.isatty() else "epoch"


def format_logs(logs: Mapping[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4g}" for k, v in logs.items())


class NotebookDisplay:
    """One Jupyter output updated in place: finished lines, then the running line.

    Its ``text/plain`` is the whole text, so a notebook saved without widget state still
    shows every epoch's final values.
    """

    def __init__(self) -> None:
        from IPython import display as ipython_display

        show: Any = ipython_display.display  # untyped
        self.lines: list[str] = []
        self.current = ""
        self.handle: Any = show(self, display_id=True)

    def show(self, lines: list[str], current: str) -> None:
        self.lines, self.current = list(lines), current
        if self.handle is not None:
            self.handle.update(self)

    def __repr__(self) -> str:
        return "\n".join([*self.lines, self.current] if self.current else self.lines)

    def _repr_html_(self) -> str:
        import html

        return f"<pre style='margin: 0'>{html.escape(repr(self))}</pre>"


class Progress:
    """Shows training progress; see the module docstring."""

    def __init__(self, mode: str, epochs: int, refresh_seconds: float = 0.5) -> None:
        self.mode = mode
        self.epochs = epochs
        self.refresh_seconds = refresh_seconds
        self.next_refresh = float("inf")  # the loop compares against this every step
        self.started = 0.0
        self._bar: Any = None  # in a terminal: one tqdm bar for the whole fit
        self._bar_running = False  # whether the bar shows an epoch not yet finished
        self._shown = 0
        self._steps: int | None = None
        self._lines: list[str] = []  # the text modes: finished epochs
        self._show: Callable[[list[str], str], None] | None = None
        self._terminal = mode == "bar" and sys.stderr.isatty()

    @property
    def per_step(self) -> bool:
        return self.mode == "notebook" or self._terminal

    def epoch_start(self, epoch: int, steps: int | None, done: int = 0) -> None:
        self.started = time.perf_counter()
        self._steps = steps
        if self.mode == "notebook":
            self._text(self._running(epoch, done, None))
        elif self._terminal:
            desc = f"Epoch {epoch + 1}/{self.epochs}"
            if self._bar is not None and done == 0:  # one bar for the whole fit: reset, not re-created
                self._bar.set_description_str(desc, refresh=False)
                self._bar.set_postfix_str("", refresh=False)
                self._bar.reset(total=steps)
            else:
                from tqdm import tqdm

                self.close()
                self._bar = tqdm(
                    total=steps, initial=done, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr
                )
            self._shown = done
            self._bar_running = True
        if self.per_step:
            self.next_refresh = time.perf_counter() + self.refresh_seconds

    def refresh(self, done: int, read_loss: Callable[[], float], epoch: int = 0) -> None:
        """Show ``done`` steps and the running loss (one host sync)."""
        if self._bar is not None:
            self._bar.update(done - self._shown)
            self._shown = done
            self._bar.set_postfix_str(f"loss: {read_loss():.4g}", refresh=True)
        elif self.mode == "notebook":
            self._text(self._running(epoch, done, read_loss()))
        self.next_refresh = time.perf_counter() + self.refresh_seconds

    def epoch_end(self, epoch: int, done: int, logs: Mapping[str, float]) -> None:
        seconds = time.perf_counter() - self.started
        self.next_refresh = float("inf")
        if self._bar is not None:
            self._bar.update(done - self._shown)
            self._shown = done
            self._bar.set_postfix_str(format_logs(logs), refresh=True)
            self._bar.fp.write("\n")  # the epoch's final line stays; the next epoch draws below it
            self._bar_running = False
            return
        steps = f" - {done}/{self._steps or done}" if self.mode in ("bar", "notebook") else ""
        line = f"Epoch {epoch + 1}/{self.epochs}{steps} - {seconds:.2f}s - {format_logs(logs)}"
        if self.mode == "notebook":
            self._lines.append(line)
            self._text("")
        elif self.mode == "bar":  # off a terminal: one line per epoch, no carriage returns
            print(line, file=sys.stderr, flush=True)
        elif self.mode == "epoch":
            print(line, flush=True)

    def close(self, done: int | None = None) -> None:
        """End the display; ``done``: the steps an unfinished epoch got through."""
        if self._bar is not None:
            if self._bar_running and done is not None:
                self._bar.update(done - self._shown)
            # an epoch cut short keeps its line; after a finished one only the empty line is cleared
            self._bar.leave = self._bar_running
            self._bar.close()
            self._bar = None

    def _running(self, epoch: int, done: int, loss: float | None) -> str:
        steps = self._steps
        if steps:
            filled = int(20 * done / steps)
            meter = f" [{'#' * filled}{'.' * (20 - filled)}] {done}/{steps}"
        else:
            meter = f" {done} steps"
        return f"Epoch {epoch + 1}/{self.epochs}{meter}" + (
            f" - loss: {loss:.4g}" if loss is not None else ""
        )

    def _text(self, current: str) -> None:
        if self._show is None:
            self._show = _relay if _relay is not None else NotebookDisplay().show
        self._show(self._lines, current)
