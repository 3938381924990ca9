"""Hyperparameter search with Optuna (imported only here): pruning, resumable studies, many workers.

    def build(trial):
        width = trial.suggest_int("width", 8, 64, log=True)
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        net = nn.Sequential(nn.Linear(30, width), nn.ReLU(), nn.Linear(width, 1))
        return th.Model(net, loss=nn.BCEWithLogitsLoss(), optimizer=lambda p: torch.optim.Adam(p, lr=lr))

    study = th.tune(build, x, y, validation_split=0.2, n_trials=20, epochs=15, seed=0)
    study.best_params, study.best_value, study.best_model

By default the study lives in an SQLite file inside the tuning folder
(``sqlite:///<tune_dir>/study.db``), so a killed search resumes where it stopped and no
finished trial runs again. Any Optuna RDB URL (PostgreSQL, MySQL) lets several worker
processes on several machines share one study.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchhouse.callbacks.base import Callback
from torchhouse.callbacks.optuna_pruning import OptunaPruning, import_optuna
from torchhouse.errors import ConfigError
from torchhouse.metrics.monitor import resolve_mode

__all__ = [
    "SEARCH_TYPES",
    "TuneResult",
    "best_of",
    "best_trials_table",
    "check_search",
    "check_search_keys",
    "check_study_matches",
    "create_study",
    "fail_dead_trials",
    "open_storage",
    "suggest",
    "tune",
    "tune_from_config",
]


def _trial_folder(tune_dir: Path, number: int) -> Path:
    return tune_dir / f"trial-{number:04d}"


def tune(
    build: Callable[[Any], Any],
    x: Any,
    y: Any = None,
    *,
    validation_data: Any = None,
    validation_split: float = 0.0,
    n_trials: int = 20,
    timeout: float | None = None,
    monitor: str = "val_loss",
    mode: str = "auto",
    epochs: int = 10,
    batch_size: int = 32,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: Any = None,
    sampler: Any = None,
    seed: int | None = None,
    tune_dir: str | os.PathLike[str] = "runs/tune",
    callbacks: list[Callback] | None = None,
    progress: str = "none",
) -> Any:
    """Search hyperparameters with Optuna; returns a `TuneResult` (the study, ``best_model``...).

    ``build(trial)`` defines the search space with Optuna's ``trial.suggest_*`` and returns
    a `Model`, or ``(model, fit_kwargs)`` to vary fit arguments (``batch_size``, ...).
    Each trial trains with ``fit`` into ``tune_dir/trial-NNNN`` (history, weights,
    ``params.json``); its value is the best finite ``monitor`` over its epochs. Each
    epoch's value is reported to the pruner and pruned trials stop at once. A ``build``
    that raises, or a trial that fails, is recorded as a failed trial with its error and
    the study goes on. ``n_trials`` counts the study's finished trials, so rerunning the
    same call on the same storage continues a killed search without rerunning any
    finished trial.

    ``study.best_model`` is the best trial's model, rebuilt with ``build`` and *restored
    from that trial's saved weights* (no refit); ``study.best_run_dir`` is its folder.
    """
    optuna = import_optuna()
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"n_trials: expected an int >= 1, got {n_trials!r}")
    if not callable(build):
        raise ConfigError("build: expected a function trial -> th.Model")
    folder = Path(tune_dir)
    folder.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    direction = "minimize" if resolve_mode(monitor, mode) == "min" else "maximize"
    rdb = open_storage(storage)
    study = create_study(rdb, study_name or "torchhouse", direction, sampler, pruner, seed)
    check_study_matches(study, monitor, direction)
    fail_dead_trials(study, rdb)

    def objective(trial: Any) -> float:
        trial.set_user_attr("run_dir", str(_trial_folder(folder, trial.number)))
        if seed is not None:
            torch.manual_seed(seed)
        try:
            built = build(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"build raised {type(exc).__name__}: {exc}")
            raise
        model, fit_kwargs = built if isinstance(built, tuple) else (built, {})
        from torchhouse.train.model import Model

        if not isinstance(model, Model):
            message = f"build must return a th.Model (or (model, fit_kwargs)), got {type(model).__name__}"
            trial.set_user_attr("error", message)
            raise ConfigError(message)
        options: dict[str, Any] = {
            "validation_data": validation_data,
            "validation_split": validation_split,
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "progress": progress,
            "callbacks": list(callbacks or []),
        }
        options.update(fit_kwargs)  # what build returned wins
        return _run_trial(trial, model, x, y, folder, monitor, options)

    remaining = n_trials - _finished(study)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(Exception,))
    best_model, best_run_dir = best_of(study, build)
    return TuneResult(study, best_model, best_run_dir, folder, storage)


def open_storage(storage: str) -> Any:
    """An Optuna RDB storage with heartbeats, so a killed worker's trial is eventually failed."""
    optuna = import_optuna()
    # Workers that start together on a new database race to create its tables: retry.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=90)
        except Exception as exc:
            if attempt == 4 or "Failed to import" in str(exc):
                raise ConfigError(f"storage: cannot open {storage!r}: {exc}") from exc
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def create_study(
    storage: Any,
    study_name: str,
    direction: str,
    sampler: Any = None,
    pruner: Any = None,
    seed: int | None = None,
) -> Any:
    """Create or load (``load_if_exists``) a study on ``storage`` (a URL or an `open_storage` result)."""
    optuna = import_optuna()
    rdb = open_storage(storage) if isinstance(storage, str) else storage
    if sampler is None and seed is not None:
        # A resumed study must not replay the random draws of its first run: offset the
        # seed by the trials already recorded (still deterministic for a given history).
        try:
            done = len(optuna.load_study(study_name=study_name, storage=rdb).trials)
        except KeyError:
            done = 0
        sampler = optuna.samplers.TPESampler(seed=seed + done)
    return optuna.create_study(
        storage=rdb,
        study_name=study_name,
        direction=direction,
        sampler=sampler or optuna.samplers.TPESampler(seed=seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        load_if_exists=True,
    )


def check_study_matches(study: Any, monitor: str, direction: str) -> None:
    """Refuse to continue a study that optimises another value or in the other direction."""
    saved_monitor = study.user_attrs.get("monitor")
    saved_direction = study.direction.name.lower()
    if saved_direction != direction or (saved_monitor is not None and saved_monitor != monitor):
        raise ConfigError(
            f"study {study.study_name!r}: it was created to {saved_direction} "
            f"{saved_monitor or '(unrecorded)'}, now asked to {direction} {monitor}; mixing them would "
            "compare unlike values. Use another study_name or tune_dir"
        )
    if saved_monitor is None:
        study.set_user_attr("monitor", monitor)


def fail_dead_trials(study: Any, storage: Any) -> list[int]:
    """Mark as failed the RUNNING trials whose process is gone (their run folder is not locked).

    A trial killed with its worker stays RUNNING in the database; Optuna's heartbeat marks
    it failed only after its grace period. Here a trial whose run folder is on this machine,
    says "running" and is unlocked (the lock dies with its process) is known dead, and is
    failed at once, so the sampler draws anew.
    """
    from torchhouse.runs.lock import LOCK_FILE, is_locked

    optuna = import_optuna()
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_dir = trial.user_attrs.get("run_dir")
        if not run_dir or not (Path(run_dir) / "run.json").is_file():
            continue  # not started on this machine (or another worker's): Optuna's heartbeat decides
        try:
            status = json.loads((Path(run_dir) / "run.json").read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            continue
        if status != "running" or is_locked(Path(run_dir) / LOCK_FILE):
            continue  # alive, or its fit ended and the trial is about to report
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "error", "its process died (found unlocked on restart)")
        storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        failed.append(trial.number)
    return failed


def _finished(study: Any) -> int:
    optuna = import_optuna()
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=done))


