"""Item 4: a Vim-S training step per scan path, and our selective scan vs its peers.

Peers at the same shape, in the same run: the plain time-step loop (``selective_scan_ref``,
the math of mamba-ssm's reference), mambapy's parallel scan (``pip install mambapy``; its
``MambaBlock.selective_scan`` composition, called unbound, as a pure-PyTorch peer) and, on
CUDA, our Triton kernel and mamba-ssm's fused kernel when they pass their test call. The
scan is timed without the gate ``z`` and with ``delta`` already positive, which is what all of
them compute alike.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..adapters import apply_adapter
from ..backbones import create_backbone
from ..backbones import kernels
from ..backbones import scan as scan_module
from .context import Context
from .report import Section, Verdict, fmt_ratio, fmt_time
from .timing import Stats, measure, paired_ratio
from .train_steps import NUM_CLASSES, make_step

REF_TARGET = 10.0  # forward+backward speed-up over the reference loop (CPU)
VIM_PEER_STEP_S = 57.0  # mambapy's Vim block timed on a 2-core CPU, extrapolated to a Vim-S step (batch 8)


def scan_inputs(ctx: Context, requires_grad: bool) -> dict[str, torch.Tensor]:
    """Random (b, d, L) / (b, N, L) inputs at the configured shape, in mamba-ssm's layout."""
    b, d, length, n = ctx.sizes.scan_shape
    g = torch.Generator().manual_seed(0)
    tensors = {
        "u": torch.randn(b, d, length, generator=g),
        "delta": F.softplus(torch.randn(b, d, length, generator=g) - 2.0),
        "A": -torch.exp(torch.randn(d, n, generator=g) * 0.5),
        "B": torch.randn(b, n, length, generator=g),
        "C": torch.randn(b, n, length, generator=g),
        "D": torch.randn(d, generator=g),
    }
    return {k: v.to(ctx.device).requires_grad_(requires_grad) for k, v in tensors.items()}


def mambapy_scan() -> Callable | None:
    """mambapy's parallel selective scan taking our layout, or None when not installed."""
    try:
        from mambapy.mamba import MambaBlock
    except Exception:  # not installed, or broken: reported as such
        return None

    def run(u, delta, A, B, C, D):
        # mambapy's layout is time-major per example: x, delta (b, L, d); B, C (b, L, N).
        y = MambaBlock.selective_scan(None, u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                      C.transpose(1, 2), D)
        return y.transpose(1, 2)

    return run


@contextlib.contextmanager
def forced_scan(path: str) -> Iterator[None]:
    """Force the selective-scan path (``VTAB_LILY_SCAN``) for a block; the environment is restored."""
    previous = os.environ.get(kernels.SCAN_ENV)
    os.environ[kernels.SCAN_ENV] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(kernels.SCAN_ENV, None)
        else:
            os.environ[kernels.SCAN_ENV] = previous


def ours_torch_path(u, delta, A, B, C, D):
    """Our scan forced onto the PyTorch path (on CPU it is the only path)."""
    with forced_scan("pytorch"):
        return scan_module.selective_scan(u, delta, A, B, C, D)


def ours_triton(u, delta, A, B, C, D):
    with forced_scan("triton"):
        return scan_module.selective_scan(u, delta, A, B, C, D)


def cuda_paths(device: torch.device) -> list[str]:
    """Scan paths that pass their test call on ``device`` (PyTorch always)."""
    if device.type != "cuda":
        return ["pytorch"]
    return [p for p in ("triton", "mamba_ssm") if kernels.works_on(p, device)] + ["pytorch"]


