"""An exclusive lock on a run folder, so two fits never write into one run.

The lock is an OS file lock (``fcntl.flock``) on ``run_dir/.lock``: the kernel releases it
when its process dies, however it dies, so a lock left by a killed process is never
stale. The file also records the holder's pid and host for the error message. Where
``fcntl`` is missing (Windows), the lock falls back to the recorded pid.

The lock file is opened without following a symbolic link and without waiting
(``O_NOFOLLOW | O_NONBLOCK``), and anything but a regular file is refused: a planted link
must not make a fit truncate its target, and a planted FIFO must not hang ``runs``,
``show`` or a resume.

Example:
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> lock = acquire_lock(os.path.join(folder, LOCK_FILE))
    >>> is_locked(os.path.join(folder, LOCK_FILE))
    True
    >>> release_lock(lock)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import warnings
from pathlib import Path
from typing import Any

from torchhouse.errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "acquire_lock", "is_locked", "open_lock_file", "pid_alive", "release_lock"]

LOCK_FILE = ".lock"


_NO_WAIT = os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_lock_file(path: str | os.PathLike[str], writable: bool) -> int:
    """An fd of the lock file at ``path``: never through a link, never waiting, a regular file only.

    ``writable`` opens it for writing and creates it when missing.
    """
    file = Path(path)
    flags = (os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY) | _NO_WAIT
    try:
        fd = os.open(file, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(
                f"{file}: the run folder's lock is a symbolic link; torchhouse does not write through "
                "it. Remove the link"
            ) from None
        raise CheckpointError(f"cannot open the lock {file}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(
            f"{file}: the run folder's lock is not a regular file (a FIFO, a device or a folder?); remove it"
        )
    return fd


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def acquire_lock(path: str | os.PathLike[str]) -> Any:
    """Lock ``path`` for this process or raise a `CheckpointError` naming the holder."""
    file = Path(path)
    fd = open_lock_file(file, writable=True)
    previous = _holder(fd)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise CheckpointError(
                f"{file.parent}: another process is training into this run folder (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}); wait for it to finish, or "
                "choose another run_dir"
            ) from None
    elif previous.get("pid") not in (None, os.getpid()) and pid_alive(previous.get("pid")):
        os.close(fd)
        raise CheckpointError(f"{file.parent}: another process (pid {previous['pid']}) holds this run folder")
    if previous.get("pid") not in (None, os.getpid()) and previous.get("host") == socket.gethostname():
        warnings.warn(
            f"{file.parent}: taking over the lock of process {previous['pid']}, which is gone",
            stacklevel=3,
        )
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    return fd


def release_lock(fd: Any) -> None:
    """Release a lock taken by `acquire_lock` (the file stays, empty, for the next writer)."""
    try:
        os.ftruncate(fd, 0)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the lock at ``path`` (a lock that is not a regular file is no lock)."""
    file = Path(path)
    if not os.path.lexists(file):
        return False
    try:
        fd = open_lock_file(file, writable=False)
    except CheckpointError:
        return False
    if fcntl is None:  # pragma: no cover - Windows
        alive = pid_alive(_holder(fd).get("pid"))
        os.close(fd)
        return alive
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
