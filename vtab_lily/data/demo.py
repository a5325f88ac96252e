"""A small procedurally drawn suite in the VTAB-1K (NOAH) layout, for demos and tests.

Four tasks of 32x32 JPEG images whose labels a tiny model learns in a few epochs (one
Natural, one Specialized, two Structured), each with 800/200 train/val images
(``train800val200`` lists both) and a 300-image test split. Generation is deterministic
(seeded numpy, fixed JPEG settings: the same bytes every time), takes a few seconds, and
is crash-safe: a marker file written last says the suite is complete; without it the
suite is regenerated.

The tasks themselves (names, groups, class counts) are declared as data in
``vtab_lily.tasks.DEMO_TASKS`` (the ``"demo"`` suite); this module only draws them.
"""

from __future__ import annotations

import colorsys
import io
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from ..errors import UserError
from ..fsutil import atomic_write_json, check_creatable_dir, read_json
from ..tasks import DEMO_TASKS, DEMO_TEST_SIZE, SPLITS
from .lists import read_list
from .manifest import MANIFEST, compute_manifest, write_manifest
from .parallel import folder_lock

SIZE = 32  # image side; the demo runs models at img_size 32
TEST_SIZE = DEMO_TEST_SIZE
SPLIT_COUNTS = {"train800": 800, "val200": 200, "test": TEST_SIZE}
GENERATOR_VERSION = 1  # bump when drawing changes: complete suites of older versions are redrawn
MARKER = ".demo-complete.json"
JPEG_QUALITY = 95

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres
Drawer = Callable[[np.random.Generator, int], np.ndarray]  # (rng, label) -> (SIZE, SIZE, 3) floats in 0..1


def _noise_background(rng: np.random.Generator, low: float = 0.1, high: float = 0.5, grey: bool = False) -> np.ndarray:
    base = np.full(3, rng.uniform(low, high)) if grey else rng.uniform(low, high, 3)
    return base + rng.normal(0.0, 0.04, (SIZE, SIZE, 3))


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    alpha = alpha[..., None]
    return img * (1 - alpha) + colour * alpha


def _disc(cy: float, cx: float, radius: float) -> np.ndarray:
    """Anti-aliased disc mask (0..1)."""
    return np.clip(radius + 0.5 - np.hypot(_YY - cy, _XX - cx), 0.0, 1.0)


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), rng.uniform(0.8, 1.0)))


def draw_colours(rng: np.random.Generator, label: int) -> np.ndarray:
    """Natural: the hue of one object (8 hue bins; random shape, size, place) on grey."""
    img = _noise_background(rng, 0.2, 0.6, grey=True)
    hue = (label + rng.uniform(-0.3, 0.3)) / 8 % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)))
    radius = rng.uniform(5, 10)
    cy, cx = rng.uniform(radius, SIZE - radius, 2)
    if rng.uniform() < 0.5:
        mask = _disc(cy, cx, radius)
    else:
        mask = ((abs(_YY - cy) < radius * 0.8) & (abs(_XX - cx) < radius * 0.8)).astype(float)
    return _paint(img, mask, colour)


def draw_cells(rng: np.random.Generator, label: int) -> np.ndarray:
    """Specialized: pink tissue with small nuclei; label 1 adds a cluster of large dark nuclei."""
    img = np.array([0.9, 0.6, 0.75]) + rng.uniform(-0.08, 0.08, 3) + rng.normal(0.0, 0.04, (SIZE, SIZE, 3))
    purple = np.array([0.45, 0.2, 0.55])
    for _ in range(rng.integers(4, 10)):
        img = _paint(img, _disc(*rng.uniform(2, SIZE - 2, 2), rng.uniform(1.0, 1.8)), purple)
    if label == 1:
        cy, cx = rng.uniform(8, SIZE - 8, 2)
        for _ in range(rng.integers(3, 6)):
            oy, ox = rng.normal(0.0, 3.0, 2)
            img = _paint(img, _disc(cy + oy, cx + ox, rng.uniform(2.5, 3.5)), purple * 0.5)
    return img


def draw_orientation(rng: np.random.Generator, label: int) -> np.ndarray:
    """Structured: the angle of a bar, in 6 bins of 30 degrees (like dsprites_ori)."""
    img = _noise_background(rng)
    angle = np.deg2rad((label + rng.uniform(-0.3, 0.3)) * 30.0)
    cy, cx = SIZE / 2 + rng.uniform(-3, 3, 2)
    along = (_XX - cx) * np.cos(angle) + (_YY - cy) * np.sin(angle)
    across = -(_XX - cx) * np.sin(angle) + (_YY - cy) * np.cos(angle)
    half_width, half_length = rng.uniform(1.0, 2.0), rng.uniform(9, 14)
    mask = np.clip(half_width + 0.5 - np.abs(across), 0, 1) * (np.abs(along) < half_length)
    return _paint(img, mask, _bright_colour(rng))


def draw_count(rng: np.random.Generator, label: int) -> np.ndarray:
    """Structured: how many discs (1 to 5) are in the image (like clevr_count)."""
    img = _noise_background(rng, 0.05, 0.3)
    centres: list[np.ndarray] = []
    while len(centres) < label + 1:  # rejection sampling of non-overlapping discs
        centre = rng.uniform(4, SIZE - 4, 2)
        if all(np.hypot(*(centre - c)) > 9.0 for c in centres):
            centres.append(centre)
    for cy, cx in centres:
        img = _paint(img, _disc(cy, cx, rng.uniform(3.0, 4.0)), _bright_colour(rng))
    return img


