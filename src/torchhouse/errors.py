"""Errors torchhouse raises for bad input. Each message names what was wrong and what was expected."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    "TorchhouseError",
    "UntrustedCodeError",
    "import_optional",
    "warn_user",
]


class TorchhouseError(Exception):
    """Base class of torchhouse's own errors."""


class DataError(TorchhouseError, ValueError):
    """The data given to fit / evaluate / predict is not usable."""


class ConfigError(TorchhouseError, ValueError):
    """An argument or configuration value is invalid."""


class CheckpointError(TorchhouseError, ValueError):
    """A checkpoint or weights file is missing, corrupt, unsafe or does not match the model."""


class NonFiniteLossError(TorchhouseError, FloatingPointError):
    """The training loss became NaN or infinite.

    ``epoch`` and ``step`` are 0-based, as ``history.epoch``; the message counts from 1,
    as every number a person reads does.
    """

    def __init__(self, epoch: int, step: int, value: float, data_problem: str | None = None) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        where = (
            f"at epoch {epoch + 1}, batch {step + 1}"
            if step >= 0
            else f"in another process at epoch {epoch + 1}"
        )
        advice = (
            f"{data_problem}: clean or impute the data; a lower learning rate will not help."
            if data_problem
            else "Try a lower learning rate, gradient clipping (gradient_clip_val), or "
            "on_nonfinite='skip' to skip such batches."
        )
        super().__init__(
            f"the training loss is {value} {where}. Training stopped; saved checkpoints are intact. {advice}"
        )


class UntrustedCodeError(ConfigError):
    """A file names code (``module:callable``) that torchhouse runs only with ``trust_code=True``."""


def import_optional(module: str, hint: str) -> Any:
    """Import ``module`` of an optional extra, or raise `ConfigError` with ``hint`` (how to install it).

    >>> import_optional("json", "unused").dumps([1])
    '[1]'
    >>> import_optional("no_such_extra", "pip install no-such-extra")
    Traceback (most recent call last):
    torchhouse.errors.ConfigError: pip install no-such-extra
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(hint) from exc


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the user's line: the first frame outside torchhouse.

    Fit's call depth differs between fit, evaluate and a resumed epoch, so a fixed
    ``stacklevel`` would point into torchhouse as often as not.
    """
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        level += 1
        frame = frame.f_back  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level + 1)
