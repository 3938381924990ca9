"""FitSpec: the arguments of one `Model.fit` call, checked once, then never changed.

Every check of fit's arguments lives in `FitSpec.from_fit` and raises a `ConfigError`
naming the argument and what was expected, before anything else happens: a refused fit
changes nothing. The same object then gives what records the fit: the ``fit`` section of
``config.json`` (`config`), its part of the resume fingerprint (`fingerprint`), and the
trackers' parameters (`tracker_params`): one copy of ``batch_size``, not three.

Example:
    >>> spec = FitSpec.from_fit({"epochs": 3, "batch_size": 16})
    >>> spec.epochs, spec.config()["batch_size"]
    (3, 16)
    >>> FitSpec.from_fit({"epochs": -1})
    Traceback (most recent call last):
    torchhouse.errors.ConfigError: epochs: expected an int >= 0, got -1
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchhouse.callbacks.base import Callback
from torchhouse.errors import ConfigError, warn_user

if TYPE_CHECKING:
    from torchhouse.data.batches import Batches
    from torchhouse.train.model import Model

__all__ = ["FitSpec", "check_positive_int", "checked_max_time", "fit_fingerprint"]

NONFINITE_MODES = ("raise", "skip", "stop")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (NumPy integers welcome), or a `ConfigError` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _optional_int(name: str, value: Any) -> int | None:
    return None if value is None else check_positive_int(name, value)


@dataclass(frozen=True)
class FitSpec:
    """How one fit runs (not its data): see the module docstring and `Model.fit`'s arguments."""

    epochs: int = 1
    batch_size: int = 32
    shuffle: bool = True
    seed: int | None = None
    validation_split: float = 0.0
    progress: Any = "auto"
    run_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int | None = None  # None: a state at each epoch's end only
    keep_checkpoints: int = 3
    monitor: str | None = None  # None: val_loss with validation data, else loss
    on_nonfinite: str = "raise"
    plot: str | None = None
    tensorboard: bool | None = None
    initial_epoch: int = 0
    validation_freq: int = 1
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    has_sample_weight: bool = False
    has_validation_data: bool = False
    class_weight: tuple[tuple[int, float], ...] | None = None
    callbacks: tuple[Callback, ...] = field(default=(), repr=False)
    collate_fn: Any = field(default=None, repr=False)  # makes a Dataset's batches from its rows
    max_time: float | None = None  # seconds: stop at the first step boundary after it
    deterministic: bool = False  # torch.use_deterministic_algorithms for the fit
    validation_every_n_steps: int | None = None  # also validate inside epochs, every N steps

    @classmethod
    def from_fit(cls, arguments: Mapping[str, Any]) -> FitSpec:
        """The checked spec of fit's keyword ``arguments`` (the data arguments are only seen here:
        ``sample_weight`` and ``validation_data`` count as given or not)."""
        given = dict(arguments)
        return cls(
            epochs=check_positive_int("epochs", given.get("epochs", 1), minimum=0),
            batch_size=check_positive_int("batch_size", given.get("batch_size", 32)),
            shuffle=bool(given.get("shuffle", True)),
            seed=_checked_seed(given.get("seed")),
            validation_split=_checked_split(given.get("validation_split", 0.0), given.get("validation_data")),
            progress=given.get("progress", "auto"),
            run_dir=_checked_run_dir(
                given.get("run_dir"), given.get("resume", False), given.get("overwrite")
            ),
            resume=bool(given.get("resume", False)),
            overwrite=bool(given.get("overwrite", False)),
            checkpoint_every=_checked_every(given.get("checkpoint_every", "epoch")),
            keep_checkpoints=check_positive_int("keep_checkpoints", given.get("keep_checkpoints", 3)),
            monitor=_checked_monitor(given.get("monitor"), given.get("run_dir")),
            on_nonfinite=_checked_nonfinite(given.get("on_nonfinite", "raise"), given.get("callbacks")),
            plot=_checked_plot(given.get("plot")),
            tensorboard=_checked_tensorboard(given.get("tensorboard"), given.get("run_dir")),
            initial_epoch=check_positive_int("initial_epoch", given.get("initial_epoch", 0), minimum=0),
            validation_freq=check_positive_int("validation_freq", given.get("validation_freq", 1)),
            steps_per_epoch=_optional_int("steps_per_epoch", given.get("steps_per_epoch")),
            validation_steps=_optional_int("validation_steps", given.get("validation_steps")),
            has_sample_weight=given.get("sample_weight") is not None,
            has_validation_data=given.get("validation_data") is not None,
            class_weight=_checked_class_weight(given.get("class_weight")),
            callbacks=_checked_callbacks(given.get("callbacks")),
            collate_fn=given.get("collate_fn"),
            max_time=checked_max_time(given.get("max_time")),
            deterministic=_checked_bool("deterministic", given.get("deterministic", False)),
            validation_every_n_steps=_optional_int(
                "validation_every_n_steps", given.get("validation_every_n_steps")
            ),
        )

    def with_changes(self, **changes: Any) -> FitSpec:
        """A copy with some fields changed (the spec itself never changes)."""
        return dataclasses.replace(self, **changes)

    def class_weight_table(self, device: torch.device) -> torch.Tensor | None:
        """``class_weight`` as a lookup tensor on ``device`` (classes not named weigh 1)."""
        if self.class_weight is None:
            return None
        table = torch.ones(max(k for k, _ in self.class_weight) + 1, device=device)
        for key, value in self.class_weight:
            table[key] = value
        return table

    def config(self) -> dict[str, Any]:
        """The ``fit`` section of the run folder's ``config.json``."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "validation_split": self.validation_split,
            "initial_epoch": self.initial_epoch,
            "validation_freq": self.validation_freq,
            "steps_per_epoch": self.steps_per_epoch,
            "validation_steps": self.validation_steps,
            "sample_weight": self.has_sample_weight,
            "class_weight": {str(k): v for k, v in self.class_weight or ()},
            "checkpoint_every": "epoch" if self.checkpoint_every is None else self.checkpoint_every,
            "collate_fn": _callable_name(self.collate_fn),
            "max_time": self.max_time,
            "deterministic": self.deterministic,
            "validation_every_n_steps": self.validation_every_n_steps,
        }

    def fingerprint(self) -> dict[str, Any]:
        """The settings of this spec that decide a fit's result (compared on resume)."""
        return {
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "validation_split": self.validation_split,
            "initial_epoch": self.initial_epoch,
            "validation_freq": self.validation_freq,
        }

    def tracker_params(self) -> dict[str, Any]:
        """What a tracker records of the fit itself (epochs, batch size, seed)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed}


def fit_fingerprint(model: Model, spec: FitSpec, train: Batches, world_size: int) -> dict[str, Any]:
    """Everything that decides this fit's result, compared on resume: the model's parts,
    the spec's settings, the data and the number of processes."""
    optimizers = model.optimizers()
    return {
        "parameters": {k: list(v.shape) for k, v in model.net.state_dict().items()},
        "optimizer": [type(o).__name__ for o in optimizers],
        "param_groups": [len(g["params"]) for o in optimizers for g in o.param_groups],
        "hyperparameters": [_hyperparameters(g) for o in optimizers for g in o.param_groups],
        "loss": repr(model.loss),
        "metrics": sorted([*model.metrics, *model.weighted_metrics]),
        "lr_scheduler": type(model.lr_scheduler).__name__ if model.lr_scheduler is not None else None,
        "lr_scheduler_interval": model.lr_scheduler_interval,
        "precision": model.precision,
        "accumulate_grad_batches": model.accumulate_grad_batches,
        "gradient_clip": [model.gradient_clip_val, model.gradient_clip_algorithm],
        **spec.fingerprint(),
        "data": train.fingerprint(),
        "num_samples": train.num_samples,
        "steps_per_epoch": len(train) if train.has_len() else None,
        "world_size": world_size,
    }


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """An optimizer group's settings as given (``initial_lr`` when a scheduler moved ``lr``)."""
    from torchhouse.runs.resume import comparable

    settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
    if "initial_lr" in group:
        settings["lr"] = group["initial_lr"]
    plain: dict[str, Any] = comparable(settings)
    return plain


