"""An admit-only checker for ``.pt2`` archives (torch.export programs) that torchhouse did not write.

``torch.export.load`` trusts its file: it unpickles legacy ``*.pt`` members, pickled or
opaque-object constants and example inputs (falling back from ``weights_only=True`` to
``False``), imports modules named in tree specs, ``sympify``s (evaluates) shape
expressions and ``exec``s guard code. So torchhouse never hands it a file as it is.
`admitted_archive` reads the archive once, checks every member against what the safe
subset of the format defines, and writes a new archive holding only the checked bytes:

- members: the format markers, ``models/model.json``, the weights and constants configs,
  raw ``weight_N`` / ``tensor_N`` payloads they reference, and an *empty* example-inputs
  file (``Model.export`` writes it empty). Anything else (``*.pt`` pickles,
  ``opaque_obj_*``, ``custom_obj_*``, ``extra/``, AOTInductor code, unknown files) is refused.
- payload configs: no ``use_pickle``; every payload a raw tensor file that exists.
- the program: every operator one of the tensor-computing aten operators of
  `torchhouse.pt2_operators` (an explicit allowlist by family: no file, storage, memory,
  random-number, distributed or in-place operator) or a plain arithmetic / comparison
  operator on sizes; shape expressions only ``Symbol('s0', ...)`` and integer arithmetic;
  guard code only comparisons of input sizes; tree specs only tuples, lists and dicts.

Anything outside that is refused with a `CheckpointError` before torch reads a byte.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from torchhouse.errors import CheckpointError
from torchhouse.files.pt2_operators import operator_refusal

__all__ = ["MAX_PROGRAM_JSON_BYTES", "admitted_archive"]

MAX_PROGRAM_JSON_BYTES = 64 << 20
MAX_MEMBERS = 100_000
_MARKERS = {
    "archive_format": b"pt2",
    "archive_version": None,
    "byteorder": None,
    ".data/version": None,
    ".data/serialization_id": None,
}
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_PROGRAM = "models/model.json"
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_PAYLOAD = {"data/weights/": re.compile(r"^weight_\d+$"), "data/constants/": re.compile(r"^tensor_\d+$")}

_SAFE_OPERATORS = frozenset(
    [
        "getitem",
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "neg",
        "pos",
        "abs",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "not_",
    ]
)
_SAFE_MATH = frozenset({"ceil", "floor", "trunc", "sqrt"})
_SAFE_SYM = frozenset({"sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite"})
# A shape expression is sympy's own spelling of integer arithmetic on size symbols
# (``Mul(Integer(5), Symbol('s0', positive=True, integer=True))`` or ``2*s0 + 1``): only
# these tokens; no other name, string, attribute, subscript or power.
_EXPRESSION_TOKEN = re.compile(
    r"\s+|Symbol\('[A-Za-z_][A-Za-z0-9_]{0,30}'|(positive|integer|nonnegative|real|finite)=True"
    r"|\b(Integer|Add|Mul|FloorDiv|CleanDiv|CeilDiv|Mod|PythonMod|Max|Min)\("
    r"|\b[a-z][0-9]{1,9}\b(?!\s*[(.\[=])|\b\d+\b|[-+*/(),]"
)
_GUARD_TOKEN = re.compile(
    r"\s+|L\['[A-Za-z_][A-Za-z0-9_]*'\]|\.size\(\)|\.stride\(\)|\.storage_offset\(\)|\[\d+\]|\d+"
    r"|==|!=|<=|>=|<|>|\+|-|\*|//|%|\(|\)|\band\b|\bor\b|\bnot\b"
)
_SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})


def _refuse(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused: {why}. torchhouse loads only exported programs without pickled or "
        "executable content (see docs/security.md); nothing in the file was run"
    )


def admitted_archive(path: Path, data: bytes) -> bytes:
    """The archive ``data`` (read from ``path``) rebuilt from its checked members only."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # zipfile raises many kinds (NotImplementedError, struct.error...) on damage
        raise CheckpointError(f"{path}: is not a .pt2 archive (not a readable zip file: {exc})") from exc
    try:
        members = _read_members(path, archive)
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile raises many kinds on a damaged archive
        raise CheckpointError(f"{path}: is a damaged zip archive ({type(exc).__name__}: {exc})") from exc
    for name, expected in _MARKERS.items():
        if name not in members:
            raise _refuse(path, f"the member {name!r} of a torch.export archive is missing")
        if len(members[name]) > 64 or (expected is not None and members[name].strip() != expected):
            raise _refuse(path, f"the member {name!r} is not a torch.export marker")
    for required in (_PROGRAM, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
        if required not in members:
            raise _refuse(path, f"the member {required!r} is missing")
    if members.get(_SAMPLE_INPUTS):
        raise _refuse(
            path,
            f"{_SAMPLE_INPUTS} holds pickled example inputs (torch.export.save writes them; "
            "Model.export does not). Re-export with Model.export, or load a file you trust "
            "yourself with torch.export.load",
        )
    referenced: set[str] = set()
    for config_name, folder in ((_WEIGHTS_CONFIG, "data/weights/"), (_CONSTANTS_CONFIG, "data/constants/")):
        referenced |= _check_payload_config(path, members, config_name, folder)
    for name in members:
        if name in _MARKERS or name in (_PROGRAM, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE_INPUTS):
            continue
        if name not in referenced:
            raise _refuse(path, f"it holds the member {name!r}, which the safe format does not define")
    _check_program(path, members[_PROGRAM])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as rebuilt:
        for name, content in members.items():
            rebuilt.writestr(f"archive/{name}", b"" if name == _SAMPLE_INPUTS else content)
    return out.getvalue()


def _read_members(path: Path, archive: zipfile.ZipFile) -> dict[str, bytes]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _refuse(path, f"it has {len(infos)} members")
    tops = {info.filename.split("/", 1)[0] for info in infos}
    if len(tops) != 1:
        raise _refuse(path, f"its members are not under one folder ({sorted(tops)[:3]})")
    members: dict[str, bytes] = {}
    for info in infos:
        if info.is_dir():
            continue
        name = info.filename.split("/", 1)[1] if "/" in info.filename else ""
        if not name or ".." in name.split("/") or name.startswith("/") or "\\" in name:
            raise _refuse(path, f"the member name {info.filename!r} is not allowed")
        if name in members:
            raise _refuse(path, f"the member {name!r} appears twice")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _refuse(path, f"the member {name!r} is compressed; torch.export writes stored members")
        if name.endswith(".json") and info.file_size > MAX_PROGRAM_JSON_BYTES:
            raise _refuse(path, f"the member {name!r} is {info.file_size} bytes")
        members[name] = archive.read(info)  # checks the member's CRC
    return members


def _load_json(path: Path, members: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(members[name])
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: the member {name!r} is not valid JSON ({exc})") from exc


def _check_payload_config(path: Path, members: dict[str, bytes], config_name: str, folder: str) -> set[str]:
    config = _load_json(path, members, config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or set(config) != {"config"}:
        raise _refuse(path, f"{config_name} is not a payload config")
    referenced = set()
    pattern = _PAYLOAD[folder]
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise _refuse(path, f"{config_name}: the entry {fqn!r} is not a mapping")
        if meta.get("use_pickle") is not False:
            raise _refuse(path, f"{config_name}: {fqn!r} is stored as a pickle")
        name = meta.get("path_name")
        if not isinstance(name, str) or not pattern.match(name):
            raise _refuse(path, f"{config_name}: {fqn!r} is stored in {name!r}, not a raw tensor file")
        member = folder + name
        if member not in members:
            raise _refuse(path, f"{config_name}: {fqn!r} refers to the missing member {member!r}")
        tensor_meta = meta.get("tensor_meta")
        if not isinstance(tensor_meta, dict):
            raise _refuse(path, f"{config_name}: {fqn!r} has no tensor description")
        if not members[member] and _numel(tensor_meta) != 0:
            raise _refuse(path, f"{config_name}: {fqn!r} claims elements but its file is empty")
        referenced.add(member)
    return referenced


def _numel(tensor_meta: dict[str, Any]) -> int:
    count = 1
    for size in tensor_meta.get("sizes") or []:
        value = size.get("as_int") if isinstance(size, dict) else None
        if not isinstance(value, int):
            return -1
        count *= value
    return count


def _check_program(path: Path, raw: bytes) -> None:
    try:
        program = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: models/model.json is not valid JSON ({exc})") from exc
    if not isinstance(program, dict) or "graph_module" not in program:
        raise _refuse(path, "models/model.json is not an exported program")
    for opset in program.get("opset_version") or {}:
        if opset != "aten":
            raise _refuse(path, f"it uses the operator set {opset!r}; only 'aten' is admitted")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list):
        raise _refuse(path, "its guard code is not a list")
    for guard in guards:
        _check_guard(path, guard)
    for symbol in program.get("range_constraints") or {}:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,30}$", str(symbol)):
            raise _refuse(path, f"the shape symbol {str(symbol)[:40]!r} is not a plain name")
    refused: list[str] = []  # every refused operator is named, in graph order
    stack: list[Any] = [program["graph_module"]]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            if isinstance(node.get("target"), str):
                _check_operator(path, node["target"], node.get("inputs"), refused)
            for key, value in node.items():
                if key == "target" and isinstance(value, str):
                    continue
                if key == "as_operator" and isinstance(value, str):
                    _check_operator(path, value, None, refused)
                elif key == "expr_str":
                    _check_expression(path, value)
                elif key in ("in_spec", "out_spec"):
                    _check_tree_spec(path, value)
                elif key in ("as_custom_obj", "custom_obj_values") and value:
                    raise _refuse(path, "it holds a custom (pickled) object")
                else:
                    stack.append(value)
    if refused:
        more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
        raise _refuse(path, "it calls " + "; ".join(refused[:3]) + more)


def _check_operator(path: Path, target: str, inputs: Any, refused: list[str]) -> None:
    """Add the reason ``target`` (called with ``inputs``) is refused to ``refused``, if it is."""
    module, _, name = target.partition(".")
    if module == "_operator" and name in _SAFE_OPERATORS:
        return
    if module == "math" and name in _SAFE_MATH:
        return
    if module == "torch" and name in _SAFE_SYM:
        return
    if not target.startswith("torch.ops.aten."):
        why = f"{target[:80]!r}, which is not an aten or arithmetic operator"
        if why not in refused:
            refused.append(why)
        return
    arguments = {
        item["name"]: item.get("arg")
        for item in (inputs if isinstance(inputs, list) else [])
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    }
    refusal = operator_refusal(target, arguments)
    if refusal is not None and refusal not in refused:
        refused.append(refusal)


def _check_expression(path: Path, expression: Any) -> None:
    # torch parses these with sympy.sympify, which evaluates Python: admit only symbols and integers.
    if not isinstance(expression, str) or len(expression) > 2000:
        raise _refuse(path, "a shape expression is not a short string")
    if _EXPRESSION_TOKEN.sub("", expression) != "" or "**" in expression:
        raise _refuse(path, f"the shape expression {expression[:80]!r} is not plain integer arithmetic")


def _check_guard(path: Path, guard: Any) -> None:
    # torch exec()s guard code when the program is turned into a module.
    if not isinstance(guard, str) or len(guard) > 2000:
        raise _refuse(path, "a guard is not a short string")
    if _GUARD_TOKEN.sub("", guard) != "":
        raise _refuse(path, f"the guard {guard[:80]!r} is not a comparison of input sizes")


def _check_tree_spec(path: Path, spec: Any) -> None:
    if spec is None or spec == "":
        return
    try:
        tree = json.loads(spec) if isinstance(spec, str) else None
    except (ValueError, RecursionError) as exc:
        raise _refuse(path, "a tree spec is not valid JSON") from exc
    if not isinstance(tree, list) or len(tree) != 2:
        raise _refuse(path, "a tree spec has an unknown layout")
    stack = [tree[1]]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("type") not in _SPEC_TYPES:
            kind = node.get("type") if isinstance(node, dict) else type(node).__name__
            raise _refuse(path, f"a tree spec holds the type {str(kind)[:60]!r}")
        context = node.get("context")
        if isinstance(context, str) and ("__enum__" in context or "default_factory" in context):
            raise _refuse(path, "a tree spec names a module to import")
        children = node.get("children_spec") or []
        if not isinstance(children, list):
            raise _refuse(path, "a tree spec has an unknown layout")
        stack.extend(children)
