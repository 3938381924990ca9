"""The training state: everything a checkpoint holds to continue a fit exactly.

One versioned object instead of a dict built in one place and re-read field by field in
another: the saved form of a fit's `FitState` (`torchhouse.train.state`, which takes one
with ``snapshot`` and puts one back with ``restore``). `state_dict` turns it into the
nested dict of tensors and plain values that `files.checkpoint.save_state` writes
(safetensors + JSON), and `TrainingState.from_state_dict` checks a loaded one field by
field before anything is restored, so a damaged or foreign state is refused whole.

A state saved at a batch boundary (``batch > 0``) also holds the RNG states at the start
of its epoch and the epoch's partial loss/metric sums: a resumed epoch re-creates its
batch order from the first, skips the batches done, and continues the sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from torchhouse.errors import CheckpointError

__all__ = ["SCHEMA_VERSION", "TrainingState"]

SCHEMA_VERSION = 1  # states written before the version was recorded have the same fields


@dataclass
class TrainingState:
    """Where a fit stands, as saved in a checkpoint.

    Example:
        >>> state = TrainingState(epoch=2, global_step=64)
        >>> TrainingState.from_state_dict(state.state_dict()).global_step
        64
    """

    epoch: int = 0  # the epoch to continue (0-based)
    batch: int = 0  # batches already done in that epoch (0: it starts afresh)
    global_step: int = 0
    micro_step: int = 0  # micro-batches accumulated since the last optimizer step
    best: float | None = None  # the best monitored value so far
    stop_training: bool = False
    finished: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)  # compared on resume
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    lr_scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # accumulated, mid-accumulation
    history: dict[str, Any] = field(default_factory=dict)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, Any] | None = None  # RNG states when saved
    rng_epoch_start: dict[str, Any] | None = None  # ... and at the start of the epoch (batch > 0)
    train_metrics: dict[str, Any] | None = None  # the epoch's partial sums (batch > 0)
    data_position: dict[str, Any] | None = None  # streams read on across epochs: where each stands
    ranks: list[dict[str, Any]] | None = None  # per-rank rng/metric parts under several processes
    shards: list[str] | None = None  # strategy="fsdp": each rank's shard file digest, in rank order
    version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ per rank

    def for_rank(self, rank: int) -> TrainingState:
        """This rank's view: its own RNG streams and partial epoch values."""
        if self.ranks is None:
            return self
        if not 0 <= rank < len(self.ranks):
            raise CheckpointError(
                f"the state was saved by {len(self.ranks)} process(es); this is rank {rank}"
            )
        own = self.ranks[rank]
        return _replace(self, own)

    def part(self, name: str) -> dict[str, Any]:
        """The RNG or metric part ``name`` ("rng", "rng_epoch_start", "train_metrics"); it must be there."""
        value = getattr(self, name)
        if not isinstance(value, dict):
            raise CheckpointError(f"the training state has no {name!r}")
        return value

    # ------------------------------------------------------------------ to and from a file

    def state_dict(self) -> dict[str, Any]:
        """A nested dict of tensors and plain values (what `checkpoint.save_state` writes)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, saved: Any) -> TrainingState:
        """Check a loaded state field by field; a `CheckpointError` names what is wrong."""
        if not isinstance(saved, dict):
            raise CheckpointError(f"a training state must be a mapping, got {type(saved).__name__}")
        version = saved.get("version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise CheckpointError(
                f"the training state has schema version {version!r}; this torchhouse reads up to "
                f"{SCHEMA_VERSION} (was it written by a newer torchhouse?)"
            )
        known = {f.name for f in fields(cls)}
        missing = [name for name in _REQUIRED if name not in saved]
        if missing:
            raise CheckpointError(f"the training state lacks {', '.join(missing)}")
        for name, kinds in _TYPES.items():
            value = saved.get(name)
            if name in saved and not isinstance(value, kinds):
                raise CheckpointError(f"the training state's {name!r} is {type(value).__name__}")
        state = cls(**{k: v for k, v in saved.items() if k in known})
        if state.epoch < 0 or state.batch < 0 or state.global_step < 0:
            raise CheckpointError("the training state has a negative epoch, batch or step")
        if state.batch > 0 and state.ranks is None:
            for name in ("rng_epoch_start", "train_metrics"):
                if getattr(state, name) is None:
                    raise CheckpointError(f"a mid-epoch state without {name!r}")
        return state

    def __repr__(self) -> str:
        return (
            f"TrainingState(version={self.version}, epoch={self.epoch}, batch={self.batch}, "
            f"global_step={self.global_step}, best={self.best}, finished={self.finished})"
        )


_REQUIRED = ("epoch", "batch", "global_step", "fingerprint", "model", "optimizers", "history")
_TYPES: dict[str, tuple[type, ...]] = {
    "epoch": (int,),
    "batch": (int,),
    "global_step": (int,),
    "micro_step": (int,),
    "best": (int, float, type(None)),
    "stop_training": (bool,),
    "finished": (bool,),
    "fingerprint": (dict,),
    "model": (dict,),
    "optimizers": (list,),
    "lr_scheduler": (dict, type(None)),
    "scaler": (dict, type(None)),
    "grads": (dict,),
    "history": (dict,),
    "callbacks": (list,),
    "rng": (dict, type(None)),
    "rng_epoch_start": (dict, type(None)),
    "train_metrics": (dict, type(None)),
    "data_position": (dict, type(None)),
    "ranks": (list, type(None)),
    "shards": (list, type(None)),
}


def _replace(state: TrainingState, own: Any) -> TrainingState:
    if not isinstance(own, dict):
        raise CheckpointError("a rank's part of the training state is not a mapping")
    values = state.state_dict()  # shallow: tensors are not copied
    values.update({k: own.get(k) for k in ("rng", "rng_epoch_start", "train_metrics", "data_position")})
    values["ranks"] = None
    return TrainingState.from_state_dict(values)
