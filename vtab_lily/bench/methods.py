"""Item 7: a training step of every ViT baseline at its published setting, relative to LoRA.

The same random ViT-B/16 frozen tensors are shared by all models (only adapters and heads are
separate), steps are interleaved round by round, and each ratio is the median of paired
rounds against LoRA (r=8 on q,v) measured in the same run.
"""

from __future__ import annotations

from ..adapters import apply_adapter, count_parameters
from ..backbones import create_backbone
from .context import Context
from .report import Section, Verdict, fmt_time
from .timing import paired_ratio
from .train_steps import NUM_CLASSES, backbone_sharing, make_step, random_batch, time_steps

# label -> (adapter, options): the setting behind each method's published VTAB-1K parameter count
METHODS: dict[str, tuple[str, dict]] = {
    "LoRA r=8 q,v": ("lora", {"rank": 8, "targets": ("q", "v")}),
    "BitFit": ("bitfit", {}),
    "LN-tune": ("ln-tune", {}),
    "SSF": ("ssf", {}),
    "VPT-shallow (50 prompts)": ("vpt-shallow", {"length": 50}),
    "VPT-deep (50 prompts)": ("vpt-deep", {"length": 50}),
    "Houlsby r=8": ("houlsby", {}),
    "Pfeiffer r=8": ("pfeiffer", {}),
    "AdaptFormer r=8": ("adaptformer", {}),
    "Convpass r=8": ("convpass", {}),
    "RepAdapter r=8": ("repadapter", {}),
    "FacT-TT r=8": ("fact-tt", {"rank": 8}),
    "FacT-TK r=32": ("fact-tk", {"rank": 32}),
    "DoRA r=8 q,v": ("dora", {"rank": 8, "targets": ("q", "v")}),
    "Lily (paper setting)": ("lily", {}),
}
LORA = "LoRA r=8 q,v"
# The backbone's frozen forward and backward dominate a step; an adapter that makes the step more than
# this multiple of LoRA's is doing avoidable work (a place to optimise, not a wrong result).
MAX_VS_LORA = 3.0


def run(ctx: Context) -> Section:
    s = ctx.sizes
    section = Section(7, f"Baselines: training step relative to LoRA (batch {s.step_batch}, {s.img_size}px)")
    section.setting = (f"`{s.vit}` random weights shared by all models, {s.img_size}px, batch {s.step_batch}; "
                       f"{s.step_warmup} warm-up, {s.step_reps} interleaved repetitions; ratio = median over "
                       "paired rounds of (method step / LoRA step) in this run.")
    base = create_backbone(s.vit, NUM_CLASSES, img_size=s.img_size).to(ctx.device)
    images, labels = random_batch(ctx, s.step_batch)
    models, steps = {}, {}
    for label, (adapter, options) in METHODS.items():
        model = backbone_sharing(base, s.vit, s.img_size).to(ctx.device)
        models[label] = apply_adapter(model, adapter, **options)
        steps[label] = make_step(models[label], images, labels)
    ctx.log("item 7: baselines")
    stats, times, _ = time_steps(ctx, steps, s.step_reps)
    section.headers = ["method", "adapter params (no head)", "step time", "vs LoRA (paired median)"]
    ratios = {}
    for label, model in models.items():
        ratios[label] = paired_ratio(times[label], times[LORA]).median
        section.rows.append([label, f"{count_parameters(model)['adapter']:,}", fmt_time(stats[label]),
                             f"{ratios[label]:.2f}x"])
    slowest = max(ratios, key=ratios.get)
    section.verdicts.append(Verdict(f"every baseline's step <= {MAX_VS_LORA:g}x LoRA's (paired median)",
                                    f"slowest: {slowest} {ratios[slowest]:.2f}x", ratios[slowest] <= MAX_VS_LORA))
    return section
