"""Side-by-side benchmark: torchhouse vs a careful hand loop, the textbook loop and peers.

Each (runner, workload) run is a fresh process; repeats are interleaved; the first epoch
of every run is a warm-up and is excluded from the steady time, and shown apart ("first
epoch s": for the compiled rows it holds the compile time; each run gets an empty inductor
cache, so that is a cold compile; with ``--warm-cache`` the runs share one cache, and only
the first run of each compiled row compiles cold). Prints one markdown table per workload with
the median s/epoch, min-max over runs, the ratio to the hand loop, the paired ratio (the
median over repeats of each repeat's ratio to the hand loop's run next to it), the final
train loss (every row trains the same model) and the peak RSS; then the import cost. The
raw epoch times go next to the table (``<out>.<workload>.json``).

    python benchmarks/run.py                       # everything, 3 repeats
    python benchmarks/run.py --quick               # 1 repeat, fewer epochs
    python benchmarks/run.py --workloads digits --repeats 5

Then what a run folder costs a short fit (`run_folder_cost.py`) and the Python calls of one
training step (`step_calls.py`), and what activation checkpointing keeps for backward
(`activation_memory.py`), and the HTTP server's requests per second and latency
(`serve_latency.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

EPOCHS = {"tabular": 4, "digits": 11, "wide": 3, "probe": 3, "epochs": 400}


def worker(runner: str, workload: str, epochs: int) -> None:
    import torch
    from workloads import RUNNERS, WORKLOADS

    torch.set_num_threads(int(torch.get_num_threads()))
    times, loss = RUNNERS[runner](WORKLOADS[workload], epochs)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "loss": loss, "peak_mb": peak_mb}))


def run_one(runner: str, workload: str, epochs: int, shared_cache: str | None = None) -> dict:
    # a cold torch.compile in every run, unless the runs share one inductor cache
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", runner, workload, str(epochs)],
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": shared_cache or cache},
        )
    if done.returncode != 0:
        raise RuntimeError(f"{runner} on {workload} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_cost(repeats: int) -> dict[str, float]:
    """Median wall time of `import X` over `import torch`, fresh processes, interleaved."""
    modules = {
        "torch": "import torch",
        "torchhouse": "import torch, torchhouse",
        "torchmetrics": "import torch, torchmetrics",
    }
    for name in ("lightning", "torchkeras", "keras"):
        if importlib.util.find_spec(name):
            modules[name] = f"import torch, {name}"
    samples: dict[str, list[float]] = {k: [] for k in modules}
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    for _ in range(repeats):
        for name, code in modules.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["torch"])
    return {name: statistics.median(s) - base if name != "torch" else base for name, s in samples.items()}


def available_runners(names: list[str]) -> list[str]:
    from workloads import CUDA_ONLY, DEVICE, OPTIONAL, RUNNERS

    chosen = []
    for name in names or list(RUNNERS):
        if name in CUDA_ONLY and DEVICE.type != "cuda":
            if names:
                print(f"(skipping {name}: CUDA only; set TORCHHOUSE_BENCH_DEVICE=cuda)", file=sys.stderr)
            continue
        module = OPTIONAL.get(name)
        if module and importlib.util.find_spec(module) is None:
            print(f"(skipping {name}: `{module}` is not installed; pip install .[bench])", file=sys.stderr)
            continue
        chosen.append(name)
    return chosen


def table(workload: str, results: dict[str, list[dict]], title: str) -> str:
    hand = statistics.median(statistics.median(r["times"][1:]) for r in results["hand loop"])
    lines = [
        f"### {title}",
        "",
        "| runner | median s/epoch | min-max | ratio to hand loop | paired ratio | first epoch s "
        "| final train loss | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    hand_runs = [statistics.median(r["times"][1:]) for r in results["hand loop"]]
    for runner, runs in results.items():
        per_run = [statistics.median(r["times"][1:]) for r in runs]
        median = statistics.median(per_run)
        # Repeats are interleaved, so repeat i of every row ran at about the same time: the
        # median of the per-repeat ratios cancels the machine's slow drifts.
        paired = statistics.median(t / h for t, h in zip(per_run, hand_runs, strict=True))
        lines.append(
            f"| {runner} | {median:.4f} | {min(per_run):.4f}-{max(per_run):.4f} | {median / hand:.3f}x | "
            f"{paired:.3f}x | {statistics.median(r['times'][0] for r in runs):.3f} | {runs[-1]['loss']:.6f} | {statistics.median(r['peak_mb'] for r in runs):.0f} |"
        )
    if workload == "probe":
        steps = 4000
        per_step = {
            k: statistics.median(statistics.median(r["times"][1:]) for r in v) / steps * 1e6
            for k, v in results.items()
        }
        lines.append("")
        lines.append("Per step: " + ", ".join(f"{k} {v:.1f} us" for k, v in per_step.items()))
        if "torchhouse (arrays)" in per_step:
            lines.append(
                f"torchhouse fixed cost over the hand loop: "
                f"{per_step['torchhouse (arrays)'] - per_step['hand loop']:+.1f} us/step"
            )
    if workload == "epochs" and "torchhouse (arrays)" in results:
        per_epoch = {
            k: statistics.median(statistics.median(r["times"][1:]) for r in v) * 1e6
            for k, v in results.items()
        }
        lines.append("")
        lines.append("Per epoch: " + ", ".join(f"{k} {v:.0f} us" for k, v in per_epoch.items()))
        lines.append(
            f"torchhouse cost over the hand loop: {per_epoch['torchhouse (arrays)'] - per_epoch['hand loop']:+.0f} "
            "us/epoch (8 steps' fixed cost included)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", nargs=3, metavar=("RUNNER", "WORKLOAD", "EPOCHS"), help=argparse.SUPPRESS)
    parser.add_argument("--workloads", nargs="*", default=["tabular", "digits", "wide", "probe"])
    parser.add_argument("--runners", nargs="*", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 epochs (1 measured)")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.md"))
    parser.add_argument(
        "--no-run-folder", action="store_true", help="skip the run folder's cost and the per-step call count"
    )
    parser.add_argument("--no-import-cost", action="store_true", help="skip the import-cost rows")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="one inductor cache for all runs: only the first run of each compiled row compiles cold",
    )
    args = parser.parse_args()
    if args.worker:
        runner, workload, epochs = args.worker
        worker(runner, workload, int(epochs))
        return

    import torch
    from workloads import WORKLOADS

    repeats = 1 if args.quick else args.repeats
    runners = available_runners(args.runners)
    report = [
        "# torchhouse benchmark",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}",
        f"- torch {torch.__version__}; repeats {repeats} (interleaved, fresh process each); warm-up epoch excluded",
        "",
    ]
    print("\n".join(report), flush=True)
    shared = tempfile.mkdtemp(prefix="inductor-") if args.warm_cache else None
    for workload in args.workloads:
        epochs = 2 if args.quick else EPOCHS[workload]
        results: dict[str, list[dict]] = {r: [] for r in runners}
        for _ in range(repeats):
            for runner in runners:
                results[runner].append(run_one(runner, workload, epochs, shared))
        raw = Path(args.out).with_suffix(f".{workload}.json")
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(results))  # every run's epoch times, to recompute the table
        text = table(workload, results, WORKLOADS[workload].title)
        print(text + "\n", flush=True)
        report += [text, ""]
        write(args.out, report)
    if args.no_import_cost:
        print(f"\nwritten to {args.out}")
        return
    costs = import_cost(5 if not args.quick else 3)
    lines = [
        "### Import cost (median wall time, fresh process)",
        "",
        f"`import torch`: {costs.pop('torch'):.3f} s; over it:",
        "",
    ]
    lines += [f"- `{name}`: +{value:.3f} s" for name, value in costs.items()]
    print("\n".join(lines))
    report += lines
    write(args.out, report)
    if not args.no_run_folder:
        import activation_memory
        import run_folder_cost
        import serve_latency
        import step_calls

        calls = step_calls.measure()
        lines = [
            "",
            run_folder_cost.measure(3 if args.quick else 5),
            "",
            f"Python calls per training step (cProfile): {calls['none']:.1f} without a metric, "
            f"{calls['accuracy']:.1f} with the accuracy function (`benchmarks/step_calls.py`).",
            "",
            activation_memory.measure(),
            "",
            serve_latency.measure(200 if args.quick else 400),
        ]
        print("\n".join(lines))
        report += lines
        write(args.out, report)
    print(f"\nwritten to {args.out}")


def write(path: str, report: list[str]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
