"""summary(): a layer table with output shapes, parameter counts and FLOPs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchhouse.data import call_net, tree_leaves
from torchhouse.errors import ConfigError, DataError

__all__ = ["LayerRow", "Summary", "summary"]


@dataclass
class LayerRow:
    name: str
    kind: str
    depth: int
    output_shape: list[list[int]]
    params: int
    trainable: int
    flops: int = 0  # floating-point operations of one forward pass on the given input


@dataclass
class Summary:
    """What `summary` returns; ``str(summary)`` is the table.

    Parameters shared by several layers are counted once in the totals.
    """

    net_name: str
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    non_trainable_params: int = 0
    param_bytes: int = 0
    buffer_bytes: int = 0
    output_bytes: int = 0
    total_flops: int = 0  # of one forward pass on the given input (FlopCounterMode's count)

    @property
    def non_trainable(self) -> int:
        return self.non_trainable_params

    def __str__(self) -> str:
        header = ("Layer (type)", "Output shape", "Params", "FLOPs")
        lines = [
            (
                "  " * row.depth + f"{row.name} ({row.kind})",
                " ".join(str(tuple(s)) for s in row.output_shape) or "-",
                f"{row.params:,}",
                human_count(row.flops) if row.flops else "-",
            )
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in [header, *lines]) for i in range(4)]
        rule = "-" * (sum(widths) + 6)
        out = [f"{self.net_name}", rule, _fmt(header, widths), rule.replace("-", "=")]
        out += [_fmt(line, widths) for line in lines]
        out += [
            rule,
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"FLOPs (one forward pass): {human_count(self.total_flops)} ({self.total_flops:,})",
            f"Params size: {self.param_bytes / 2**20:.2f} MB",
            f"Buffers size: {self.buffer_bytes / 2**20:.2f} MB",
            f"Forward outputs size (one pass): {self.output_bytes / 2**20:.2f} MB",
            rule,
        ]
        return "\n".join(out)

    def __repr__(self) -> str:
        return self.__str__()


def _fmt(cells: tuple[str, str, str, str], widths: list[int]) -> str:
    return (
        f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:>{widths[2]}}  {cells[3]:>{widths[3]}}"
    )


def human_count(n: int) -> str:
    """``1234567`` -> ``"1.23M"``.

    >>> human_count(950), human_count(1_234_567), human_count(3_000_000_000)
    ('950', '1.23M', '3G')
    """
    for size, unit in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def summary(
    net: Any,
    input_size: Any = None,
    input_data: Any = None,
    *,
    input_shape: Any = None,
    depth: int = 3,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Summary:
    """Run one forward pass and tabulate every layer's output shape and parameters.

    ``net`` is an ``nn.Module`` or a `th.Model`. Give one of ``input_size`` (a shape with
    the batch dimension, or a list of shapes for several inputs), ``input_shape`` (a shape
    without it, as Keras and torchkeras take it) or ``input_data`` (an example input: a
    tensor, tuple or dict).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> s = summary(net, input_size=(1, 1, 8, 8))
        >>> s.total_params
        650
    """
    if not isinstance(net, nn.Module) and isinstance(getattr(net, "net", None), nn.Module):
        net = net.net  # a th.Model
    if not isinstance(net, nn.Module):
        raise ConfigError(f"summary: expected an nn.Module or a th.Model, got {type(net).__name__}")
    given = [
        name
        for name, v in (("input_size", input_size), ("input_shape", input_shape), ("input_data", input_data))
        if v is not None
    ]
    if len(given) != 1:
        raise ConfigError(
            f"summary: give exactly one of input_size, input_shape or input_data (got {given or 'none'})"
        )
    if input_shape is not None:
        shapes = input_shape if input_shape and isinstance(input_shape[0], (tuple, list)) else [input_shape]
        sized = [(1, *shape) for shape in shapes]
        input_size = sized[0] if len(sized) == 1 else sized
    if device is None:
        first = next(net.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if input_data is None:
        input_data = _make_input(input_size, dtype, device)
    result = Summary(net_name=type(net).__name__)
    rows: dict[nn.Module, LayerRow] = {}
    order: list[LayerRow] = []
    hooks = []

    def add_hook(module: nn.Module, name: str, level: int) -> None:
        row = LayerRow(
            name=name,
            kind=type(module).__name__,
            depth=level,
            output_shape=[],
            params=sum(p.numel() for p in module.parameters()),
            trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
        )
        rows[module] = row

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not row.output_shape:
                row.output_shape = [list(t.shape) for t in tree_leaves(output)]
                result.output_bytes += sum(t.numel() * t.element_size() for t in tree_leaves(output))
                order.append(row)

        hooks.append(module.register_forward_hook(hook))

    for name, module in net.named_modules():
        if not name:
            continue
        level = name.count(".")
        if level >= depth:
            continue
        add_hook(module, name, level)
    was_training = net.training
    net.eval()
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_net(net, input_data)
    except Exception as exc:
        where = f"summary: the net failed on an input of {_describe_input(input_data)}"
        if not (
            _about_shapes(exc) or _about_dtype(exc)
        ):  # the net's own error (a KeyError, say): its type and message kept
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(where)
            raise
        hint = (
            " (input_size includes the batch dimension; for a shape without it pass input_shape=...)"
            if input_size is not None and input_shape is None
            else ""
        )
        if _about_dtype(exc):
            hint = f" (summary made {dtype} zeros; a net that takes indices needs dtype=torch.long)"
        raise DataError(f"{where}: {exc}{hint}") from exc
    finally:
        for handle in hooks:
            handle.remove()
        net.train(was_training)
    result.rows = order
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    prefix = type(net).__name__
    for row in order:
        row.flops = int(flops.get(f"{prefix}.{row.name}", 0))
    result.total_flops = int(counter.get_total_flops())
    unique = {id(p): p for p in net.parameters()}.values()
    result.total_params = sum(p.numel() for p in unique)
    result.trainable_params = sum(p.numel() for p in unique if p.requires_grad)
    result.non_trainable_params = result.total_params - result.trainable_params
    result.param_bytes = sum(p.numel() * p.element_size() for p in unique)
    result.buffer_bytes = sum(b.numel() * b.element_size() for b in net.buffers())
    return result


def _make_input(input_size: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if isinstance(input_size, torch.Size) or (
        isinstance(input_size, (tuple, list)) and all(isinstance(d, int) for d in input_size)
    ):
        if any(d <= 0 for d in input_size):
            raise ConfigError(f"summary: input_size must hold positive sizes, got {tuple(input_size)}")
        return torch.zeros(*input_size, dtype=dtype, device=device)
    if isinstance(input_size, (tuple, list)) and input_size:
        return tuple(_make_input(s, dtype, device) for s in input_size)
    raise ConfigError(
        f"summary: input_size must be a shape such as (1, 3, 32, 32) or a list of shapes, got {input_size!r}"
    )


def _describe_input(data: Any) -> str:
    from torchhouse.data import describe

    return describe(data)


_SHAPE_WORDS = ("shape", "size", "dimension", "dim ", "mat1", "expected input", "must match")


def _about_dtype(exc: Exception) -> bool:
    """Whether the net refused the input's dtype (an embedding given float zeros)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("scalar type" in text or "expected tensor for argument" in text)


def _about_shapes(exc: Exception) -> bool:
    """Whether the net's error is about its input's shape (where the batch dimension may be
    the cause), rather than something else in the net's code."""
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, ValueError, IndexError)) and any(w in text for w in _SHAPE_WORDS)
