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

from torchhouse.errors import ConfigError

if TYPE_CHECKING:
    from torchhouse.model import Model

__all__ = ["full_state_dict", "is_sharded", "shard"]


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
