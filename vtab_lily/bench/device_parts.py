"""The parts of the device check (``device_check.py``): each ``part(ctx, m, budget) -> lines``
records its figures in ``m`` and returns its report lines, or raises :class:`Skip` saying why it
cannot run in the time left. Random weights. Models are built, cast and stepped through the
training loop's own pieces (``train_setup``, ``train.evaluate``, ``precision.use_precision``,
``memory.MemoryMeter``), so the rates are the runner's. ``Scale`` holds the sizes: ``GPU`` for a
real check, ``SMOKE`` for ``--cpu-smoke`` (tiny models on a CPU, every part, in CI)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import train_setup
from ..adapters import apply_adapter
from ..backbones import create_backbone, kernels, scan_paths
from ..backbones.scan import selective_scan, selective_scan_ref
from ..data import SplitData, ensure_demo
from ..memory import MemoryMeter
from ..official import official_precision
from ..precision import autocast_dtype, device_has_tf32, use_precision
from ..train import evaluate
from .device_report import Budget, rate_rows, RATE_HEADERS, table
from .vim_scan import cuda_paths, forced_scan

ROOT = Path(__file__).resolve().parents[2]


class Skip(Exception):
    """A part (or one of its rows) that cannot run here or in the time left; the reason is reported."""


@dataclass(frozen=True)
class Scale:
    device: torch.device
    vit: str = "vit-b16-in21k"
    vim: str = "vim-s"
    img: int = 224
    classes: int = 100
    batch: int = 64
    eval_images: int = 2560
    eval_batches: tuple[int, ...] = (256, 1024)  # Lily's official batch; what other methods may use on a GPU
    scan: tuple[int, int, int] = (1536, 197, 16)  # Vim-S mixer: 2 x 768 channels, L, N
    warmup: int = 3
    reps: int = 10
    # Seconds a part or row is expected to take (a cold torch.compile of ViT-B is 60-150 s): it is
    # skipped, and says so, when less than that is left.
    cost: dict = field(default_factory=lambda: {"eager": 15, "compile": 120, "vim": 30, "syncs": 40,
                                                "resume": 60, "scan": 40})
    demo_args: tuple[str, ...] = ()  # extra options of the real loop's demo runs
    sync_epochs: tuple[int, int] = (2, 4)  # the two demo runs whose difference counts syncs per step
    smoke: bool = False


GPU = Scale(torch.device("cuda"))
SMOKE = replace(GPU, device=torch.device("cpu"), vit="vit-tiny-test", vim="vim-tiny-test", img=32, classes=4, batch=4,
                eval_images=8, eval_batches=(4, 8), scan=(8, 12, 4), warmup=1, reps=2,
                cost={k: 0 for k in GPU.cost}, demo_args=("--img-size", "16"), sync_epochs=(1, 2), smoke=True)


@dataclass
class Ctx:
    scale: Scale
    log: Callable[[str], None]
    tmp: Path

    @property
    def dev(self) -> torch.device:
        return self.scale.device

    @functools.cached_property
    def demo_root(self) -> Path:
        """The demo data, generated once for every part that runs the real loop."""
        root = self.tmp / "demo"
        ensure_demo(root)
        return root


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def empty_cache(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def need(budget: Budget, seconds: float, what: str) -> None:
    if budget.left() < seconds:
        raise Skip(f"{what}: needs about {seconds:.0f} s, {budget.left():.0f} s left")


def row_fits(ctx: Ctx, m: dict, budget: Budget, name: str, precision: str, cost: str) -> bool:
    """Whether a row can run here and now; if not, its reason goes into the report's skipped list."""
    why = f"no TF32 on {ctx.dev}" if precision in ("tf32", "tf32-conv") and not device_has_tf32(ctx.dev) else None
    try:
        need(budget, ctx.scale.cost[cost], name)
    except Skip as skip:
        why = why or str(skip)
    if why:
        m.setdefault("skipped", {})[name] = why
    return why is None


