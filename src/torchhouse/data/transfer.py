"""Batches that start on the CPU, moved to the training device as the loop takes them.

On a CUDA device each batch's CPU tensors are pinned (unless they already are, as a
``DataLoader(pin_memory=True)`` gives them) and copied on a side stream; the compute
stream waits for that copy on the GPU, not on the host. The host runs ahead of the GPU, so
when it takes batch i+1, step i's kernels are queued but still running: the copy of batch
i+1 overlaps them instead of queueing behind them.

Nothing is read ahead of the loop: batches are taken from the iterator exactly when the
loop asks for them, so a loader's random numbers (shuffling, augmentations in
``__getitem__``) are drawn in the same order as without the overlap, and exact resume and
``steps_per_epoch`` see the same iterator positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from torchhouse.data.trees import move_to, tree_leaves, tree_map

__all__ = ["device_batches"]


def device_batches(batches: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """Yield each batch of ``batches`` on ``device``; on CUDA, copied on a side stream.

    >>> batches = [(torch.ones(2, 3), torch.zeros(2))]
    >>> [x.device.type for x, _ in device_batches(batches, torch.device("cpu"))]
    ['cpu']
    """
    if device.type != "cuda":
        for batch in batches:
            yield move_to(batch, device)
        return
    copy_stream = torch.cuda.Stream(device)
    for batch in batches:
        yield _copy_on(copy_stream, batch, device)


def _copy_on(copy_stream: Any, batch: Any, device: torch.device) -> Any:
    compute = torch.cuda.current_stream(device)

    def copy(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "cpu":
            return t.to(device, non_blocking=True)  # already on a GPU: no side stream
        source = t if t.is_pinned() else t.pin_memory()
        with torch.cuda.stream(copy_stream):
            return source.to(device, non_blocking=True)

    moved = tree_map(copy, batch)
    compute.wait_stream(copy_stream)  # the step's kernels start after the copy, on the GPU
    for leaf in tree_leaves(moved):
        if leaf.device.type == "cuda":
            # allocated on the copy stream, used on the compute stream: keep the memory
            # from being reused until the compute stream is done with it
            leaf.record_stream(compute)
    return moved
