"""Items 2 and 3: training steps of ViT-B/16 with each adapter, and ours vs HF PEFT's Lily.

Every model is a randomly initialised ViT-B/16 (no weights are downloaded). The models of one
comparison share their frozen backbone tensors (only adapters and heads are separate), so
five models fit in memory and can be timed side by side. A step is what ``train.py`` does
per batch: zero the gradients, forward (bf16 autocast on CUDA), cross-entropy, backward,
AdamW step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import apply_adapter, count_parameters
from ..backbones import create_backbone
from .context import Context
from .report import Section, fmt_time, ratio_verdict
from .timing import Stats, measure, paired_ratio, peak_memory_during

NUM_CLASSES = 100
LILY_VS_LORA = 1.10  # Lily's step time may be at most this multiple of LoRA's (equal rank and targets)
# Paired rounds of two identical configurations spread by about +-2..4 % on a CPU step: a difference
# below this is reported as a tie (the target itself stays strict: median PEFT/ours >= 1).
NOISE = 0.02

# Item 2: the paper's settings (published parameter counts: LoRA 0.29M, AdaptFormer 0.16M, Lily 0.79M)
# and Lily at LoRA's rank and targets.
STEP_CONFIGS: dict[str, tuple[str, dict]] = {
    "head only (linear probe)": ("linear", {}),
    "LoRA r=8 on q,v": ("lora", {"rank": 8, "targets": ("q", "v")}),
    "AdaptFormer r=8 (s=0.1)": ("adaptformer", {"rank": 8}),
    "Lily paper: r=32, ne=4, k,v,mlp": ("lily", {}),
    "Lily at LoRA's setting: r=8, ne=4, q,v": ("lily", {"rank": 8, "ne": 4, "targets": ("q", "v")}),
}
LORA_ROW, LILY_EQUAL_ROW = "LoRA r=8 on q,v", "Lily at LoRA's setting: r=8, ne=4, q,v"

# Item 3: the setting HF PEFT's Lily can express (whole nn.Linear targets, batch routing).
PEFT_RANK, PEFT_STRIDE, PEFT_EXPERTS, PEFT_TARGET = 16, 3, 4, "qkv"


def backbone_sharing(base: nn.Module, name: str, img_size: int) -> nn.Module:
    """A fresh backbone whose parameters (head excepted) are ``base``'s tensors."""
    model = create_backbone(name, NUM_CLASSES, img_size=img_size)
    shared = dict(base.named_parameters())
    head = {id(p) for p in model.get_classifier().parameters()}
    for pname, param in model.named_parameters():
        if id(param) not in head:
            param.data = shared[pname].data
    return model


def make_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One optimizer step on a fixed batch, as the training loop does it."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    cuda = images.is_cuda
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()

    return step


