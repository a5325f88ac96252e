"""Writing one task's TFDS Sources as the NOAH layout: ``images/<split>/<i:06d>.png`` and list files.

The Sources (from :mod:`vtab_lily.data.tfds`) iterate ``(uint8 HxWx3 image, label)`` in VTAB
order; images are encoded on a few threads with a bounded queue, so a split is never held in
memory. PNG is lossless; JPEG uses PIL's default quality (75), as NOAH's exporter did.
``train800val200.txt`` lists train800 then val200, as NOAH's exporter wrote it.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import UserError
from ..tasks import Task
from .parallel import default_workers

TFDS_SPLITS = ("train800", "val200", "test")


class WriteFailed(UserError):
    """The data could not be written (disk full, read-only): a failure during the work, exit 1."""

    exit_code = 1


def write_tfds_task(staged: Path, task: Task, splits: dict, encoding: str = "png", workers: int | None = None,
                    progress: bool = True, drop_undecodable: bool = False) -> list[str]:
    """Write the three Sources of ``task`` and its four list files under ``staged``. With
    ``drop_undecodable``, test records whose image cannot be decoded are left out (a Source
    with ``items(dropped)``); the records dropped, named."""
    dropped: list[str] = []
    lines = {split: write_split(staged, task, split, splits[split], encoding, workers, progress,
                                dropped if drop_undecodable and split == "test" else None)
             for split in TFDS_SPLITS}
    lines["train800val200"] = lines["train800"] + lines["val200"]
    try:
        for split, split_lines in lines.items():
            (staged / f"{split}.txt").write_text("".join(split_lines))
    except OSError as err:
        raise WriteFailed(f"cannot write {err.filename or staged}: {err.strerror or err}") from None
    return dropped


def write_split(staged: Path, task: Task, split: str, source, encoding: str = "png", workers: int | None = None,
                progress: bool = True, dropped: list[str] | None = None) -> list[str]:
    """Write one Source's images; its list lines (``images/<split>/NNNNNN.<ext> <label>``).
    ``dropped``: skip undecodable records, naming them there (Sources with ``items(dropped)``)."""
    ext = "png" if encoding == "png" else "jpg"
    (staged / "images" / split).mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers()
    lines: list[str] = []
    pending: deque = deque()
    bar = tqdm(total=len(source), desc=f"{task.name} {split}", unit="img", leave=False,
               disable=None if progress else True)  # None: only on a terminal
    with ThreadPoolExecutor(workers) as pool, bar:
        items = source.items(dropped) if dropped is not None and hasattr(source, "items") else iter(source)
        for i, item in enumerate(items):
            image, label = check_item(item, task, split, i)
            rel = f"images/{split}/{i:06d}.{ext}"
            pending.append(pool.submit(save_image, image, staged / rel, encoding))
            lines.append(f"{rel} {label}\n")
            while len(pending) > 4 * workers:  # bounded: never the whole split in memory
                pending.popleft().result()
                bar.update()
        while pending:
            pending.popleft().result()
            bar.update()
    if len(lines) + len(dropped or ()) != len(source):
        raise UserError(f"TFDS {task.name}/{split}: yielded {len(lines)} images, its length says {len(source)}")
    return lines


def check_item(item, task: Task, split: str, index: int) -> tuple[np.ndarray, int]:
    """The ``(image, label)`` of one Source item, or a :class:`UserError` naming it."""
    where = f"TFDS {task.name}/{split} item {index}"
    try:
        image, label = item
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected (image, label), got {type(item).__name__}") from None
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise UserError(f"{where}: expected a uint8 HxWx3 image, got {getattr(image, 'dtype', type(image))} {shape}")
    k = task.num_classes
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not 0 <= label < k:
        raise UserError(f"{where}: label {label!r} is not an integer in [0, {k})")
    return image, int(label)


def save_image(image: np.ndarray, path: Path, encoding: str) -> None:
    try:
        if encoding == "png":
            Image.fromarray(image).save(path, "PNG")  # lossless
        else:
            Image.fromarray(image).save(path, "JPEG")  # PIL's default quality (75), as NOAH's exporter
    except OSError as err:
        raise WriteFailed(f"cannot write {path}: {err.strerror or err}") from None
