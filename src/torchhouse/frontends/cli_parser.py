"""The ``torchhouse`` command's arguments: one function per command, so each reads alone."""

from __future__ import annotations

import argparse
from typing import Any

from torchhouse.version import __version__

__all__ = ["TRUST_HELP", "build_parser"]

TRUST_HELP = (
    "trust the config or run folder: let it import the code it names (module:callable) and "
    "read paths outside its folder (see docs/security.md)"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``torchhouse`` command."""
    parser = argparse.ArgumentParser(
        prog="torchhouse",
        description="torchhouse: a Keras-style Model for plain PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"torchhouse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMAND_ARGUMENTS:
        add(commands)
    return parser


def _report_arguments(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="a trained run's report: per-class results, confusion matrix, worst cases",
        description="Rebuild a run's model from its folder and print its report (Markdown) on the "
        "run's held-out test split, or on a CSV with the same columns: precision, recall, F1 and "
        "support per class and the confusion matrix (classification) or MAE, RMSE and R2 "
        "(regression), and the samples with the highest loss.",
    )
    report.add_argument("run", help="a run folder written by `torchhouse fit`")
    report.add_argument("csv", nargs="?", default=None, help="a CSV with the feature and target columns")
    report.add_argument("--target", default=None, help="the target column of the CSV (default: the run's)")
    report.add_argument("--worst", type=int, default=5, help="how many of the highest-loss samples to list")
    report.add_argument(
        "--plot", default=None, help="also draw the confusion matrix (or predicted vs true) here"
    )
    report.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


def _serve_arguments(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="an HTTP server for a run folder (its exported program; FastAPI on uvicorn)",
        description="Serve a run folder's exported program (model.pt2, never its code) over HTTP: "
        'GET /health, GET /info, POST /predict {"inputs": [...]}, OpenAPI docs at /docs. Requests '
        "that arrive together are batched. Needs pip install 'torchhouse[serve]'.",
    )
    serve.add_argument("run", help="a run folder written by a fit with run_dir")
    serve.add_argument(
        "--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    serve.add_argument(
        "--max-batch-size", type=int, default=64, help="rows per batch of gathered requests (default 64)"
    )
    serve.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests (5)"
    )
    serve.add_argument(
        "--max-body-mb", type=float, default=8.0, help="the largest request body accepted (8 MB)"
    )


def _demo_arguments(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="train a small CNN on the bundled handwritten digits",
        description=(
            "Train a small CNN on the bundled UCI handwritten digits (1,797 8x8 images): "
            "validate on 20%% of the training part, stop early on val_acc, report the "
            "held-out test split (20%%, used for nothing else), and write a run folder "
            "(config.json, history.csv, model.safetensors + model.json, checkpoints/)."
        ),
    )
    demo.add_argument("--epochs", type=int, default=15, help="maximum epochs (default 15)")
    demo.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    demo.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    demo.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir")
    demo.add_argument(
        "--progress", default="auto", choices=["auto", "bar", "epoch", "none"], help="progress display"
    )


def _fit_arguments(commands: Any) -> None:
    fit = commands.add_parser(
        "fit",
        help="train from a YAML/JSON config",
        description="Train the model a config describes, evaluate it on the held-out test split, "
        "and write the run folder (with run_config.json, enough to rebuild the model). The config is "
        "checked before training starts. See docs/config.md.",
    )
    fit.add_argument("config", help="a .yaml or .json config file")
    fit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set fit.epochs=5 (repeatable)",
    )
    fit.add_argument("--run-dir", default=None, help="run folder (default runs/<name>)")
    fit.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    fit.add_argument("--overwrite", action="store_true", help="replace the run in the run folder")
    fit.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    fit.add_argument("--progress", default=None, choices=["auto", "bar", "epoch", "none"])


def _evaluate_arguments(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a trained run on its held-out split (or a CSV)",
        description="Rebuild a run's model from its folder and print the loss and metrics on the "
        "run's held-out test split, or on a CSV with the same columns.",
    )
    evaluate.add_argument("run", help="a run folder written by `torchhouse fit`")
    evaluate.add_argument("--csv", default=None, help="a CSV with the feature and target columns")
    evaluate.add_argument(
        "--target", default=None, help="the target column of --csv (default: the run's, else 'target')"
    )
    evaluate.add_argument(
        "--best",
        action="store_true",
        help="evaluate the best state the run kept (by its monitor), not its final weights",
    )
    evaluate.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


def _predict_arguments(commands: Any) -> None:
    predict = commands.add_parser(
        "predict",
        help="predict the rows of a CSV with a trained run",
        description="Rebuild a run's model from its folder and predict each row of INPUT (a CSV with "
        "the training features as columns). Prints a CSV: the prediction and, for classifiers, "
        "the probability of each class.",
    )
    predict.add_argument("run", help="a run folder written by `torchhouse fit`")
    predict.add_argument("input", help="a CSV of feature rows")
    predict.add_argument("--output", default=None, help="write the predictions to this CSV")
    predict.add_argument(
        "--id-column",
        default=None,
        metavar="NAME",
        help="carry this column of INPUT (such as Kaggle's PassengerId) into the output, first",
    )
    predict.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


def _tune_arguments(commands: Any) -> None:
    tune = commands.add_parser(
        "tune",
        help="search hyperparameters of a config with Optuna",
        description="Run Optuna trials over the config's `search` section (see docs/config.md). Each "
        "trial is a run folder under the tuning folder; the study is stored in SQLite there by default, "
        "so a killed search resumes. Give --storage (e.g. postgresql://...) to share one study between "
        "several workers.",
    )
    tune.add_argument("config", help="a .yaml or .json config with a `search` section")
    tune.add_argument("--trials", type=int, default=20, help="finished trials the study should reach")
    tune.add_argument(
        "--storage", default=None, help="an Optuna RDB URL (default SQLite in the tuning folder)"
    )
    tune.add_argument("--study-name", default=None, help="study name (default: the config's name)")
    tune.add_argument(
        "--timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    tune.add_argument("--tune-dir", default=None, help="tuning folder (default runs/<name>-tune)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


def _app_arguments(commands: Any) -> None:
    app = commands.add_parser(
        "app",
        help="serve a Streamlit app for a run (127.0.0.1)",
        description="Start a Streamlit app for a run folder on 127.0.0.1: its config, model, training "
        "curves, test metrics, and a prediction form (CSV for tabular models, an image upload for image "
        "models). Needs the app extra: pip install 'torchhouse[app]'.",
    )
    app.add_argument("run", help="a run folder written by `torchhouse fit` or `torchhouse demo`")
    app.add_argument("--port", type=int, default=None, help="port (default 8501; Gradio's 7860)")
    app.add_argument(
        "--max-upload-mb", type=float, default=5.0, help="largest upload accepted (default 5 MB)"
    )
    app.add_argument(
        "--ui", choices=["streamlit", "gradio"], default="streamlit",
        help="the page's toolkit: streamlit (the app extra) or gradio (the gradio extra)",
    )  # fmt: skip
    app.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


def _runs_arguments(commands: Any) -> None:
    runs = commands.add_parser(
        "runs",
        help="list the runs in a folder",
        description="A table of the run folders under DIR: name, start, epochs, best monitored "
        "value and its epoch, and status (finished / stopped early / crashed / running).",
    )
    runs.add_argument("dir", nargs="?", default="runs", help="folder of run folders (default runs)")


def _show_arguments(commands: Any) -> None:
    show = commands.add_parser(
        "show",
        help="print a run's config, model and history",
        description="Print a run folder's config, model summary and per-epoch history.",
    )
    show.add_argument("run", help="a run folder")
    show.add_argument(
        "--plot",
        nargs="?",
        const="",
        metavar="PNG",
        help="also draw the loss and metric curves from history.csv into PNG (default RUN/history.png; "
        "needs matplotlib)",
    )


def _tensorboard_arguments(commands: Any) -> None:
    board = commands.add_parser(
        "tensorboard",
        help="start TensorBoard on a folder (127.0.0.1)",
        description="Start TensorBoard on DIR bound to 127.0.0.1, or print the command to run "
        "when the tensorboard package is missing.",
    )
    board.add_argument("dir", nargs="?", default="runs", help="log folder (default runs)")
    board.add_argument("--port", type=int, default=6006, help="port (default 6006)")


COMMAND_ARGUMENTS = [
    _demo_arguments,
    _fit_arguments,
    _evaluate_arguments,
    _report_arguments,
    _serve_arguments,
    _predict_arguments,
    _tune_arguments,
    _app_arguments,
    _runs_arguments,
    _show_arguments,
    _tensorboard_arguments,
]
