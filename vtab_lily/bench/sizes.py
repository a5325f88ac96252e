"""Problem sizes and repetitions of each benchmark item, per preset and device.

``full`` is the issue's setting (the full CPU suite must finish in ~10 minutes on 2 cores,
so the slowest items use fewer images there, and say so in the report); ``quick`` shrinks
repetitions and sizes (493 s measured on 2 busy CPU cores, not the 2 minutes once hoped); ``toy`` uses the tiny test backbones and
shapes with one repetition, for the pytest smoke test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PRESETS = ("full", "quick", "toy")


@dataclass(frozen=True)
class Sizes:
    preset: str
    # 1. Lily efficient vs naive
    lily_batch: int = 8
    lily_tokens: tuple[int, ...] = (197, 1024)
    lily_rank: int = 16
    lily_width: int = 768
    lily_experts: int = 4
    lily_reps: int = 10
    # 2./3. training steps of ViT-B/16
    vit: str = "vit-b16-in21k"
    img_size: int = 224
    step_batch: int = 8
    step_warmup: int = 1
    step_reps: int = 3
    peft_reps: int = 12  # item 3 compares two near-equal implementations: more rounds against noise
    # 4. Vim-S and the selective scan
    vim: str = "vim-s"
    vim_batch: int = 8
    vim_reps: int = 2
    scan_shape: tuple[int, int, int, int] = (8, 768, 197, 16)  # (b, d, L, N)
    scan_reps: int = 5
    scan_ref_reps: int = 2
    # 5. data
    data_images: int = 1000
    jpeg_size: tuple[int, int] = (500, 375)
    data_batch: int = 64
    data_reps: int = 2
    # 6. evaluation
    eval_images: int = 256
    eval_batch: int = 256
    warmup: int = 1  # warm-up calls for the cheap items
    threads: int | None = None  # torch threads; None keeps torch's choice


def sizes_for(preset: str, device_type: str) -> Sizes:
    """The sizes of ``preset`` (full, quick, toy) on ``device_type`` (cpu or cuda)."""
    cuda = device_type == "cuda"
    if preset == "full":
        if cuda:
            return Sizes("full", lily_batch=64, step_batch=64, step_warmup=3, step_reps=10, peft_reps=10, vim_batch=64, vim_reps=5,
                         scan_reps=20, scan_ref_reps=2, data_reps=3, eval_images=10_000, lily_reps=30)
        return Sizes("full")
    if preset == "quick":
        base = Sizes("quick", lily_reps=5, step_batch=2, step_reps=2, peft_reps=2, vim_batch=2, vim_reps=1,
                     scan_shape=(2, 768, 197, 16), scan_reps=3, scan_ref_reps=1, data_images=300, data_reps=1,
                     eval_images=16, eval_batch=16)
        if cuda:
            return replace(base, lily_batch=64, step_batch=64, vim_batch=32, eval_images=2560, scan_shape=(8, 768, 197, 16))
        return base
    if preset == "toy":
        return Sizes("toy", lily_batch=2, lily_tokens=(8, 16), lily_rank=4, lily_width=32, lily_experts=4, lily_reps=1,
                     vit="vit-tiny-test", img_size=32, step_batch=2, step_warmup=0, step_reps=1, peft_reps=1,
                     vim="vim-tiny-test", vim_batch=2, vim_reps=1, scan_shape=(2, 16, 12, 4), scan_reps=1,
                     scan_ref_reps=1, data_images=12, jpeg_size=(40, 30), data_batch=4, data_reps=1,
                     eval_images=8, eval_batch=4, warmup=0,
                     threads=1)  # tiny ops on 2 busy cores: one thread avoids OpenMP spin-waits
    raise ValueError(f"unknown preset {preset!r}")
