"""Export a trained net as a self-contained program (torch.export, .pt2), and load it back safely.

An exported program runs without the Python code that defined the net. ``Model.export``
writes ``model.pt2`` (without the pickled example inputs torch.export.save adds) with
``model.safetensors`` + ``model.json`` beside it. ``th.load_exported`` never hands a
file to ``torch.export.load`` as it is: `torchhouse.pt2_check` admits only the members,
operators and expressions of the safe subset of the format and rebuilds the archive
from them; anything else is refused without being run.

Nets with data-dependent Python control flow (``if x.sum() > 0:``), Python side effects
in ``forward`` or non-tensor outputs cannot be exported; the error says why.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchhouse.data.batches import inputs_of, make_batches
from torchhouse.data.trees import Tree, call_net, concat_outputs, describe, move_to, tree_leaves, tree_map
from torchhouse.errors import CheckpointError, ConfigError, DataError, TorchhouseError
from torchhouse.files.checkpoint import atomic_write_bytes, atomic_write_json, read_json

if TYPE_CHECKING:
    from torchhouse.train.model import Model

__all__ = [
    "ExportError",
    "example_inputs",
    "export_program",
    "ExportedModel",
    "ExportedNet",
    "export_model",
    "load_exported",
    "without_example_inputs",
]


class ExportError(TorchhouseError, RuntimeError):
    """The net cannot be exported."""


def _as_args(example: Tree) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    raise ConfigError(
        f"example_input: expected a tensor, a tuple or a dict of tensors, got {describe(example)}"
    )


def _batch_dims(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    batch = torch.export.Dim("batch", min=1, max=2**31 - 1)

    def spec(value: Any) -> Any:
        return {0: batch} if isinstance(value, torch.Tensor) and value.dim() > 0 else None

    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(a) for a in args)


def example_inputs(example_input: Any) -> Tree:
    """One batch of inputs as torch.export takes it: on the CPU, with two rows where it had one
    (torch.export specialises a batch of 1; two rows keep the batch dimension symbolic)."""
    example = make_batches(
        example_input,
        None,
        batch_size=2**31 - 1,
        shuffle=False,
        generator=None,
        name="example_input",
        require_target=False,
    )
    inputs = next(iter(example.iterate(None)))[0]
    inputs = tree_map(lambda t: torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t, inputs)
    return move_to(inputs, torch.device("cpu"))


def export_program(
    net: nn.Module, inputs: Tree, dynamic_batch: bool = True, where: str = "model.pt2"
) -> tuple[bytes, dict[str, Any]]:
    """The ``.pt2`` archive of ``net`` traced on ``inputs`` (see `example_inputs`), checked by the
    admit-only checker as `load_exported` will check it, and what the metadata records of it."""
    args, kwargs = _as_args(inputs)
    was_training = net.training
    device = next(net.parameters(), torch.empty(0)).device
    net.eval().to("cpu")
    try:
        try:
            program = torch.export.export(
                net,
                args,
                kwargs or None,
                dynamic_shapes=_batch_dims(args, kwargs) if dynamic_batch else None,
            )
        except Exception as exc:
            raise ExportError(
                f"torch.export cannot capture {type(net).__name__}: {_first_line(exc)}. Nets with "
                "data-dependent Python control flow (e.g. `if x.sum() > 0:`), Python side effects in "
                "forward, or non-tensor outputs cannot be exported; rewrite that part with torch.where "
                "/ torch.cond, or use dynamic_batch=False if the batch size is the problem."
            ) from exc
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    finally:
        net.to(device).train(was_training)
    data = without_example_inputs(buffer.getvalue())
    from torchhouse.files.pt2_check import admitted_archive  # the checker loads only when used

    try:
        admitted_archive(Path(where), data)
    except CheckpointError as exc:
        raise ExportError(
            f"{type(net).__name__} exported, but the program holds content that th.load_exported "
            f"would refuse: {exc}"
        ) from exc
    return data, _export_meta(Path(where).name, "pt2", inputs, args, kwargs, dynamic_batch)


def _export_meta(
    name: str, format: str, inputs: Tree, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic_batch: bool
) -> dict[str, Any]:
    return {
        "file": name,
        "format": format,
        "inputs": [{"shape": list(t.shape), "dtype": str(t.dtype)} for t in tree_leaves(inputs)],
        "input_kind": "dict" if kwargs else ("tuple" if len(args) > 1 else "tensor"),
        "input_names": list(kwargs) if kwargs else None,
        "dynamic_batch": dynamic_batch,
    }


def export_model(
    model: Model,
    path: str | os.PathLike[str],
    example_input: Any,
    format: str = "pt2",
    dynamic_batch: bool = True,
) -> Path:
    """Write the net as a standalone program, its weights and their metadata; see `Model.export`."""
    if format not in ("pt2", "onnx"):
        raise ConfigError(f"format: expected 'pt2' or 'onnx', got {format!r}")
    target = Path(path)
    suffix = ".pt2" if format == "pt2" else ".onnx"
    if target.suffix != suffix:
        raise ConfigError(f"export: a {format} file must end in {suffix}, got {os.fspath(path)!r}")
    inputs = example_inputs(example_input)
    target.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        args, kwargs = _as_args(inputs)
        net = model.net
        was_training, device = net.training, next(net.parameters(), torch.empty(0)).device
        net.eval().to("cpu")
        try:
            _export_onnx(net, args, kwargs, target, dynamic_batch)
        finally:
            net.to(device).train(was_training)
        meta = _export_meta(target.name, format, inputs, args, kwargs, dynamic_batch)
    else:
        data, meta = export_program(model.net, inputs, dynamic_batch, os.fspath(target))
        atomic_write_bytes(target, data)
    model.save(target.with_suffix(".safetensors"))
    meta_file = target.with_suffix(".json")
    weights_meta = json.loads(meta_file.read_text())
    atomic_write_json(meta_file, {**weights_meta, "export": meta})
    return target


def _export_onnx(net: Any, args: Any, kwargs: Any, target: Path, dynamic_batch: bool) -> None:
    from importlib.util import find_spec

    if find_spec("onnx") is None or find_spec("onnxscript") is None:
        raise ConfigError("format='onnx' needs the onnx extra: pip install 'torchhouse[onnx]'")
    try:
        torch.onnx.export(
            net,
            args,
            str(target),
            kwargs=kwargs or None,
            dynamo=True,
            dynamic_shapes=_batch_dims(args, kwargs) if dynamic_batch else None,
        )
    except Exception as exc:
        raise ExportError(f"ONNX export of {type(net).__name__} failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- loading


def without_example_inputs(data: bytes) -> bytes:
    """A torch.export archive with its pickled example inputs emptied (they are not needed to run it)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with source, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith("/data/sample_inputs/model.pt"):
                content = b""
            target.writestr(info.filename, content)
    return out.getvalue()


