"""Resuming a fit: what must match (the fingerprint) and which saved state to continue from.

A run resumes only when everything that decides its result is the same: the net's
shapes, the optimizers and their hyperparameters, the loss, metrics, scheduler,
precision, accumulation, clipping, batch size, shuffling, seed, split and the data
(shapes, dtypes and a hash of sampled rows). Any difference is listed and refused,
because continuing would silently mix two runs.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.errors import CheckpointError
from torchhouse.training_state import TrainingState

if TYPE_CHECKING:
    from torchhouse.data import Batches
    from torchhouse.model import Model
    from torchhouse.runs import RunDir

__all__ = ["check_fingerprint", "fit_fingerprint", "load_resume_state"]


def fit_fingerprint(
    model: Model, train: Batches, fit_config: dict[str, Any], world_size: int
) -> dict[str, Any]:
    """Everything that decides this fit's result, compared on resume."""
    config = fit_config
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
        "batch_size": config.get("batch_size"),
        "shuffle": config.get("shuffle"),
        "seed": config.get("seed"),
        "validation_split": config.get("validation_split"),
        "initial_epoch": config.get("initial_epoch", 0),
        "validation_freq": config.get("validation_freq", 1),
        "data": train.fingerprint(),
        "num_samples": train.num_samples,
        "steps_per_epoch": len(train) if train.has_len() else None,
        "world_size": world_size,
    }


def check_fingerprint(saved: dict[str, Any], now: dict[str, Any], where: Any) -> None:
    """Refuse to resume when anything that decides the result differs; list every difference."""
    differences = _differences(_comparable(saved), _comparable(now))
    if differences:
        raise CheckpointError(
            f"{where}: this fit differs from the saved run, so resuming would not continue it "
            "exactly:\n  " + "\n  ".join(differences) + "\nResume with the same settings and data, "
            "or start a new run (overwrite=True / --overwrite, or another run_dir)."
        )


def load_resume_state(
    run_dir: RunDir, fingerprint: dict[str, Any], rank: int, restore: Any, say: Any
) -> TrainingState | None:
    """The newest usable state of ``run_dir``, already restored by ``restore(state)``.

    A damaged state (bad checksum, missing or mistyped fields, or one that fails to
    restore) falls back to the one before it, with a warning. A state that does not match
    this fit is an error, not damage: falling back would silently continue an older run.
    """
    names = run_dir.state_names()
    if not names:
        say(f"resume=True: no saved state in {run_dir.path}; starting from scratch.")
        return None
    for name, saved in run_dir.intact_states():
        where = run_dir.checkpoints / name
        try:
            state = TrainingState.from_state_dict(saved)
        except CheckpointError as exc:
            warnings.warn(f"skipping the damaged checkpoint {name}: {exc}", stacklevel=3)
            continue
        check_fingerprint(state.fingerprint, fingerprint, where)
        try:
            state = state.for_rank(rank)
            restore(state, name)
        except Exception as exc:  # damage the checksum cannot see, e.g. a state from a bug
            warnings.warn(
                f"skipping the checkpoint {name}, which cannot be restored ({type(exc).__name__}: "
                f"{exc}); falling back to an older one",
                stacklevel=3,
            )
            continue
        say(f"Resuming {run_dir.path} from {name} (epoch {state.epoch + 1}, batch {state.batch}).")
        return state
    raise CheckpointError(
        f"{run_dir.checkpoints}: none of the {len(names)} saved states can be used (see the "
        "warnings above); resume is impossible. Start again with overwrite=True (CLI: --overwrite)"
    )


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """An optimizer group's settings as given (``initial_lr`` when a scheduler moved ``lr``)."""
    settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
    if "initial_lr" in group:
        settings["lr"] = group["initial_lr"]
    plain: dict[str, Any] = _comparable(settings)
    return plain


def _comparable(value: Any) -> Any:
    """JSON-like plain values: tuples as lists, tensors as numbers."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """'key: saved A, now B' for each differing entry, descending into mappings."""
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for key in now:
            name = f"{prefix}{key}"
            if key not in saved:
                found.append(f"{name}: not recorded in the saved run, now {_short(now[key])}")
            else:
                found += _differences(saved[key], now[key], f"{name}.")
        return found
    if saved != now:
        return [f"{prefix.rstrip('.')}: saved {_short(saved)}, now {_short(now)}"]
    return []


def _short(value: Any) -> str:
    text = repr(_comparable(value))
    return text if len(text) <= 120 else text[:117] + "..."
