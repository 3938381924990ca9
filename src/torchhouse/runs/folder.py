"""RunFolder: everything ``run_dir`` means, in one object that is the folder's one writer.

run_dir/
  config.json             what was trained and how
  run.json                status (running / finished / stopped_early / crashed), times, best
  history.csv             one row per epoch
  history.png             the curves: drawn by `torchhouse fit` / `demo` at the end, or on
                          demand (`torchhouse show RUN --plot`, `torchhouse.runs.plot_run`)
  model.safetensors       the final weights, written once (+ model.json beside them)
  model.pt2, serve.json   the net as a program, and how to serve it, without its code
  run_config.json         a config front end's resolved config (checksummed)
  params.json             a tuning trial's parameters and result
  test_split.safetensors  a config front end's held-out rows
  checkpoints/            full training states for exact resume (the last K, and the best)

A fit holds the folder's lock from `prepare` until `release`; every file above is written
through this object while it does, the front ends' extras included.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchhouse.errors import CheckpointError, ConfigError
from torchhouse.files.checkpoint import (
    STATE_JSON,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    load_state,
    read_json,
    read_tensors,
    save_state,
    seal_state_json,
    tensors_digest,
)
from torchhouse.files.safety import json_digest
from torchhouse.runs.history_csv import write_history_csv
from torchhouse.runs.lock import LOCK_FILE, acquire_lock, release_lock
from torchhouse.runs.serve_files import PROGRAM_FILE, SERVE_FILE, sealed

if TYPE_CHECKING:
    from torchhouse.runs.history import History

__all__ = [
    "RUN_CONFIG",
    "RUN_FILES",
    "SHARDS_SUFFIX",
    "STATE_PREFIX",
    "TEST_SPLIT",
    "RunFolder",
    "read_run_config",
    "read_test_split",
    "write_run_config",
]

RUN_CONFIG = "run_config.json"
TEST_SPLIT = "test_split.safetensors"
CHECKSUM_KEY = "checksum"

STATE_PREFIX = "ckpt-"
SHARDS_SUFFIX = ".shards"  # ckpt-NAME.shards/rank-R.safetensors: each rank's FSDP shards of state NAME


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


RUN_FILES = frozenset(
    {
        "run.json",
        "config.json",
        "run_config.json",
        "history.csv",
        "history.png",
        "report.md",
        "confusion_matrix.png",
        "model.safetensors",
        "model.json",
        "model.pt2",
        "serve.json",
        "params.json",
        "test_split.safetensors",
        "checkpoints",
        "tensorboard",
        "profile",
        LOCK_FILE,
    }
)
_LEFTOVER_PREFIXES = (".ckpt-", ".deleting-", ".trash-")


class RunFolder:
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
        self.serving_data: dict[str, Any] = {}  # recorded in serve.json when the fit finishes

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
        for name in ("checkpoints", "tensorboard", "profile"):
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

    # -- what a finished fit leaves, written once ---------------------------------------------

    def add_serving_data(self, data: Mapping[str, Any]) -> None:
        """How inputs are prepared for the net (feature names, scaling, vocabulary), recorded in
        ``serve.json`` when the fit finishes (a config front end gives it at the start)."""
        self.serving_data = {**self.serving_data, **data}

    def write_final(
        self,
        weights: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any],
        program: bytes | None,
        serving: dict[str, Any] | None,
    ) -> None:
        """The finished fit's files, each written once: the weights and their metadata, the
        exported program (when there is one) and ``serve.json``."""
        atomic_save_tensors(
            self.path / "model.safetensors",
            weights,
            metadata={"format": "torchhouse-weights"},
            content_digest=True,
        )
        atomic_write_json(self.path / "model.json", dict(metadata))
        if program is not None:
            atomic_write_bytes(self.path / PROGRAM_FILE, program)
        else:
            (self.path / PROGRAM_FILE).unlink(missing_ok=True)
        if serving is not None:
            atomic_write_json(self.path / SERVE_FILE, sealed(serving))

    def write_run_config(self, config: dict[str, Any]) -> None:
        """``run_config.json``, with a checksum of its content (`read_run_config` verifies it)."""
        write_run_config(self.path, config)

    def write_test_split(self, x: Any, y: Any) -> None:
        """The held-out rows as the net takes them, so `torchhouse evaluate RUN` needs neither the
        data's path (a CSV outside the folder) nor ``--trust-code``."""
        tensors = {"x": torch.as_tensor(np.asarray(x)), "y": torch.as_tensor(np.asarray(y))}
        meta = {"format": "torchhouse-test-split"}
        atomic_save_tensors(self.path / TEST_SPLIT, tensors, meta, content_digest=True)

    def write_text(self, name: str, text: str) -> None:
        """A front end's or the fit's own text file in the folder (``report.md``)."""
        if name not in RUN_FILES or Path(name).name != name:
            raise ConfigError(f"{name!r} is not a run folder's file; expected one of {sorted(RUN_FILES)}")
        atomic_write_bytes(self.path / name, text.encode())

    def write_figure(self, name: str, figure: Any) -> None:
        """A matplotlib figure as a PNG in the folder (``confusion_matrix.png``)."""
        if name not in RUN_FILES or not name.endswith(".png"):
            raise ConfigError(f"{name!r} is not a run folder's figure; expected one of {sorted(RUN_FILES)}")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        atomic_write_bytes(self.path / name, buffer.getvalue())

    def write_plot(self, history: History, monitor: str, mode: str = "auto") -> bool:
        """``history.png`` (see `plots.plot_history`); False, writing nothing, without matplotlib."""
        from importlib.util import find_spec

        if find_spec("matplotlib") is None or not len(history):
            return False
        from torchhouse.runs.plots import plot_history

        plot_history(history, monitor=monitor, mode=mode, path=self.path / "history.png")
        return True

    def write_extra_json(self, name: str, data: Mapping[str, Any]) -> None:
        """A front end's own JSON file in the folder (a tuning trial's ``params.json``)."""
        if name not in RUN_FILES or not name.endswith(".json") or Path(name).name != name:
            raise ConfigError(
                f"{name!r} is not a run folder's JSON file; expected one of {sorted(RUN_FILES)}"
            )
        atomic_write_json(self.path / name, dict(data))

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


def write_run_config(folder: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write ``run_config.json`` with a checksum of its content (verified by `read_run_config`)."""
    body = {k: v for k, v in config.items() if k != CHECKSUM_KEY}
    atomic_write_json(Path(folder) / RUN_CONFIG, {**body, CHECKSUM_KEY: json_digest(body)})


def read_run_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A run folder's ``run_config.json``, refused if damaged or edited (its checksum)."""
    file = Path(folder) / RUN_CONFIG
    config = read_json(file)
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a mapping of sections, got {type(config).__name__}")
    saved = config.pop(CHECKSUM_KEY, None)
    if saved is not None and saved != json_digest(config):
        raise ConfigError(f"{file}: its checksum does not match its content (damaged or edited)")
    return config


def read_test_split(folder: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The held-out rows a run folder kept (`RunFolder.write_test_split`), or None when it has none."""
    file = Path(folder) / TEST_SPLIT
    if not file.is_file():
        return None
    tensors = read_tensors(file)
    if set(tensors) != {"x", "y"}:
        raise ConfigError(f"{file}: expected the tensors x and y, got {sorted(tensors)}")
    return tensors["x"], tensors["y"]
