"""The parts of the device check (``device_check.py``): each ``part(m, budget, log) -> lines``
records its figures in ``m`` and returns its report lines. Random weights. Meant for CUDA; the
module-level sizes and ``DEV`` exist so a CPU test can run the parts' code at toy sizes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..adapters import apply_adapter
from ..backbones import create_backbone, kernels, scan_paths
from ..backbones.scan import selective_scan, selective_scan_ref
from .device_check import Budget, table
from .vim_scan import cuda_paths, forced_scan

DEV = torch.device("cuda")
CLASSES, BATCH, EVAL_BATCH, EVAL_IMAGES = 100, 64, 256, 2560
VIT, VIM, IMG, SCAN_D, SCAN_L = "vit-b16-in21k", "vim-s", 224, 1536, 197
ROOT = Path(__file__).resolve().parents[2]


def tiny_run() -> list[str]:
    return ["--demo", "--backbone", "vit", "--adapter", "lily", "--task", "colours", "--device", DEV.type,
            "--no-tensorboard"]


def empty_cache() -> None:
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], budget: Budget, warmup: int = 3, reps: int = 10, share: float = 0.3) -> float:
    """Median seconds per call after ``warmup`` calls; stops early past ``share`` of the budget left."""
    for _ in range(warmup):
        fn()
    sync()
    stop, times = time.monotonic() + share * budget.left(), []
    while len(times) < reps and (len(times) < 2 or time.monotonic() < stop):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, IMG, IMG), dtype=torch.uint8, generator=g).to(DEV),
            torch.randint(0, CLASSES, (n,), generator=g).to(DEV))


def build(name: str, bf16: bool) -> torch.nn.Module:
    """Backbone + Lily at its defaults (the paper's setting); frozen weights in bf16 under ``bf16``."""
    model = apply_adapter(create_backbone(name, CLASSES, img_size=IMG), "lily").to(DEV)
    if bf16:
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    return model


def train_step(model: torch.nn.Module, bf16: bool) -> Callable[[], None]:
    images, labels = batch(BATCH)
    x = images.float().div_(255)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=DEV.type == "cuda")
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        opt.step()

    return step


def eval_rate(model: torch.nn.Module, bf16: bool, budget: Budget, batch_size: int = EVAL_BATCH) -> float:
    """Images/s of evaluation: uint8 images already on the device, counts kept on the device."""
    images, labels = batch(EVAL_IMAGES)
    model.eval()

    def run() -> torch.Tensor:
        correct = torch.zeros((), dtype=torch.long, device=DEV)
        with torch.inference_mode(), torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, EVAL_IMAGES, batch_size):
                logits = model(images[i : i + batch_size].float().div_(255))
                correct += (logits.float().argmax(-1) == labels[i : i + batch_size]).sum()
        return correct

    seconds = timed(run, budget, warmup=1, reps=3, share=0.2)
    model.train()
    return EVAL_IMAGES / seconds


