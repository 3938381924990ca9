"""``optimizer.step()`` of torch's Adam, AdamW and SGD as a function of the gradients, to trace
into the graph that computes them (``Model(compile="step")``'s one-graph training step).

Their ``step()`` reads each parameter's ``.grad`` and calls torch's functional update
(``torch.optim.adam.adam``, ``torch.optim.sgd.sgd``) with the group's settings and the state
it keeps. A compiled graph that computed the gradients cannot set ``.grad`` and then call
``step()`` (dynamo refuses an optimizer step after that mutation, and ``step()`` breaks the
graph itself), so `TracedUpdate` makes the same functional call, with the same arguments
``step()`` passes, on the gradients directly. It does so only where that is exactly what
``step()`` would do; `TracedUpdate.inputs` answers None otherwise, and the training step
then runs ``step()`` itself:

- the optimizer's class is ``Adam``, ``AdamW`` or ``SGD`` itself (a subclass may step otherwise);
- torch's functional update takes exactly the parameters this module passes, and each param
  group holds the settings ``step()`` reads and nothing else but what schedulers and
  `torchhouse.param_groups` add (``initial_lr``, ``max_lr``, ``min_lr``, ``name``): a torch
  release that changes either steps aside;
- no step hook is registered, on the optimizer or globally (``step()`` would run it);
- no group is ``fused`` (torch does not trace the fused kernel), ``foreach`` without
  ``capturable`` (torch takes no tensor learning rate there) or ``differentiable``, no grad
  scaler is attached (``grad_scale`` / ``found_inf``), and each learning rate is a tensor (a
  float would be a constant of the graph).

A parameter's state is created by its first ``step()`` (Adam's moments, SGD's momentum
buffer), not here: where a parameter that gets a gradient has none yet, `TracedUpdate.apply`
updates nothing and says so, and the training step hands the gradients to ``step()``.

Example:
    >>> from torch import nn
    >>> net = nn.Linear(2, 1)
    >>> update = TracedUpdate.of(torch.optim.SGD(net.parameters(), lr=torch.tensor(0.1)))
    >>> [len(params) for params, states, lr, settings in update.inputs()]
    [2]
    >>> TracedUpdate.of(torch.optim.RMSprop(net.parameters())) is None
    True
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["IGNORED_KEYS", "Group", "TracedUpdate"]

# What torch.optim.adam.adam / sgd.sgd take and what each class's param groups hold (torch 2.13);
# a release that changes either steps aside.
_ADAM_CALL = [
    *("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps", "foreach"),
    *("capturable", "differentiable", "fused", "grad_scale", "found_inf", "has_complex"),
    *("decoupled_weight_decay", "amsgrad", "beta1", "beta2", "lr", "weight_decay", "eps", "maximize"),
]
_ADAM_GROUP = {
    *("params", "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach"),
    *("capturable", "differentiable", "fused", "decoupled_weight_decay"),
}
_SGD_CALL = [
    *("params", "d_p_list", "momentum_buffer_list", "has_sparse_grad", "foreach", "fused"),
    *("grad_scale", "found_inf", "weight_decay", "momentum", "lr", "dampening", "nesterov", "maximize"),
]
_SGD_GROUP = {
    *("params", "lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach"),
    *("differentiable", "fused"),
}

# keys an LR scheduler (initial_lr, max_lr, min_lr) or torchhouse's param_groups (name) add to a
# group, which step() does not read
IGNORED_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "name"})

State = dict[str, torch.Tensor]
# per param group: its trainable parameters, each one's state (None: not created yet), the lr
# tensor, and the settings step() passes
Group = tuple[list[torch.Tensor], list[State | None], torch.Tensor, dict[str, Any]]


class TracedUpdate:
    """The optimizer's ``step()`` for given gradients; see the module docstring.

    Per step, `inputs` gathers what the update reads (None: ``step()`` must run itself), and
    `apply` (traced into the graph) updates the parameters and the state in place.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str) -> None:
        self.optimizer = optimizer
        self.kind = kind  # "adam" (Adam, AdamW) or "sgd"

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> TracedUpdate | None:
        """The update of ``optimizer``, or None for an optimizer this module does not know."""
        from torch.optim.adam import adam
        from torch.optim.sgd import sgd

        if any(_untraceable(group) for group in optimizer.param_groups):
            return None
        if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW) and _parameters(adam) == _ADAM_CALL:
            return cls(optimizer, "adam")
        if type(optimizer) is torch.optim.SGD and _parameters(sgd) == _SGD_CALL:
            return cls(optimizer, "sgd")
        return None

    def inputs(self) -> list[Group] | None:
        """What `apply` reads, per param group (see `Group`); None where ``step()`` must run itself."""
        optimizer = self.optimizer
        if _has_step_hooks(optimizer) or getattr(optimizer, "grad_scale", None) is not None:
            return None
        if getattr(optimizer, "found_inf", None) is not None:
            return None
        keys, names = (
            (_ADAM_GROUP, ("exp_avg", "exp_avg_sq", "step")) if self.kind == "adam" else (_SGD_GROUP, ())
        )
        groups: list[Group] = []
        for group in optimizer.param_groups:
            lr = group["lr"]
            if not keys <= group.keys() <= keys | IGNORED_KEYS:
                return None  # a setting step() would read that this module does not pass
            if _untraceable(group) or not isinstance(lr, torch.Tensor):
                return None
            if self.kind == "adam" and group["amsgrad"]:
                wanted = (*names, "max_exp_avg_sq")
            elif self.kind == "sgd" and group["momentum"] != 0:
                wanted = ("momentum_buffer",)
            else:
                wanted = names
            params = [p for p in group["params"] if p.requires_grad]
            states = [_state_of(optimizer, p, wanted) for p in params]
            settings = {k: group[k] for k in keys if k not in ("params", "lr")}
            groups.append((params, states, lr, settings))
        return groups

    def apply(self, groups: list[Group], grads: tuple[torch.Tensor | None, ...]) -> bool:
        """What ``step()`` does with these gradients (one per parameter of ``groups``, in order;
        None for a parameter the loss does not reach, which ``step()`` leaves alone). Traced.

        False, with nothing updated, where a parameter with a gradient has no state yet: its
        first ``step()`` creates it.
        """
        start, updates = 0, []
        for params, states, lr, settings in groups:
            own = grads[start : start + len(params)]
            start += len(params)
            stepped = [i for i, grad in enumerate(own) if grad is not None]
            if any(states[i] is None for i in stepped):
                return False
            updates.append((stepped, params, own, states, lr, settings))
        for stepped, params, own, states, lr, settings in updates:
            with_grad = [params[i] for i in stepped]
            grad_list = [g for g in own if g is not None]
            state = [states[i] for i in stepped]
            if self.kind == "adam":
                _adam(with_grad, grad_list, state, lr, settings)  # type: ignore[arg-type]
            else:
                _sgd(with_grad, grad_list, state, lr, settings)  # type: ignore[arg-type]
        return True

    def derived(self, groups: list[Group]) -> list[tuple[torch.Tensor, str, torch.Tensor]]:
        """``(parameter, what, tensor)`` for each tensor the update changes by a multiple of the
        gradient (or its square): Adam's moments, SGD's momentum buffer, or the parameter for
        SGD without momentum. A step's change to them tells its gradients (`compile_check`)."""
        derived = []
        for params, states, _, settings in groups:
            for param, state in zip(params, states, strict=True):
                if state is None:
                    continue
                if self.kind == "adam":
                    derived += [
                        (param, "first moment", state["exp_avg"]),
                        (param, "second moment", state["exp_avg_sq"]),
                    ]
                elif settings["momentum"] != 0:
                    derived.append((param, "momentum buffer", state["momentum_buffer"]))
                else:
                    derived.append((param, "update", param))
        return derived


