"""Crash-safe file writes and a per-directory lock.

Every result, checkpoint and cache file is written to a temporary file in the same folder,
flushed and fsync'ed, then renamed over the target: a reader sees the old file or the new
one, never a torn one. A killed writer leaves at most a ``*.tmp-*`` file that nothing reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting
    it, which would briefly affect files other threads create)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then rename it into place.

    The file gets the permissions a plain ``open()`` would give it (0666 minus the umask), not
    mkstemp's private 0600: a shared runs folder stays readable by the group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON: a NaN or infinite number (which ``json`` would write as a bare ``NaN`` that
    no JSON reader accepts) is refused, naming where it is; nothing is written then."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"
    except ValueError:
        raise UserError(f"{path}: refusing to write {_non_finite(obj) or 'a NaN or infinite number'}: "
                        "JSON has no NaN or Infinity (check the value given there)") from None
    atomic_write(path, lambda f: f.write(text), mode="w")


def _non_finite(obj: Any, where: str = "") -> str | None:
    """``key.sub = nan`` for the first NaN/infinite float inside ``obj``, else None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'the value'} = {obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def check_creatable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise UserError (one line) when folder ``path`` neither exists nor can be created
    (a regular file on the way, or no write permission), before any work starts."""
    from .errors import UserError

    probe = Path(os.path.abspath(path))
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        kind = "a regular file" if probe.is_file() else "not a folder"
        raise UserError(f"{what} {path} cannot be created: {probe} is {kind}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be {'written' if probe == Path(os.path.abspath(path)) else 'created'}: "
                        f"no write permission on {probe}")


class LockBusy(Exception):
    """Another live process holds the lock."""


@contextlib.contextmanager
def dir_lock(folder: str | os.PathLike, name: str = ".lock",
             wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Exclusive, non-blocking lock on ``folder`` (``fcntl.flock`` on ``folder/name``).

    The kernel drops the lock when its holder dies, even by SIGKILL, so a stale lock
    never blocks a rerun. The file keeps the holder's host and pid for the error message.
    Raises :class:`LockBusy` when a live process holds it, unless ``wait`` is given: then
    ``wait(holder)`` is called and the lock is waited for.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            if wait is None:
                raise LockBusy(f"{folder} is in use by another run ({holder})") from None
            wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # closing releases the flock
