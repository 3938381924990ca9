"""RunFolderWriter: what a fit writes into its ``run_dir``, as a built-in callback.

It calls the `RunFolder`, the folder's one writer: ``config.json`` and ``run.json`` at the
start, ``history.csv`` every epoch, and at the end the status (first, so a second Ctrl-C
cannot lose it), then the finished fit's files, each written once: ``model.safetensors`` +
``model.json``, ``model.pt2`` + ``serve.json``.

``history.png`` is not drawn here: matplotlib takes 0.1-0.3 s a figure, more than all the
rest of a short fit's run folder, and every tuning trial would pay it. The command-line
front ends draw it at the end of their run; anyone else asks for it
(`torchhouse.runs.plot_run`, ``torchhouse show RUN --plot``).
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from typing import TYPE_CHECKING, Any

from torchhouse.callbacks.base import Callback
from torchhouse.data.trees import tree_map
from torchhouse.errors import TorchhouseError
from torchhouse.files.export import example_inputs, export_program
from torchhouse.runs.serve_files import serving_description
from torchhouse.train.weights import weights_metadata

if TYPE_CHECKING:
    from torchhouse.runs.folder import RunFolder
    from torchhouse.train.loop import FitLoop
    from torchhouse.train.model import Model
    from torchhouse.train.state import FitState

__all__ = ["RunFolderWriter", "write_final_files"]

FINISHED = ("finished", "stopped_early")


class RunFolderWriter(Callback):
    """Writes a fit's run folder through its `RunFolder`; see the module docstring.

    Added by ``fit(run_dir=...)`` on every process: only the main one writes, the others
    take part in gathering the weights of a sharded net (a collective).
    """

    auto = True

    def __init__(self, fit: FitLoop) -> None:
        assert fit.state.run_folder is not None
        self.fit = fit
        self.folder = fit.state.run_folder
        self.is_main = fit.state.is_main

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        if self.is_main:
            self.folder.start(self.fit.config(), resumed=self.fit.state.resumed is not None)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.is_main:
            self.folder.write_history(self.model.history)

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        model, state = self.model, self.fit.state
        if self.is_main:
            if status == "interrupted":  # numbers a person reads count from 1
                where = {"epoch": state.epoch + 1, "step": state.global_step}
                self.folder.update(status=status, interrupted_at=where)
            self.folder.update(status=status)
        if status in FINISHED:
            weights = state.strategy.full_weights(model.net)  # every rank: a collective under FSDP
            if self.is_main:
                write_final_files(model, state, self.folder, weights)
                self._write_report()
        if self.is_main:
            self.folder.update(
                status=status,
                epochs_done=len(model.history),
                monitor=state.monitor,
                best=state.best,
                best_epoch=self._best_epoch(),
                weights=self._weights_origin(),
                ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )

    def _write_report(self) -> None:
        """``report.md``: the final weights' `Report` on the validation split (one more pass over
        it; one process only, since under several each holds a share of the split)."""
        state = self.fit.state
        if self.fit.val is None or state.strategy.world_size > 1:
            return
        from torchhouse.train.reporting import collect_report

        try:
            state.report = collect_report(self.model, self.fit.val, None)
        except TorchhouseError as exc:  # a net whose outputs a report cannot read: the run is still fine
            self.folder.write_text("report.md", f"# Report\n\nno report: {exc}\n")
            return
        self.folder.write_text("report.md", state.report.to_markdown())

    def _weights_origin(self) -> dict[str, Any]:
        """Which epoch ``model.safetensors`` holds: the last, or one a callback restored (a
        callback that does sets ``restored_epoch`` and has the ``monitor`` that chose it)."""
        for callback in self.fit.callbacks.callbacks:
            epoch = getattr(callback, "restored_epoch", None)
            if isinstance(epoch, int):
                monitor = getattr(callback, "monitor", None)
                return {"epoch": epoch, "monitor": monitor, "restored_by": type(callback).__name__}
        return {
            "epoch": len(self.model.history) - 1 if len(self.model.history) else None,
            "restored_by": None,
        }

    def _best_epoch(self) -> int | None:
        history, state = self.model.history, self.fit.state
        if state.monitor not in history.history or not len(history):
            return None
        try:
            return history.best(state.monitor, state.monitor_mode)[0]
        except ValueError:
            return None


def write_final_files(model: Model, state: FitState, folder: RunFolder, weights: dict[str, Any]) -> None:
    """A finished fit's files: the weights once, and the program and ``serve.json`` a run folder
    is served from without its code (the reason in ``serve.json`` when the net cannot be exported)."""
    program, meta, reason, inputs = None, None, None, None
    if state.strategy.writes_own_shards:
        reason = "the net was sharded (strategy='fsdp'): torch.export of a sharded net is not supported"
    elif state.example_batch is not None:
        raw, _ = model.unpack_batch(state.example_batch)
        inputs = example_inputs(tree_map(lambda t: t[:2].detach(), raw))
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                program, meta = export_program(model.net, inputs, where=str(folder.path / "model.pt2"))
        except TorchhouseError as exc:
            reason = str(exc).splitlines()[0]
    metadata = weights_metadata(model, weights)
    if meta is not None:
        metadata["export"] = meta
    serving = serving_description(model, inputs, program is not None, reason, folder.serving_data)
    folder.write_final(weights, metadata, program, serving)
