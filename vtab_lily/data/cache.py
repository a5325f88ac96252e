"""The decoded-image cache: one ``.npy`` of uint8 ``(n, 3, size, size)`` per split and size.

The file name carries a key that hashes the format version, the task, the image size and
the exact bytes of the list file, so a changed list file (or resolution) never hits an old
cache. Labels are not cached: they come from the list file, which is parsed anyway.

Crash safety: files are written to a temp file and renamed into place
(:func:`vtab_lily.fsutil.atomic_write`), so a killed writer never leaves a file under the
final name; on load the ``.npy`` header (dtype, shape) and the exact file length are
checked before any data is read, and a file that fails is ignored (and later replaced). A valid
file is memory-mapped rather than read, so a split costs page cache, not process memory.
Two processes building the same cache serialise on a lock file; even without it each would
only rename its own complete file over the other's identical one. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..fsutil import atomic_write
from .parallel import waiting_lock

FORMAT_VERSION = 1
RESIZE = "pil-bicubic"  # part of the key: a different resize must not reuse old pixels


class CacheWarning(UserWarning):
    """The cache could not be read or written; data is decoded instead."""


def cache_key(task_name: str, split: str, size: int, list_sha256: str) -> str:
    text = f"vtab-lily-cache v{FORMAT_VERSION} {RESIZE} {task_name} {split} {size} {list_sha256}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, task_name: str, split: str, size: int, list_sha256: str) -> Path:
    key = cache_key(task_name, split, size, list_sha256)
    return Path(cache_dir) / task_name / f"{split}-{size}px-v{FORMAT_VERSION}-{key}.npy"


def _read_header(f) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return shape, dtype, fortran


def load_cache(path: Path, n: int, size: int) -> torch.Tensor | None:
    """The cached ``(n, 3, size, size)`` uint8 tensor, or None when absent or invalid.

    Checks magic, header, dtype, shape and the exact file length first, so a truncated or
    foreign file is never half-loaded. Invalid files only warn; the caller rebuilds them.
    """
    if not path.is_file():
        return None
    expected_shape = (n, 3, size, size)
    try:
        with open(path, "rb") as f:
            shape, dtype, fortran = _read_header(f)
            if tuple(shape) != expected_shape or dtype != np.uint8 or fortran:
                raise ValueError(f"holds {dtype} {tuple(shape)}, expected uint8 {expected_shape}")
            data_bytes = int(np.prod(expected_shape))
            file_bytes = os.fstat(f.fileno()).st_size
            if file_bytes != f.tell() + data_bytes:
                raise ValueError(f"is {file_bytes} bytes, expected {f.tell() + data_bytes} (truncated?)")
            offset = f.tell()
        # Mapped, not read: pages load as batches touch them, so a large split (a dsprites test
        # split is ~11 GB at 224 px) lives in the page cache, not in process memory. Copy-on-write
        # ("c") never changes the file and gives torch a writable array.
        return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=expected_shape))
    except (OSError, ValueError, SyntaxError) as err:
        warnings.warn(f"ignoring invalid cache file {path}: {err}; decoding again", CacheWarning, stacklevel=2)
        return None


def save_cache(path: Path, images: torch.Tensor) -> None:
    """Write ``images`` atomically as ``.npy``; drop older caches of the same split and size.

    A failure to write (read-only data root, full disk) warns and leaves no file behind.
    """
    array = images.numpy()
    try:
        atomic_write(path, lambda f: np.lib.format.write_array(f, array, allow_pickle=False))
    except OSError as err:
        warnings.warn(f"could not write cache file {path}: {err}", CacheWarning, stacklevel=2)
        return
    # Same task/split/size with another key: made from an older list file, never hit again.
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(f"{prefix}*.npy"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` while building ``path``; wait while another process holds it.

    Yields without a lock when the cache folder cannot be created or written (the build
    then just skips caching).
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(waiting_lock(path.parent, path.name + ".lock"))
        except OSError as err:
            warnings.warn(f"cannot lock cache folder {path.parent}: {err}", CacheWarning, stacklevel=3)
        yield