# task name (declared in vtab_lily.tasks.DEMO_TASKS) -> its drawer
_DRAWERS: dict[str, Drawer] = {
    "colours": draw_colours, "cells": draw_cells, "orientation": draw_orientation, "count": draw_count}
assert set(_DRAWERS) == set(DEMO_TASKS), "vtab_lily.tasks.DEMO_TASKS and the drawers disagree"


def _encode_jpeg(img: np.ndarray) -> bytes:
    pixels = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def write_task_folder(folder: Path, splits: dict[str, Iterable[tuple[bytes, int]]]) -> None:
    """Write ``images/<split>/NNNNNN.jpg`` and ``<split>.txt`` for each split (``train800``,
    ``val200``, ``test``), then ``train800val200.txt`` listing train800 and val200, as in VTAB."""
    lines: dict[str, list[str]] = {}
    for split, items in splits.items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i, (data, label) in enumerate(items):
            rel = f"images/{split}/{i:06d}.jpg"
            (folder / rel).write_bytes(data)
            lines[split].append(f"{rel} {label}\n")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, split_lines in lines.items():
        (folder / f"{split}.txt").write_text("".join(split_lines))


def _draw_split(name: str, rng: np.random.Generator, count: int) -> Iterator[tuple[bytes, int]]:
    num_classes, draw = DEMO_TASKS[name].num_classes, _DRAWERS[name]
    for label in rng.permutation(np.arange(count) % num_classes):  # balanced classes
        yield _encode_jpeg(draw(rng, int(label))), int(label)


def _write_task(root: Path, index: int, name: str) -> None:
    """Draw and write one task (each split has its own seed), then its manifest.json."""
    write_task_folder(root / name, {
        split: _draw_split(name, np.random.default_rng([GENERATOR_VERSION, index, split_index]), count)
        for split_index, (split, count) in enumerate(SPLIT_COUNTS.items())})
    # The fingerprint's pixels at the demo's own model size (32 px), not VTAB's 224.
    lists = {split: read_list(root, DEMO_TASKS[name], split) for split in SPLITS}
    write_manifest(root / name, compute_manifest(name, lists, f"demo generator v{GENERATOR_VERSION}", "jpeg",
                                                 size=SIZE, progress=False))


def is_complete(root: str | Path) -> bool:
    """True when a finished suite of this generator version is at ``root``."""
    root = Path(root)
    try:
        marker = read_json(root / MARKER)
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("version") != GENERATOR_VERSION:
        return False
    return all((root / name / f"{split}.txt").is_file() for name in DEMO_TASKS for split in SPLITS) and all(
        (root / name / MANIFEST).is_file() for name in DEMO_TASKS)  # older suites had none: written again


def generate(root: str | Path) -> Path:
    """(Re)write the whole suite at ``root``; the marker goes last, after an fsync of all data."""
    root = Path(root)
    (root / MARKER).unlink(missing_ok=True)
    shutil.rmtree(root / ".cache", ignore_errors=True)  # decoded images of an older drawing
    for index, name in enumerate(DEMO_TASKS):
        _write_task(root, index, name)
    os.sync()  # images and lists reach the disk before the marker says "complete"
    atomic_write_json(root / MARKER, {"version": GENERATOR_VERSION, "tasks": list(DEMO_TASKS),
                                      "image_size": SIZE, "splits": SPLIT_COUNTS})
    return root


def ensure_demo(root: str | Path, force: bool = False) -> Path:
    """Generate the demo suite at ``root`` unless a complete one is there; return ``root``.

    Safe to call from several processes at once: one generates, the others wait for it.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"demo root {root} exists and is not a folder")
    check_creatable_dir(root, "demo root")  # a file further up: one line, not a traceback
    if root.is_dir():
        (root / ".demo.lock").unlink(missing_ok=True)  # left by older versions
    if is_complete(root) and not force:
        return root
    with folder_lock(root):  # a lock on the folder itself: no lock file is left in the data folder
        if force or not is_complete(root):
            generate(root)
    return root

def main(argv: list[str] | None = None) -> int:
    import argparse

    from tabulate import tabulate

    parser = argparse.ArgumentParser(prog="python -m vtab_lily.data demo", allow_abbrev=False,
                                     description="Write the small procedurally drawn demo suite (NOAH layout).")
    parser.add_argument("--root", default="data/vtab-demo", help="where to write it (default data/vtab-demo)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete suite is there")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    root = Path(args.root)
    existed = is_complete(root) and not args.force
    start = time.perf_counter()
    ensure_demo(root, force=args.force)
    rows = [(t.name, t.group, t.num_classes, *SPLIT_COUNTS.values()) for t in DEMO_TASKS.values()]
    print(tabulate(rows, headers=["task", "group", "classes", *SPLIT_COUNTS], tablefmt="github"))
    done = "already complete" if existed else f"written in {time.perf_counter() - start:.1f} s"
    print(f"\ndemo suite at {root}: {done} ({SIZE}x{SIZE} JPEG; train800val200 = train800 + val200)")
    return 0
