"""Did-you-mean for keyword arguments that Keras and torchkeras users reach for.

Example:
    >>> suggestion("loss_fn", ["loss", "metrics"])
    "loss (torchkeras' loss_fn is torchhouse's loss)"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from torchhouse.errors import ConfigError

__all__ = ["refuse_unknown", "suggestion"]

_LR = "optimizer=lambda params: torch.optim.AdamW(params, lr=...) (the learning rate lives on the optimizer)"
# What a name from torchkeras, Keras or Lightning is called here.
HABITS = {
    "loss_fn": "loss (torchkeras' loss_fn is torchhouse's loss)",
    "metrics_dict": "metrics (torchkeras' metrics_dict is torchhouse's metrics)",
    "lr": _LR,
    "learning_rate": _LR,
    "mixed_precision": "precision='bf16-mixed' or '16-mixed' (on Model)",
    "gradient_accumulation_steps": "accumulate_grad_batches (on Model)",
    "train_data": "x (fit(x) takes a DataLoader, a Dataset or arrays)",
    "val_data": "validation_data",
    "patience": "callbacks=[th.callbacks.EarlyStopping(monitor='val_loss', patience=...)]",
    "ckpt_path": "run_dir (a resumable run folder), or callbacks=[th.callbacks.ModelCheckpoint(path)]",
    "verbose": "progress ('auto', 'bar', 'epoch' or 'none')",
    "max_epochs": "epochs",
    "mode": "a callback's mode (EarlyStopping(mode=...)); fit picks min/max from the monitor's name",
    "wandb": "callbacks (a logger callback)",
    "plot": "plot='live' (Jupyter) or history.plot()",
    "cpu": "device='cpu' (on Model)",
}


def suggestion(name: str, known: Iterable[str]) -> str | None:
    """The argument a user most likely meant by ``name``, or None."""
    if name in HABITS:
        return HABITS[name]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def refuse_unknown(where: str, unexpected: dict[str, Any], known: Iterable[str]) -> None:
    """Raise a ConfigError naming each unknown keyword and what it probably should be."""
    if not unexpected:
        return
    known = list(known)
    parts = []
    for name in unexpected:
        hint = suggestion(name, known)
        parts.append(f"{name!r}" + (f" (did you mean {hint}?)" if hint else ""))
    raise ConfigError(f"{where}: unknown argument(s) {', '.join(parts)}; see help({where})")
