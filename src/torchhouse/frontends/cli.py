"""The `torchhouse` command.

Exit codes: 0 success, 1 training failure, 2 usage error (bad arguments or input).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchhouse.errors import TorchhouseError
from torchhouse.frontends.cli_parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if args.command is None:
        parser.print_help()
        return 2
    handler = COMMANDS.get(args.command)
    if handler is None:
        parser.error(f"unknown command {args.command}")
    try:
        return handler(args)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
        print(_interrupted_message(args, given), file=sys.stderr)
        return 130
    except TorchhouseError as exc:
        print(f"torchhouse {args.command}: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, FloatingPointError) else 1
    except Exception as exc:  # a failure inside training: exit 1 with the reason, not a usage error
        if args.command not in ("fit", "demo"):
            raise
        print(f"torchhouse {args.command}: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def continue_command(command: str, given: list[str]) -> str:
    """The command that continues an interrupted one: what was typed (every --set, --run-dir,
    --epochs...), without ``--overwrite`` (it would remove the run) and, for a fit or the
    demo, with ``--resume``. A study continues when the same tune command runs again."""
    kept = [part for part in given if part != "--overwrite"]
    if command in ("fit", "demo") and "--resume" not in kept:
        kept.append("--resume")
    return " ".join(shlex.quote(part) for part in ["torchhouse", *kept])


def _interrupted_message(args: argparse.Namespace, given: list[str]) -> str:
    """Two lines: where training stopped and how to go on (the run's state is on disk)."""
    from torchhouse.runs import RunFolder

    folder = getattr(args, "run_dir", None) or getattr(args, "tune_dir", None)
    if args.command in ("fit", "tune") and folder is None:
        from torchhouse.frontends.config import load_config

        try:
            config = load_config(args.config, args.overrides)
            name = str(config.get("name", "run"))
            default = os.path.join("runs", name if args.command == "fit" else f"{name}-tune")
            folder = (config.get("run_dir") if args.command == "fit" else None) or default
        except TorchhouseError:
            folder = None
    where = ""
    if args.command in ("fit", "demo") and folder and os.path.isdir(folder):
        run = RunFolder(folder)
        try:
            stopped = run.info().get("interrupted_at") or {}
        except TorchhouseError:
            stopped = {}
        states = run.state_names()
        at = f" at epoch {stopped['epoch']}, step {stopped['step']}" if stopped else ""
        where = (
            f"{at}; state saved in {run.checkpoints / states[-1]}"
            if states
            else f"{at}; no state was saved yet"
        )
    elif args.command == "tune" and folder:
        where = f"; finished trials are kept in {folder} and are not run again"
    line = f"torchhouse {args.command}: interrupted (Ctrl-C){where}."
    if args.command not in ("fit", "demo", "tune"):
        return line
    return line + f"\nContinue with: {continue_command(args.command, given)}"


def _demo(args: argparse.Namespace) -> int:
    from torchhouse.frontends.demo import run_demo

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
        overwrite=args.overwrite,
    )
    test = result["test"]
    print(
        f"Test (held-out 20%, unseen in training and validation): loss {test['loss']:.4f}, "
        f"accuracy {test['acc']:.4f}"
    )
    print(f"Run folder: {args.run_dir}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from torchhouse.frontends.config import load_config, train_from_config

    config = load_config(args.config, args.overrides)
    result = train_from_config(
        config,
        run_dir=args.run_dir,
        resume=args.resume,
        progress=args.progress,
        trust_code=args.trust_code,
        overwrite=args.overwrite,
    )
    test = result["test"]
    if test:
        print("Test (held-out split): " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    print(f"Run folder: {result['run_dir']}")
    return 0


def _read_input_csv(path: str, info: dict[str, Any], target: str | None, where: str) -> tuple[Any, Any]:
    """Rows (and targets) of a CSV given on the command line, prepared as the run's inputs were."""
    from torchhouse.errors import ConfigError
    from torchhouse.files.safety import MAX_CSV_ROWS
    from torchhouse.frontends.config import prepare_inputs, read_csv, read_text_csv

    if os.path.isdir(path):
        raise ConfigError(f"{where}: {path} is a folder; expected a CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if info.get("vocabulary") is not None:
                rows, y = read_text_csv(handle, info.get("text") or "text", target, where, MAX_CSV_ROWS)
            else:
                rows, y, _ = read_csv(handle, target, info.get("feature_names"), where, MAX_CSV_ROWS)
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: {exc.strerror}") from exc
    if info.get("vocabulary") is None:
        expected = 1
        for size in info.get("input_shape") or []:
            expected *= int(size)
        if info.get("input_shape") is not None and rows.shape[1] != expected:
            raise ConfigError(
                f"{where}: {path}: rows have {rows.shape[1]} values, the model expects {expected} "
                f"(columns: {info.get('feature_names') or 'any'})"
            )
    return prepare_inputs(rows, info), y


def _read_ids(path: str, column: str) -> list[str]:
    """The values of ``column`` of the CSV at ``path``, row by row, as written."""
    import csv

    from torchhouse.errors import ConfigError

    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = [h.strip() for h in rows[0]] if rows else []
    if column not in header:
        raise ConfigError(f"--id-column: {path} has no column {column!r}; columns: {header}")
    index = header.index(column)
    return [row[index] if index < len(row) else "" for row in rows[1:] if row]


class _Prefixed:
    """A csv writer that puts the header's ``names`` and each row's ID first."""

    def __init__(self, writer: Any, names: list[str], ids: list[str]) -> None:
        self.writer, self.names, self.ids, self.row = writer, names, ids, -1

    def writerow(self, row: list[Any]) -> None:
        self.writer.writerow([*(self.names if self.row < 0 else [self.ids[self.row]]), *row])
        self.row += 1


def _evaluation_data(
    args: argparse.Namespace, config: dict[str, Any], command: str
) -> tuple[Any, Any] | None:
    """The rows ``torchhouse evaluate`` / ``report`` use: the CSV given, the held-out split the run
    folder kept, or the config's data; None (with the reason printed) when there are none."""
    from torchhouse.frontends.config import load_data, read_test_split

    info = config["data"]
    if args.csv:
        target = args.target or info.get("target") or "target"
        x, y = _read_input_csv(args.csv, info, target, "--csv")
        y = y.astype("int64") if info["task"] == "classification" else y.astype("float32").reshape(len(y), -1)
    elif (kept := read_test_split(args.run)) is not None:
        x, y = kept  # the held-out rows the run folder kept: no data path, no code
    else:
        if "served_from" in config and not any(k in info for k in ("dataset", "csv")):
            print(
                f"torchhouse {command}: error: {args.run} records no data to evaluate on; give --csv "
                "(with --target when the target column is not named 'target')",
                file=sys.stderr,
            )
            return None
        data = load_data(config, trust_code=args.trust_code, base=args.run)
        if data.x_test is None:
            print(
                f"torchhouse {command}: error: the run has no held-out split (test_fraction 0); give a CSV",
                file=sys.stderr,
            )
            return None
        x, y = data.x_test, data.y_test
    return x, y


def _report(args: argparse.Namespace) -> int:
    from torchhouse.frontends.serving import load_run

    config, model = load_run(args.run, trust_code=args.trust_code)
    found = _evaluation_data(args, config, "report")
    if found is None:
        return 2
    report = model.report(*found, batch_size=256)
    text = report.to_markdown()
    if args.worst != 5 and report.losses is not None:
        cases = report.worst(max(1, args.worst))
        text += "\n" + "\n".join(str(case) for case in cases) + "\n"
    print(text, end="")
    if args.plot:
        figure = report.plot()
        figure.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from torchhouse.errors import import_optional
    from torchhouse.frontends.server import INSTALL_HINT, serve

    for package in ("fastapi", "uvicorn"):
        import_optional(package, INSTALL_HINT)  # the install hint before anything is printed
    print(f"serving {args.run} on http://{args.host}:{args.port} (docs at /docs; Ctrl-C stops)")
    serve(
        args.run, args.host, args.port, args.max_batch_size, args.max_wait_ms, int(args.max_body_mb * 2**20)
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from torchhouse.frontends.serving import load_run

    config, model = load_run(args.run, trust_code=args.trust_code)
    if args.best:
        if "served_from" in config:
            print(
                f"torchhouse evaluate: error: {args.run} is served from its exported program, which holds "
                "the final weights only; --best rebuilds the net from its code: add --trust-code",
                file=sys.stderr,
            )
            return 2
        best = model.load_best(args.run)
        print(f"the best state: epoch {best['epoch']} ({best['monitor']} {best['value']:.4f})")
    found = _evaluation_data(args, config, "evaluate")
    if found is None:
        return 2
    x, y = found
    result = model.evaluate(x, y, batch_size=256)
    print(", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import csv
    import io

    from torchhouse.frontends.serving import load_run

    config, model = load_run(args.run, trust_code=args.trust_code)
    info = config["data"]
    inputs, _ = _read_input_csv(args.input, info, None, "input")
    ids = _read_ids(args.input, args.id_column) if args.id_column else None
    outputs = model.predict(inputs, batch_size=256)
    buffer = io.StringIO()
    writer: Any = csv.writer(buffer)
    if ids is not None:  # the ID first, on every row: Kaggle's submission layout
        writer = _Prefixed(writer, [args.id_column], ids)
    task = info.get("task")
    if task == "classification":
        probabilities = outputs.softmax(dim=1)
        writer.writerow(["prediction", *(f"p{c}" for c in range(probabilities.shape[1]))])
        for row in probabilities.tolist():
            writer.writerow([max(range(len(row)), key=row.__getitem__), *(f"{p:.6f}" for p in row)])
    elif task in ("binary", "probability"):
        # a BCELoss net outputs probabilities already; a BCEWithLogitsLoss net outputs logits
        probabilities = (outputs if task == "probability" else outputs.sigmoid()).reshape(-1)
        writer.writerow(["prediction", "p1"])
        for p in probabilities.tolist():
            writer.writerow([int(p > 0.5), f"{p:.6f}"])
    else:
        flat = outputs.reshape(len(outputs), -1)
        writer.writerow(
            [f"prediction{i}" if flat.shape[1] > 1 else "prediction" for i in range(flat.shape[1])]
        )
        for row in flat.tolist():
            writer.writerow([f"{v:.6g}" for v in row])
    if args.output:
        from torchhouse.files.checkpoint import atomic_write_bytes

        atomic_write_bytes(args.output, buffer.getvalue().encode())
        print(f"wrote {len(inputs)} predictions to {args.output}")
    else:
        print(buffer.getvalue(), end="")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from torchhouse.frontends.config import load_config
    from torchhouse.frontends.tuning import best_trials_table, tune_from_config

    if args.trials < 1:
        print("torchhouse tune: error: --trials must be >= 1", file=sys.stderr)
        return 2
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        print(
            f"torchhouse tune: error: --timeout must be a number of seconds > 0, got {args.timeout}",
            file=sys.stderr,
        )
        return 2
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: one line each below, no tracebacks
    config = load_config(args.config, args.overrides)
    study = tune_from_config(
        config, args.trials, args.storage, args.study_name, args.timeout, args.tune_dir, args.trust_code
    )
    print(best_trials_table(study))
    if study.best_run_dir is not None:
        print(f"best trial's run folder: {study.best_run_dir}")
    print(f"dashboard: optuna-dashboard {study.storage_url}")
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        print("torchhouse tune: error: no trial completed (see the first failure above)", file=sys.stderr)
        return 1
    return 0


def _app(args: argparse.Namespace) -> int:
    import os
    from importlib.util import find_spec

    from torchhouse.frontends.app_command import gradio_command, streamlit_command
    from torchhouse.frontends.serving import load_run

    toolkit, extra = ("gradio", "gradio") if args.ui == "gradio" else ("streamlit", "app")
    if find_spec(toolkit) is None:
        print(
            f"torchhouse app: error: {toolkit.capitalize()} is not installed: "
            f"pip install 'torchhouse[{extra}]'",
            file=sys.stderr,
        )
        return 2
    if args.port is None:
        args.port = 7860 if args.ui == "gradio" else 8501
    load_run(args.run, trust_code=args.trust_code)  # a run that cannot be served fails here, clearly
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        print(
            f"torchhouse app: error: --max-upload-mb must be a number > 0, got {args.max_upload_mb}",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.port <= 65535:
        print(f"torchhouse app: error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    os.environ["TORCHHOUSE_APP_MAX_UPLOAD_MB"] = str(args.max_upload_mb)
    os.environ["TORCHHOUSE_RUN_DIR"] = os.path.abspath(args.run)
    os.environ["TORCHHOUSE_TRUST_CODE"] = "1" if args.trust_code else "0"
    make = gradio_command if args.ui == "gradio" else streamlit_command
    command = make(os.path.abspath(args.run), args.port, args.max_upload_mb)
    print(f"torchhouse app for {args.run} on http://127.0.0.1:{args.port}/ (Ctrl-C to stop)", flush=True)
    os.execv(sys.executable, command)


def _tensorboard(args: argparse.Namespace) -> int:
    import os
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
    print(f"TensorBoard on http://127.0.0.1:{args.port}/ (Ctrl-C to stop)", flush=True)
    os.execv(sys.executable, command)  # become TensorBoard: Ctrl-C and signals reach it directly


def _runs(args: argparse.Namespace) -> int:
    from torchhouse.runs import runs_table

    print(runs_table(args.dir))
    return 0


def _show(args: argparse.Namespace) -> int:
    from torchhouse.runs import describe_run, plot_run

    print(describe_run(args.run))
    if args.plot is not None:
        target = Path(args.plot or Path(args.run) / "history.png")
        plot_run(args.run, target)
        print(f"wrote {target}")
    return 0


COMMANDS = {
    "demo": _demo,
    "fit": _fit,
    "evaluate": _evaluate,
    "report": _report,
    "serve": _serve,
    "predict": _predict,
    "tune": _tune,
    "app": _app,
    "runs": _runs,
    "show": _show,
    "tensorboard": _tensorboard,
}

if __name__ == "__main__":
    sys.exit(main())