def random_batch(ctx: Context, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, ctx.sizes.img_size, ctx.sizes.img_size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return images.to(ctx.device), labels.to(ctx.device)


def time_steps(ctx: Context, steps: dict[str, Callable[[], None]], reps: int) -> tuple[dict[str, Stats], dict, dict]:
    """Step times (interleaved), per-round times and peak memory of each step function."""
    times = measure(steps, ctx.device, warmup=ctx.sizes.step_warmup, reps=reps, log=ctx.log)
    memory = {}
    for name, step in steps.items():
        memory[name] = peak_memory_during(step, ctx.device)
    return {n: Stats.of(t) for n, t in times.items()}, times, memory


def run_adapters(ctx: Context) -> Section:
    """Item 2."""
    s = ctx.sizes
    section = Section(2, f"Training step of ViT-B/16 per adapter (batch {s.step_batch}, {s.img_size}px)")
    section.setting = (f"`{s.vit}` with random weights, {s.img_size}px, batch {s.step_batch}, "
                       f"{'bf16 autocast' if ctx.cuda else 'fp32'}; forward + backward + AdamW step; "
                       f"{s.step_warmup} warm-up, {s.step_reps} interleaved repetitions.")
    base = create_backbone(s.vit, NUM_CLASSES, img_size=s.img_size).to(ctx.device)
    images, labels = random_batch(ctx, s.step_batch)
    models, steps = {}, {}
    for label, (adapter, config) in STEP_CONFIGS.items():
        model = backbone_sharing(base, s.vit, s.img_size).to(ctx.device)
        models[label] = apply_adapter(model, adapter, **config)
        steps[label] = make_step(models[label], images, labels)
    ctx.log("item 2: training steps")
    stats, times, memory = time_steps(ctx, steps, s.step_reps)
    lora = stats[LORA_ROW].median
    section.headers = ["adapter", "trainable params (adapter + head)", "step time", "vs LoRA", "images/s",
                       "peak memory MiB"]
    for label, model in models.items():
        params = count_parameters(model)
        section.rows.append([label, f"{params['adapter']:,} + {params['head']:,}", fmt_time(stats[label]),
                             f"{stats[label].median / lora:.2f}x", f"{s.step_batch / stats[label].median:.1f}",
                             f"{memory[label][0]:.0f}"])
    ratio = paired_ratio(times[LILY_EQUAL_ROW], times[LORA_ROW])
    section.verdicts.append(ratio_verdict(
        f"Lily step time <= {LILY_VS_LORA:.2f}x LoRA's at equal rank and targets (r=8, q,v; HF PEFT's Lily: 1.15x)",
        ratio, LILY_VS_LORA, at_most=True))
    section.notes.append(f"Peak memory: {next(iter(memory.values()))[1]}; measured on one extra step after timing.")
    section.notes.append("The paper-setting Lily adapts more (k, v and a parallel MLP adapter at 2r=64), so it is "
                         "compared with LoRA for information only.")
    return section


def peft_lily_model(base: nn.Module, ctx: Context) -> nn.Module:
    """HF PEFT's Lily on a ViT sharing ``base``'s frozen weights, head trainable."""
    import peft

    s = ctx.sizes
    model = backbone_sharing(base, s.vit, s.img_size)
    config = peft.LilyConfig(r=PEFT_RANK, stride_A=PEFT_STRIDE, num_B=PEFT_EXPERTS, scaling=1.0,
                             target_modules=[PEFT_TARGET], modules_to_save=["head"])
    return peft.get_peft_model(model, config).to(ctx.device)


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_peft(ctx: Context) -> Section:
    """Item 3."""
    s = ctx.sizes
    section = Section(3, "Our Lily vs HF PEFT's Lily (training step)")
    section.setting = (f"`{s.vit}` random weights, {s.img_size}px, batch {s.step_batch}; Lily on `{PEFT_TARGET}` "
                       f"(whole Linear, as PEFT needs), r={PEFT_RANK}, stride_A={PEFT_STRIDE} (ne_a="
                       f"{{depth}}/{PEFT_STRIDE}), {PEFT_EXPERTS} B experts, per-layer routers, `batch` routing, "
                       f"scale 1; head trainable in both; {s.step_warmup} warm-up, {s.peft_reps} interleaved "
                       "repetitions.")
    try:
        import peft
    except ImportError:
        section.error = "peft is not installed (`pip install peft`): nothing to compare with"
        return section
    if not hasattr(peft, "LilyConfig"):
        section.error = f"peft {peft.__version__} has no LilyConfig (needs >= 0.19)"
        return section
    base = create_backbone(s.vit, NUM_CLASSES, img_size=s.img_size).to(ctx.device)
    depth = len(base.blocks)
    section.setting = section.setting.replace("{depth}", str(depth))
    ours = backbone_sharing(base, s.vit, s.img_size).to(ctx.device)
    apply_adapter(ours, "lily", rank=PEFT_RANK, ne_a=-(-depth // PEFT_STRIDE), ne_b=PEFT_EXPERTS,
                  targets=(PEFT_TARGET,), router="per_site", routing="batch")
    theirs = peft_lily_model(base, ctx)
    images, labels = random_batch(ctx, s.step_batch)
    steps = {"ours (vtab_lily)": make_step(ours, images, labels), "HF PEFT": make_step(theirs, images, labels)}
    ctx.log("item 3: ours vs PEFT")
    stats, times, memory = time_steps(ctx, steps, s.peft_reps)
    section.headers = ["implementation", "trainable params", "step time", "images/s", "peak memory MiB"]
    for label, model in (("ours (vtab_lily)", ours), ("HF PEFT", theirs)):
        section.rows.append([label, f"{trainable_count(model):,}", fmt_time(stats[label]),
                             f"{s.step_batch / stats[label].median:.1f}", f"{memory[label][0]:.0f}"])
    ratio = paired_ratio(times["HF PEFT"], times["ours (vtab_lily)"])
    faster = (ratio.median - 1) * 100
    verdict = f"{abs(faster):.1f}% {'faster' if faster >= 0 else 'slower'}"
    if abs(faster) < NOISE * 100:
        verdict += f", a tie within the {NOISE:.0%} noise"
    mem_ours, mem_peft = memory["ours (vtab_lily)"][0], memory["HF PEFT"][0]
    section.verdicts.append(ratio_verdict(
        "ours no slower than HF PEFT (median PEFT time / ours >= 1)", ratio, 1.0, at_most=False,
        note=f"Ours is {verdict} (median of paired rounds); peak memory {mem_ours:.0f} vs {mem_peft:.0f} MiB."))
    if trainable_count(ours) != trainable_count(theirs):
        section.notes.append("The trainable parameter counts differ: the two configurations are not identical.")
    section.notes.append(f"Peak memory: {memory['HF PEFT'][1]}; measured on one extra step after timing.")
    return section