def _run_trial(
    trial: Any, model: Any, x: Any, y: Any, folder: Path, monitor: str, fit_kwargs: dict[str, Any]
) -> float:
    record = _TrialRecord(trial, monitor)
    fit_kwargs["callbacks"] = [*fit_kwargs["callbacks"], OptunaPruning(trial, monitor), record]
    fit_kwargs.setdefault("tensorboard", False)
    try:
        model.fit(x, y, run_dir=_trial_folder(folder, trial.number), monitor=monitor, **fit_kwargs)
    except Exception as exc:
        if not isinstance(exc, import_optuna().TrialPruned):
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
    if record.error is not None:
        trial.set_user_attr("error", record.error)
        return math.nan
    trial.set_user_attr("best_epoch", record.best_epoch)
    return float(record.value)


class _TrialRecord(Callback):
    """A trial's ``params.json`` (its parameters; at a finished end its value and best epoch),
    written while the fit holds the trial's folder."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.value: float = math.nan
        self.best_epoch: int | None = None
        self.error: str | None = None

    def _write(self, **result: Any) -> None:
        folder = self.model.fit_state.run_folder
        if folder is not None and self.model.fit_state.is_main:
            folder.write_extra_json(
                "params.json", {"number": self.trial.number, "params": self.trial.params, **result}
            )

    def on_fit_start(self, logs: dict[str, Any]) -> None:
        self._write()

    def on_fit_exit(self, status: str, logs: dict[str, Any]) -> None:
        if status not in ("finished", "stopped_early"):
            return
        try:
            self.best_epoch, self.value = self.model.history.best(self.monitor)
        except (KeyError, ValueError) as exc:
            self.error = str(exc)
            return
        self._write(value=self.value, best_epoch=self.best_epoch)


@dataclass
class TuneResult:
    """What `tune` returns: the Optuna study and torchhouse's own results beside it.

    ``best_model`` is the best trial's model restored from its saved weights (no refit),
    ``best_run_dir`` its run folder. Any other attribute is the study's
    (``best_params``, ``best_value``, ``trials``, ``direction``...), so code written for
    an Optuna study keeps working.
    """

    study: Any
    best_model: Any = None
    best_run_dir: Path | None = None
    tune_dir: Path | None = None
    storage_url: str | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "study":
            raise AttributeError(name)
        return getattr(self.study, name)


def best_of(study: Any, build: Callable[[Any], Any] | None) -> tuple[Any, Path | None]:
    """The best trial's model (rebuilt, its saved weights loaded) and its run folder."""
    optuna = import_optuna()
    try:
        best = study.best_trial
    except ValueError:
        return None, None  # no completed trial
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    weights = run_dir / "model.safetensors"
    if build is None or not weights.exists():
        return None, run_dir
    try:
        built = build(optuna.trial.FixedTrial(best.params, best.number))
        model = built[0] if isinstance(built, tuple) else built
        model.load_weights(weights)
    except Exception as exc:  # e.g. the search space gained a parameter the best trial did not have
        warnings.warn(
            f"tune: cannot rebuild the best trial ({best.number}) with build ({type(exc).__name__}: {exc}); "
            "study.best_model is None. Its weights are in "
            f"{weights}: rebuild the model for study.best_params and load them",
            stacklevel=3,
        )
        return None, run_dir
    return model, run_dir


