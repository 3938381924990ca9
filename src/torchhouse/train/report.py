"""Report: what a trained model gets right and wrong, from its predictions and per-sample losses.

Classification: the confusion matrix (rows are the true class), precision / recall / F1 /
support per class and their macro and support-weighted means, as scikit-learn's
``classification_report`` computes them (a class never predicted has precision 0).
Regression: MAE, RMSE and R² (over all outputs). Both: the samples with the highest loss.

Example::

    report = model.report(x_test, y_test, labels=["cat", "dog"])
    print(report.to_markdown())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchhouse.errors import ConfigError, DataError
from torchhouse.metrics.tasks import BINARY, CLASSIFICATION, PROBABILITY

__all__ = ["Report", "build_report"]


@dataclass
class Report:
    """What `Model.report` returns (see the module docstring)."""

    task: str
    summary: dict[str, float]
    confusion_matrix: torch.Tensor | None = None
    per_class: dict[Any, dict[str, float]] = field(default_factory=dict)
    predictions: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    targets: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    losses: torch.Tensor | None = field(default=None, repr=False)  # one per sample
    labels: list[Any] = field(default_factory=list)

    def worst(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` samples with the highest loss: index, target, prediction, loss."""
        if self.losses is None:
            raise ConfigError(
                "report.worst: the loss gives no per-sample values (it has no reduction='none')"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"report.worst: k must be an int >= 1, got {k!r}")
        order = torch.argsort(self.losses, descending=True, stable=True)[:k]
        return [
            {
                "index": int(i),
                "target": _plain(self.targets[i]),
                "prediction": _plain(self.predictions[i]),
                "loss": float(self.losses[i]),
            }
            for i in order
        ]

    def to_markdown(self) -> str:
        """The report as Markdown tables (what ``torchhouse report`` prints and ``report.md`` holds)."""
        lines = [
            f"# Report ({self.task}, {len(self.targets)} samples)",
            "",
            "| measure | value |",
            "|---|---|",
        ]
        lines += [f"| {name} | {value:.4f} |" for name, value in self.summary.items()]
        if self.confusion_matrix is not None:
            names = [str(label) for label in self.labels]
            lines += [
                "",
                "## Per class",
                "",
                "| class | precision | recall | f1 | support |",
                "|---|---|---|---|---|",
            ]
            for label, row in self.per_class.items():
                values = " | ".join(f"{row[k]:.4f}" for k in ("precision", "recall", "f1"))
                lines.append(f"| {label} | {values} | {int(row['support'])} |")
            lines += ["", "## Confusion matrix (rows: true class, columns: predicted)", ""]
            lines += ["| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for name, counts in zip(names, self.confusion_matrix.tolist(), strict=True):
                lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
        if self.losses is not None:
            lines += [
                "",
                "## Highest losses",
                "",
                "| index | target | prediction | loss |",
                "|---|---|---|---|",
            ]
            for case in self.worst(min(5, len(self.losses))):
                lines.append(
                    f"| {case['index']} | {case['target']} | {case['prediction']} | {case['loss']:.4f} |"
                )
        return "\n".join(lines) + "\n"

    def plot(self) -> Any:
        """A matplotlib Figure: the confusion matrix as a heat map, or predicted against true."""
        from torchhouse.runs.plots import offscreen_figure

        figure = offscreen_figure(figsize=(5.2, 4.4))
        axis = figure.add_subplot(1, 1, 1)
        if self.confusion_matrix is not None:
            matrix = self.confusion_matrix.numpy()
            image = axis.imshow(matrix, cmap="Blues")
            figure.colorbar(image, ax=axis)
            ticks = range(len(self.labels))
            axis.set_xticks(list(ticks), [str(label) for label in self.labels], rotation=45)
            axis.set_yticks(list(ticks), [str(label) for label in self.labels])
            for (row, column), count in ((rc, int(v)) for rc, v in _cells(matrix)):
                axis.text(column, row, str(count), ha="center", va="center", fontsize=8)
            axis.set_xlabel("predicted")
            axis.set_ylabel("true")
            axis.set_title("confusion matrix")
        else:
            truth, guess = self.targets.reshape(-1).numpy(), self.predictions.reshape(-1).numpy()
            axis.scatter(truth, guess, s=8, alpha=0.6)
            low, high = float(min(truth.min(), guess.min())), float(max(truth.max(), guess.max()))
            axis.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=1)
            axis.set_xlabel("true")
            axis.set_ylabel("predicted")
            axis.set_title("predicted vs true")
        figure.tight_layout()
        return figure


