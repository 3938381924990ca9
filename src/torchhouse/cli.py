"""The `torchhouse` command.

Exit codes: 0 success, 1 training failure, 2 usage error (bad arguments or input).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from torchhouse.errors import TorchhouseError


def _parser() -> argparse.ArgumentParser:
    from torchhouse import __version__

    parser = argparse.ArgumentParser(
        prog="torchhouse",
        description="torchhouse: a Keras-style Model for plain PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"torchhouse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train a small CNN on the bundled handwritten digits",
        description=(
            "Train a small CNN on the bundled UCI handwritten digits (1,797 8x8 images), "
            "validate on a held-out 20%%, stop early on val_acc, and write a run folder "
            "(config.json, history.csv, model.safetensors + model.json, checkpoints/)."
        ),
    )
    demo.add_argument("--epochs", type=int, default=15, help="maximum epochs (default 15)")
    demo.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    demo.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    demo.add_argument(
        "--progress", default="auto", choices=["auto", "bar", "epoch", "none"], help="progress display"
    )
    runs = commands.add_parser(
        "runs",
        help="list the runs in a folder",
        description="A table of the run folders under DIR: name, start, epochs, best monitored "
        "value and its epoch, and status (finished / stopped early / crashed / running).",
    )
    runs.add_argument("dir", nargs="?", default="runs", help="folder of run folders (default runs)")

    show = commands.add_parser(
        "show",
        help="print a run's config, model and history",
        description="Print a run folder's config, model summary and per-epoch history.",
    )
    show.add_argument("run", help="a run folder")

    board = commands.add_parser(
        "tensorboard",
        help="start TensorBoard on a folder (127.0.0.1)",
        description="Start TensorBoard on DIR bound to 127.0.0.1, or print the command to run "
        "when the tensorboard package is missing.",
    )
    board.add_argument("dir", nargs="?", default="runs", help="log folder (default runs)")
    board.add_argument("--port", type=int, default=6006, help="port (default 6006)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "runs":
            from torchhouse.runs import runs_table

            print(runs_table(args.dir))
            return 0
        if args.command == "show":
            from torchhouse.runs import describe_run

            print(describe_run(args.run))
            return 0
        if args.command == "tensorboard":
            return _tensorboard(args)
    except TorchhouseError as exc:
        print(f"torchhouse {args.command}: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, FloatingPointError) else 1
    parser.error(f"unknown command {args.command}")
    return 2


def _demo(args: argparse.Namespace) -> int:
    from torchhouse.demo import run_demo

    if args.epochs < 1:
        print("torchhouse demo: error: --epochs must be >= 1", file=sys.stderr)
        return 2
    result = run_demo(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        run_dir=args.run_dir,
        progress=args.progress,
        device=args.device,
        resume=args.resume,
    )
    test = result["test"]
    print(f"Test (held-out 20%): loss {test['loss']:.4f}, accuracy {test['acc']:.4f}")
    print(f"Run folder: {args.run_dir}")
    return 0


def _tensorboard(args: argparse.Namespace) -> int:
    import os
    import subprocess
    from importlib.util import find_spec

    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        args.dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    if find_spec("tensorboard") is None:
        print("tensorboard is not installed. Install it and run:")
        print(
            f"  pip install 'torchhouse[tensorboard]' && tensorboard --logdir {args.dir} "
            f"--host 127.0.0.1 --port {args.port}"
        )
        return 1
    if not os.path.isdir(args.dir):
        print(f"torchhouse tensorboard: error: {args.dir}: no such folder", file=sys.stderr)
        return 2
    print(f"TensorBoard on http://127.0.0.1:{args.port}/ (Ctrl-C to stop)")
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
