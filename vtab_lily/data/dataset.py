"""``load_split``: list file -> decoded uint8 cache (memory-mapped) -> a :class:`SplitData`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from ..tasks import Task, get_task, suite
from . import cache
from .lists import SplitList, read_list

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mean_std(normalize: bool | tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The per-channel (mean, std) of a ``normalize`` argument as (1, 3, 1, 1) tensors; None for none."""
    if isinstance(normalize, bool) or normalize is None:
        if not normalize:
            return None
        normalize = (IMAGENET_MEAN, IMAGENET_STD)
    try:
        mean, std = (torch.tensor([float(v) for v in values]) for values in normalize)
    except (TypeError, ValueError):
        mean = std = torch.zeros(0)
    if mean.numel() != 3 or std.numel() != 3 or not (torch.isfinite(mean).all() and torch.isfinite(std).all()
                                                     and (std > 0).all()):
        raise ValueError(f"normalize must be False, True or (mean, std) of 3 finite values, std > 0; got {normalize!r}")
    return mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)


@dataclass(frozen=True)
class DataOrigin:
    """What a loaded split was read from, for checking it against the task's manifest: the
    parsed list file, the hash of every listed image's size and mtime taken *before* decoding
    (the cache key's), and the cache folder (None when loaded without the cache)."""

    split_list: SplitList
    images_sha256: str
    cache_dir: Path | None


