"""Safe files: safetensors for tensors, JSON for everything else, atomic writes.

Nothing here ever unpickles. A nested state (optimizer, scheduler, RNG, callbacks...) is
split by `flatten` into a JSON tree and a flat dict of tensors, and joined again by
`unflatten`. Every write goes to a temporary name in the same folder, is fsync'ed, then
renamed, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from torchhouse.errors import CheckpointError, ConfigError

__all__ = [
    "CONTENT_DIGEST",
    "FORMAT_VERSION",
    "atomic_save_tensors",
    "check_writable_parent",
    "atomic_write_bytes",
    "atomic_write_json",
    "flatten",
    "load_state",
    "read_json",
    "read_regular_file",
    "read_tensors",
    "save_state",
    "seal_state_json",
    "sha256_file",
    "tensors_digest",
    "unflatten",
]

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


# --------------------------------------------------------------------------- nested state


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """Return a JSON-able copy of ``obj`` with each tensor moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = path
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        return flatten(torch.from_numpy(obj.copy()), tensors, path)
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: flatten(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {
            _ITEMS: [
                [flatten(k, tensors, f"{path}.k{i}"), flatten(v, tensors, f"{path}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise CheckpointError(
        f"cannot save {path} of type {type(obj).__name__}: checkpoints hold only tensors, "
        "numbers, strings, lists and dicts (no pickled objects)"
    )


def unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `flatten`."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(unflatten(v, tensors) for v in obj[_TUPLE])
        if _ITEMS in obj:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj[_ITEMS]}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


# --------------------------------------------------------------------------- atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: str | os.PathLike[str], folder: bool = False) -> None:
    # mkstemp / mkdtemp create private files (0600 / 0700); give them the usual mode.
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform can open a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the folder {folder}: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise CheckpointError(f"the folder {folder} is not writable")


def _atomic_replace(target: Path, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``target``, fsync it, rename it over ``target``.

    A failed write (a full disk, say) raises a `CheckpointError` naming ``target``; the
    previous file is left as it was.
    """
    _check_writable(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        write(tmp)
        _make_readable(tmp)  # after the write: safetensors replaces the file with a private one
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except (OSError, SafetensorError) as exc:
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CheckpointError(f"cannot write {target}: {reason}; the previous file is intact") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    _atomic_replace(Path(path), write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


CONTENT_DIGEST = "content_sha256"


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors``: what a weights file holds."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    content_digest: bool = False,
) -> str:
    """Save tensors as safetensors atomically; returns the file's sha256.

    ``content_digest=True`` stores `tensors_digest` in the file's metadata, so `read_tensors`
    can tell a damaged file from an intact one without any other file.
    """
    digest: list[str] = []
    plain = _unshared(tensors)
    extra = dict(metadata or {})
    if content_digest:
        extra[CONTENT_DIGEST] = tensors_digest(plain)

    def write(tmp: str) -> None:
        save_file(plain, tmp, metadata=extra or None)
        digest.append(sha256_file(tmp))

    _atomic_replace(Path(path), write)
    return digest[0]


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights, views): copy those.
    seen: set[int] = set()
    result = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu")
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen or not tensor.is_contiguous():
            tensor = tensor.clone().contiguous()
        elif tensor.numel() > 0:
            seen.add(pointer)
        result[name] = tensor
    return result


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading safely


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(16)
    if len(head) > 8 and head[8:9] == b"{":
        return ""  # a safetensors header: 8-byte length, then JSON
    if head[:2] == b"PK":
        return "a zip archive (torch.save format), which holds pickled data"
    if head[:1] == b"\x80":
        return "a Python pickle"
    return ""


def read_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file; refuses pickles and explains corrupt files.

    Never unpickles: a ``.pt`` / ``.pth`` / pickle file is refused without being run.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"{file}: no such file")
    if file.is_dir():
        raise CheckpointError(f"{file}: is a folder; expected a .safetensors file")
    if not file.is_file():
        raise CheckpointError(
            f"{file}: is not a regular file (a FIFO or a device); expected a .safetensors file"
        )
    kind = _sniff(file)
    if kind:
        raise CheckpointError(
            f"{file}: is {kind}. torchhouse never unpickles files, because loading a "
            "pickle can run arbitrary code. If you trust the file, convert it yourself: "
            "torch.load(path, weights_only=True), then save the state dict with "
            "safetensors.torch.save_file."
        )
    try:
        with safe_open(file, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(file)
    except Exception as exc:  # a damaged header can fail in many ways inside safetensors
        raise CheckpointError(
            f"{file}: is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc
    expected = metadata.get(CONTENT_DIGEST)
    if expected is not None and expected != tensors_digest(tensors):
        raise CheckpointError(f"{file}: its content checksum does not match (damaged or edited file)")
    return tensors


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file at ``path``, opened without waiting: a FIFO, device or
    folder planted where a file belongs is refused instead of blocking the reader.

    >>> read_regular_file("/dev/null")
    Traceback (most recent call last):
    torchhouse.errors.CheckpointError: /dev/null: is not a regular file (a FIFO, a device or a folder)
    """
    file = Path(path)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot be read: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{file}: is not a regular file (a FIFO, a device or a folder)")
        return handle.read()


def read_json(path: str | os.PathLike[str]) -> Any:
    file = Path(path)
    raw = read_regular_file(file)
    try:
        return json.loads(raw.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: is not valid JSON (truncated or corrupt?): {exc}") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{file}: is nested too deeply to be a torchhouse file") from exc
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot be read: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- training states


STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"
FORMAT_VERSION = 2  # 2: state.json carries a checksum of its own content too


def save_state(folder: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write a full training state as ``folder/state.safetensors`` + ``folder/state.json``.

    The folder is written under a temporary name and renamed when complete, so a state
    folder either exists whole or not at all.
    """
    target = Path(folder)
    _check_writable(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _make_readable(tmp, folder=True)
        tensors: dict[str, torch.Tensor] = {}
        tree = flatten(dict(state), tensors)
        digest = atomic_save_tensors(tmp / STATE_TENSORS, tensors)
        atomic_write_json(tmp / STATE_JSON, seal_state_json(digest, tree))
        if target.exists():
            doomed = target.with_name(f".deleting-{target.name}")
            os.replace(target, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write the training state {target}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    return target


def seal_state_json(tensors_sha256: str, tree: Any) -> dict[str, Any]:
    """The content of ``state.json``: the JSON tree with checksums of itself and of the tensors."""
    from torchhouse.files.safety import json_digest

    return {
        "format": FORMAT_VERSION,
        "sha256": tensors_sha256,
        "json_sha256": json_digest(tree),
        "state": tree,
    }


def load_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state written by `save_state`, checking both files are whole and unedited (sha256).

    Any damage (a truncated or edited file, a dangling tensor reference, a wrong type)
    raises a `CheckpointError` naming the file.
    """
    from torchhouse.files.safety import json_digest

    source = Path(folder)
    json_file = source / STATE_JSON
    meta = read_json(json_file)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or "state" not in meta:
        raise CheckpointError(f"{json_file}: is not a torchhouse training state (format {FORMAT_VERSION})")
    try:
        intact = meta.get("json_sha256") == json_digest(meta["state"])
    except (TypeError, ValueError, RecursionError):
        intact = False
    if not intact:
        raise CheckpointError(f"{json_file}: its checksum does not match its content (damaged or edited)")
    tensor_file = source / STATE_TENSORS
    if not tensor_file.is_file():
        raise CheckpointError(f"{tensor_file}: no such file (or not a regular file)")
    if sha256_file(tensor_file) != meta.get("sha256"):
        raise CheckpointError(f"{tensor_file}: its checksum does not match (corrupt file)")
    tensors = read_tensors(tensor_file)
    try:
        state = unflatten(meta["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{json_file}: does not fit its tensors ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{json_file}: the state is not a mapping")
    return state


def check_writable_parent(owner: str, path: str) -> None:
    """Before the first batch: the folder a callback will write ``path`` into must be usable."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{owner}: cannot create the folder {folder} for {path!r}: {exc.strerror}") from exc
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{owner}: the folder {folder} for {path!r} is not writable")
