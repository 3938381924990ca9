"""The operators an exported program from a file may call: an explicit allowlist, by family.

A program `torchhouse.pt2_check` admits may only compute new tensors from its inputs,
weights and constants. Every ``torch.ops.aten.NAME.OVERLOAD`` it calls must be listed
here by ``NAME`` in one of the families below, and must also:

- not work in place or into an ``out=`` tensor (a name ending in ``_``, an ``out``
  overload, or a schema that marks an argument as written to);
- when the operator can draw random numbers or update a buffer depending on one
  argument (``dropout(train=...)``, ``batch_norm(training=...)``), pass that argument as
  the literal value that makes it a pure function (`PURE_ONLY_WITH`).

Refused because no family lists them, with an example each: files and memory mapping
(``from_file``, which creates and maps any path), storages (``set_``, ``as_strided``,
``resize_``), uninitialised memory (``empty``, ``empty_strided``, which hand out what the
process held before), random numbers and generator state (``rand``, ``bernoulli``,
``normal``, ``randperm``), distributed collectives (``_c10d_functional.*`` is not even
in the aten namespace), and every in-place or ``out=`` variant.

Example:
    >>> operator_refusal("torch.ops.aten.linear.default", {}) is None
    True
    >>> print(operator_refusal("torch.ops.aten.from_file.default", {}))  # doctest: +ELLIPSIS
    'aten.from_file', which is not an operator that computes on tensors (files, storages, ...
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ATEN_FAMILIES", "PURE_ONLY_WITH", "admitted_aten_names", "operator_refusal"]

ATEN_FAMILIES: dict[str, frozenset[str]] = {
    "elementwise arithmetic": frozenset(
        [
            "add",
            "sub",
            "rsub",
            "mul",
            "div",
            "true_divide",
            "floor_divide",
            "remainder",
            "fmod",
            "neg",
            "positive",
            "abs",
            "pow",
            "sqrt",
            "rsqrt",
            "square",
            "exp",
            "exp2",
            "expm1",
            "log",
            "log1p",
            "log2",
            "log10",
            "reciprocal",
            "floor",
            "ceil",
            "round",
            "trunc",
            "frac",
            "sign",
            "sgn",
            "signbit",
            "clamp",
            "clamp_min",
            "clamp_max",
            "clip",
            "minimum",
            "maximum",
            "fmin",
            "fmax",
            "lerp",
            "addcmul",
            "addcdiv",
            "hypot",
            "logaddexp",
            "logaddexp2",
            "xlogy",
            "erf",
            "erfc",
            "erfinv",
            "sin",
            "cos",
            "tan",
            "asin",
            "acos",
            "atan",
            "atan2",
            "sinh",
            "cosh",
            "tanh",
            "asinh",
            "acosh",
            "atanh",
            "nan_to_num",
            "copysign",
            "where",
            "masked_fill",
            "bitwise_and",
            "bitwise_or",
            "bitwise_xor",
            "bitwise_not",
            "logical_and",
            "logical_or",
            "logical_xor",
            "logical_not",
            "__and__",
            "__or__",
            "__xor__",
            "isnan",
            "isinf",
            "isfinite",
            "isneginf",
            "isposinf",
        ]
    ),
    "comparison": frozenset(["eq", "ne", "lt", "le", "gt", "ge", "equal", "allclose", "isclose"]),
    "activation": frozenset(
        [
            "relu",
            "relu6",
            "leaky_relu",
            "elu",
            "selu",
            "celu",
            "gelu",
            "silu",
            "mish",
            "sigmoid",
            "log_sigmoid",
            "hardsigmoid",
            "hardswish",
            "hardtanh",
            "hardshrink",
            "softshrink",
            "softplus",
            "threshold",
            "prelu",
            "_prelu_kernel",
            "glu",
            "softmax",
            "_softmax",
            "log_softmax",
            "_log_softmax",
            "logsumexp",
        ]
    ),
    "reduction": frozenset(
        [
            "sum",
            "mean",
            "nansum",
            "nanmean",
            "prod",
            "amax",
            "amin",
            "aminmax",
            "max",
            "min",
            "argmax",
            "argmin",
            "var",
            "std",
            "var_mean",
            "std_mean",
            "norm",
            "linalg_vector_norm",
            "frobenius_norm",
            "any",
            "all",
            "cumsum",
            "cumprod",
            "logcumsumexp",
            "cummax",
            "cummin",
            "count_nonzero",
            "median",
            "nanmedian",
            "mode",
            "kthvalue",
        ]
    ),
    "linear algebra": frozenset(
        [
            "mm",
            "bmm",
            "addmm",
            "addbmm",
            "baddbmm",
            "addmv",
            "addr",
            "matmul",
            "linear",
            "bilinear",
            "einsum",
            "dot",
            "vdot",
            "mv",
            "outer",
            "t",
        ]
    ),
    "convolution and pooling": frozenset(
        [
            "conv1d",
            "conv2d",
            "conv3d",
            "convolution",
            "_convolution",
            "conv_transpose1d",
            "conv_transpose2d",
            "conv_transpose3d",
            "max_pool1d",
            "max_pool2d",
            "max_pool3d",
            "max_pool2d_with_indices",
            "max_pool3d_with_indices",
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
            "_adaptive_avg_pool2d",
            "_adaptive_avg_pool3d",
            "adaptive_max_pool1d",
            "adaptive_max_pool2d",
            "adaptive_max_pool3d",
            "upsample_nearest1d",
            "upsample_nearest2d",
            "upsample_nearest3d",
            "upsample_linear1d",
            "upsample_bilinear2d",
            "upsample_bicubic2d",
            "upsample_trilinear3d",
            "_upsample_nearest_exact2d",
            "pixel_shuffle",
            "pixel_unshuffle",
            "im2col",
            "col2im",
        ]
    ),
    "normalization": frozenset(
        [
            "batch_norm",
            "_native_batch_norm_legit_no_training",
            "layer_norm",
            "native_layer_norm",
            "group_norm",
            "native_group_norm",
            "rms_norm",
            "_fused_rms_norm",
        ]
    ),
    "recurrent and attention": frozenset(
        [
            "lstm",
            "gru",
            "rnn_tanh",
            "rnn_relu",
            "lstm_cell",
            "gru_cell",
            "rnn_tanh_cell",
            "rnn_relu_cell",
            "scaled_dot_product_attention",
            "_scaled_dot_product_flash_attention_for_cpu",
        ]
    ),
    "dropout (inference: the identity)": frozenset(["dropout", "feature_dropout", "alpha_dropout"]),
    "shape, view and indexing": frozenset(
        [
            "view",
            "reshape",
            "_unsafe_view",
            "view_as",
            "reshape_as",
            "flatten",
            "unflatten",
            "squeeze",
            "unsqueeze",
            "permute",
            "transpose",
            "swapaxes",
            "movedim",
            "expand",
            "expand_as",
            "contiguous",
            "clone",
            "alias",
            "detach",
            "lift_fresh_copy",
            "slice",
            "select",
            "narrow",
            "split",
            "split_with_sizes",
            "tensor_split",
            "chunk",
            "unbind",
            "cat",
            "concat",
            "concatenate",
            "stack",
            "hstack",
            "vstack",
            "repeat",
            "repeat_interleave",
            "tile",
            "flip",
            "roll",
            "gather",
            "index_select",
            "index",
            "take",
            "take_along_dim",
            "embedding",
            "embedding_bag",
            "one_hot",
            "pad",
            "constant_pad_nd",
            "reflection_pad1d",
            "reflection_pad2d",
            "reflection_pad3d",
            "replication_pad1d",
            "replication_pad2d",
            "replication_pad3d",
            "diagonal",
            "diag",
            "tril",
            "triu",
            "scatter",
            "scatter_add",
            "scatter_reduce",
            "index_put",
            "index_add",
            "index_copy",
            "index_fill",
            "masked_scatter",
            "masked_select",
            "nonzero",
            "topk",
            "sort",
            "argsort",
            "searchsorted",
            "bucketize",
            "unique_consecutive",
            "_unique2",
            "broadcast_to",
            "broadcast_tensors",
            "meshgrid",
        ]
    ),
    "new tensors of given values": frozenset(
        [
            "zeros",
            "ones",
            "full",
            "zeros_like",
            "ones_like",
            "full_like",
            "new_zeros",
            "new_ones",
            "new_full",
            "arange",
            "linspace",
            "logspace",
            "eye",
            "scalar_tensor",
        ]
    ),
    "dtype, device and size": frozenset(
        [
            "to",
            "_to_copy",
            "type_as",
            "copy",
            "_assert_tensor_metadata",
            "_assert_scalar",
            "_assert_async",
            "sym_size",
            "sym_stride",
            "sym_numel",
            "sym_storage_offset",
            "sym_constrain_range",
            "sym_constrain_range_for_size",
            "_local_scalar_dense",
            "item",
        ]
    ),
}

# Operators that are pure functions only with one argument at a given literal value (they
# draw random numbers, or update a buffer in place, otherwise): name -> (argument, value).
PURE_ONLY_WITH: dict[str, tuple[str, Any]] = {
    "dropout": ("train", False),
    "feature_dropout": ("train", False),
    "alpha_dropout": ("train", False),
    "batch_norm": ("training", False),
    "lstm": ("train", False),
    "gru": ("train", False),
    "rnn_tanh": ("train", False),
    "rnn_relu": ("train", False),
    "scaled_dot_product_attention": ("dropout_p", 0.0),
    "_scaled_dot_product_flash_attention_for_cpu": ("dropout_p", 0.0),
}

_ATEN = re.compile(r"^torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
_OUT_OVERLOAD = re.compile(r"(^|_)out$")


def admitted_aten_names() -> frozenset[str]:
    """Every operator name of every family."""
    return frozenset().union(*ATEN_FAMILIES.values())


_ADMITTED = admitted_aten_names()


def operator_refusal(target: str, arguments: dict[str, Any]) -> str | None:
    """Why the program may not call ``target`` with these serialized ``arguments``, or None.

    ``arguments`` maps an argument's name to its serialized value (``{"as_bool": False}``).
    """
    match = _ATEN.match(target)
    if match is None:
        return f"{target[:80]!r}, which is not an aten operator"
    name, overload = match.groups()
    shown = f"'aten.{name}'"
    in_place = name.endswith("_") and not (name.startswith("__") and name.endswith("__"))
    if in_place or _OUT_OVERLOAD.search(overload):
        return f"{shown}.{overload}, which writes into an existing tensor (in place or out=), maybe an input"
    if name not in _ADMITTED:
        return (
            f"{shown}, which is not an operator that computes on tensors (files, storages, memory, "
            "random numbers and collectives are refused)"
        )
    rule = PURE_ONLY_WITH.get(name)
    if rule is not None:
        argument, pure = rule
        given = _literal(arguments.get(argument))
        if given is not _MISSING and given != pure:
            return f"{shown} with {argument}={given!r}, which draws random numbers or updates a buffer"
        if given is _MISSING and argument != "dropout_p":  # dropout_p defaults to 0
            return f"{shown} without a literal {argument}={pure!r}, so it may draw random numbers"
    if _mutates(name, overload):
        return f"{shown}.{overload}, which writes into one of its arguments"
    return None


_MISSING = object()


def _literal(serialized: Any) -> Any:
    """The Python value of a serialized literal argument (``{"as_bool": False}`` -> False)."""
    if not isinstance(serialized, dict) or len(serialized) != 1:
        return _MISSING
    kind, value = next(iter(serialized.items()))
    if kind in ("as_bool", "as_int", "as_float"):
        return value
    return _MISSING


def _mutates(name: str, overload: str) -> bool:
    """Whether torch's own schema of the operator marks an argument as written (``Tensor(a!)``);
    an operator this torch does not know is refused as if it did."""
    import torch

    try:
        schema = getattr(getattr(torch.ops.aten, name), overload)._schema
    except (AttributeError, RuntimeError):
        return True
    return bool(schema.is_mutable)
