"""Several processes with torch.distributed: set-up under torchrun, shared decisions, `launch`.

Under ``torchrun --nproc-per-node K script.py`` (or multi-node with its rendezvous
arguments), `fit` notices torchrun's environment (``WORLD_SIZE`` > 1) and, if no process
group exists, initialises one: NCCL when the model is on CUDA, gloo otherwise. A group it
created is destroyed when the process exits. `launch` starts K local processes from a
notebook or a script and returns rank 0's result.
"""

from __future__ import annotations

import atexit
import datetime
import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from torchhouse.data import to_cpu
from torchhouse.errors import ConfigError

__all__ = [
    "Context",
    "all_sum",
    "any_rank",
    "barrier",
    "broadcast_object",
    "env_world_size",
    "gather_objects",
    "launch",
    "local_rank",
    "setup",
]


@dataclass(frozen=True)
class Context:
    """Where this process stands in a distributed run."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE must be an int, got {os.environ['WORLD_SIZE']!r}") from exc


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: torch.device) -> Context | None:
    """The distributed context of this process, creating the process group if needed.

    Returns None for a single process.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() == 1:
            return None
        return Context(dist.get_rank(), dist.get_world_size(), local_rank())
    if env_world_size() <= 1:
        return None
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    atexit.register(_destroy)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank())


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (one all-reduce)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (in place) and return it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (between our own processes, never from files)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------- launch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    fn: Callable[..., Any],
    rank: int,
    nprocs: int,
    port: int,
    queue: Any,
    args: tuple[Any, ...],
    relay_progress: bool = False,
    forked: bool = False,
) -> None:
    if forked:
        # One intra-op thread per process, torchrun's default: a forked child that runs
        # OpenMP with more threads deadlocks once the parent has used its pool (any fit).
        torch.set_num_threads(1)
    if relay_progress and rank == 0:
        from torchhouse.progress import set_relay

        # From a notebook, the parent draws rank 0's progress: a forked process must not
        # send display messages to the kernel itself.
        set_relay(lambda lines, current: queue.put(("progress", (list(lines), current))))
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        result = fn(*args)
        if rank == 0:
            # Plain pickle bytes: the queue's own pickler would share tensors through file
            # descriptors that vanish when this process exits before the parent reads them.
            queue.put(("ok", pickle.dumps(to_cpu(result))))
    except BaseException:
        queue.put(("error", f"rank {rank} raised:\n{traceback.format_exc()}"))
        raise
    finally:
        _destroy()


def _drain(
    queue: Any, failure: str | None, result: Any, show: Callable[[list[str], str], None] | None = None
) -> tuple[str | None, Any]:
    """Read the processes' messages: the first error, rank 0's result and its progress text."""
    while not queue.empty():
        kind, payload = queue.get()
        if kind == "error" and failure is None:
            failure = payload
        elif kind == "ok":
            result = pickle.loads(payload)  # bytes this launch's own rank 0 wrote
        elif kind == "progress" and show is not None:
            show(*payload)
    return failure, result


def launch(
    fn: Callable[..., Any],
    *args: Any,
    nprocs: int = 2,
    start_method: str | None = None,
    timeout: float | None = None,
) -> Any:
    """Run ``fn(*args)`` on ``nprocs`` local processes (one per GPU, or CPU processes with gloo).

    Each process gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), so ``model.fit`` inside ``fn`` trains with DistributedDataParallel.
    Returns rank 0's result. If any process fails, the others are stopped and a
    RuntimeError names the rank and its error. ``start_method`` defaults to "fork" where
    available (so functions defined in a notebook work), else "spawn". Forked processes
    use one intra-op thread each, as torchrun does by default: with more, a forked child
    deadlocks in OpenMP once the parent has trained (use "spawn" for more threads). From
    a notebook, rank 0's progress is drawn by the notebook's own process.

    Example::

        def train():
            model = th.Model(make_net(), loss=nn.CrossEntropyLoss())
            return model.fit(x, y, epochs=5).history

        history = th.launch(train, nprocs=2)
    """
    import multiprocessing as mp

    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ConfigError(f"launch: nprocs must be an int >= 1, got {nprocs!r}")
    if dist.is_available() and dist.is_initialized():
        raise ConfigError("launch: a process group already exists in this process; call fn directly")
    method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    context: Any = mp.get_context(method)
    queue = context.SimpleQueue()
    port = _free_port()
    from torchhouse.progress import NotebookDisplay, in_notebook

    relay = in_notebook()
    display: list[NotebookDisplay] = []

    def show(lines: list[str], current: str) -> None:
        if not display:
            display.append(NotebookDisplay())
        display[0].show(lines, current)

    processes = [
        context.Process(
            target=_worker, args=(fn, rank, nprocs, port, queue, args, relay, method == "fork"), daemon=False
        )
        for rank in range(nprocs)
    ]
    for process in processes:
        process.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    failure: str | None = None
    result: Any = None
    try:
        while any(p.is_alive() for p in processes):
            failure, result = _drain(queue, failure, result, show)
            failed = [(r, p.exitcode) for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
            if failed or failure:
                break
            if deadline is not None and time.monotonic() > deadline:
                failure = f"launch: timed out after {timeout} s"
                break
            time.sleep(0.05)
    finally:
        # A failed rank leaves the others blocked in a collective: stop them.
        for process in processes:
            if process.is_alive() and (failure or any(p.exitcode not in (None, 0) for p in processes)):
                process.terminate()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    failure, result = _drain(queue, failure, result, show)
    codes = [p.exitcode for p in processes]
    if failure or any(code != 0 for code in codes):
        detail = failure or f"exit codes {codes}"
        raise RuntimeError(f"launch: a process failed ({detail.strip()})")
    return result
