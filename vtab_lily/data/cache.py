"""The decoded-image cache: one ``.npy`` of uint8 ``(n, 3, size, size)`` per split and size.

The file name carries a key that hashes the format version, the task, the image size, the
exact bytes of the list file and the size and modification time of every listed image, so a
changed list file, resolution or an image replaced under the same name never hits an old cache.
Labels are not cached: they come from the list file, which is parsed anyway.

Building never holds a split in memory: images are decoded a chunk at a time (a few MB) and
written straight into the cache file, whose full size is reserved first (``posix_fallocate``),
so a full disk is reported before any decoding, with the bytes needed. A cache that cannot be
written is a :class:`UserError` naming the path, never a silent re-decode every run.

Crash safety: files are written to a temp file and renamed into place
(:func:`vtab_lily.fsutil.atomic_write`), so a killed writer never leaves a file under the
final name; on load the ``.npy`` header (dtype, shape) and the exact file length are
checked before any data is read, and a file that fails is ignored (and later replaced). A valid
file is memory-mapped rather than read, so a split costs page cache, not process memory.
Two processes building the same cache serialise on a lock file; even without it each would
only rename its own complete file over the other's identical one. Nothing is ever unpickled.

Beside the arrays, ``.pixels`` notes under the same key remember the sha256 of a split's decoded
pixels (as the manifest hashes them) once something has computed it: building a cache, hashing
for a manifest, ``verify``, or a run checking its data against the manifest. A run then checks
its pixels by reading one small file instead of hashing gigabytes. A note is exactly as trustworthy
as the cache key: it is found again only while the list bytes and every image's size and mtime
are unchanged (an image rewritten with the same size and its old mtime restored is not noticed
by it; ``verify`` decodes and is).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..fsutil import atomic_write
from . import images
from .lists import ListEntry, SplitList, format_problems
from .parallel import PROGRESS_MIN_ITEMS, default_workers, waiting_lock

FORMAT_VERSION = 2  # v2: the key includes each image's size and mtime
RESIZE = "pil-bicubic"  # part of the key: a different resize must not reuse old pixels
CHUNK_BYTES = 32 << 20  # decoded images held in memory at once while building
CACHE_DIR_ENV = "VTAB_LILY_CACHE_DIR"  # default cache folder instead of <root>/.cache


class CacheWarning(UserWarning):
    """The cache could not be read; data is decoded again."""


def default_cache_dir(root: str | Path) -> Path:
    """``<root>/.cache``, or with ``$VTAB_LILY_CACHE_DIR`` set a folder there per data root (two roots
    with the same task names, e.g. a PNG and a JPEG copy, must not evict each other's caches)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if not env:
        return Path(root) / ".cache"
    resolved = Path(root).resolve()
    return Path(env) / f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def images_digest(split_list: SplitList) -> str:
    """Hash of every listed image's size and mtime (a missing image hashes as missing)."""
    digest = hashlib.sha256()
    for entry in split_list.entries:
        try:
            info = os.stat(split_list.image_path(entry))
            digest.update(f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{entry.path}\0missing\n".encode())
    return digest.hexdigest()


def cache_key(task_name: str, split: str, size: int, list_sha256: str, images_sha256: str = "") -> str:
    text = f"vtab-lily-cache v{FORMAT_VERSION} {RESIZE} {task_name} {split} {size} {list_sha256} {images_sha256}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, task_name: str, split: str, size: int, list_sha256: str,
               images_sha256: str = "") -> Path:
    key = cache_key(task_name, split, size, list_sha256, images_sha256)
    return Path(cache_dir) / task_name / f"{split}-{size}px-v{FORMAT_VERSION}-{key}.npy"


def split_cache_path(cache_dir: Path, task_name: str, split_list: SplitList, split: str, size: int) -> Path:
    """Where the cache of ``split_list`` at ``size`` lives (stats every listed image)."""
    return cache_path(cache_dir, task_name, split, size, split_list.sha256, images_digest(split_list))


def pixels_digest(n: int, size: int) -> "hashlib._Hash":
    """A pixel hash before any image, as the manifest's ``pixels_sha256``: feed it each image's
    ``(3, size, size)`` uint8 bytes in list order."""
    return hashlib.sha256(f"uint8 {n} 3 {size} {size}\n".encode())


def pixels_note_path(array_path: Path) -> Path:
    """The pixel-hash note kept beside the cache file ``array_path`` (same key; it need not exist)."""
    return array_path.with_suffix(".pixels")


def read_pixels_note(array_path: Path) -> str | None:
    """The pixel sha256 noted for the data behind ``array_path``'s key, or None."""
    try:
        text = pixels_note_path(array_path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def write_pixels_note(array_path: Path, sha256: str) -> None:
    """Remember ``sha256`` for ``array_path``'s key; a folder that cannot be written only costs a
    re-hash next time (never an error: the note is an optimisation)."""
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(pixels_note_path(array_path), lambda f: f.write(sha256.encode("ascii")))
    except OSError:
        pass


def _read_header(f) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return shape, dtype, fortran


def open_cached(path: Path, n: int, size: int) -> np.ndarray | None:
    """The cached ``(n, 3, size, size)`` uint8 array, memory-mapped copy-on-write, or None when
    absent or invalid.

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
        return np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=expected_shape)
    except (OSError, ValueError, SyntaxError) as err:
        warnings.warn(f"ignoring invalid cache file {path}: {err}; decoding again", CacheWarning, stacklevel=3)
        return None


def load_cache(path: Path, n: int, size: int) -> "torch.Tensor | None":
    """:func:`open_cached` as a torch tensor (sharing the mapping)."""
    import torch  # here, not at the top: building a cache (and hashing pixels) needs no torch

    array = open_cached(path, n, size)
    return None if array is None else torch.from_numpy(array)


def cache_bytes(n: int, size: int) -> int:
    """Bytes of the cache file of ``n`` images at ``size`` px (header included)."""
    shape = (n, 3, size, size)
    return len(_npy_header(shape)) + int(np.prod(shape))


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _cannot_write(path: Path, needed: int, err: OSError) -> UserError:
    return UserError(f"cannot write the decoded-image cache {path} ({err.strerror or err}): it needs "
                     f"{needed:,} bytes ({needed / 2**30:.2f} GiB); free that much space there or set "
                     f"{CACHE_DIR_ENV} to a writable folder with room")


def decode_chunks(split_list: SplitList, size: int, workers: int | None = None, progress: bool = True,
                  desc: str | None = None,
                  on_unreadable: Callable[[ListEntry, str], None] | None = None) -> Iterator[np.ndarray]:
    """The split's images decoded at ``size``, in list order, as ``(m, 3, size, size)`` uint8 chunks
    of at most :data:`CHUNK_BYTES` (one buffer, reused: copy a chunk to keep it).

    Every unreadable image is collected and raised at the end as one :class:`UserError`; with
    ``on_unreadable`` each is given to it instead, ``(entry, why)`` in list order, and its slot of
    the chunk holds no image (the caller discards what it computed from such a split).
    """
    entries = split_list.entries
    per_chunk = max(1, CHUNK_BYTES // (3 * size * size))
    buffer = np.empty((min(per_chunk, max(len(entries), 1)), 3, size, size), dtype=np.uint8)
    problems: list[str] = []

    def decode_into(slot_index: tuple[int, int]) -> str | tuple[ListEntry, str] | None:
        slot, i = slot_index
        entry = entries[i]
        try:
            buffer[slot] = images.decode_image(split_list.image_path(entry), size)
        except images.ImageDecodeError as err:
            if on_unreadable is not None:
                return entry, str(err)
            return f"{split_list.where(entry)}: {entry.path}: {err}"
        return None

    bar = tqdm(total=len(entries), desc=desc or f"decoding {split_list.file}", unit="img", leave=False,
               disable=True if not progress or len(entries) < PROGRESS_MIN_ITEMS else None)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool, bar:
        for start in range(0, len(entries), per_chunk):
            stop = min(start + per_chunk, len(entries))
            for problem in pool.map(decode_into, enumerate(range(start, stop))):
                bar.update()
                if problem and on_unreadable is not None:
                    on_unreadable(*problem)
                elif problem:
                    problems.append(problem)
            yield buffer[: stop - start]
    if problems:
        raise UserError(format_problems(problems, f"the images listed in {split_list.file}"))


def build_cache(path: Path, split_list: SplitList, size: int, workers: int | None = None,
                progress: bool = True, on_chunk: Callable[[np.ndarray], None] | None = None) -> None:
    """Decode ``split_list`` straight into the cache file at ``path`` (atomic; bounded memory).

    ``on_chunk`` sees each decoded chunk in order. The pixels are hashed on the way (hashing is
    cheap next to decoding) and noted beside the file (:func:`write_pixels_note`). Drops older
    caches of the same split and size. Raises :class:`UserError` when the file cannot be
    written (naming the path and the bytes needed) or an image cannot be decoded.
    """
    digest = pixels_digest(len(split_list), size)
    shape = (len(split_list), 3, size, size)
    header = _npy_header(shape)
    needed = len(header) + int(np.prod(shape))

    def write(f) -> None:
        f.write(header)
        f.flush()
        if hasattr(os, "posix_fallocate"):
            try:  # reserve the space now: a full disk fails here, before any decoding
                os.posix_fallocate(f.fileno(), 0, needed)
            except OSError as err:
                if err.errno not in (getattr(os, "EOPNOTSUPP", -1), 22, 95):  # EINVAL/EOPNOTSUPP: no support
                    raise
        for chunk in decode_chunks(split_list, size, workers, progress):
            f.write(memoryview(chunk))
            digest.update(memoryview(chunk))
            if on_chunk is not None:
                on_chunk(chunk)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as err:
        raise _cannot_write(path, needed, err) from None
    write_pixels_note(path, digest.hexdigest())
    # Same task/split/size with another key or format version: made from an older list file, older
    # images or an older version of this code; never hit again.
    stem = path.name.rsplit(f"-v{FORMAT_VERSION}-", 1)[0]  # "<split>-<size>px"
    for old in [*path.parent.glob(f"{stem}-v*.npy"), *path.parent.glob(f"{stem}-v*.pixels")]:
        if old.with_suffix(".npy") != path:
            with contextlib.suppress(OSError):
                old.unlink()


@contextlib.contextmanager
def build_lock(path: Path, needed: int | None = None) -> Iterator[None]:
    """Hold ``<path>.lock`` while building ``path``; wait while another process holds it.

    A cache folder that cannot be created or written is a :class:`UserError` naming it (and the
    bytes the cache file will need, when given).
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(waiting_lock(path.parent, path.name + ".lock"))
        except OSError as err:
            size = f" for {path.name} ({needed:,} bytes)" if needed else ""
            raise UserError(f"cannot create the decoded-image cache folder {path.parent}{size} "
                            f"({err.strerror or err}); set {CACHE_DIR_ENV} to a writable folder") from None
        yield
