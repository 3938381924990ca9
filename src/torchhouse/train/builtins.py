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
from typing import TYPE_CHECKING

from torchhouse.callbacks.base import Callback
from torchhouse.callbacks.live_plot import LivePlot
from torchhouse.callbacks.tensorboard import TensorBoard, tensorboard_available
from torchhouse.train.progress_bar import ProgressBar
from torchhouse.train.run_folder_writer import RunFolderWriter
from torchhouse.train.state_checkpoint import StateCheckpoint

if TYPE_CHECKING:
    from torchhouse.train.loop import FitLoop
    from torchhouse.train.spec import FitSpec

__all__ = ["automatic_callbacks", "fit_callbacks"]


def automatic_callbacks(spec: FitSpec, given: list[Callback]) -> list[Callback]:
    """The optional callbacks ``fit(plot=..., tensorboard=...)`` asks for (fit added them itself)."""
    added: list[Callback] = []
    if spec.plot == "live":
        added.append(LivePlot())
    wants_tb = spec.tensorboard if spec.tensorboard is not None else tensorboard_available()
    if spec.run_dir is not None and wants_tb and not any(isinstance(c, TensorBoard) for c in given):
        added.append(TensorBoard(Path(spec.run_dir) / "tensorboard"))
    for callback in added:
        callback.auto = True
    return added


def fit_callbacks(fit: FitLoop, callbacks: list[Callback], progress_mode: str) -> list[Callback]:
    """Every callback of one fit, in the order the loop calls them (see the module docstring)."""
    state = fit.state
    callbacks = callbacks + automatic_callbacks(fit.spec, callbacks)
    if not state.is_main:
        # Only rank 0 writes files: drop writers fit added by itself on other ranks.
        callbacks = [c for c in callbacks if not c.auto]
    ordered: list[Callback] = []
    if state.run_folder is not None:
        ordered.append(RunFolderWriter(fit))  # every rank: gathering a sharded net's weights is collective
    if progress_mode != "none":
        ordered.append(ProgressBar(progress_mode, fit.spec.epochs, state.steps))
    ordered += callbacks
    if state.run_folder is not None:
        ordered.append(StateCheckpoint(fit))
    return ordered
