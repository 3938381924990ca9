"""Write docs/api.md from the public API's docstrings (a test checks it is up to date).

python scripts/gen_api_docs.py
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torchhouse as th  # noqa: E402

ENTRIES = [
    (
        "torchhouse.Model",
        th.Model,
        [
            "fit",
            "evaluate",
            "predict",
            "save",
            "load_weights",
            "load_best",
            "find_lr",
            "report",
            "export",
            "summary",
            "train_step",
            "eval_step",
            "predict_step",
            "unpack_batch",
            "forward",
            "compute_loss",
            "forward_and_loss",
            "backward",
            "forward_backward",
            "optimizer_step",
            "forward_backward_step",
            "clip_gradients",
        ],
    ),
    ("torchhouse.LightModel", th.LightModel, ["fit", "evaluate", "predict", "save", "to_lightning"]),
    ("torchhouse.History", th.History, ["best", "plot", "to_pandas", "to_csv"]),
    ("torchhouse.summary", th.summary, []),
    ("torchhouse.freeze", th.freeze, []),
    ("torchhouse.unfreeze", th.unfreeze, []),
    ("torchhouse.param_groups", th.param_groups, []),
    ("torchhouse.tune", th.tune, []),
    ("torchhouse.cross_validate", th.cross_validate, []),
    ("torchhouse.CVResult", th.CVResult, ["to_pandas"]),
    ("torchhouse.launch", th.launch, []),
    ("torchhouse.load_exported", th.load_exported, []),
    ("torchhouse.seed_everything", th.seed_everything, []),
    (
        "torchhouse.callbacks.Callback",
        th.callbacks.Callback,
        [
            "on_fit_start",
            "on_fit_end",
            "on_epoch_start",
            "on_epoch_end",
            "on_train_batch_end",
            "on_validation_end",
            "state_dict",
            "load_state_dict",
        ],
    ),
    ("torchhouse.callbacks.CallbackList", th.callbacks.CallbackList, ["call", "wants"]),
    ("torchhouse.callbacks.EarlyStopping", th.callbacks.EarlyStopping, []),
    ("torchhouse.callbacks.ModelCheckpoint", th.callbacks.ModelCheckpoint, []),
    ("torchhouse.callbacks.CSVLogger", th.callbacks.CSVLogger, []),
    ("torchhouse.callbacks.TensorBoard", th.callbacks.TensorBoard, []),
    ("torchhouse.callbacks.LivePlot", th.callbacks.LivePlot, []),
    ("torchhouse.callbacks.LambdaCallback", th.callbacks.LambdaCallback, []),
    ("torchhouse.callbacks.OptunaPruning", th.callbacks.OptunaPruning, []),
    ("torchhouse.callbacks.LearningRateScheduler", th.callbacks.LearningRateScheduler, []),
    ("torchhouse.callbacks.ReduceLROnPlateau", th.callbacks.ReduceLROnPlateau, []),
    ("torchhouse.callbacks.TerminateOnNaN", th.callbacks.TerminateOnNaN, []),
    ("torchhouse.callbacks.MLflowLogger", th.callbacks.MLflowLogger, []),
    ("torchhouse.callbacks.WandbLogger", th.callbacks.WandbLogger, []),
    ("torchhouse.callbacks.EMA", th.callbacks.EMA, []),
    ("torchhouse.callbacks.BackboneFinetuning", th.callbacks.BackboneFinetuning, []),
    ("torchhouse.callbacks.StochasticWeightAveraging", th.callbacks.StochasticWeightAveraging, []),
    ("torchhouse.callbacks.Profiler", th.callbacks.Profiler, []),
    ("torchhouse.runs.plot_run", th.runs.plot_run, []),
    ("torchhouse.runs.list_runs", th.runs.list_runs, []),
    ("torchhouse.metrics.accuracy", th.metrics.accuracy, []),
    ("torchhouse.metrics.binary_accuracy_logits", th.metrics.binary_accuracy_logits, []),
    ("torchhouse.models.mlp", th.models.mlp, []),
    ("torchhouse.datasets.load_digits", th.datasets.load_digits, []),
    ("torchhouse.datasets.load_breast_cancer", th.datasets.load_breast_cancer, []),
    ("torchhouse.datasets.load_sunspots", th.datasets.load_sunspots, []),
    ("torchhouse.datasets.load_sentiment_words", th.datasets.load_sentiment_words, []),
    ("torchhouse.datasets.train_test_split", th.datasets.train_test_split, []),
]


def signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `scripts/gen_api_docs.py`; do not edit.",
        "",
    ]
    for name, obj, members in ENTRIES:
        lines += [f"## `{name}{signature(obj)}`", "", inspect.getdoc(obj) or "", ""]
        for member in members:
            method = getattr(obj, member)
            lines += [
                f"### `{name.rsplit('.', 1)[-1]}.{member}{signature(method)}`",
                "",
                inspect.getdoc(method) or "",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "api.md").write_text(render())
    print("wrote docs/api.md")