def best_trials_table(study: Any, top: int = 5) -> str:
    """The best finished trials as a text table (number, value, state, params)."""
    from torchhouse.runs import format_table

    optuna = import_optuna()
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials.sort(key=lambda t: t.value, reverse=reverse)
    rows = [
        {"number": t.number, "value": t.value, "params": json.dumps(t.params, sort_keys=True)}
        for t in trials[:top]
    ]
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    table = format_table(rows, [("number", "trial"), ("value", "value"), ("params", "params")])
    text = f"{table}\n\ntrials: {summary}"
    failed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL]
    if failed:
        text += (
            f"\nfirst failure: trial {failed[0].number}: {failed[0].user_attrs.get('error', 'no message')}"
        )
    return text


# --------------------------------------------------------------------------- from a config

SEARCH_TYPES = {
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
}


def check_search(search: dict[str, Any]) -> None:
    """Check a config's ``search`` section: ``dotted.key: {type: float|int|categorical, ...}``."""
    if not isinstance(search, dict) or not search:
        raise ConfigError("search: expected a mapping of dotted config keys to search spaces")
    for key, spec in search.items():
        where = f"search.{key}"
        if not isinstance(spec, dict) or spec.get("type") not in SEARCH_TYPES:
            raise ConfigError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
        allowed = SEARCH_TYPES[spec["type"]] | {"type"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        else:
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or low > high:
                raise ConfigError(f"{where}: needs numbers low <= high, got low={low!r} high={high!r}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: log=true needs low > 0")


def check_search_keys(config: dict[str, Any], search: dict[str, Any], trust_code: bool = False) -> None:
    """Before any trial: the config with each searched key at one of its values must be valid,
    so a misspelt key is a usage error now, not a failure of every trial."""
    import copy

    from torchhouse.frontends.config import apply_override, validate

    for key, spec in search.items():
        trial_config = copy.deepcopy(config)
        value = spec["choices"][0] if spec["type"] == "categorical" else spec["low"]
        if spec["type"] == "int":
            value = int(value)
        apply_override(trial_config, f"{key}={json.dumps(value)}")
        try:
            validate(trial_config, trust_code)
        except ConfigError as exc:
            raise ConfigError(f"search.{key}: the config with {key}={value!r} is not valid: {exc}") from exc


def suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "float":
        return trial.suggest_float(
            key, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
        )
    if kind == "int":
        return trial.suggest_int(
            key,
            int(spec["low"]),
            int(spec["high"]),
            log=spec.get("log", False),
            step=int(spec.get("step", 1)),
        )
    # Optuna's categorical choices must be scalars: lists and mappings travel as JSON text.
    choices = [
        c if isinstance(c, (str, int, float, bool)) or c is None else json.dumps(c) for c in spec["choices"]
    ]
    picked = trial.suggest_categorical(key, choices)
    return json.loads(picked) if picked not in spec["choices"] and isinstance(picked, str) else picked


def tune_from_config(
    config: dict[str, Any],
    n_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    tune_dir: str | os.PathLike[str] | None = None,
    trust_code: bool = False,
) -> Any:
    """`torchhouse tune CONFIG`: search the config's ``search`` space; each trial is a run folder.

    ``trust_code`` as in `torchhouse.config.train_from_config`.
    """
    import copy

    from torchhouse.frontends.config import apply_override, build_model, load_data, validate
    from torchhouse.frontends.run_extras import RunExtras

    config = validate(config, trust_code)
    search = config.pop("search", None)
    check_search(search or {})
    data = load_data(config, trust_code)
    config["data"].update(data.info)
    folder = Path(tune_dir or Path("runs") / f"{config['name']}-tune")
    fit = dict(config["fit"])
    seed = fit.get("seed")

    def build(trial: Any) -> Any:
        trial_config = copy.deepcopy(config)
        rebuilding = isinstance(trial, import_optuna().trial.FixedTrial)  # the best trial, for best_model
        for key, spec in (search or {}).items():
            try:
                value = suggest(trial, key, spec)
            except ValueError:
                if not rebuilding:
                    raise
                continue  # a key added to the search after that trial ran: it used the config's value
            apply_override(trial_config, f"{key}={json.dumps(value)}")
        trial_config = validate(trial_config, trust_code)
        fixed = ("epochs", "seed", "monitor", "validation_split")  # given to tune() for every trial
        kwargs = {k: v for k, v in trial_config["fit"].items() if k not in fixed}
        if not rebuilding:  # run_config.json is written by the fit, while it holds the trial's folder
            trial_config["run_dir"] = str(_trial_folder(folder, trial.number))
            kwargs["callbacks"] = [RunExtras(trial_config)]
        return build_model(trial_config, trust_code=trust_code), kwargs

    check_search_keys(config, search or {}, trust_code)
    fit.pop("batch_size", None)
    validation_split = fit.pop("validation_split", 0.2) or 0.2
    return tune(
        build,
        data.x_train,
        data.y_train,
        validation_split=validation_split,
        n_trials=n_trials,
        timeout=timeout,
        monitor=fit.get("monitor") or "val_loss",
        epochs=fit.get("epochs", 10),
        storage=storage,
        study_name=study_name or config["name"],
        seed=seed,
        tune_dir=folder,
    )
