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
import os
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchhouse.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    load_state,
    read_json,
    read_regular_file,
    save_state,
)
from torchhouse.errors import CheckpointError, ConfigError
from torchhouse.runlock import LOCK_FILE, acquire_lock, is_locked, pid_alive, release_lock

if TYPE_CHECKING:
    from torchhouse.history import History

__all__ = [
    "RUN_FILES",
    "RunDir",
    "STATE_PREFIX",
    "describe_run",
    "format_table",
    "list_runs",
    "read_history_csv",
    "run_status",
    "runs_table",
    "write_history_csv",
]

STATE_PREFIX = "ckpt-"
SHARDS_SUFFIX = ".shards"  # ckpt-NAME.shards/rank-R.safetensors: each rank's FSDP shards of state NAME


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
    """The columns of a ``history.csv`` (a FIFO or device in its place is refused, not waited on)."""
    text = read_regular_file(path).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows:
        return {}
    return {name: [float(r[name]) for r in rows] for name in rows[0]}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


RUN_FILES = frozenset(
    {
        "run.json",
        "config.json",
        "run_config.json",
        "history.csv",
        "history.png",
        "model.safetensors",
        "model.json",
        "model.pt2",
        "serve.json",
        "params.json",
        "test_split.safetensors",
        "checkpoints",
        "tensorboard",
        LOCK_FILE,
    }
)
_LEFTOVER_PREFIXES = (".ckpt-", ".deleting-", ".trash-")