def timed(fn: Callable[[], object], dev: torch.device, budget: Budget, warmup: int, reps: int,
          share: float = 0.3) -> tuple[float, float]:
    """(median seconds per call after ``warmup`` calls, seconds the warm-up took); stops timing
    early past ``share`` of the budget left."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(dev)
    warm_s = time.perf_counter() - t0
    stop, times = time.monotonic() + share * budget.left(), []
    while len(times) < reps and (len(times) < 2 or time.monotonic() < stop):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), warm_s


def build(ctx: Ctx, name: str, precision: str) -> torch.nn.Module:
    """Backbone + Lily at its defaults (random weights) on the device, cast for ``precision`` by
    the training loop's own function."""
    torch.manual_seed(0)
    model = apply_adapter(create_backbone(name, ctx.scale.classes, img_size=ctx.scale.img), "lily").to(ctx.dev)
    train_setup.cast_for_precision(model, precision, ctx.dev)
    return model


def demo_split(ctx: Ctx, n: int) -> SplitData:
    g = torch.Generator().manual_seed(0)
    s = ctx.scale
    images = torch.randint(0, 256, (n, 3, s.img, s.img), dtype=torch.uint8, generator=g)
    return SplitData(images, torch.randint(0, s.classes, (n,), generator=g), normalize=False)


def measure(ctx: Ctx, model: torch.nn.Module, precision: str, budget: Budget, eval_batches=None) -> dict:
    """A training step as the loop takes it (a batch read from the device-resident split, autocast
    for bf16, fp32 cross-entropy, backward, fused AdamW on CUDA) and the loop's ``evaluate``;
    training memory with the data excluded (``MemoryMeter``), under ``precision``'s flags."""
    s, dev = ctx.scale, ctx.dev
    meter = MemoryMeter(dev)
    train_set, eval_set = meter.place(lambda split: train_setup.on_device(split, dev),
                                      demo_split(ctx, s.batch), demo_split(ctx, s.eval_images))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=dev.type == "cuda" or None)
    index = torch.arange(s.batch, device=train_set.images.device)
    dtype = autocast_dtype(precision)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        images, labels = train_set.batch(index, dev)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()

    with use_precision(precision):
        model.train()
        step_s, warm_s = timed(step, dev, budget, s.warmup, s.reps)
        record = {"precision": precision, "images_per_s": s.batch / step_s, "step_ms": 1000 * step_s,
                  "warmup_s": warm_s, "train_mib": meter.train_peak_mb(), "eval_by_batch": {}}
        for eval_batch in eval_batches or s.eval_batches:
            if budget.over():
                break
            run = functools.partial(evaluate, model, eval_set, eval_batch, dev, bf16=precision == "bf16")
            seconds, _ = timed(run, dev, budget, warmup=1, reps=3, share=0.2)
            record["eval_by_batch"][eval_batch] = s.eval_images / seconds
    record["eval_images_per_s"] = record["eval_by_batch"].get(s.eval_batches[0])
    return record


# ---- parts ---------------------------------------------------------------------------------------


def machine(ctx: Ctx, m: dict, budget: Budget) -> list[str]:
    import timm

    try:
        import triton

        triton_version = triton.__version__
    except Exception as err:  # the Triton parts will say so too
        triton_version = f"not importable ({type(err).__name__})"
    if ctx.dev.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.dev)
        gpu = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
               f"compute capability {props.major}.{props.minor}")
    else:
        gpu = f"none: CPU smoke run ({os.cpu_count()} cores), tiny models; no number here describes a GPU"
    m["machine"] = {"GPU": gpu, "Versions": f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA "
                    f"{torch.version.cuda}), timm {timm.__version__}, triton {triton_version}"}
    m["vit_default"] = official_precision("vit", device_has_tf32(ctx.dev))
    m["vim_default"] = official_precision("vim", device_has_tf32(ctx.dev))
    return ["Recorded in the header. Faithful default on this device: ViT "
            f"`{m['vit_default']}`, Vim `{m['vim_default']}` (docs/gpu.md)."]


# (setting, precision, what it is); TF32 rows only where the device has TF32.
EAGER_ROWS = [
    ("tf32-conv eager", "tf32-conv", "the code before issue 21 (its 'fp32': torch's CUDA defaults)"),
    ("fp32 eager", "fp32", "--precision fp32 (strict)"),
    ("tf32 eager", "tf32", "ViT's faithful default on a TF32 GPU"),
    ("bf16 eager", "bf16", "--precision bf16"),
]