def measure_training(model: torch.nn.Module, bf16: bool, budget: Budget) -> dict:
    """Training images/s, step time and peak memory (allocated by torch, from the step's start)."""
    cuda = DEV.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step_s = timed(train_step(model, bf16), budget)
    return {"images_per_s": BATCH / step_s, "step_ms": 1000 * step_s,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")}


def _train_rows(records: dict) -> list[list[str]]:
    return [[k, f"{r['images_per_s']:,.0f}", f"{r['step_ms']:.1f}", f"{r['peak_mib']:,.0f}"]
            for k, r in records.items()]


# ---- parts ---------------------------------------------------------------------------------------


def machine(m: dict, budget: Budget, log) -> list[str]:
    import timm

    try:
        import triton

        triton_version = triton.__version__
    except Exception as err:  # the Triton parts will say so too
        triton_version = f"not importable ({type(err).__name__})"
    props = torch.cuda.get_device_properties(DEV)
    m["machine"] = {"GPU": f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs",
                    "Versions": f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA "
                                f"{torch.version.cuda}), timm {timm.__version__}, triton {triton_version}"}
    return ["Recorded in the header."]


def vit_eager(m: dict, budget: Budget, log) -> list[str]:
    records, evals = m.setdefault("vit_train", {}), m.setdefault("eval", {})
    lines = []
    for precision in ("fp32", "bf16"):
        if budget.over():
            lines.append(f"{precision}: skipped (out of time)")
            continue
        model = build(VIT, precision == "bf16")
        records[f"{precision} eager"] = measure_training(model, precision == "bf16", budget)
        evals[f"vit {precision}"] = eval_rate(model, precision == "bf16", budget)
        big = eval_rate(model, precision == "bf16", budget, batch_size=1024) if not budget.over() else None
        lines.append(f"- eval {precision}: {evals[f'vit {precision}']:,.0f} images/s at batch {EVAL_BATCH} "
                     f"(the official batch, kept under Lily's batch routing)"
                     + (f"; {big:,.0f} images/s at batch 1024" if big else ""))
        del model
        empty_cache()
    return ["ViT-B/16 + Lily (r=32, ne=4, k,v,mlp), forward + backward + fused AdamW on a fixed batch of 64.", "",
            *table(["setting", "train img/s", "step ms", "peak MiB"], _train_rows(records)), *lines]


def vit_compiled(m: dict, budget: Budget, log) -> list[str]:
    records, done = m.setdefault("vit_train", {}), []
    for precision in ("bf16", "fp32"):
        if budget.left() < 60:  # a compile alone takes tens of seconds
            return done + [f"{precision} compiled: skipped ({budget.left():.0f} s left, compiling needs more)"]
        model = build(VIT, precision == "bf16")
        for block in model.blocks:  # per block, as --compile does: parameter names unchanged
            block.compile()
        t0 = time.monotonic()
        records[f"{precision} compiled"] = rec = measure_training(model, precision == "bf16", budget)
        done.append(f"- {precision} compiled: {rec['images_per_s']:,.0f} train images/s "
                    f"(compile + warm-up + timing took {time.monotonic() - t0:.0f} s)")
        del model
        empty_cache()
    return done


def host_syncs(m: dict, budget: Budget, log) -> list[str]:
    """Syncs per training step of the real loop: two tiny demo runs differing only in epochs."""
    from ..data import ensure_demo
    from ..run import main as run_main

    tmp = Path(tempfile.mkdtemp(prefix="device-check-"))
    ensure_demo(tmp / "demo")
    counts, threads = {}, torch.get_num_threads()
    for epochs in (2, 4):
        argv = [*tiny_run(), "--data-root", str(tmp / "demo"), "--out", str(tmp / f"syncs{epochs}"),
                "--epochs", str(epochs), "--eval-every", str(epochs)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if DEV.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                code = run_main(argv)
            finally:
                if DEV.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
                torch.set_num_threads(threads)
        if code != 0:
            raise RuntimeError(f"the demo run {' '.join(argv)} exited {code}")
        counts[epochs] = sum("synchroniz" in str(w.message) for w in caught)
    steps = 2 * (1000 // 64)  # two more demo epochs: 1,000 images in batches of 64, drop_last: 15 steps each
    m["syncs_per_step"] = per_step = (counts[4] - counts[2]) / steps
    return [f"Real training loop (`python -m vtab_lily.run`, demo task, CUDA), counted with "
            f"`torch.cuda.set_sync_debug_mode('warn')`: {counts[2]} syncs in a 2-epoch run, {counts[4]} in a "
            f"4-epoch run with the same one evaluation, so **{per_step:.2f} host syncs per training step** "
            "(per-epoch checks included, amortised over the epoch's 15 steps)."]


def kill_resume(m: dict, budget: Budget, log) -> list[str]:
    """SIGKILL a tiny CUDA run at its 20th step, rerun it, compare with an uninterrupted run."""
    from ..data import ensure_demo

    tmp = Path(tempfile.mkdtemp(prefix="device-check-"))
    ensure_demo(tmp / "demo")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("VTAB_LILY_FAULT", None)

    def run(out: str, fault: str | None = None) -> int:
        argv = [sys.executable, "-m", "vtab_lily.run", *tiny_run(), "--data-root", str(tmp / "demo"),
                "--out", str(tmp / out), "--epochs", "3", "--eval-every", "1"]
        extra = {"VTAB_LILY_FAULT": fault} if fault else {}
        proc = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True,
                              timeout=max(10.0, budget.left()))
        if proc.returncode not in (0, -9):
            log(proc.stderr[-2000:])
        return proc.returncode

    killed = run("resumed", "train_step:20")
    resumed = run("resumed")
    reference = run("reference")
    results = {}
    for out in ("resumed", "reference"):
        found = list((tmp / out).rglob("result.json"))
        results[out] = found[0].read_text() if found else None
    acc = {k: json.loads(v)["accuracy"] if v else None for k, v in results.items()}
    same = acc["resumed"] is not None and acc["resumed"] == acc["reference"]
    m["resume"] = {"killed_exit": killed, "resumed_exit": resumed, "same_result": same}
    ok = killed == -9 and resumed == 0 and acc["resumed"] is not None
    return [f"Demo run (3 epochs x 15 steps, CUDA) with `VTAB_LILY_FAULT=train_step:20`: exit {killed} "
            f"(-9 = killed), rerun exit {resumed}, result {'written' if acc['resumed'] else 'MISSING'}. "
            f"**Resume: {'PASS' if ok else 'FAIL'}**. Accuracy resumed {acc['resumed']} vs uninterrupted "
            f"{acc['reference']} (exit {reference}): {'identical' if same else 'DIFFERENT'} (bit-identity also "
            "needs deterministic CUDA kernels)."]


def scan_inputs(b: int, groups: int = 2, n: int = 16) -> dict:
    """The Vim-S mixer's scan: both directions (2 x 768 channels) as two groups of B/C."""
    g, d, length = torch.Generator().manual_seed(0), SCAN_D, SCAN_L
    t = {"u": torch.randn(b, d, length, generator=g), "delta": torch.randn(b, d, length, generator=g) * 0.5 - 1,
         "A": -torch.exp(torch.randn(d, n, generator=g) * 0.5), "B": torch.randn(b, groups, n, length, generator=g),
         "C": torch.randn(b, groups, n, length, generator=g), "D": torch.randn(d, generator=g),
         "z": torch.randn(b, d, length, generator=g), "delta_bias": torch.randn(d, generator=g) * 0.5}
    return {k: v.to(DEV).requires_grad_() for k, v in t.items()}


def triton_scan(m: dict, budget: Budget, log) -> list[str]:
    fn = kernels.triton_scan_fn()
    if fn is None:
        raise RuntimeError(kernels.kernel_notes().get("triton", "triton does not import"))
    x = scan_inputs(4)
    out, ref = fn(**x, delta_softplus=True), selective_scan_ref(**x, delta_softplus=True)
    w = torch.randn_like(ref)
    got = torch.autograd.grad((out * w).sum(), list(x.values()))
    want = torch.autograd.grad((ref * w).sum(), list(x.values()))
    errors = {"output": (out - ref).abs().max().item(), **{f"d{k}": (a - b).abs().max().item()
                                                          for k, a, b in zip(x, got, want)}}
    scale = {"output": ref.abs().max().item(), **{f"d{k}": b.abs().max().item() for k, b in zip(x, want)}}
    m["triton_errors"] = errors
    rows = [[k, f"{v:.2e}", f"{scale[k]:.2e}"] for k, v in errors.items()]
    lines = ["Triton scan vs the reference loop (`selective_scan_ref`) on the GPU, fp32, Vim-S shape "
             "(b=4, 2 x 768 channels as two groups, L=197, N=16, with D, z, delta_bias, softplus):", "",
             *table(["tensor", "max abs error", "max abs value"], rows)]
    # Speed, forward + backward at the training batch: ours vs the chunked PyTorch scan and mamba-ssm.
    x = scan_inputs(BATCH)
    dy = torch.randn(BATCH, SCAN_D, SCAN_L, device=DEV)
    times = {}
    for path in ["triton", "pytorch"] + (["mamba_ssm"] if "mamba_ssm" in cuda_paths(DEV) else []):
        if budget.over():
            break
        with forced_scan(path):

            def go():
                selective_scan(**x, delta_softplus=True).backward(dy)
                for t in x.values():
                    t.grad = None

            times[path] = timed(go, budget, warmup=2, reps=5, share=0.3)
    m["scan_ms"] = {k: 1000 * v for k, v in times.items()}
    lines += tune_triton(x, dy, budget)
    lines += [f"Forward + backward at b={BATCH}: " + ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in times.items())]
    if "pytorch" in times:
        r = times["pytorch"] / times["triton"]
        lines.append(f"- Triton vs chunked PyTorch: {r:.1f}x faster (target >= 10x: {'MET' if r >= 10 else 'NOT MET'})")
    if "mamba_ssm" in times:
        r = times["triton"] / times["mamba_ssm"]
        lines.append(f"- Triton vs mamba-ssm: {r:.2f}x its time (target <= 2x: {'MET' if r <= 2 else 'NOT MET'})")
    return lines


def tune_triton(x: dict, dy: torch.Tensor, budget: Budget) -> list[str]:
    """Forward + backward time of other (BLOCK_D, CHUNK, num_warps) settings, for tuning by hand."""
    from ..backbones import scan_triton

    saved, rows = (scan_triton.BLOCK_D, scan_triton.CHUNK, scan_triton.NUM_WARPS), []

    def go():
        scan_triton.selective_scan_triton(**x, delta_softplus=True).backward(dy)
        for t in x.values():
            t.grad = None

    try:
        for config in ((8, 16, 4), (16, 16, 4), (4, 16, 2), (8, 32, 4), (16, 32, 8), (8, 8, 2)):
            if budget.left() < 15:
                break
            scan_triton.BLOCK_D, scan_triton.CHUNK, scan_triton.NUM_WARPS = config
            try:
                rows.append([str(config), f"{1000 * timed(go, budget, warmup=1, reps=3, share=0.2):.2f}"])
            except Exception as err:  # e.g. too many registers: a compile error, reported
                rows.append([str(config), f"{type(err).__name__}: {str(err)[:80]}"])
    finally:
        scan_triton.BLOCK_D, scan_triton.CHUNK, scan_triton.NUM_WARPS = saved
    return ["", f"Settings of the Triton kernel (default {saved}), forward + backward ms at b={BATCH}:", "",
            *table(["(BLOCK_D, CHUNK, num_warps)", "ms"], rows)] if rows else []


def vim(m: dict, budget: Budget, log) -> list[str]:
    records = m.setdefault("vim", {})
    lines = [f"Kernel paths chosen on this GPU (auto): `{scan_paths(DEV)}`; unavailable: "
             f"{kernels.kernel_notes() or 'none'}.", ""]
    paths = cuda_paths(DEV)
    for precision in ("fp32", "bf16"):
        for path in paths:
            if budget.over():
                lines.append(f"- {path} {precision}: skipped (out of time)")
                continue
            with forced_scan(path):
                model = build(VIM, precision == "bf16")
                rec = measure_training(model, precision == "bf16", budget)
                rec["eval_images_per_s"] = eval_rate(model, precision == "bf16", budget)
            records[f"{path} {precision}"] = rec
            del model
            empty_cache()
    rows = [[*r, f"{records[r[0]]['eval_images_per_s']:,.0f}"] for r in _train_rows(records)]
    return lines + ["Vim-S + Lily (Vim defaults: token routing), batch 64, per scan path:", "",
                    *table(["scan, precision", "train img/s", "step ms", "peak MiB", "eval img/s"], rows)]


# (title, part, share of the time budget); unused time flows to later parts, so the
# open-ended compile part comes last.
PARTS = [
    ("Machine", machine, 1),
    ("ViT-B/16 + Lily: training (eager) and evaluation", vit_eager, 3),
    ("Host syncs per training step", host_syncs, 2),
    ("kill -9 and resume on CUDA", kill_resume, 3),
    ("Triton selective scan on the GPU", triton_scan, 3),
    ("Vim-S + Lily per scan path", vim, 5),
    ("ViT-B/16 + Lily: training, torch.compile per block", vit_compiled, 4),
]