def _adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[State],
    lr: torch.Tensor,
    group: dict[str, Any],
) -> None:
    from torch.optim.adam import adam

    beta1, beta2 = group["betas"]
    adam(  # the call Adam.step makes, argument for argument
        params,
        grads,
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
        [s["step"] for s in states],
        amsgrad=group["amsgrad"],
        has_complex=any(torch.is_complex(p) for p in params),
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=group["maximize"],
        foreach=group["foreach"],
        capturable=group["capturable"],
        differentiable=group["differentiable"],
        fused=group["fused"],
        grad_scale=None,
        found_inf=None,
        decoupled_weight_decay=group["decoupled_weight_decay"],
    )


def _sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[State],
    lr: torch.Tensor,
    group: dict[str, Any],
) -> None:
    from torch.optim.sgd import sgd

    # the buffers exist (a first step() made them) and are updated in place
    buffers: list[torch.Tensor | None] = (
        [s["momentum_buffer"] for s in states] if group["momentum"] != 0 else []
    )
    sgd(  # the call SGD.step makes, argument for argument
        params,
        grads,
        buffers,
        weight_decay=group["weight_decay"],
        momentum=group["momentum"],
        lr=lr,  # type: ignore[arg-type]  # torch annotates a float; step() passes the group's tensor
        dampening=group["dampening"],
        nesterov=group["nesterov"],
        maximize=group["maximize"],
        has_sparse_grad=False,
        foreach=group["foreach"],
        fused=group["fused"],
        grad_scale=None,
        found_inf=None,
    )


def _state_of(optimizer: torch.optim.Optimizer, param: torch.Tensor, names: tuple[str, ...]) -> State | None:
    """The state tensors ``step()`` reads for ``param``, or None where its first step has not run."""
    own = optimizer.state.get(param)
    if not names:
        return {}
    if not own or any(own.get(name) is None for name in names):
        return None
    return {name: own[name] for name in names}


def _untraceable(group: dict[str, Any]) -> bool:
    """torch does not trace the fused kernel; for-each without capturable needs a float lr."""
    untraced = bool(group.get("fused")) or bool(group.get("differentiable"))
    return untraced or (bool(group.get("foreach")) and not group.get("capturable"))


def _has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    # where torch keeps them (no public way to ask): a hook step() would run, the graph would not
    import torch.optim.optimizer as base

    return bool(
        getattr(optimizer, "_optimizer_step_pre_hooks", None)
        or getattr(optimizer, "_optimizer_step_post_hooks", None)
        or getattr(base, "_global_optimizer_pre_hooks", None)
        or getattr(base, "_global_optimizer_post_hooks", None)
    )


def _parameters(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)
