"""Item 6: evaluation throughput of ViT-B/16 with Lily, through the training loop's ``evaluate``."""

from __future__ import annotations

import time

import torch

from ..adapters import apply_adapter
from ..backbones import create_backbone
from ..data import SplitData
from ..train import evaluate
from .context import Context
from .report import Section, Verdict, fmt_time
from .timing import Stats, synchronize
from .train_steps import NUM_CLASSES

FULL_TEST_SET = 10_000


def run(ctx: Context) -> Section:
    s = ctx.sizes
    count, batch = s.eval_images, s.eval_batch
    section = Section(6, f"Evaluation throughput ({count:,} test images, batch {batch})")
    reduced = "" if count >= FULL_TEST_SET else (
        f" **Reduced**: {count:,} images instead of the {FULL_TEST_SET:,}-image test set, to fit this run's time "
        "budget; throughput is per image and does not depend on the count beyond warm-up.")
    section.setting = (f"`{s.vit}` (random weights) with Lily's paper setting, {s.img_size}px, `train.evaluate` "
                       f"(eval mode, no grad, {'bf16 autocast' if ctx.cuda else 'fp32'}) over an in-memory uint8 "
                       f"split on the CPU (as `run.py` keeps it), batch {batch}; one warm-up batch first." + reduced)
    model = apply_adapter(create_backbone(s.vit, NUM_CLASSES, img_size=s.img_size), "lily").to(ctx.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, s.img_size, s.img_size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=g)
    data = SplitData(images, labels)
    warm = SplitData(images[: min(batch, 8)], labels[: min(batch, 8)])
    ctx.log(f"item 6: evaluating {count} images")
    evaluate(model, warm, batch, ctx.device)
    synchronize(ctx.device)
    start = time.perf_counter()
    evaluate(model, data, batch, ctx.device)  # ends with .item(): synchronised
    seconds = time.perf_counter() - start
    stats = Stats.of([seconds])
    section.headers = ["images", "batch", "time", "images/s"]
    section.rows.append([f"{count:,}", batch, fmt_time(stats), f"{count / seconds:,.1f}"])
    section.verdicts.append(Verdict("none set (reported)", f"{count / seconds:,.1f} images/s", None))
    return section
