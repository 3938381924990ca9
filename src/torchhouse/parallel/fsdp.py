"""FSDP2 for `Model(..., strategy="fsdp")`: shard the net over the processes of a fit.

``fully_shard`` (torch.distributed.fsdp) is applied to each block of the net (the items of
its ``nn.ModuleList`` / ``nn.Sequential`` containers, else its direct children that hold
parameters), then to the net itself. Each process then keeps its shard of every
parameter, gradient and optimizer state; a block's parameters are gathered for its
forward and backward only, and gradients are reduce-scattered (averaged) as DDP averages
them, so a fit equals one process with the same global batch (to float32 rounding).

The parameters become DTensors, so the optimizer's groups are pointed at them (by name);
``precision="bf16-mixed"`` becomes FSDP2's mixed-precision policy (bf16 compute, float32
gradient reduction). `full_state_dict` gathers the whole state for `Model.save`, with the
keys of the plain net's ``state_dict()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchhouse.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["SHARD", "full_state_dict", "is_sharded", "join_shards", "live_parameter", "shard", "split_shards"]


def is_sharded(net: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``net``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(net, FSDPModule)


def _blocks(net: nn.Module) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for child in net.children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            blocks += [m for m in child if any(True for _ in m.parameters())]
        elif any(True for _ in child.parameters()):
            blocks.append(child)
    return blocks


def shard(model: Model) -> None:
    """Apply FSDP2 to ``model.net`` (blocks, then the root) and point the optimizers at the shards."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if model.precision == "16-mixed":
        raise ConfigError(
            'strategy="fsdp" with precision="16-mixed" is not supported (its grad scaler does not '
            'shard); use precision="bf16-mixed" or "32"'
        )
    if is_sharded(model.net):
        return  # a second fit: already sharded
    for optimizer in model.optimizers():
        if optimizer.state:
            raise ConfigError(
                'strategy="fsdp": the optimizer already holds state from an earlier fit without '
                "sharding; build the Model afresh for a sharded fit"
            )
    names = {id(p): name for name, p in model.net.named_parameters()}
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if model.precision == "bf16-mixed"
        else MixedPrecisionPolicy()
    )
    for block in _blocks(model.net):
        fully_shard(block, mp_policy=policy)
    fully_shard(model.net, mp_policy=policy)
    sharded = dict(model.net.named_parameters())
    for optimizer in model.optimizers():
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] if id(p) in names else p for p in group["params"]]
        if optimizer.defaults.get("fused"):
            # the fused kernels take plain tensors; the for-each step takes DTensors
            for group in optimizer.param_groups:
                group["fused"] = False
                group["foreach"] = True


def full_state_dict(net: nn.Module) -> dict[str, Any]:
    """The whole state of a sharded net, gathered on every rank, on the CPU (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# --------------------------------------------------------------------------- sharded states

SHARD = "__fsdp_shard__"  # stands in the shared state where a rank's own shard goes


def split_shards(tree: Any, path: str, shards: dict[str, torch.Tensor]) -> Any:
    """``tree`` with each DTensor replaced by `SHARD`; this rank's local shards go to ``shards``."""
    from torch.distributed.tensor import DTensor

    if isinstance(tree, DTensor):
        shards[path] = tree.to_local().detach().contiguous().cpu()
        return SHARD
    if isinstance(tree, dict):
        return {k: split_shards(v, f"{path}/{k}", shards) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(split_shards(v, f"{path}/{i}", shards) for i, v in enumerate(tree))
    return tree


def join_shards(tree: Any, path: str, shards: dict[str, torch.Tensor], like: Any) -> Any:
    """The inverse of `split_shards`: each `SHARD` becomes a DTensor placed as ``like(path)``,
    the live parameter it belongs to (same world size, so the same placements)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tree, str) and tree == SHARD:
        if path not in shards:
            raise CheckpointError(f"this rank's shard file lacks {path!r}")
        param = like(path)
        return DTensor.from_local(
            shards[path].to(param.device),
            param.device_mesh,
            param.placements,
            shape=param.shape,
            stride=param.stride(),
        )
    if isinstance(tree, dict):
        return {k: join_shards(v, f"{path}/{k}", shards, like) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(join_shards(v, f"{path}/{i}", shards, like) for i, v in enumerate(tree))
    return tree


def live_parameter(model: Model) -> Any:
    """Maps a shard's path (model/NAME, grads/NAME, optimizers/I/state/INDEX/KEY) to its parameter."""
    params = dict(model.net.named_parameters())
    per_optimizer = [[p for group in o.param_groups for p in group["params"]] for o in model.optimizers()]

    def like(path: str) -> Any:
        kind, rest = path.split("/", 1)
        if kind in ("model", "grads"):
            return params[rest]
        optimizer, _, index, _ = rest.split("/", 3)
        return per_optimizer[int(optimizer)][int(index)]

    return like
