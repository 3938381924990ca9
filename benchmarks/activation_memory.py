"""What ``Model(activation_checkpointing=True)`` keeps for backward: bytes of the tensors autograd
saves during one training forward pass, with and without checkpointing, and the step time.

The bytes are counted with ``torch.autograd.graph.saved_tensors_hooks`` around the forward
pass: a checkpointed block keeps only its input (its inner tensors are recomputed in
backward), so the count is the activation memory a step holds at its peak, on any device
(CUDA's ``max_memory_allocated`` says the same on a GPU; the CPU allocator reports nothing).

    python benchmarks/activation_memory.py
"""

from __future__ import annotations

import time

import torch
from torch import nn

import torchhouse as th


def deep_net(width: int = 512, depth: int = 12) -> nn.Module:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width)) for _ in range(depth)]
    return nn.Sequential(*blocks, nn.Linear(width, 10))


def saved_bytes(model: th.Model, x: torch.Tensor, y: torch.Tensor) -> int:
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    model.net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model.net(x), y)
    loss.backward()
    return total


def step_seconds(model: th.Model, x: torch.Tensor, y: torch.Tensor, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(x, y, epochs=1, batch_size=256, progress="none")
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / (len(x) // 256)


def measure() -> str:
    torch.set_num_threads(1)
    x, y = torch.randn(1024, 512), torch.randint(0, 10, (1024,))
    plain = th.Model(deep_net(), loss=nn.CrossEntropyLoss(), device="cpu")
    checked = th.Model(deep_net(), loss=nn.CrossEntropyLoss(), device="cpu", activation_checkpointing=True)
    kept = [saved_bytes(m, x[:256], y[:256]) for m in (plain, checked)]
    seconds = [step_seconds(m, x, y) for m in (plain, checked)]
    return (
        "Activation checkpointing (12 blocks of Linear 512 + GELU + LayerNorm, batch 256, CPU): "
        f"kept for backward {kept[0] / 2**20:.1f} MiB plain vs {kept[1] / 2**20:.1f} MiB checkpointed "
        f"({kept[1] / kept[0]:.2f}x); step {seconds[0] * 1e3:.1f} ms vs {seconds[1] * 1e3:.1f} ms "
        f"({seconds[1] / seconds[0]:.2f}x, the recomputed forward) (`benchmarks/activation_memory.py`)."
    )


if __name__ == "__main__":
    print(measure())