def run(ctx: Context) -> Section:
    s = ctx.sizes
    b, d, length, n = s.scan_shape
    section = Section(4, "Vision Mamba: Vim-S training step and the selective scan")
    section.setting = (f"Scan at (b={b}, d={d}, L={length}, N={n}), fp32, with D, no z gate; forward alone and "
                       f"forward + backward (gradients for u, delta, A, B, C, D). {s.warmup} warm-up, "
                       f"{s.scan_reps} interleaved repetitions ({s.scan_ref_reps} for the slow reference loop, "
                       "no warm-up for it).")
    candidates: dict[str, Callable] = {"ours (PyTorch path)": ours_torch_path,
                                       "reference loop (selective_scan_ref)": scan_module.selective_scan_ref}
    peer = mambapy_scan()
    if peer is not None:
        candidates["mambapy pscan"] = peer
    else:
        section.notes.append("mambapy: not installed (`pip install mambapy` to measure it).")
    paths = cuda_paths(ctx.device)
    if ctx.cuda:
        if "triton" in paths:
            candidates["ours (Triton kernel)"] = ours_triton
        if "mamba_ssm" in paths:
            candidates["mamba-ssm CUDA kernel"] = lambda u, delta, A, B, C, D: kernels.mamba_scan(u, delta, A, B, C, D)
        for path, why in kernels.kernel_notes().items():
            section.notes.append(f"{path}: not measured: {why}")
    slow = {"reference loop (selective_scan_ref)": s.scan_ref_reps}
    nowarm = {"reference loop (selective_scan_ref)": 0}

    results = {}
    for mode in ("forward", "forward+backward"):
        grad = mode != "forward"
        x = scan_inputs(ctx, grad)
        dy = torch.randn(b, d, length, device=ctx.device)

        def call(fn: Callable) -> Callable[[], None]:
            def go() -> None:
                if grad:
                    fn(**x).backward(dy)
                    for t in x.values():
                        t.grad = None
                else:
                    with torch.no_grad():
                        fn(**x)
            return go

        ctx.log(f"item 4: scan {mode}")
        results[mode] = measure({name: call(fn) for name, fn in candidates.items()}, ctx.device, warmup=s.warmup,
                                reps=s.scan_reps, reps_for=slow, warmup_for=nowarm, log=ctx.log)
    section.headers = ["scan", "forward", "forward+backward", "fwd+bwd speed-up of ours"]
    ours = "ours (PyTorch path)"
    for name in candidates:
        fb = results["forward+backward"]
        speed = "1.00x" if name == ours else fmt_ratio(paired_ratio(fb[name], fb[ours]))
        section.rows.append([name, fmt_time(Stats.of(results["forward"][name])), fmt_time(Stats.of(fb[name])), speed])
    fb = results["forward+backward"]
    ratio_ref = paired_ratio(fb["reference loop (selective_scan_ref)"], fb[ours])
    section.verdicts.append(Verdict(f"forward+backward >= {REF_TARGET:.0f}x the reference loop",
                                    fmt_ratio(ratio_ref), ratio_ref.median >= REF_TARGET))
    if peer is not None:
        ratio_peer = paired_ratio(fb["mambapy pscan"], fb[ours])
        section.verdicts.append(Verdict("forward+backward faster than mambapy's parallel scan",
                                        fmt_ratio(ratio_peer), ratio_peer.median > 1.0))
    else:
        section.verdicts.append(Verdict("forward+backward faster than mambapy's parallel scan",
                                        "mambapy not installed", False, "Install mambapy to measure it."))

    for path in paths:
        vim_time = vim_step(ctx, path)
        section.notes.append(
            f"Vim-S training step (`{s.vim}`, random weights, Lily's Vim defaults, {s.img_size}px, "
            f"batch {s.vim_batch}, "
            f"forward + backward + AdamW, {'bf16 autocast' if ctx.cuda else 'fp32'}, {path} scan path): "
            f"{fmt_time(vim_time)} = {s.vim_batch / vim_time.median:.2f} images/s.")
    if not ctx.cuda and s.vim == "vim-s" and s.vim_batch == 8:
        section.notes.append(f"For scale: mambapy's bidirectional Vim block extrapolates to ~{VIM_PEER_STEP_S:.0f} s "
                             "per Vim-S step at batch 8 on this kind of CPU (an earlier measurement, not re-measured here).")
    return section


def vim_step(ctx: Context, path: str = "pytorch") -> Stats:
    s = ctx.sizes
    with forced_scan(path):
        model = apply_adapter(create_backbone(s.vim, NUM_CLASSES, img_size=s.img_size), "lily").to(ctx.device)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(s.vim_batch, 3, s.img_size, s.img_size, generator=g).to(ctx.device)
        labels = torch.randint(0, NUM_CLASSES, (s.vim_batch,), generator=g).to(ctx.device)
        ctx.log(f"item 4: Vim step ({path} scan)")
        times = measure({"vim": make_step(model, images, labels)}, ctx.device, warmup=s.warmup, reps=s.vim_reps,
                        log=ctx.log)
    return Stats.of(times["vim"])
