"""Run folders: what one fit writes when given ``run_dir``.

run_dir/
  config.json          what was trained and how
  run.json             status (running / finished / stopped_early / crashed), times, best
  history.csv          one row per epoch
  model.safetensors    the final weights (+ model.json beside them)
  checkpoints/         full training states for exact resume (the last K, and the best)
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchhouse.checkpoint import atomic_write_bytes, atomic_write_json, load_state, read_json, save_state
from torchhouse.errors import CheckpointError

if TYPE_CHECKING:
    from torchhouse.history import History

STATE_PREFIX = "ckpt-"


def write_history_csv(path: str | os.PathLike[str], history: History) -> None:
    """Write ``history`` as CSV (an ``epoch`` column, then one column per value), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(history.history)
    writer.writerow(["epoch", *names])
    for row, epoch in enumerate(history.epoch):
        writer.writerow([epoch, *(repr(history.history[n][row]) for n in names)])
    atomic_write_bytes(path, buffer.getvalue().encode())


def read_history_csv(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {name: [float(r[name]) for r in rows] for name in rows[0]}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDir:
    """Reads and writes one run folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    # -- run metadata ---------------------------------------------------------------------

    def start(self, config: dict[str, Any], resumed: bool) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"run_dir: cannot create {self.path}: {exc.strerror}") from exc
        if not os.access(self.path, os.W_OK):
            raise CheckpointError(f"run_dir: the folder {self.path} is not writable")
        info = self.info() if resumed else {}
        atomic_write_json(self.path / "config.json", config)
        info.update({"status": "running", "pid": os.getpid(), "updated": _now()})
        info.setdefault("started", _now())
        if resumed:
            info["resumed"] = info.get("resumed", 0) + 1
        atomic_write_json(self.path / "run.json", info)

    def info(self) -> dict[str, Any]:
        file = self.path / "run.json"
        if not file.exists():
            return {}
        data = read_json(file)
        return data if isinstance(data, dict) else {}

    def update(self, **fields: Any) -> None:
        info = self.info()
        info.update(fields, updated=_now())
        atomic_write_json(self.path / "run.json", info)

    def write_history(self, history: History) -> None:
        write_history_csv(self.path / "history.csv", history)

    # -- training states ------------------------------------------------------------------

    def state_names(self) -> list[str]:
        """Names of the saved states, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p.name for p in self.checkpoints.iterdir() if p.name.startswith(STATE_PREFIX))

    @staticmethod
    def state_name(epoch: int, batch: int) -> str:
        return f"{STATE_PREFIX}{epoch:05d}-{batch:07d}"

    def save_state(self, state: dict[str, Any], keep: int, best: bool = False) -> str:
        name = self.state_name(state["epoch"], state["batch"])
        save_state(self.checkpoints / name, state)
        if best:
            atomic_write_json(self.checkpoints / "best.json", {"name": name})
        self._prune(keep)
        return name

    def best_state_name(self) -> str | None:
        file = self.checkpoints / "best.json"
        if not file.exists():
            return None
        try:
            return str(read_json(file)["name"])
        except (CheckpointError, KeyError, TypeError):
            return None

    def _prune(self, keep: int) -> None:
        names = self.state_names()
        protected = {self.best_state_name()}
        for name in names[: max(len(names) - keep, 0)]:
            if name not in protected:
                shutil.rmtree(self.checkpoints / name, ignore_errors=True)

    def load_latest_state(self) -> tuple[str, dict[str, Any]] | None:
        """The newest intact state; corrupt ones are skipped with a warning."""
        for name in reversed(self.state_names()):
            try:
                return name, load_state(self.checkpoints / name)
            except CheckpointError as exc:
                warnings.warn(
                    f"skipping a corrupt checkpoint and falling back to an older one: {exc}",
                    stacklevel=3,
                )
        return None


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- reading runs


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def run_status(info: dict[str, Any]) -> str:
    """finished / stopped early / crashed / interrupted / running, from run.json.

    A run whose process died without a word (SIGKILL, power loss) still says "running";
    if its process is gone, it is reported as crashed.
    """
    status = str(info.get("status", "unknown"))
    if status == "running" and not _pid_alive(info.get("pid")):
        return "crashed"
    return status.replace("_", " ")


def list_runs(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per run folder (a folder holding run.json) under ``folder``, newest first."""
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such folder")
    rows = []
    candidates = [root] if (root / "run.json").exists() else sorted(p for p in root.iterdir() if p.is_dir())
    for path in candidates:
        if not (path / "run.json").exists():
            continue
        try:
            info = RunDir(path).info()
        except CheckpointError:
            info = {"status": "unreadable"}
        history = {}
        if (path / "history.csv").exists():
            try:
                history = read_history_csv(path / "history.csv")
            except (OSError, ValueError, KeyError):
                history = {}
        rows.append(
            {
                "name": path.name,
                "path": str(path),
                "started": info.get("started", ""),
                "epochs": len(history.get("epoch", [])) or info.get("epochs_done", 0),
                "monitor": info.get("monitor", ""),
                "best": info.get("best"),
                # displayed epochs count from 1, as the progress lines do
                "best_epoch": None if info.get("best_epoch") is None else int(info["best_epoch"]) + 1,
                "status": run_status(info),
            }
        )
    rows.sort(key=lambda r: str(r["started"]), reverse=True)
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain text table: ``columns`` are (key, header) pairs."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([_cell(row.get(key)) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def runs_table(folder: str | os.PathLike[str]) -> str:
    rows = list_runs(folder)
    if not rows:
        return f"no runs in {folder}"
    return format_table(
        rows,
        [
            ("name", "run"),
            ("started", "started"),
            ("epochs", "epochs"),
            ("monitor", "monitor"),
            ("best", "best"),
            ("best_epoch", "best epoch"),
            ("status", "status"),
        ],
    )


def describe_run(path: str | os.PathLike[str]) -> str:
    """A run's config, model summary and history as text (``torchhouse show RUN``)."""
    run = RunDir(path)
    if not (run.path / "run.json").exists():
        raise CheckpointError(f"{run.path}: not a run folder (no run.json)")
    config = read_json(run.path / "config.json") if (run.path / "config.json").exists() else {}
    info = run.info()
    net = config.get("net", {})
    lines = [
        f"run: {run.path}",
        f"status: {run_status(info)}   started: {info.get('started', '-')}   ended: {info.get('ended', '-')}",
        "",
        "config:",
    ]
    for key in ("loss", "optimizer", "lr_scheduler", "metrics", "device", "precision", "monitor", "fit"):
        if key in config:
            lines.append(f"  {key}: {config[key]}")
    lines += ["", f"model: {net.get('class', '?')} ({net.get('parameters', 0):,} parameters)"]
    lines += ["  " + line for line in str(net.get("repr", "")).splitlines()]
    history_file = run.path / "history.csv"
    if history_file.exists():
        history = read_history_csv(history_file)
        names = list(history)
        rows = [{n: history[n][i] for n in names} for i in range(len(history.get("epoch", [])))]
        for row in rows:
            row["epoch"] = int(row["epoch"]) + 1
        lines += ["", "history:", format_table(rows, [(n, n) for n in names])]
    return "\n".join(lines)
