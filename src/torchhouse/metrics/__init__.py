"""Metrics: functions and torchmetrics-style objects, accumulated on the device.

Public (``th.metrics``): `accuracy`, `binary_accuracy_logits`, `mean_absolute_error`,
`mean_squared_error`, `ClassAccuracy`, `resolve_metric`. Inside: `functions` (the metric
functions and how names resolve), `epoch` (`EpochMetrics`, the on-device epoch values),
`named` (``"auc"``, ``"f1"``... from torchmetrics), `monitor` (min or max, NaN-safe "better"),
`tasks` (which task a loss implies), `states` (a metric object's state for resume).
"""

from torchhouse.metrics.epoch import EpochMetrics
from torchhouse.metrics.functions import (
    METRIC_NAMES,
    RESERVED_NAMES,
    ClassAccuracy,
    accuracy,
    binary_accuracy_logits,
    check_binary_accuracy_inputs,
    check_metric_values,
    class_accuracy_for,
    copy_metrics,
    is_stateful_metric,
    mean_absolute_error,
    mean_squared_error,
    normalise_metrics,
    resolve_metric,
    resolve_weighted_metrics,
)
from torchhouse.metrics.states import load_metric_state, metric_state

__all__ = [
    "METRIC_NAMES",
    "RESERVED_NAMES",
    "ClassAccuracy",
    "EpochMetrics",
    "accuracy",
    "binary_accuracy_logits",
    "check_binary_accuracy_inputs",
    "check_metric_values",
    "class_accuracy_for",
    "copy_metrics",
    "is_stateful_metric",
    "load_metric_state",
    "mean_absolute_error",
    "mean_squared_error",
    "metric_state",
    "normalise_metrics",
    "resolve_metric",
    "resolve_weighted_metrics",
]