# --------------------------------------------------------------------------- the checks


def _checked_seed(seed: Any) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ConfigError(f"seed: expected an int or None, got {seed!r}")
    return None if seed is None else int(seed)


def _checked_split(split: Any, validation_data: Any) -> float:
    if isinstance(split, bool) or not isinstance(split, (int, float)):
        raise ConfigError(f"validation_split: expected a float in [0, 1), got {split!r}")
    if not 0.0 <= split < 1.0:
        raise ConfigError(f"validation_split: expected a float in [0, 1), got {split}")
    if split and validation_data is not None:
        raise ConfigError("give either validation_data or validation_split, not both")
    return float(split)


def _checked_run_dir(run_dir: Any, resume: Any, overwrite: Any) -> str | None:
    if resume and run_dir is None:
        raise ConfigError("resume=True needs run_dir, the folder of the run to continue")
    if run_dir is not None and not os.fspath(run_dir).strip():
        raise ConfigError("run_dir: an empty path would write into the current folder; name a folder")
    if resume and overwrite:
        raise ConfigError("resume=True and overwrite=True contradict each other; choose one")
    return None if run_dir is None else os.fspath(run_dir)


def checked_max_time(value: Any) -> float | None:
    """``max_time`` as seconds: a number > 0, or ``"HH:MM:SS"`` (``"DD:HH:MM:SS"`` too).

    >>> checked_max_time("01:30:00"), checked_max_time(90)
    (5400.0, 90.0)
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.strip().split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) in (3, 4) and all(n >= 0 for n in numbers):
            seconds = sum(n * f for n, f in zip(reversed(numbers), (1, 60, 3600, 86400), strict=False))
            if seconds > 0:
                return float(seconds)
        raise ConfigError(f"max_time: expected seconds or 'HH:MM:SS', got {value!r}")
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not value > 0
    ):
        raise ConfigError(f"max_time: expected a number of seconds > 0 or 'HH:MM:SS', got {value!r}")
    return float(value)


def _checked_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _checked_every(every: Any) -> int | None:
    if every == "epoch":
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"checkpoint_every: expected 'epoch' or an int > 0 (batches), got {every!r}")
    return every


def _checked_nonfinite(mode: Any, callbacks: Any) -> str:
    """fit's ``on_nonfinite``, or what a callback asks for (TerminateOnNaN: "stop"), not both."""
    if mode not in NONFINITE_MODES:
        raise ConfigError(f"on_nonfinite: expected 'raise', 'skip' or 'stop', got {mode!r}")
    wanted = {c.on_nonfinite for c in _checked_callbacks(callbacks) if c.on_nonfinite is not None}
    if not wanted:
        return str(mode)
    if len(wanted) > 1 or (mode != "raise" and wanted != {mode}):
        raise ConfigError(
            f"the callbacks ask for on_nonfinite={sorted(wanted)} but fit was given "
            f"on_nonfinite={mode!r}: choose one"
        )
    return str(wanted.pop())


