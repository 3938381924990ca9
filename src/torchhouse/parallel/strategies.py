"""How a fit runs over processes: one interface, three small strategies.

`SingleProcess` (one process), `DataParallel` (DDP: every process holds the whole net and
gradients are averaged) and `FullySharded` (FSDP2: every process holds a shard of each
parameter, gradient and optimizer state). The loop asks the strategy, never a flag:

- ``wrap(model)``: the callable the steps run the net through (a DDP wrapper, the sharded
  net), and ``unwrap`` when the fit ends;
- ``shard(batches, seed)``: this process's share of each epoch;
- ``any_rank(flag)``, ``broadcast``, ``gather``, ``barrier``, ``sum_over_ranks`` (the
  epoch's values): decisions and sums every rank makes together;
- ``split_state`` / ``join_state``: the tensors of a saved state (FSDP: each rank writes and
  reads its own shard file), and ``full_weights``: the whole ``state_dict`` (FSDP: gathered);
- ``is_main``: the rank that writes the run folder and shows progress.

Example:
    >>> strategy = strategy_for(torch.device("cpu"), "ddp")  # not under torchrun: one process
    >>> type(strategy).__name__, strategy.world_size, strategy.is_main
    ('SingleProcess', 1, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from torchhouse.errors import CheckpointError, ConfigError
from torchhouse.parallel import distributed

if TYPE_CHECKING:
    from torchhouse.data.batches import Batches
    from torchhouse.runs.folder import RunFolder
    from torchhouse.runs.state import TrainingState

__all__ = ["DataParallel", "FullySharded", "SingleProcess", "Strategy", "strategy_for"]


class Strategy:
    """One process (the base class is the single-process strategy's behaviour)."""

    rank = 0
    world_size = 1
    is_main = True
    # whether a stop asked for in a batch hook waits for the epoch's end (every rank stops together)
    stops_at_epoch_end = False
    # whether the periodic NaN check must wait for the device (every rank decides together)
    checks_together = False
    writes_own_shards = False  # FSDP: each rank saves its shards of a state itself

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def wrap(self, model: Any) -> Callable[..., Any]:
        """What the steps call the net through for this fit."""
        forward: Callable[..., Any] = model.compiled_net
        return forward

    def unwrap(self, model: Any) -> None:
        """Undo `wrap` when the fit ends (nothing for one process)."""

    def shard(self, batches: Batches, seed: int) -> Batches:
        return batches

    def any_rank(self, flag: bool) -> bool:
        return flag

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for alone)."""

    @property
    def sum_over_ranks(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """How the epoch's sums are added up over ranks (None: one process, nothing to add)."""
        return None

    def split_state(self, state: TrainingState, folder: RunFolder, name: str) -> None:
        """Before ``state`` is written as ``name``: take out what each rank writes itself."""

    def join_state(self, state: TrainingState, folder: RunFolder, name: str, model: Any) -> None:
        """After ``state`` is read: put back what each rank wrote itself."""
        if state.shards is not None:
            raise CheckpointError(
                "a sharded (strategy='fsdp') state resumes only with the same number of processes, "
                "under torchrun or th.launch"
            )

    def full_weights(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The net's whole ``state_dict`` (for FSDP, gathered from every rank: a collective)."""
        return net.state_dict()


class SingleProcess(Strategy):
    """One process: the plain (or compiled) net, nothing to shard or share."""


class DataParallel(Strategy):
    """DDP over the processes of a torchrun (or `th.launch`) group: the net replicated."""

    stops_at_epoch_end = True
    checks_together = True

    def __init__(self, device: torch.device, context: distributed.Context) -> None:
        super().__init__(device)
        self.context = context
        self.rank, self.world_size, self.is_main = context.rank, context.world_size, context.is_main

    def wrap(self, model: Any) -> Callable[..., Any]:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model.net, device_ids=device_ids)
        return torch.compile(wrapped) if model.compiled else wrapped

    def shard(self, batches: Batches, seed: int) -> Batches:
        return batches.shard(self.rank, self.world_size, seed)

    def any_rank(self, flag: bool) -> bool:
        return distributed.any_rank(flag, self.device)

    def broadcast(self, obj: Any) -> Any:
        return distributed.broadcast_object(obj)

    def gather(self, obj: Any) -> list[Any]:
        return distributed.gather_objects(obj)

    def barrier(self) -> None:
        distributed.barrier()

    @property
    def sum_over_ranks(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return distributed.all_sum


class FullySharded(DataParallel):
    """FSDP2 (`torchhouse.parallel.fsdp`): the net sharded in place for this and later fits."""

    writes_own_shards = True

    def wrap(self, model: Any) -> Callable[..., Any]:
        from torchhouse.parallel.fsdp import shard

        shard(model)  # in place: the net stays sharded after fit (save gathers it)
        net: Callable[..., Any] = model.net
        return net

    def split_state(self, state: TrainingState, folder: RunFolder, name: str) -> None:
        from torchhouse.parallel.fsdp import split_shards

        shards: dict[str, Any] = {}
        state.model = split_shards(state.model, "model", shards)
        state.optimizers = split_shards(state.optimizers, "optimizers", shards)
        state.grads = split_shards(state.grads, "grads", shards)
        digest = folder.save_shard(name, self.rank, shards)
        state.shards = self.gather(digest)

    def join_state(self, state: TrainingState, folder: RunFolder, name: str, model: Any) -> None:
        """This rank's shards back into ``state``; a damaged shard on any rank fails every rank."""
        from torchhouse.parallel.fsdp import join_shards, live_parameter

        failure: Exception | None = None
        try:
            if state.shards is None or len(state.shards) != self.world_size:
                raise CheckpointError(
                    "a sharded (strategy='fsdp') state resumes only with the same number of processes"
                )
            shards = folder.load_shard(name, self.rank, str(state.shards[self.rank]))
            like = live_parameter(model)
            state.model = join_shards(state.model, "model", shards, like)
            state.optimizers = join_shards(state.optimizers, "optimizers", shards, like)
            state.grads = join_shards(state.grads, "grads", shards, like)
        except Exception as exc:  # a damaged shard file: every rank must fall back together
            failure = exc
        if self.any_rank(failure is not None):
            raise failure or CheckpointError(f"another rank could not read its shards of {name}")

    def full_weights(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        from torchhouse.parallel.fsdp import full_state_dict

        return full_state_dict(net)


def strategy_for(device: torch.device, name: str) -> Strategy:
    """The strategy for this process: under torchrun (or `th.launch`) DDP or FSDP, else one process.

    Creates the process group when torchrun's environment asks for one and none exists.
    """
    if name not in ("ddp", "fsdp"):
        raise ConfigError(f"strategy: expected 'ddp' or 'fsdp', got {name!r}")
    context = distributed.setup(device)
    if context is None:
        return SingleProcess(device)
    return FullySharded(device, context) if name == "fsdp" else DataParallel(device, context)
