"""What a run folder costs a short fit: a 10-epoch fit of a small MLP with ``run_dir`` and without.

Each repeat is a fresh process that fits four times, alternating without / with a run
folder (twice each): the first fit of each kind pays one-time imports (torch.export,
matplotlib, TensorBoard), so the table shows the first fit and the steady one (the second
of its kind), which is what every tuning trial after the first pays.

    python benchmarks/run_folder_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker() -> None:
    import torch
    from torch import nn

    import torchhouse as th

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 20, generator=g), torch.randint(0, 3, (2000,), generator=g)
    folder = Path(tempfile.mkdtemp())
    times: dict[str, list[float]] = {"without": [], "with": []}
    for i, kind in enumerate(("without", "with", "without", "with")):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
        model = th.Model(net, loss=nn.CrossEntropyLoss(), metrics=["acc"], device="cpu")
        run_dir = folder / f"run-{i}" if kind == "with" else None
        start = time.perf_counter()
        model.fit(x, y, epochs=10, batch_size=64, seed=0, progress="none", run_dir=run_dir)
        times[kind].append(time.perf_counter() - start)
    print(json.dumps(times))


def measure(repeats: int) -> str:
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--worker"], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(kind: str, index: int) -> float:
        return statistics.median(r[kind][index] for r in runs)

    lines = [
        "### A run folder's cost: a 10-epoch fit of a small MLP (2,000 x 20, batch 64, 32 steps an epoch)",
        "",
        "| fit | without run_dir s | with run_dir s | cost of the run folder s |",
        "|---|---|---|---|",
    ]
    for index, name in ((0, "first in the process"), (1, "steady (the second)")):
        without, with_ = median("without", index), median("with", index)
        lines.append(f"| {name} | {without:.3f} | {with_:.3f} | {with_ - without:+.3f} |")
    paired = statistics.median(r["with"][1] - r["without"][1] for r in runs)
    lines += ["", f"Paired steady cost (median over {repeats} processes): {paired:+.3f} s"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    print(measure(args.repeats))


if __name__ == "__main__":
    main()