def _cells(matrix: Any) -> Any:
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            yield (row, column), matrix[row, column]


def _plain(value: torch.Tensor) -> Any:
    return value.item() if value.numel() == 1 else value.tolist()


def build_report(
    task: str,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    losses: torch.Tensor | None,
    labels: Sequence[Any] | None,
) -> Report:
    """A `Report` from the net's ``outputs`` (class scores, logits, probabilities or values),
    the ``targets`` and the per-sample ``losses``, for ``task`` (`torchhouse.metrics.tasks`)."""
    if len(outputs) != len(targets):
        raise DataError(f"report: {len(outputs)} predictions for {len(targets)} targets")
    if len(targets) == 0:
        raise DataError("report: no samples")
    if task not in (CLASSIFICATION, BINARY, PROBABILITY):
        return _regression(outputs, targets, losses)
    if task == CLASSIFICATION:
        if outputs.dim() != 2:
            raise DataError(
                f"report: expected class scores of shape (N, C), got {tuple(outputs.shape)} "
                "(a per-token model: flatten its tokens first)"
            )
        predicted, classes = outputs.argmax(1), outputs.shape[1]
    else:
        threshold = 0.0 if task == BINARY else 0.5
        predicted, classes = (outputs.reshape(len(outputs), -1)[:, 0] > threshold).long(), 2
    truth = targets.reshape(len(targets), -1)[:, 0].long() if targets.dim() > 1 else targets.long()
    classes = max(classes, int(truth.max()) + 1)
    if labels is not None and len(labels) != classes:
        raise ConfigError(f"report: {len(labels)} labels given for {classes} classes")
    names = list(labels) if labels is not None else list(range(classes))
    matrix = torch.bincount(truth * classes + predicted, minlength=classes * classes).reshape(
        classes, classes
    )
    return _classification(matrix, names, predicted, truth, losses, task)


def _classification(
    matrix: torch.Tensor,
    names: list[Any],
    predicted: torch.Tensor,
    truth: torch.Tensor,
    losses: Any,
    task: str,
) -> Report:
    hits = matrix.diag().double()
    support, chosen = matrix.sum(1).double(), matrix.sum(0).double()
    precision = torch.where(chosen > 0, hits / chosen.clamp(min=1), torch.zeros_like(hits))
    recall = torch.where(support > 0, hits / support.clamp(min=1), torch.zeros_like(hits))
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-300), torch.zeros_like(hits))
    total = float(support.sum())
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": float(support[i]),
        }
        for i, name in enumerate(names)
    }
    present = support > 0  # scikit-learn's macro means run over the labels that occur (in y_true or y_pred)
    present |= chosen > 0
    summary = {
        "accuracy": float(hits.sum()) / total,
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum()) / total,
    }
    return Report(task, summary, matrix, per_class, predicted, truth, losses, names)


def _regression(outputs: torch.Tensor, targets: torch.Tensor, losses: Any) -> Report:
    guess = outputs.double().reshape(len(outputs), -1)
    truth = targets.double().reshape(len(targets), -1)
    if guess.shape != truth.shape:
        raise DataError(
            f"report: predictions of shape {tuple(outputs.shape)} for targets {tuple(targets.shape)}"
        )
    error = guess - truth
    residual = (error**2).sum(0)
    spread = ((truth - truth.mean(0)) ** 2).sum(0)
    r2 = torch.where(spread > 0, 1 - residual / spread.clamp(min=1e-300), torch.zeros_like(spread))
    summary = {
        "mae": float(error.abs().mean()),
        "rmse": math.sqrt(float((error**2).mean())),
        "r2": float(r2.mean()),  # scikit-learn's r2_score, averaged over the outputs
    }
    predictions = outputs.reshape(len(outputs), -1)
    return Report(
        "regression",
        summary,
        None,
        {},
        predictions.squeeze(1) if predictions.shape[1] == 1 else predictions,
        targets.reshape(len(targets), -1).squeeze(1) if truth.shape[1] == 1 else targets,
        losses,
        [],
    )
