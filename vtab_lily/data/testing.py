"""Tiny data roots in the NOAH layout for tests (random pixels, random labels)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..tasks import SPLIT_SIZES
from .demo import write_task_folder


def random_jpeg(rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> bytes:
    """A JPEG of random RGB pixels, ``size`` = (width, height)."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def write_task(root: str | Path, name: str, num_classes: int, test_size: int = 10,
               train_sizes: dict[str, int] | None = None, size: tuple[int, int] = (12, 10),
               seed: int = 0) -> Path:
    """Write ``<root>/<name>`` with random images and the four list files; return the folder.

    ``train800`` and ``val200`` get their own images (800 and 200 unless ``train_sizes``
    says otherwise); ``train800val200`` lists both, as in VTAB. Labels are random in
    ``[0, num_classes)``.
    """
    counts = {"train800": SPLIT_SIZES["train800"], "val200": SPLIT_SIZES["val200"], **(train_sizes or {})}
    counts["test"] = test_size
    rng = np.random.default_rng(seed)

    def items(count: int) -> Iterator[tuple[bytes, int]]:
        for _ in range(count):
            yield random_jpeg(rng, size), int(rng.integers(num_classes))

    folder = Path(root) / name
    write_task_folder(folder, {split: items(count) for split, count in counts.items()})
    return folder