def vit_eager(ctx: Ctx, m: dict, budget: Budget) -> list[str]:
    records = m.setdefault("vit", {})
    model = None
    for setting, precision, what in EAGER_ROWS:
        if not row_fits(ctx, m, budget, f"ViT {setting}", precision, "eager"):
            continue
        if precision == "bf16" or model is None:  # the fp32 weights serve every fp32/TF32 row
            model = build(ctx, ctx.scale.vit, precision)
        records[setting] = dict(measure(ctx, model, precision, budget), note=what)
        ctx.log(f"  {setting}: {records[setting]['images_per_s']:,.0f} train images/s")
    del model
    empty_cache(ctx.dev)
    return ["ViT-B/16 + Lily (r=32, ne=4, k,v,mlp), a training step as the loop takes it, and the loop's "
            "`evaluate` (eval rate at Lily's official batch 256 and at 1024, which other methods may use):", "",
            *table(RATE_HEADERS, rate_rows({k: r for k, r in records.items() if k.endswith("eager")}))]


def _compiled_rows(m: dict) -> list[tuple[str, str, str]]:
    default = m.get("vit_default", "tf32")
    return [(f"{default} compiled", default, "default"), ("bf16 compiled", "bf16", "default"),
            ("bf16 reduce-overhead", "bf16", "reduce-overhead"),
            (f"{default} reduce-overhead", default, "reduce-overhead")]


def vit_compiled(ctx: Ctx, m: dict, budget: Budget) -> list[str]:
    """The runner's own compile path (``train_setup.compile_model``), per precision and mode."""
    records, counters = m.setdefault("vit", {}), m.setdefault("dynamo", {})
    for setting, precision, mode in _compiled_rows(m):
        if not row_fits(ctx, m, budget, f"ViT {setting} (a cold compile)", precision, "compile"):
            continue
        # compile_model resets Dynamo and its counters; a CPU smoke run traces with the eager
        # backend (same capture and counters, no Inductor C++ build)
        model = train_setup.compile_model(build(ctx, ctx.scale.vit, precision), mode=mode,
                                          backend="eager" if ctx.scale.smoke else None)
        t0 = time.monotonic()
        record = measure(ctx, model, precision, budget, eval_batches=ctx.scale.eval_batches[:1])
        record.update(note=f"train_setup.compile_model(mode={mode!r})", compile_s=record["warmup_s"],
                      total_s=time.monotonic() - t0)
        records[setting] = record
        counters[setting] = train_setup.compile_counters()
        ctx.log(f"  {setting}: {record['images_per_s']:,.0f} train images/s, compile + warm-up {record['warmup_s']:.0f} s")
        del model
        empty_cache(ctx.dev)
    compiled = {k: r for k, r in records.items() if "compiled" in k or "reduce-overhead" in k}
    lines = ["ViT-B/16 + Lily through `train_setup.compile_model` (the runner's `--compile`), training and "
             "evaluation compiled; `compile s`: the warm-up steps, the compilation included.", "",
             *table(RATE_HEADERS, rate_rows(compiled))]
    lines += ["Dynamo counters per setting (frames compiled, graph breaks, recompiles):", ""]
    lines += [f"- {k}: `{json.dumps(v, sort_keys=True)}`" for k, v in counters.items()] or ["- none"]
    return lines


def vim(ctx: Ctx, m: dict, budget: Budget) -> list[str]:
    """Vim-S + Lily per scan path at the faithful default and in bf16: the Vim target's rates."""
    records = m.setdefault("vim", {})
    paths = cuda_paths(ctx.dev)
    if ctx.scale.smoke:
        paths = ["pytorch"]
    lines = [f"Kernel paths chosen on this device (auto): `{scan_paths(ctx.dev)}`; unavailable: "
             f"{kernels.kernel_notes() or 'none'}.", ""]
    for precision in (m.get("vim_default", "fp32"), "bf16"):
        for path in paths:
            setting = f"{path} {precision}"
            if not row_fits(ctx, m, budget, f"Vim {setting}", precision, "vim"):
                continue
            with forced_scan(path):
                model = build(ctx, ctx.scale.vim, precision)
                record = measure(ctx, model, precision, budget, eval_batches=ctx.scale.eval_batches[:1])
            records[setting] = dict(record, scan=path, note=f"{path} scan")
            del model
            empty_cache(ctx.dev)
    return lines + ["Vim-S + Lily (Vim defaults: token routing), per scan path:", "",
                    *table(RATE_HEADERS, rate_rows(records))]


