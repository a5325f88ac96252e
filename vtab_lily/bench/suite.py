"""Run the benchmark items in order and write the report."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from . import data_speed, eval_speed, lily_forms, methods, train_steps, vim_scan
from .context import Context
from .report import Section, load_average, render, write_report
from .sizes import sizes_for

ITEMS: dict[int, tuple[str, Callable[[Context], Section]]] = {
    1: ("Lily efficient vs naive", lily_forms.run),
    2: ("ViT-B/16 training step per adapter", train_steps.run_adapters),
    3: ("our Lily vs HF PEFT's Lily", train_steps.run_peft),
    4: ("Vim-S step and selective scan", vim_scan.run),
    5: ("data: cache vs JPEG decoding", data_speed.run),
    6: ("evaluation throughput", eval_speed.run),
    7: ("baselines: step time vs LoRA", methods.run),
}


def run_suite(device: str | torch.device = "cpu", preset: str = "full", only: list[int] | None = None,
              out_dir: str | Path = "leaderboards", log: Callable[[str], None] | None = None,
              threads: int | None = None) -> tuple[Path, list[Section]]:
    """Run items ``only`` (default all) at ``preset`` sizes on ``device``; write ``bench-<device>.md``.

    ``threads``: torch threads during the run (default: the preset's, else torch's choice).

    An item that raises is recorded as an ERROR section (its target NOT MET) and the suite
    goes on. Returns the report's path and the sections.
    """
    device = torch.device(device)
    ctx = Context(device, sizes_for(preset, device.type))
    if log is not None:
        ctx.log = log
    started, load_start = time.time(), load_average()
    previous_threads = torch.get_num_threads()
    threads = threads if threads is not None else ctx.sizes.threads
    if threads is not None:
        torch.set_num_threads(threads)
    _warn_if_busy(ctx, load_start)
    try:
        sections = _run_items(ctx, only or sorted(ITEMS))
        text = render(sections, device, preset, load_start, load_average(), started, time.time() - started)
    finally:
        torch.set_num_threads(previous_threads)
    return write_report(text, out_dir, device.type), sections


def _warn_if_busy(ctx: Context, load: str) -> None:
    """Oversubscribed cores make multi-threaded torch spin: measured up to 10-50x slower steps."""
    try:
        busy = float(load.split(",")[0])
    except ValueError:
        return
    cores = os.cpu_count() or 1
    if ctx.device.type == "cpu" and torch.get_num_threads() > 1 and busy >= cores - 0.5:
        ctx.log(f"warning: load average {busy:.1f} on {cores} cores; with {torch.get_num_threads()} torch threads "
                "competing processes make every figure slow and noisy (consider --threads 1)")


def _run_items(ctx: Context, numbers: list[int]) -> list[Section]:
    sections = []
    for number in numbers:
        title, run = ITEMS[number]
        ctx.log(f"== item {number}: {title}")
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            section = run(ctx)
        except Exception as err:  # report and go on: one broken item must not hide the others
            ctx.log(traceback.format_exc())
            section = Section(number, title, error=f"{type(err).__name__}: {err}")
        section.seconds = time.perf_counter() - t0
        sections.append(section)
    return sections
