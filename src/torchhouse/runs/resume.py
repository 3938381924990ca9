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
from torchhouse.runs.state import TrainingState

if TYPE_CHECKING:
    from torchhouse.runs.folder import RunFolder

__all__ = ["check_fingerprint", "comparable", "load_resume_state"]


def check_fingerprint(saved: dict[str, Any], now: dict[str, Any], where: Any) -> None:
    """Refuse to resume when anything that decides the result differs; list every difference."""
    differences = _differences(comparable(saved), comparable(now))
    if differences:
        raise CheckpointError(
            f"{where}: this fit differs from the saved run, so resuming would not continue it "
            "exactly:\n  " + "\n  ".join(differences) + "\nResume with the same settings and data, "
            "or start a new run (overwrite=True / --overwrite, or another run_dir)."
        )


def load_resume_state(
    run_dir: RunFolder, fingerprint: dict[str, Any], rank: int, restore: Any, say: Any
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


def comparable(value: Any) -> Any:
    """JSON-like plain values: tuples as lists, tensors as numbers."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
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
    text = repr(comparable(value))
    return text if len(text) <= 120 else text[:117] + "..."
