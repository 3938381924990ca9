"""The callbacks fit adds by itself, and their order.

``fit_callbacks`` gives the order the loop calls them in::

    RunFolderWriter    run.json / config.json / history.csv / model.safetensors (rank 0, run_dir)
    ProgressBar        the bar or the epoch lines (rank 0, unless progress="none")
    ...the user's callbacks, then TensorBoard / LivePlot when fit added them
    StateCheckpoint    resumable states (run_dir; every rank), last: a state holds what
                       every other callback did in its epoch

The run folder's writer comes first, so at the end of a fit the status is written before
anything else (a second Ctrl-C cannot lose it) and ``history.csv`` exists when a user's
``on_epoch_end`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchhouse.callbacks.base import Callback
from torchhouse.callbacks.live_plot import LivePlot
from torchhouse.callbacks.progress_bar import ProgressBar
from torchhouse.callbacks.run_folder import RunFolderWriter
from torchhouse.callbacks.state_checkpoint import StateCheckpoint
from torchhouse.callbacks.tensorboard import TensorBoard, tensorboard_available
from torchhouse.errors import ConfigError

if TYPE_CHECKING:
    from torchhouse.loop import FitLoop

__all__ = ["automatic_callbacks", "fit_callbacks"]


def automatic_callbacks(
    given: list[Callback], run_dir: Any, plot: str | None, tensorboard: bool | None
) -> list[Callback]:
    """The optional callbacks ``fit(plot=..., tensorboard=...)`` asks for (checked before training)."""
    if plot not in (None, "live"):
        raise ConfigError(f"plot: expected None or 'live', got {plot!r}")
    if tensorboard and run_dir is None:
        raise ConfigError("tensorboard=True writes to run_dir/tensorboard: give run_dir too")
    added: list[Callback] = []
    if plot == "live":
        added.append(LivePlot())
    wants_tb = tensorboard if tensorboard is not None else tensorboard_available()
    if run_dir is not None and wants_tb and not any(isinstance(c, TensorBoard) for c in given):
        added.append(TensorBoard(Path(run_dir) / "tensorboard"))
    for callback in added:
        callback.auto = True
    return added


def fit_callbacks(fit: FitLoop, callbacks: list[Callback], progress_mode: str) -> list[Callback]:
    """Every callback of one fit, in the order the loop calls them (see the module docstring)."""
    if not fit.is_main:
        # Only rank 0 writes files: drop writers fit added by itself on other ranks.
        callbacks = [c for c in callbacks if not c.auto]
    ordered: list[Callback] = []
    if fit.run_dir is not None and fit.is_main:
        ordered.append(RunFolderWriter(fit))
    if progress_mode != "none":
        ordered.append(ProgressBar(progress_mode, fit.epochs, fit.steps))
    ordered += callbacks
    if fit.run_dir is not None:
        ordered.append(StateCheckpoint(fit))
    return ordered
