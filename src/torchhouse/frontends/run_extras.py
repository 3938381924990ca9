"""RunExtras: what a front end keeps in a run folder beside the fit's own files.

The config front end and the demo record how to rebuild and serve the run
(``run_config.json``, the data preparation in ``serve.json``, the held-out rows) and the
held-out split's results, and draw ``history.png`` at the end (a fit alone does not: see
`torchhouse.train.run_folder_writer`). They do it through a callback, while the fit holds
the run folder's lock, so nothing is written into a folder another process may be writing.
"""

from __future__ import annotations

from typing import Any

from torchhouse.callbacks.base import Callback

__all__ = ["RunExtras"]


class RunExtras(Callback):
    """Writes a front end's extras into the fit's run folder (see the module docstring).

        At the start: ``run_config``, ``serving_data`` (kept for ``serve.json``) and the
        held-out rows ``x_test`` / ``y_test``. At a finished end: their results, as ``test`` in
        ``run.json`` (and in `test`). Every process evaluates (it is one collective under
        several processes); the main one writes. ``plot`` draws ``history.png`` at any end, and
    ``confusion_matrix.png`` from the validation report (``report.md``) of a finished fit.
    """

    def __init__(
        self,
        run_config: dict[str, Any] | None = None,
        serving_data: dict[str, Any] | None = None,
        x_test: Any = None,
        y_test: Any = None,
        plot: bool = False,
    ) -> None:
        self.run_config = run_config
        self.serving_data = serving_data or {}
        self.x_test, self.y_test = x_test, y_test
        self.plot = plot
        self.test: dict[str, float] | None = None

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        state = self.model.fit_state
        folder = state.run_folder
        if folder is None or not state.is_main:
            return
        if self.run_config is not None:
            folder.write_run_config(self.run_config)
        folder.add_serving_data(self.serving_data)
        if self.x_test is not None:
            folder.write_test_split(self.x_test, self.y_test)

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        state = self.model.fit_state
        folder = state.run_folder if state.is_main else None
        if status in ("finished", "stopped_early") and self.x_test is not None:
            self.test = self.model.evaluate(self.x_test, self.y_test, batch_size=256)
            if folder is not None:
                folder.update(test=self.test)
        if self.plot and folder is not None:
            drawn = folder.write_plot(
                self.model.history, state.monitor, state.monitor_mode
            )  # False: no matplotlib
            if drawn and state.report is not None and state.report.confusion_matrix is not None:
                folder.write_figure("confusion_matrix.png", state.report.plot())