def host_syncs(ctx: Ctx, m: dict, budget: Budget) -> list[str]:
    """Syncs per training step of the real loop: two tiny demo runs differing only in epochs."""
    from ..run import main as run_main

    need(budget, ctx.scale.cost["syncs"], "host syncs")
    counts, threads = {}, torch.get_num_threads()
    first, second = ctx.scale.sync_epochs
    for epochs in (first, second):
        argv = [*_tiny_run(ctx), "--out", str(ctx.tmp / f"syncs{epochs}"), "--epochs", str(epochs),
                "--eval-every", str(epochs)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if ctx.dev.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with contextlib.redirect_stdout(sys.stderr):  # stdout is the report's
                    code = run_main(argv)
            finally:
                if ctx.dev.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
                torch.set_num_threads(threads)
        if code != 0:
            raise RuntimeError(f"the demo run {' '.join(argv)} exited {code}")
        counts[epochs] = sum("synchroniz" in str(w.message) for w in caught)
    steps = (second - first) * (1000 // 64)  # demo epochs: 1,000 images in batches of 64, drop_last: 15 steps
    m["syncs_per_step"] = per_step = (counts[second] - counts[first]) / steps
    return [f"Real training loop (`python -m vtab_lily.run`, demo task), counted with "
            f"`torch.cuda.set_sync_debug_mode('warn')`: {counts[first]} syncs in a {first}-epoch run, "
            f"{counts[second]} in a {second}-epoch run with the same one evaluation, so **{per_step:.2f} host "
            "syncs per training step** "
            "(per-epoch checks included, amortised over the epoch's 15 steps)."
            + (" (CPU: nothing is counted.)" if ctx.dev.type != "cuda" else "")]


def _tiny_run(ctx: Ctx) -> list[str]:
    return ["--demo", "--backbone", "vit", "--adapter", "lily", "--task", "colours", "--device", ctx.dev.type,
            "--no-tensorboard", "--data-root", str(ctx.demo_root), *ctx.scale.demo_args]


def kill_resume(ctx: Ctx, m: dict, budget: Budget) -> list[str]:
    """SIGKILL a tiny run at its 20th step, rerun it, compare with an uninterrupted run."""
    need(budget, ctx.scale.cost["resume"], "kill -9 and resume")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("VTAB_LILY_FAULT", None)
    demo = _tiny_run(ctx)

    def run(out: str, fault: str | None = None) -> int:
        argv = [sys.executable, "-m", "vtab_lily.run", *demo, "--out", str(ctx.tmp / out), "--epochs", "2",
                "--eval-every", "1"]
        extra = {"VTAB_LILY_FAULT": fault} if fault else {}
        proc = subprocess.run(argv, env={**env, **extra}, capture_output=True, text=True,
                              timeout=max(10.0, budget.left()))
        if proc.returncode not in (0, -9):
            ctx.log(proc.stderr[-2000:])
        return proc.returncode

    killed = run("resumed", "train_step:20")
    resumed = run("resumed")
    reference = run("reference")
    acc = {}
    for out in ("resumed", "reference"):
        found = list((ctx.tmp / out).rglob("result.json"))
        acc[out] = json.loads(found[0].read_text())["accuracy"] if found else None
    same = acc["resumed"] is not None and acc["resumed"] == acc["reference"]
    m["resume"] = {"killed_exit": killed, "resumed_exit": resumed, "same_result": same}
    ok = killed == -9 and resumed == 0 and acc["resumed"] is not None
    return [f"Demo run (2 epochs x 15 steps) with `VTAB_LILY_FAULT=train_step:20`: exit {killed} "
            f"(-9 = killed), rerun exit {resumed}, result {'written' if acc['resumed'] else 'MISSING'}. "
            f"**Resume: {'PASS' if ok else 'FAIL'}**. Accuracy resumed {acc['resumed']} vs uninterrupted "
            f"{acc['reference']} (exit {reference}): {'identical' if same else 'DIFFERENT'} (bit-identity also "
            "needs deterministic CUDA kernels)."]


def scan_inputs(ctx: Ctx, b: int, groups: int = 2) -> dict:
    """The Vim mixer's scan: both directions as two groups of B/C."""
    d, length, n = ctx.scale.scan
    g = torch.Generator().manual_seed(0)
    t = {"u": torch.randn(b, d, length, generator=g), "delta": torch.randn(b, d, length, generator=g) * 0.5 - 1,
         "A": -torch.exp(torch.randn(d, n, generator=g) * 0.5), "B": torch.randn(b, groups, n, length, generator=g),
         "C": torch.randn(b, groups, n, length, generator=g), "D": torch.randn(d, generator=g),
         "z": torch.randn(b, d, length, generator=g), "delta_bias": torch.randn(d, generator=g) * 0.5}
    return {k: v.to(ctx.dev).requires_grad_() for k, v in t.items()}


def triton_scan(ctx: Ctx, m: dict, budget: Budget) -> list[str]:
    """The Triton scan against the reference on the device (forward and every gradient, i.e. the
    reverse scan too) and its speed beside the other paths."""
    need(budget, ctx.scale.cost["scan"], "the Triton scan")
    fn = kernels.triton_scan_fn() if not ctx.scale.smoke else selective_scan_ref
    if fn is None:
        raise RuntimeError(kernels.kernel_notes().get("triton", "triton does not import"))
    x = scan_inputs(ctx, 4)
    out, ref = fn(**x, delta_softplus=True), selective_scan_ref(**x, delta_softplus=True)
    w = torch.randn_like(ref)
    got = torch.autograd.grad((out * w).sum(), list(x.values()))
    want = torch.autograd.grad((ref * w).sum(), list(x.values()))
    errors = {"output": (out - ref).abs().max().item(), **{f"d{k}": (a - b).abs().max().item()
                                                          for k, a, b in zip(x, got, want)}}
    scale = {"output": ref.abs().max().item(), **{f"d{k}": b.abs().max().item() for k, b in zip(x, want)}}
    m["triton_errors"] = errors
    from ..backbones import scan_triton

    d, length, n = ctx.scale.scan
    lines = [("CPU smoke: the reference stands in for the kernel. " if ctx.scale.smoke else "")
             + f"Triton scan vs the reference loop on the device, fp32 (b=4, {d} channels as two groups, L={length}, "
             f"N={n}, with D, z, delta_bias, softplus); the gradients run the backward's reverse scan "
             f"({'flip-based: the reverse form failed its test call' if scan_triton.REVERSE_BY_FLIP else 'reverse form'}):",
             "", *table(["tensor", "max abs error", "max abs value"],
                        [[k, f"{v:.2e}", f"{scale[k]:.2e}"] for k, v in errors.items()])]
    x = scan_inputs(ctx, ctx.scale.batch)
    dy = torch.randn(ctx.scale.batch, d, length, device=ctx.dev)
    times = {}
    for path in cuda_paths(ctx.dev):
        if budget.over():
            break
        with forced_scan(path):

            def go():
                selective_scan(**x, delta_softplus=True).backward(dy)
                for t in x.values():
                    t.grad = None

            times[path], _ = timed(go, ctx.dev, budget, warmup=1, reps=5, share=0.3)
    m["scan_ms"] = {k: 1000 * v for k, v in times.items()}
    lines += [f"Forward + backward at b={ctx.scale.batch}: " + ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in times.items())]
    if "pytorch" in times and "triton" in times:
        lines.append(f"- Triton vs chunked PyTorch: {times['pytorch'] / times['triton']:.1f}x faster")
    if "mamba_ssm" in times and "triton" in times:
        lines.append(f"- Triton vs mamba-ssm: {times['triton'] / times['mamba_ssm']:.2f}x its time")
    return lines


# (title, part), in the order they run: what the targets need first, the open-ended compile last.
PARTS = [
    ("Machine", machine),
    ("ViT-B/16 + Lily: training and evaluation, eager, per precision", vit_eager),
    ("Vim-S + Lily per scan path", vim),
    ("Triton selective scan on the GPU", triton_scan),
    ("Host syncs per training step", host_syncs),
    ("kill -9 and resume", kill_resume),
    ("ViT-B/16 + Lily compiled (the runner's compile path)", vit_compiled),
]


def new_context(scale: Scale, log: Callable[[str], None]) -> Ctx:
    return Ctx(scale, log, Path(tempfile.mkdtemp(prefix="device-check-")))