class SplitData(Dataset):
    """One split as uint8 (in memory, or memory-mapped from the cache); items and batches come out as float32.

    ``images`` is ``(n, 3, H, W)`` uint8 and ``labels`` ``(n,)`` int64. Items are scaled to
    0..1 and, when ``normalize`` is True, standardised with the ImageNet mean/std, or with the
    (mean, std) pair it is (a backbone's pre-training set, ``backbones.NORMS``).
    For training loops, :meth:`batch` gathers a whole batch by index in one tensor op, and
    :meth:`to` moves the uint8 data to a device once (4x smaller than float).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalize: bool | tuple = True,
                 task: Task | None = None, split: str | None = None, origin: DataOrigin | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (n, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        stats = mean_std(normalize)
        self._normalize, self._standardise = normalize, stats is not None
        self.task = task
        self.split = split
        self.origin = origin  # set by load_split: the list file and images these pixels came from
        # (x / 255 - mean) / std folded into one multiply and one subtract
        if stats is None:
            self._scale, self._shift = torch.full((1, 3, 1, 1), 1.0 / 255.0), torch.zeros(1, 3, 1, 1)
        else:
            mean, std = stats
            self._scale, self._shift = 1.0 / (255.0 * std), mean / std
        self._scale, self._shift = self._scale.to(images.device), self._shift.to(images.device)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def normalize(self) -> bool | tuple:
        """The ``normalize`` given at construction: False, True (ImageNet) or (mean, std)."""
        return self._normalize

    @property
    def img_size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int | None:
        return self.task.num_classes if self.task else None

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(b, 3, H, W)`` -> float32 0..1, normalised unless ``self.normalize`` is False."""
        out = images.to(torch.float32).mul_(self._scale.to(images.device))
        if self._standardise:
            out.sub_(self._shift.to(images.device))
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.to_float(self.images[index][None])[0], int(self.labels[index])

    def batch(self, indices: torch.Tensor | Sequence[int] | slice, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (float32) and labels (int64) at ``indices``, built on ``device``.

        A ``slice`` takes a contiguous view (no gather: evaluation reads in order); index
        tensors gather with ``index_select`` where the data lives. Only uint8 crosses to
        ``device`` (host -> CUDA from pinned memory, without blocking the host), and the
        float conversion runs there.
        """
        if isinstance(indices, slice):
            images, labels = self.images[indices], self.labels[indices]
        else:
            index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
            images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
        if device is not None:
            images, labels = self._copy_to(images, device), self._copy_to(labels, device)
        return self.to_float(images), labels

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, device: torch.device | str | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(images, labels)`` batches (shuffled with ``generator`` when asked)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size], device)

    def to(self, device: torch.device | str) -> "SplitData":
        """A copy with the uint8 images and labels on ``device`` (e.g. the whole split on GPU,
        copied through pinned memory in chunks, so a memory-mapped split is never pinned whole)."""
        device = torch.device(device)
        return SplitData(self._move(self.images, device), self._move(self.labels, device), self.normalize,
                         self.task, self.split, self.origin)

    @staticmethod
    def _copy_to(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        device = torch.device(device)
        if device.type == "cuda" and tensor.device.type == "cpu":
            # page-locked source: a DMA the host does not wait for (the caching host allocator
            # keeps the buffer until the copy is done)
            return tensor.pin_memory().to(device, non_blocking=True)
        return tensor.to(device)

    @staticmethod
    def _move(tensor: torch.Tensor, device: torch.device, chunk_bytes: int = 64 << 20) -> torch.Tensor:
        if device.type != "cuda" or tensor.device.type != "cpu":
            return tensor.to(device)
        out = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        row_bytes = max(1, tensor[:1].numel() * tensor.element_size())
        rows = max(1, chunk_bytes // row_bytes)
        for start in range(0, tensor.shape[0], rows):
            out[start:start + rows].copy_(tensor[start:start + rows].pin_memory(), non_blocking=True)
        return out


def _resolve_task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    if task not in suite("vtab") and task in suite("demo"):
        return suite("demo")[task]
    return get_task(task)  # vtab name or alias; unknown names get a suggestion


def decode_split(split_list: SplitList, size: int, workers: int | None = None,
                 progress: bool = True) -> torch.Tensor:
    """Decode every image of a list into a ``(n, 3, size, size)`` uint8 tensor (in memory).

    Uses a few threads (PIL releases the GIL while decoding and resizing). Every unreadable
    image is collected and reported at once as ``file:line: path: reason``.
    """
    out = torch.empty((len(split_list), 3, size, size), dtype=torch.uint8)
    array, start = out.numpy(), 0
    for chunk in cache.decode_chunks(split_list, size, workers, progress):
        array[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def cached_split(split_list: SplitList, task_name: str, split: str, img_size: int, cache_dir: Path,
                 workers: int | None = None, progress: bool = True, images_sha256: str | None = None
                 ) -> torch.Tensor:
    """The split's decoded images from the cache, building it first when missing (memory-mapped).
    ``images_sha256``: :func:`cache.images_digest` of the list, when the caller already took it."""
    if images_sha256 is None:
        images_sha256 = cache.images_digest(split_list)
    path = cache.cache_path(cache_dir, task_name, split, img_size, split_list.sha256, images_sha256)
    data = cache.load_cache(path, len(split_list), img_size)
    if data is None:
        with cache.build_lock(path, cache.cache_bytes(len(split_list), img_size)):
            data = cache.load_cache(path, len(split_list), img_size)  # another process may have built it
            if data is None:
                cache.build_cache(path, split_list, img_size, workers, progress)
                data = cache.load_cache(path, len(split_list), img_size)
    if data is None:
        raise UserError(f"the decoded-image cache {path} was written but cannot be read back")
    return data


def load_split(root: str | Path, task: Task | str, split: str, img_size: int = 224, normalize: bool | tuple = True,
               cache_dir: str | Path | None = None, *, use_cache: bool = True, workers: int | None = None,
               progress: bool = True) -> SplitData:
    """Load one split of one task as a :class:`SplitData` (memory-mapped from the cache).

    ``root`` is the suite root (``<root>/<task>/<split>.txt``), ``task`` a registry
    :class:`~vtab_lily.tasks.Task` (or its name); ``normalize``: False, True (ImageNet's mean/std) or
    a (mean, std) pair. Images are decoded once, resized to
    ``img_size`` (bicubic) and kept as uint8 in ``cache_dir`` (default ``$VTAB_LILY_CACHE_DIR``
    or ``<root>/.cache``), keyed by the list file's bytes, every image's size and mtime and the
    size; later calls only map that file. ``SplitData.origin`` says what was read
    (:func:`vtab_lily.data.readcheck.check_read_data` checks it against the manifest).
    Raises :class:`UserError` naming the file (and line) for any problem with the data, and
    naming the cache file and the bytes it needs when the cache cannot be written.
    """
    if img_size < 1:
        raise UserError(f"img_size must be positive, got {img_size}")
    task = _resolve_task(task)
    split_list = read_list(root, task, split)
    labels = torch.tensor(split_list.labels, dtype=torch.int64)
    images_sha256 = cache.images_digest(split_list)  # before decoding: a later change never hides behind it
    if not use_cache:
        origin = DataOrigin(split_list, images_sha256, None)
        return SplitData(decode_split(split_list, img_size, workers, progress), labels, normalize, task, split, origin)
    folder = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir(root)
    data = cached_split(split_list, task.name, split, img_size, folder, workers, progress, images_sha256)
    return SplitData(data, labels, normalize, task, split, DataOrigin(split_list, images_sha256, folder))
