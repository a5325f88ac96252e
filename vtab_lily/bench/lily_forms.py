"""Item 1: Lily's efficient form (Eq. 3, combine the experts first) vs the expert-by-expert mixture."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.lily import LilyDelta, LilyExperts
from .context import Context
from .report import Section, Verdict, fmt_ratio, fmt_time
from .timing import Stats, measure, paired_ratio

TARGET = 3.0  # efficient / naive speed-up at the largest token count


def make_site(width: int, rank: int, experts: int) -> LilyDelta:
    """One Lily site (own A, experts, per-site router, per-example routing) with random B."""
    lily_b = LilyExperts(experts, rank, width)
    nn.init.normal_(lily_b.weight, std=0.02)  # zeros would be just as fast; keep it realistic
    return LilyDelta("bench", nn.Linear(width, rank, bias=False), lily_b, nn.Linear(rank, experts, bias=False),
                     scale=1.0, routing="sample", relu=False, out_slice=None)


def run(ctx: Context) -> Section:
    s = ctx.sizes
    section = Section(1, "Lily: efficient form vs naive expert-by-expert mixture (forward+backward)")
    section.setting = (f"One Lily site (`LilyDelta`, per-example routing) at C={s.lily_width}, r={s.lily_rank}, "
                       f"ne={s.lily_experts}, batch {s.lily_batch}; forward + backward to x, A, router and B; "
                       f"{s.warmup} warm-up, {s.lily_reps} interleaved repetitions.")
    section.headers = ["tokens N", "efficient", "naive", "speed-up (naive / efficient)", "B-part FLOP ratio"]
    site = make_site(s.lily_width, s.lily_rank, s.lily_experts).to(ctx.device)
    last = None
    for tokens in s.lily_tokens:
        x = torch.randn(s.lily_batch, tokens, s.lily_width, device=ctx.device, requires_grad=True)
        grad = torch.randn(s.lily_batch, tokens, s.lily_width, device=ctx.device)

        def step(naive: bool) -> None:
            site.naive = naive
            site(x).backward(grad)
            x.grad = None
            site.zero_grad(set_to_none=True)

        ctx.log(f"item 1: N={tokens}")
        times = measure({"efficient": lambda: step(False), "naive": lambda: step(True)}, ctx.device,
                        warmup=s.warmup, reps=s.lily_reps, log=ctx.log)
        ratio = paired_ratio(times["naive"], times["efficient"])
        section.rows.append([tokens, fmt_time(Stats.of(times["efficient"])), fmt_time(Stats.of(times["naive"])),
                             fmt_ratio(ratio), f"{flop_ratio(tokens, s.lily_rank, s.lily_width, s.lily_experts):.2f}x"])
        last = (tokens, ratio)
    tokens, ratio = last
    section.verdicts.append(Verdict(f"efficient >= {TARGET:.0f}x faster than naive at N={tokens}",
                                    fmt_ratio(ratio), ratio.median >= TARGET))
    section.notes.append("B-part FLOP ratio: multiply-adds of the naive B products plus mixing, over the "
                         "efficient combine + one product (forward only; A and router are common to both).")
    return section


def flop_ratio(tokens: int, rank: int, width: int, experts: int) -> float:
    """Naive (ne products N x r x C, ne scaled adds of N x C) over efficient (combine ne x r x C, one product)."""
    naive = experts * tokens * rank * width + 2 * experts * tokens * width
    efficient = experts * rank * width + tokens * rank * width
    return naive / efficient
