"""Experiment trackers: MLflow and Weights & Biases, as callbacks.

Both log the fit's parameters once, every epoch's values under the history's names
(``loss``, ``acc``, ``val_loss``...) with the epoch as the step, and at the end the run
folder's files (config, history, weights, the exported program) and how the fit ended.
Under several processes only rank 0 logs. A tracker that is down, refuses a call, is not
installed, or does not answer within ``timeout`` seconds costs a warning, never the
training run: the callback stops logging and the fit goes on. Each call runs on a daemon
thread the fit waits for at most ``timeout`` seconds (the final upload of the run
folder's files: four times as long); a stalled call is left behind and dies with the
process.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError, import_optional, warn_user

__all__ = ["BoundedCalls", "MLflowLogger", "WandbLogger", "fit_params"]


def _kept_files() -> list[str]:
    """The run folder's files a tracker keeps: every file of `runs.RUN_FILES` but the lock
    (the resumable states and TensorBoard's folder stay in the run folder)."""
    from torchhouse.runs import RUN_FILES
    from torchhouse.runs.lock import LOCK_FILE

    return sorted(name for name in RUN_FILES if "." in name and name != LOCK_FILE)


_STATUS = {"finished": "FINISHED", "stopped_early": "FINISHED", "interrupted": "KILLED"}


def fit_params(model: Any) -> dict[str, Any]:
    """What was trained and how, as flat strings and numbers (a tracker's "params")."""
    optimizer = model.optimizer
    group = optimizer.param_groups[0]
    params: dict[str, Any] = {
        "net": type(model.net).__name__,
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "loss": type(model.loss).__name__ if model.loss is not None else "own (net output)",
        "optimizer": type(optimizer).__name__,
        "lr": float(group.get("lr", math.nan)),
        "metrics": ",".join(model.metrics) or "-",
        "precision": model.precision,
        "accumulate_grad_batches": model.accumulate_grad_batches,
        "gradient_clip_val": model.gradient_clip_val,
        "device": str(model.device),
    }
    for key in ("epochs", "batch_size", "seed"):
        params[key] = model.fit_params.get(key)
    for key in ("weight_decay", "momentum"):
        if isinstance(group.get(key), (int, float)):
            params[key] = group[key]
    return {k: ("None" if v is None else v) for k, v in params.items()}


class BoundedCalls:
    """Runs calls one at a time on a daemon thread and waits for each at most ``timeout`` seconds.

    A call that does not return in time raises `TimeoutError` here; it is left running (a
    stalled network read) and dies with the process, so it never holds the fit.

    >>> BoundedCalls().run(lambda: 2 + 2, timeout=5)
    4
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, action: Callable[[], Any], timeout: float) -> Any:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="torchhouse-tracker", daemon=True)
            self._thread.start()
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["result"] = action()
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                done.set()

        self._calls.put(call)
        if not done.wait(timeout):
            raise TimeoutError(f"no answer within {timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    def _serve(self) -> None:
        while True:
            self._calls.get()()


class _Tracker(Callback):
    """Rank 0 only; the first failure of the tracker becomes a warning and ends the logging."""

    name = "tracker"
    logs_steps = True  # values by global step (validation_every_n_steps) go to log() too

    def __init__(self, timeout: float = 30.0) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(
                f"{type(self).__name__}: timeout must be a number of seconds > 0, got {timeout!r}"
            )
        self.active = False
        self.timeout = float(timeout)
        self._calls = BoundedCalls()

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        self.active = _is_rank_zero()
        if self.active:
            self._guard(self.start)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.active:
            values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            self._guard(lambda: self.log(epoch, values))

    def on_validation_end(self, logs: dict[str, Any]) -> None:
        if self.active and "step" in logs and self.logs_steps:  # validation_every_n_steps
            values = {f"step/{k}": float(v) for k, v in logs.items() if k.startswith("val_")}
            self._guard(lambda: self.log(int(logs["step"]), values))

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        if self.active:
            self._guard(lambda: self.finish(status), self.timeout * 4)  # uploads the run's files
        self.active = False

    def run_files(self) -> list[Path]:
        folder = self.model.fit_params.get("run_dir")
        if not folder:
            return []
        return [Path(folder) / name for name in _kept_files() if (Path(folder) / name).is_file()]

    def _guard(self, action: Callable[[], Any], timeout: float | None = None) -> None:
        try:
            self._calls.run(action, timeout or self.timeout)
        except Exception as exc:  # a tracker must never cost the training run
            self.active = False
            warn_user(
                f"{type(self).__name__}: {self.name} failed ({type(exc).__name__}: {exc}); "
                "training goes on without it"
            )

    def start(self) -> None:
        raise NotImplementedError

    def log(self, epoch: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        raise NotImplementedError


class MLflowLogger(_Tracker):
    """Log a fit to MLflow: params, per-epoch values (step = epoch), the run folder's files.

    ``tracking_uri`` defaults to MLflow's own (``MLFLOW_TRACKING_URI``; a local
    ``sqlite:///mlflow.db`` works without a server);
    an ``http(s)`` server is checked with a 3-second ``/health`` request first, so a server
    that is down costs a warning, not MLflow's minutes of retries; a server that answers and
    then stalls costs at most ``timeout`` seconds (each call is bounded). Needs
    ``pip install 'torchhouse[trackers]'``.

    Example::

        model.fit(x, y, run_dir="runs/a", callbacks=[th.callbacks.MLflowLogger(
            tracking_uri="http://127.0.0.1:5000", experiment_name="digits")])
    """

    name = "MLflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name or "torchhouse"
        self.run_name = run_name
        self.run_id: str | None = None
        self._client: Any = None

    def start(self) -> None:
        hint = "MLflowLogger needs MLflow: pip install 'torchhouse[trackers]'"
        Param = import_optional("mlflow.entities", hint).Param
        MlflowClient = import_optional("mlflow.tracking", hint).MlflowClient
        if self.tracking_uri and self.tracking_uri.startswith(("http://", "https://")):
            import urllib.request

            health = self.tracking_uri.rstrip("/") + "/health"
            with urllib.request.urlopen(health, timeout=min(3.0, self.timeout)) as reply:
                reply.read()
        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(self.experiment_name)
        )
        run = client.create_run(experiment_id, run_name=self.run_name)
        self._client, self.run_id = client, run.info.run_id
        params = [Param(k, str(v)) for k, v in fit_params(self.model).items()]
        client.log_batch(self.run_id, params=params)

    def log(self, epoch: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in values.items() if math.isfinite(v)]
        self._client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str) -> None:
        for file in self.run_files():
            self._client.log_artifact(self.run_id, str(file))
        self._client.set_tag(self.run_id, "torchhouse.status", status)
        self._client.set_terminated(self.run_id, status=_STATUS.get(status, "FAILED"))


class WandbLogger(_Tracker):
    """Log a fit to Weights & Biases: config, per-epoch values (step = epoch), the run folder's files.

    ``mode`` is W&B's: "online", "offline" (files only, ``wandb sync`` later) or
    "disabled"; the default is W&B's own (``WANDB_MODE``). W&B keeps its files in ``dir``
    (default: W&B's ``./wandb``), never in the run folder, and holds copies of the run
    folder's files, never links to them. Needs ``pip install 'torchhouse[trackers]'``.

    Example::

        model.fit(x, y, run_dir="runs/a", callbacks=[th.callbacks.WandbLogger(project="digits")])
    """

    name = "Weights & Biases"

    # W&B's steps only go forward, and its epochs are its steps: values by global step
    # (validation_every_n_steps) would be dropped, so they are not sent (TensorBoard has them)
    logs_steps = False

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout)
        self.project = project or "torchhouse"
        self.run_name = name
        self.mode: Any = mode  # W&B checks it
        self.dir = dir
        self.run: Any = None

    def start(self) -> None:
        wandb = import_optional("wandb", "WandbLogger needs wandb: pip install 'torchhouse[trackers]'")
        if self.dir:
            os.makedirs(self.dir, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            name=self.run_name,
            mode=self.mode,
            dir=self.dir,
            config=fit_params(self.model),
            reinit="create_new",
        )

    def log(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log({**values, "epoch": epoch}, step=epoch)

    def finish(self, status: str) -> None:
        # W&B links a saved file into its run; copies keep what this W&B run holds from
        # changing when the run folder is written again (a later fit with overwrite=True)
        files_dir = Path(self.run.dir)
        for file in self.run_files():
            kept = files_dir / file.name
            shutil.copyfile(file, kept)
            self.run.save(str(kept), base_path=str(files_dir), policy="now")
        self.run.summary["torchhouse.status"] = status
        self.run.finish(exit_code=0 if status in ("finished", "stopped_early") else 1)
        self.run = None


def _is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )
