"""Python calls per training step, counted with cProfile: the per-step path's size.

A fit of 200 steps and one of 1,200 are profiled (after a warm-up fit); the difference over
1,000 is the calls one more step costs. Run it on two checkouts to compare a change:

    python benchmarks/step_calls.py                 # this checkout
    python benchmarks/step_calls.py --src /tmp/old/src
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def worker(metric: str) -> float:
    import torch
    from torch import nn

    import torchhouse as th

    torch.set_num_threads(1)
    metrics = [] if metric == "none" else [th.metrics.accuracy]

    def calls(steps: int) -> int:
        torch.manual_seed(0)
        x, y = torch.randn(steps * 64, 20), torch.randint(0, 3, (steps * 64,))
        net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
        model = th.Model(net, loss=nn.CrossEntropyLoss(), device="cpu", metrics=metrics)
        model.fit(x[:640], y[:640], epochs=1, batch_size=64, progress="none")  # warm-up
        profile = cProfile.Profile()
        profile.enable()
        model.fit(x, y, epochs=1, batch_size=64, progress="none")
        profile.disable()
        return sum(row[1] for row in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]

    return (calls(1200) - calls(200)) / 1000


def measure(src: Path = SRC) -> dict[str, float]:
    """Calls per step without a metric and with the accuracy function, in fresh processes."""
    counts = {}
    for metric in ("none", "accuracy"):
        done = subprocess.run(
            [sys.executable, __file__, "--worker", metric],
            capture_output=True,
            text=True,
            timeout=600,
            env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        counts[metric] = json.loads(done.stdout.strip().splitlines()[-1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, default=SRC, help="the src folder of the torchhouse to count")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    counts = measure(args.src)
    print(
        f"Python calls per training step: {counts['none']:.1f} (no metric), {counts['accuracy']:.1f} (accuracy)"
    )


if __name__ == "__main__":
    main()
