"""CallbackList: calls a hook on every callback that implements it, in order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torchhouse.callbacks.base import HOOKS, Callback, overrides
from torchhouse.errors import CheckpointError

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = ["CallbackList"]


class CallbackList:
    """Calls a hook on every callback that implements it, in order: ``call("on_epoch_end", ...)``."""

    def __init__(self, callbacks: Iterable[Callback], model: Model) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)
        # Only callbacks that implement a hook are called for it: per-step hooks cost time.
        self.hooked = {
            hook: [
                getattr(c, hook)
                for c in self.callbacks
                if overrides(c, hook)
                and (hook != "on_train_batch_end" or getattr(c, "needs_batch_end", True))
            ]
            for hook in HOOKS
        }

    def wants(self, hook: str) -> bool:
        """Whether any callback implements ``hook`` (the loop skips the call otherwise)."""
        return bool(self.hooked[hook])

    def call(self, hook: str, *args: Any) -> None:
        for method in self.hooked[hook]:
            method(*args)

    def _user(self) -> list[Callback]:
        # Callbacks fit added by itself (TensorBoard for run_dir) hold no resumable state.
        return [c for c in self.callbacks if not c.auto]

    def state_dict(self) -> list[dict[str, Any]]:
        """The state of each callback that carries one (stateless callbacks are left out)."""
        states = ({"type": type(c).__name__, "state": c.state_dict()} for c in self._user())
        return [s for s in states if s["state"]]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        """Give each stateful callback its saved state; stateless ones may be added or removed.

        Raises a `CheckpointError` when the stateful callbacks differ from the saved run's
        (by class, in order), since their state decides what happens next.
        """
        stateful = [c for c in self._user() if c.state_dict()]
        names = [type(c).__name__ for c in stateful]
        saved = [str(s.get("type")) if isinstance(s, dict) else "?" for s in states]
        if names != saved:
            raise CheckpointError(
                f"the callbacks that carry state do not match the saved run: saved {saved}, given {names}"
            )
        for callback, state in zip(stateful, states, strict=True):
            callback.load_state_dict(state["state"])
