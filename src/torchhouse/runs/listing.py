"""Reading run folders for people: `torchhouse runs` (`runs_table`), `torchhouse show` (`describe_run`,
`plot_run`). Reading never takes a folder's lock and never waits on one."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from torchhouse.errors import CheckpointError
from torchhouse.files.checkpoint import read_json
from torchhouse.runs.folder import RunFolder
from torchhouse.runs.history_csv import read_history_csv
from torchhouse.runs.lock import LOCK_FILE, is_locked, pid_alive

__all__ = ["describe_run", "format_table", "list_runs", "plot_run", "run_status", "runs_table"]


def run_status(info: dict[str, Any], folder: str | os.PathLike[str] | None = None) -> str:
    """finished / stopped early / crashed / interrupted / running, from run.json.

    A run whose process died without a word (SIGKILL, power loss) still says "running"
    in run.json; it is reported as crashed when nobody holds the folder's lock (for a
    folder without a lock file, written by torchhouse 0.1: when its process is gone).
    """
    status = str(info.get("status", "unknown"))
    if status == "running":
        lock = Path(folder) / LOCK_FILE if folder is not None else None
        alive = is_locked(lock) if lock is not None and lock.exists() else pid_alive(info.get("pid"))
        if not alive:
            return "crashed"
    return status.replace("_", " ")


def list_runs(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per run folder (a folder holding run.json) under ``folder``, newest first."""
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such folder")
    candidates = [root] if (root / "run.json").exists() else sorted(p for p in root.iterdir() if p.is_dir())
    rows = [_row(path) for path in candidates if (path / "run.json").exists()]
    rows.sort(key=lambda r: str(r["started"]), reverse=True)
    return rows


def _row(path: Path) -> dict[str, Any]:
    try:
        info = RunFolder(path).info()
    except CheckpointError:
        info = {"status": "unreadable"}
    history: dict[str, list[float]] = {}
    if (path / "history.csv").exists():
        try:
            history = read_history_csv(path / "history.csv")
        except (CheckpointError, OSError, ValueError, KeyError, csv.Error):
            history = {}
    return {
        "name": path.name,
        "path": str(path),
        "started": info.get("started", ""),
        "epochs": len(history.get("epoch", [])) or info.get("epochs_done", 0),
        "monitor": info.get("monitor", ""),
        "best": info.get("best"),
        # displayed epochs count from 1, as the progress lines do
        "best_epoch": _plus_one(info.get("best_epoch")),
        "weights": _weights_from(info.get("weights")),
        "status": run_status(info, path),
    }


def _weights_from(weights: Any) -> str | None:
    """Which epoch the final weights are from, and by whose monitor (run.json's ``weights``)."""
    if not isinstance(weights, dict) or _plus_one(weights.get("epoch")) is None:
        return None
    monitor = weights.get("monitor") if weights.get("restored_by") else None
    return f"{_plus_one(weights['epoch'])} ({monitor or 'last'})"


def _plus_one(value: Any) -> int | None:
    return value + 1 if isinstance(value, int) and not isinstance(value, bool) else None


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain text table: ``columns`` are (key, header) pairs.

    >>> print(format_table([{"a": 1, "b": 0.123456}], [("a", "A"), ("b", "B")]))
    A  B
    -  ------
    1  0.1235
    """
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
    """`list_runs` as the text table `torchhouse runs` prints.

    Example::

        print(runs_table("runs"))
    """
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
            ("weights", "weights from"),
            ("status", "status"),
        ],
    )


def describe_run(path: str | os.PathLike[str]) -> str:
    """A run's config, model summary and history as text (``torchhouse show RUN``).

    A damaged file is reported in its place; the rest is still shown.

    Example::

        print(describe_run("runs/demo"))
    """
    run = RunFolder(path)
    if not (run.path / "run.json").exists():
        raise CheckpointError(f"{run.path}: not a run folder (no run.json)")
    problems: list[str] = []
    config: Any = {}
    if (run.path / "config.json").exists():
        try:
            config = read_json(run.path / "config.json")
        except CheckpointError as exc:
            problems.append(str(exc))
    config = config if isinstance(config, dict) else {}
    try:
        info = run.info()
    except CheckpointError as exc:
        problems.append(str(exc))
        info = {}
    lines = [
        f"run: {run.path}",
        f"status: {run_status(info, run.path)}   started: {info.get('started', '-')}   "
        f"ended: {info.get('ended', '-')}",
    ]
    weights = _weights_from(info.get("weights"))
    if weights:
        lines.append(f"final weights from epoch {weights}")
    lines += ["", "config:"]
    for key in ("loss", "optimizer", "lr_scheduler", "metrics", "device", "precision", "monitor", "fit"):
        if key in config:
            lines.append(f"  {key}: {config[key]}")
    lines += _net_lines(config)
    lines += _history_lines(run.path / "history.csv", problems)
    if problems:
        lines += ["", "damaged files (shown without them):", *(f"  {p}" for p in problems)]
    return "\n".join(lines)


def _net_lines(config: dict[str, Any]) -> list[str]:
    found = config.get("net")
    net: dict[str, Any] = found if isinstance(found, dict) else {}
    parameters = net.get("parameters", 0)
    count = f"{parameters:,}" if isinstance(parameters, int) else "?"
    lines = ["", f"model: {net.get('class', '?')} ({count} parameters)"]
    return lines + ["  " + line for line in str(net.get("repr", "")).splitlines()]


def _history_lines(file: Path, problems: list[str]) -> list[str]:
    history: dict[str, list[float]] = {}
    if file.exists() or file.is_symlink():
        try:
            history = read_history_csv(file)
        except (CheckpointError, OSError, ValueError, KeyError, csv.Error) as exc:
            problems.append(f"{file}: cannot be read ({exc})")
    if not history:
        return []
    names = list(history)
    rows = [{n: history[n][i] for n in names} for i in range(len(history.get("epoch", [])))]
    for row in rows:
        row["epoch"] = int(row["epoch"]) + 1
    return ["", "history:", format_table(rows, [(n, n) for n in names])]


def plot_run(
    run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None, monitor: str | None = None
) -> Any:
    """`plot_history` of a run folder's ``history.csv``, its best epoch taken from ``run.json``'s
    monitor; saves a PNG when ``path`` is given (``torchhouse show RUN --plot`` writes
    ``RUN/history.png``).

    Example::

        figure = plot_run("runs/demo", "runs/demo/history.png")
    """
    from torchhouse.runs.history import History
    from torchhouse.runs.plots import plot_history

    run = RunFolder(run_dir)
    file = run.path / "history.csv"
    if not file.exists():
        raise CheckpointError(f"{file}: no such file (is {run.path} a run folder with a finished epoch?)")
    columns = read_history_csv(file)
    history = History()
    epochs = [int(e) for e in columns.pop("epoch", [])]
    history.history = {name: list(values) for name, values in columns.items()}
    history.epoch = epochs
    return plot_history(history, monitor=monitor or run.info().get("monitor"), path=path)
