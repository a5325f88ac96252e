"""Item 5: one epoch of training images from the decoded uint8 cache vs decoding the JPEGs.

A temporary data root in the NOAH layout holds generated JPEGs of a realistic size and
content (smooth colour fields with texture, so they compress like photographs rather than
noise). Three ways to get one epoch of float batches (``SplitData.batches``, what the
training loop consumes), timed interleaved:

- decoding: ``load_split(..., use_cache=False)`` decodes and resizes every JPEG (the data
  layer's thread pool), as a loader without a cache pays every epoch;
- cached, steady state: batches from the split already in memory, as every epoch of a run
  after the first (``run.py`` loads the split once);
- cached, first epoch: ``load_split`` reading the cache file, then the batches.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import SplitData, load_split
from ..tasks import Task
from .context import Context
from .report import Section, Verdict, fmt_ratio, fmt_time
from .timing import Stats, paired_ratio, time_call

TARGET = 10.0


def write_jpegs(root: Path, task: Task, count: int, size: tuple[int, int], seed: int = 0) -> None:
    """``count`` JPEGs (quality 90) under ``root/task``, listed as its ``test`` split.

    The ``test`` split is used because its size is free (``task.test_size``), while the
    training lists must hold exactly 800/200 images; the loading path is the same.
    """
    folder = root / task.name
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    width, height = size
    lines = []
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # a smooth field of colours
        field = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC), dtype=np.int16)
        texture = rng.normal(0, 12, (height, width, 1))  # fine grain, like sensor noise and texture
        pixels = np.clip(field + texture, 0, 255).astype(np.uint8)
        name = f"images/{i:06d}.jpg"
        Image.fromarray(pixels, "RGB").save(folder / name, "JPEG", quality=90)
        lines.append(f"{name} {i % task.num_classes}\n")
    (folder / "test.txt").write_text("".join(lines))


def iterate_epoch(data: SplitData, batch: int) -> None:
    """One shuffled epoch of float batches (each batch is computed eagerly, as training gets it)."""
    for _ in data.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(0)):
        pass


def epoch_seconds(root: Path, task: Task, use_cache: bool, batch: int, img_size: int) -> float:
    """Seconds to load the split (decoding, or reading the cache) and iterate one epoch."""
    start = time.perf_counter()
    iterate_epoch(load_split(root, task, "test", img_size=img_size, use_cache=use_cache, progress=False), batch)
    return time.perf_counter() - start


def run(ctx: Context) -> Section:
    s = ctx.sizes
    count = s.data_images
    section = Section(5, f"Data: one epoch of {count:,} training images, decoded cache vs JPEG decoding")
    task = Task("bench_jpegs", "Natural", 47, count)
    with tempfile.TemporaryDirectory(prefix="vtab-bench-") as tmp:
        root = Path(tmp)
        ctx.log(f"item 5: writing {count} JPEGs")
        t0 = time.perf_counter()
        write_jpegs(root, task, count, s.jpeg_size)
        mean_kb = sum(p.stat().st_size for p in (root / task.name / "images").iterdir()) / count / 1024
        section.setting = (f"{count:,} generated JPEGs of {s.jpeg_size[0]}x{s.jpeg_size[1]} px (quality 90, mean "
                           f"{mean_kb:.0f} KiB; written in {time.perf_counter() - t0:.1f} s), resized to "
                           f"{s.img_size}px; one shuffled epoch of float batches of {s.data_batch}; the cache is "
                           f"built once beforehand; {s.data_reps} interleaved repetitions.")
        epoch_seconds(root, task, True, s.data_batch, s.img_size)  # builds the cache (and warms up)
        in_memory = load_split(root, task, "test", img_size=s.img_size, progress=False)
        iterate_epoch(in_memory, s.data_batch)  # warm-up
        decode, first, steady = [], [], []
        for _ in range(s.data_reps):
            decode.append(epoch_seconds(root, task, False, s.data_batch, s.img_size))
            first.append(epoch_seconds(root, task, True, s.data_batch, s.img_size))
            steady.append(time_call(lambda: iterate_epoch(in_memory, s.data_batch), ctx.device))
            ctx.log(f"  decode {decode[-1]:.2f} s, cache first epoch {first[-1]:.3f} s, steady {steady[-1]:.3f} s")
    section.headers = ["source", "epoch time", "images/s", "speed-up over decoding"]
    rows = (("decoded cache, steady state (in memory)", steady), ("decoded cache, first epoch (reads the file)", first),
            ("decoding the JPEGs", decode))
    for name, times in rows:
        stats = Stats.of(times)
        speed = "1.00x" if times is decode else fmt_ratio(paired_ratio(decode, times))
        section.rows.append([name, fmt_time(stats), f"{count / stats.median:,.0f}", speed])
    ratio = paired_ratio(decode, steady)
    first_ratio = paired_ratio(decode, first)
    section.verdicts.append(Verdict(f"cache >= {TARGET:.0f}x the images/s of decoding (steady-state epoch)",
                                    fmt_ratio(ratio), ratio.median >= TARGET,
                                    f"The first epoch of a run, which also reads the cache file, is "
                                    f"{first_ratio.median:.1f}x."))
    section.notes.append("All three produce the same normalised float32 batches; the conversion from uint8 "
                         "(gather, scale, normalise) is part of every epoch time.")
    return section