def _checked_plot(plot: Any) -> str | None:
    if plot not in (None, "live"):
        raise ConfigError(f"plot: expected None or 'live', got {plot!r}")
    return None if plot is None else "live"


def _checked_tensorboard(tensorboard: Any, run_dir: Any) -> bool | None:
    if tensorboard and run_dir is None:
        raise ConfigError("tensorboard=True writes to run_dir/tensorboard: give run_dir too")
    return None if tensorboard is None else bool(tensorboard)


def _checked_class_weight(class_weight: Any) -> tuple[tuple[int, float], ...] | None:
    if class_weight is None:
        return None
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise ConfigError(f"class_weight: expected a dict {{class index: weight}}, got {class_weight!r}")
    checked = []
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise ConfigError(f"class_weight: keys must be class indices (ints >= 0), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ConfigError(f"class_weight[{key}]: expected a finite weight >= 0, got {value!r}")
        checked.append((int(key), float(value)))
    return tuple(sorted(checked))


def _checked_callbacks(callbacks: Any) -> tuple[Callback, ...]:
    given = tuple(callbacks or ())
    for callback in given:
        if not isinstance(callback, Callback):
            raise ConfigError(
                f"callbacks: expected th.callbacks.Callback objects, got {type(callback).__name__}"
            )
    return given


def _checked_monitor(monitor: Any, run_dir: Any) -> str | None:
    if monitor is not None and not isinstance(monitor, str):
        raise ConfigError(f"monitor: expected the name of a logged value, got {monitor!r}")
    if monitor is not None and run_dir is None:
        warn_user(
            f"fit(monitor={monitor!r}) picks which state run_dir keeps as the best; without run_dir "
            "nothing reads it. To stop early or keep the best weights on it, give it to "
            f"EarlyStopping(monitor={monitor!r}) or ModelCheckpoint(path, monitor={monitor!r})"
        )
    return str(monitor) if monitor is not None else None


def _callable_name(function: Any) -> str | None:
    """``module.qualname`` of a function or of a callable object's class (None for None)."""
    if function is None:
        return None
    owner = function if hasattr(function, "__qualname__") else type(function)
    return f"{getattr(owner, '__module__', '?')}.{owner.__qualname__}"
