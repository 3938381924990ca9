"""``fit(deterministic=True)``: torch's deterministic algorithms for one fit, the settings put back after."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["deterministic_algorithms"]

CUBLAS_SETTING = ":4096:8"  # what torch's docs name for deterministic cuBLAS (CUDA 10.2+)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Within the block: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and
    not benchmarking, and ``CUBLAS_WORKSPACE_CONFIG`` set when CUDA is in use and it is unset.
    Everything is as before when the block ends (an exception included). ``enabled=False``: nothing.

    >>> with deterministic_algorithms(True):
    ...     torch.are_deterministic_algorithms_enabled()
    True
    >>> torch.are_deterministic_algorithms_enabled()
    False
    """
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    if torch.cuda.is_available() and before[4] is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_SETTING
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]
        if before[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
