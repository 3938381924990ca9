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


if __name__ == "__main__":
    sys.exit(main())