class ExportedNet(nn.Module):
    """An exported program as an ``nn.Module`` that `Model` can evaluate and predict with.

    The program's train/eval behaviour was fixed when it was exported (``Model.export``
    exports in eval mode), so ``train()`` / ``eval()`` only set the flag here.
    """

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedNet:
        self.training = mode
        return self


InputSpec = tuple[tuple[int | None, ...], torch.dtype]  # a shape (None: any size) and a dtype


class ExportedModel:
    """A loaded exported program: ``predict(x)`` like `Model.predict`, no Python net code needed.

    Inputs are checked against the program's own (``inputs``: shape with ``None`` for
    a dynamic size, and dtype) before it runs, so a wrong width or dtype is named
    instead of failing deep in torch.
    """

    def __init__(
        self, module: Any, meta: dict[str, Any], path: Path, inputs: list[InputSpec] | None = None
    ) -> None:
        self.module = module
        self.meta = meta
        self.path = path
        self.inputs = inputs or []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.check_inputs([*args, *kwargs.values()])
        return self.module(*args, **kwargs)

    def check_inputs(self, given: Any) -> None:
        """Raise a `DataError` naming the first input whose rank, size or dtype the program refuses."""
        tensors = tree_leaves(given)
        if not self.inputs:
            return
        if len(tensors) != len(self.inputs):
            raise DataError(
                f"{self.path.name} takes {len(self.inputs)} input tensor(s), got {len(tensors)}: "
                f"{describe(given)}"
            )
        for index, (tensor, (shape, dtype)) in enumerate(zip(tensors, self.inputs, strict=True)):
            wanted = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
            fits = tensor.dim() == len(shape) and all(
                d is None or d == size for d, size in zip(shape, tensor.shape, strict=True)
            )
            if not fits:
                raise DataError(
                    f"{self.path.name}: input {index} must have shape {wanted} (N: any size), got "
                    f"{tuple(tensor.shape)}; the model was exported for inputs like that"
                )
            if tensor.dtype != dtype:
                raise DataError(
                    f"{self.path.name}: input {index} must be {dtype}, got {tensor.dtype}; convert it "
                    f"with .to({dtype})"
                )

    def predict(self, x: Any, batch_size: int = 256) -> Any:
        """Outputs for ``x`` (arrays, DataFrame, Dataset, DataLoader), concatenated, on the CPU."""
        batches = make_batches(
            x, None, batch_size=batch_size, shuffle=False, generator=None, require_target=False
        )
        outputs = []
        with torch.no_grad():
            for batch in batches.iterate(None):
                inputs = inputs_of(batch)
                self.check_inputs(inputs)
                outputs.append(call_net(self.module, inputs))
        return concat_outputs(outputs)


def load_exported(path: str | os.PathLike[str], trust_code: bool = False) -> ExportedModel:
    """Load a program written by `Model.export`, checked first (see `torchhouse.pt2_check`).

    The archive is read once, every member is checked against the safe subset of the
    format, and only the checked bytes reach ``torch.export.load``. ``trust_code=True``
    skips the check for a file you trust (torch.export.load may then unpickle and run
    code from it).

    Example::

        exported = th.load_exported("runs/x/model.pt2")
        exported.predict(x_new)
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such file")
    data = file.read_bytes()
    from torchhouse.files.pt2_check import admitted_archive  # the checker loads only when used

    admitted = data if trust_code else admitted_archive(file, data)
    try:
        program = torch.export.load(io.BytesIO(admitted))
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot load the exported program: {_first_line(exc)}") from exc
    meta_file = file.with_suffix(".json")
    meta: dict[str, Any] = {}
    if meta_file.is_file():
        loaded = read_json(meta_file)
        meta = loaded if isinstance(loaded, dict) else {}
    try:
        module = program.module()
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot rebuild the exported program: {_first_line(exc)}") from exc
    return ExportedModel(module, meta, file, _input_specs(program))


def _input_specs(program: Any) -> list[InputSpec]:
    """The shapes (None where the size is dynamic) and dtypes of the program's user inputs."""
    try:
        names = set(program.graph_signature.user_inputs)
        specs: list[InputSpec] = []
        for node in program.graph.nodes:
            value = node.meta.get("val") if node.op == "placeholder" and node.name in names else None
            if isinstance(value, torch.Tensor):
                shape = tuple(d if isinstance(d, int) else None for d in value.shape)
                specs.append((shape, value.dtype))
            elif node.op == "placeholder" and node.name in names:
                return []  # a non-tensor input: leave the checking to the program
        return specs
    except Exception:  # a program layout this does not know: the program checks its inputs itself
        return []