class RunDir:
    """Reads and writes one run folder (see the module docstring).

    A fit holds the folder's lock (`acquire`) while it writes; `prepare` enforces one run
    per folder. Nothing is written through a symlink that leaves the folder.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not os.fspath(path).strip():
            raise ConfigError("run_dir: an empty path would write into the current folder; name a folder")
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self._lock: Any = None

    # -- one run per folder, one writer ----------------------------------------------------

    def holds_run(self) -> bool:
        """Whether the folder holds a torchhouse run (a run.json or saved states)."""
        return (self.path / "run.json").is_file() or bool(self.state_names())

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Create and lock the folder for a fit, refusing what would mix two runs.

        A folder holding a run is continued only with ``resume``, or replaced with
        ``overwrite``; a non-empty folder that is not a run is refused.
        """
        if resume and overwrite:
            raise ConfigError("resume=True and overwrite=True contradict each other; choose one")
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run_dir: {self.path} is a file, not a folder")
        if self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir() if p.name not in RUN_FILES)
            if foreign and not self.holds_run():
                raise ConfigError(
                    f"run_dir: {self.path} is not empty and is not a torchhouse run (it holds "
                    f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                    "choose a new or empty folder"
                )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"run_dir: cannot create {self.path}: {exc.strerror}") from exc
        if not os.access(self.path, os.W_OK):
            raise CheckpointError(f"run_dir: the folder {self.path} is not writable")
        self._refuse_symlinks()
        self.acquire()
        try:
            self.clean_leftovers()
            if self.holds_run() and not resume:
                if not overwrite:
                    raise ConfigError(
                        f"run_dir: {self.path} already holds a run. Continue it with resume=True "
                        "(CLI: --resume), replace it with overwrite=True (CLI: --overwrite), or "
                        "choose another folder"
                    )
                self._remove_run()
        except BaseException:
            self.release()
            raise

    def acquire(self) -> None:
        """Take the folder's exclusive lock; a second writer gets a clear error at once."""
        self._lock = acquire_lock(self.path / LOCK_FILE)

    def release(self) -> None:
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    def _refuse_symlinks(self) -> None:
        """Refuse a run folder whose subfolders, or whose entries in ``checkpoints/``, are links:
        a link planted for a state that is yet to be written would take that write out of the folder."""
        root = self.path.resolve()
        for name in ("checkpoints", "tensorboard"):
            sub = self.path / name
            if sub.is_symlink() or (sub.exists() and root not in sub.resolve().parents):
                raise CheckpointError(
                    f"run_dir: {sub} is a symbolic link; torchhouse writes only inside the run folder. "
                    "Remove the link (or choose another folder)"
                )
        if self.checkpoints.is_dir():
            links = sorted(p.name for p in self.checkpoints.iterdir() if p.is_symlink())
            if links:
                raise CheckpointError(
                    f"run_dir: {self.checkpoints} holds symbolic links ({', '.join(links[:3])}); torchhouse "
                    "writes only inside the run folder. Remove them (or choose another folder)"
                )

    def _remove_run(self) -> None:
        # Move the old run aside with one rename per entry, then delete it: a kill in between
        # leaves a .trash-* folder that the next start removes, never a half-old run.
        trash = self.path / f".trash-{os.getpid()}"
        trash.mkdir(exist_ok=True)
        for entry in list(self.path.iterdir()):
            if entry.name in RUN_FILES and entry.name != LOCK_FILE:
                os.replace(entry, trash / entry.name)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_leftovers(self) -> list[str]:
        """Remove what a killed process left: temporary files and states, half-pruned states."""
        removed = []
        for folder in (self.path, self.checkpoints):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                name = entry.name
                leftover = name.startswith(_LEFTOVER_PREFIXES) or (
                    name.startswith(".") and name.endswith(".tmp")
                )
                if not leftover or entry.is_symlink():
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(name)
        return removed

    # -- run metadata ---------------------------------------------------------------------

    def start(self, config: dict[str, Any], resumed: bool) -> None:
        info = self.info() if resumed else {}
        atomic_write_json(self.path / "config.json", config)
        info.update(
            {"status": "running", "pid": os.getpid(), "host": socket.gethostname(), "updated": _now()}
        )
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
        try:
            info = self.info()
        except CheckpointError:
            info = {}
        info.update(fields, updated=_now())
        atomic_write_json(self.path / "run.json", info)

    def write_history(self, history: History) -> None:
        write_history_csv(self.path / "history.csv", history)

    # -- training states ------------------------------------------------------------------

    def state_names(self) -> list[str]:
        """Names of the saved states, oldest first (symlinks are not states)."""
        if not self.checkpoints.is_dir() or self.checkpoints.is_symlink():
            return []
        return sorted(
            p.name
            for p in self.checkpoints.iterdir()
            if p.name.startswith(STATE_PREFIX)
            and not p.name.endswith(SHARDS_SUFFIX)
            and not p.is_symlink()
            and p.is_dir()
        )

    @staticmethod
    def state_name(epoch: int, batch: int) -> str:
        return f"{STATE_PREFIX}{epoch:05d}-{batch:07d}"

    def save_state(self, state: dict[str, Any], keep: int, best: bool = False) -> str:
        self._refuse_symlinks()
        name = self.state_name(state["epoch"], state["batch"])
        save_state(self.checkpoints / name, state)
        if best:
            atomic_write_json(self.checkpoints / "best.json", {"name": name})
        self._prune(keep)
        return name

    def mark_last_state_finished(self, stop_training: bool) -> None:
        """Record in the newest state that the fit finished (resume then trains nothing more)."""
        from torchhouse.checkpoint import STATE_JSON, seal_state_json

        names = self.state_names()
        if not names:
            return
        meta_file = self.checkpoints / names[-1] / STATE_JSON
        meta = read_json(meta_file)
        meta["state"]["finished"] = True
        meta["state"]["stop_training"] = stop_training
        atomic_write_json(meta_file, seal_state_json(meta["sha256"], meta["state"]))

    def save_shard(self, name: str, rank: int, tensors: dict[str, Any]) -> str:
        """Write this rank's shards of state ``name`` (safetensors, atomic); returns their digest."""
        from torchhouse.checkpoint import atomic_save_tensors, tensors_digest

        self._refuse_symlinks()
        folder = self.checkpoints / f"{name}{SHARDS_SUFFIX}"
        folder.mkdir(parents=True, exist_ok=True)
        if folder.is_symlink() or not folder.is_dir():  # planted since the check above
            raise CheckpointError(f"{folder}: not a folder of the run; no shard is written through it")
        atomic_save_tensors(
            folder / f"rank-{rank}.safetensors",
            tensors,
            metadata={"format": "torchhouse-shard"},
            content_digest=True,
        )
        return tensors_digest(tensors)

    def load_shard(self, name: str, rank: int, digest: str) -> dict[str, Any]:
        """This rank's shards of state ``name``, checked against the digest the state recorded."""
        from torchhouse.checkpoint import read_tensors, tensors_digest

        folder = self.checkpoints / f"{name}{SHARDS_SUFFIX}"
        file = folder / f"rank-{rank}.safetensors"
        if folder.is_symlink() or file.is_symlink():
            raise CheckpointError(f"{file}: a symlink; shard files are read only from inside the run folder")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (each rank of a sharded run writes its own shard file)")
        tensors = read_tensors(file)
        if tensors_digest(tensors) != digest:
            raise CheckpointError(f"{file}: does not match the state that names it")
        return tensors

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
                # rename first: a state is either whole under its name or gone
                doomed = self.checkpoints / f".deleting-{name}"
                os.replace(self.checkpoints / name, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                shards = self.checkpoints / f"{name}{SHARDS_SUFFIX}"
                if shards.is_dir() and not shards.is_symlink():
                    os.replace(shards, self.checkpoints / f".deleting-{name}{SHARDS_SUFFIX}")
                    shutil.rmtree(self.checkpoints / f".deleting-{name}{SHARDS_SUFFIX}", ignore_errors=True)

    def load_latest_state(self) -> tuple[str, dict[str, Any]] | None:
        """The newest intact state; damaged ones are skipped with a warning naming the problem."""
        for name, state in self.intact_states():
            return name, state
        return None

    def intact_states(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Intact states, newest first; each damaged one is skipped with a warning."""
        for name in reversed(self.state_names()):
            try:
                state = load_state(self.checkpoints / name)
            except CheckpointError as exc:
                warnings.warn(
                    f"skipping the damaged checkpoint {name} and falling back to an older one: {exc}",
                    stacklevel=3,
                )
                continue
            yield name, state


# --------------------------------------------------------------------------- reading runs


def run_status(info: dict[str, Any], folder: str | os.PathLike[str] | None = None) -> str:
    """finished / stopped early / crashed / interrupted / running, from run.json.

    A run whose process died without a word (SIGKILL, power loss) still says "running"
    in run.json; it is reported as crashed when nobody holds the folder's lock (for a
    folder without a lock file, written by torchhouse 0.1: when its process is gone).
    """
    status = str(info.get("status", "unknown"))
    if status == "running":
        lock = Path(folder) / LOCK_FILE if folder is not None else None
        alive = is_locked(lock) if lock is not None and os.path.lexists(lock) else pid_alive(info.get("pid"))
        if not alive:
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
                "best_epoch": _plus_one(info.get("best_epoch")),
                "status": run_status(info, path),
            }
        )
    rows.sort(key=lambda r: str(r["started"]), reverse=True)
    return rows


def _plus_one(value: Any) -> int | None:
    return value + 1 if isinstance(value, int) and not isinstance(value, bool) else None


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
    """A run's config, model summary and history as text (``torchhouse show RUN``).

    A damaged file is reported in its place; the rest is still shown.
    """
    run = RunDir(path)
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
    net = config.get("net") if isinstance(config.get("net"), dict) else {}
    lines = [
        f"run: {run.path}",
        f"status: {run_status(info, run.path)}   started: {info.get('started', '-')}   "
        f"ended: {info.get('ended', '-')}",
        "",
        "config:",
    ]
    for key in ("loss", "optimizer", "lr_scheduler", "metrics", "device", "precision", "monitor", "fit"):
        if key in config:
            lines.append(f"  {key}: {config[key]}")
    parameters = net.get("parameters", 0)
    count = f"{parameters:,}" if isinstance(parameters, int) else "?"
    lines += ["", f"model: {net.get('class', '?')} ({count} parameters)"]
    lines += ["  " + line for line in str(net.get("repr", "")).splitlines()]
    history_file = run.path / "history.csv"
    history: dict[str, list[float]] = {}
    if history_file.exists():
        try:
            history = read_history_csv(history_file)
        except (OSError, ValueError, KeyError, csv.Error) as exc:
            problems.append(f"{history_file}: cannot be read ({exc})")
    if history:
        names = list(history)
        rows = [{n: history[n][i] for n in names} for i in range(len(history.get("epoch", [])))]
        for row in rows:
            row["epoch"] = int(row["epoch"]) + 1
        lines += ["", "history:", format_table(rows, [(n, n) for n in names])]
    if problems:
        lines += ["", "damaged files (shown without them):", *(f"  {p}" for p in problems)]
    return "\n".join(lines)
