"""TerminateOnNaN: stop training at a NaN or infinite loss, keeping the history (Keras' callback)."""

from __future__ import annotations

from torchhouse.callbacks.base import Callback

__all__ = ["TerminateOnNaN"]


class TerminateOnNaN(Callback):
    """Stop the fit at a non-finite training loss instead of raising.

    Giving it sets ``on_nonfinite="stop"``: the loop finds the NaN/inf loss within a few
    steps without a host sync per step (`Model.fit`), stops after that batch, records the
    epoch in the history, and writes no state from the weights that followed the NaN.

    Example:
        >>> stop = TerminateOnNaN()
        >>> # model.fit(x, y, epochs=10, callbacks=[stop])
    """

    on_nonfinite = "stop"
