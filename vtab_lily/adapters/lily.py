"""Lily: low-rank interconnected adaptation across layers (arXiv 2407.09946, Sec. 3 and App. A).

For an adapted target ``y = x W0`` at block l::

    x'    = dropout(act(x A_g(l)))        A: C_in x r, shared by a group of neighbouring blocks
    S     = route(x' R^T)                 R: ne_b x r, a router (per site, single, or none)
    x_d   = x' (sum_i S_i B_i)            B_i: r x C_out, ne_b experts shared by all blocks
    y     = x W0 + s * x_d

A and B are shared *per target kind* (``k`` layers share among themselves, never with ``v``).
The ``mlp`` target is a parallel adapter around the whole MLP block with hidden size 2r and a
ReLU after A (the router reads the post-ReLU features), as in the official ViT code.

Efficient forms, never an expert-by-expert loop: with one weight vector per example (or per
call) the experts are combined first (Eq. 3: one r x C_out matrix each), then one matmul; with
per-token weights (``token`` routing) each token's features are spread over the experts,
``x'_e = S_e x'`` flattened to ne_b*r, then one matmul against the stacked B (ne_b*r x C_out).
``naive = True`` on a ``LilyDelta`` selects the expert-by-expert mixture (tests, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vtab_lily.adapters.targets import (
    TARGETS,
    check_targets,
    model_depth,
    model_family,
    nested_per_target,
    resolve_sites,
    set_submodule,
)
from vtab_lily.adapters.wrappers import AdapterModule, ParallelAdapter, adapted_linear_at
from vtab_lily.errors import UserError, unknown_name
from vtab_lily.options import setting

ROUTERS = ("per_site", "single", "none")
ROUTINGS = ("token", "batch", "sample", "eq2")
A_GROUPINGS = ("stride", "balanced")
PER_TARGET_KEYS = ("rank", "ne_a", "ne_b", "dropout")

# Vim presets (paper App. B.1.3; "l" is the official lily.sh run: in_proj rank 8 with 5 experts,
# dt_proj rank 4 with one expert). Top-level values, then per-target overrides.
VIM_VARIANTS: dict[str, dict[str, Any]] = {
    "l": {"rank": 8, "ne_b": 5, "per_target": {"dt_proj": {"rank": 4, "ne_b": 1, "dropout": 0.0}}},
    "s": {"rank": 4, "ne_b": 3, "per_target": {"dt_proj": {"rank": 4, "ne_b": 1, "dropout": 0.0}}},
    "custom": {"rank": 8, "ne_b": 5, "per_target": {}},
}


@dataclass
class LilyConfig:
    """Lily settings; ``None`` fields take the backbone family's default (see ``resolve``).

    - ``rank`` r (the ``mlp`` target uses 2r).
    - ``ne`` sets both ``ne_a`` and ``ne_b`` (as the paper and the official ``--ne``).
    - ``ne_a``: A sharing per target kind, read through ``a_grouping``.
    - ``a_grouping``: ``stride`` (default, the official code's rule: a new A every
      ``depth // ne_a`` blocks, so ne_a groups when ne_a divides the depth, otherwise more:
      12 blocks, ne_a=5 -> 6 groups of 2; 7..12 -> 12 groups of 1), or ``balanced`` (exactly
      ne_a contiguous groups, sizes differing by at most one, larger first: 12, 5 -> 3,3,2,2,2).
      Both give the same groups when ne_a divides the depth; ``balanced`` is then recorded as
      ``stride`` (one run, one label).
    - ``ne_b``: number of B experts per target kind, shared by all blocks.
    - ``scale`` s multiplies the update directly (no alpha/r).
    - ``targets``: ViT ``q, k, v, qkv, proj, fc1, fc2, mlp``; Vim ``in_proj, x_proj, dt_proj,
      out_proj`` (x_proj/dt_proj adapt both scan directions, as separate kinds).
    - ``router``: ``per_site`` (a Linear(r, ne_b) per block and kind), ``single`` (one per kind,
      bound to B), ``none`` (uniform average of the experts: the no-selectivity ablation).
    - ``routing``: ``token`` (each token its own softmax weights; official on Vim), ``batch``
      (official ViT code and HF PEFT: the token softmax averaged over batch and tokens, one
      vector per forward call, so predictions depend on the batch), ``sample`` (per example:
      mean over its tokens), ``eq2`` (paper Eq. 2: softmax of the token-summed logits).
    - ``dropout`` on the A output, before router and B (official Vim: 0.1 on in_proj only).
    - ``variant`` (Vim only): ``l`` (default, the official script), ``s`` (Lily-S: rank 4, 3
      experts), ``custom`` (no per-target presets). Explicit fields override the preset.
    - ``per_target``: overrides ``{"dt_proj": {"rank": 4, "ne_b": 1}}`` (keys rank, ne_a, ne_b,
      dropout; or flat ``{"dt_proj.rank": 4}``), merged over the variant's. Resolved, it lists
      every target.
    A kind with a single expert has no router.

    Family defaults: ViT ``k, v, mlp``, r=32, ne=4, per-site routers, batch routing, no dropout
    (the official VTAB code). Vim (variant ``l``): ``in_proj, dt_proj``, ne_a=depth (no A
    sharing), single router, token routing, dropout 0.1, in_proj r=8 with 5 experts, dt_proj
    r=4 with one expert and no dropout (the official Vim-S setup, 145,960 parameters).
    """

    rank: int | None = None
    ne: int | None = None
    ne_a: int | None = None
    ne_b: int | None = None
    scale: float = 1.0
    targets: tuple[str, ...] | None = None
    router: str | None = None
    routing: str | None = None
    dropout: float | None = None
    variant: str | None = None
    per_target: dict[str, dict[str, Any]] | None = None
    # Added after runs were recorded with balanced groups: runs whose ne_a divides the depth
    # (the same groups under both rules) keep their hashes; for other ne_a the default changed.
    a_grouping: str = setting("stride", unrecorded_default=True,
                              help="stride (the official depth // ne_a rule) or balanced (exactly ne_a groups)")

    def resolve(self, model: nn.Module) -> "LilyConfig":
        """A copy with every default filled in for ``model`` and ``per_target`` covering all targets."""
        family = model_family(model)
        depth = model_depth(model)
        vim = family == "vim"
        if vim:
            variant = self.variant or "l"
            if variant not in VIM_VARIANTS:
                raise unknown_name("lily variant for a vim backbone", variant, VIM_VARIANTS)
            preset = VIM_VARIANTS[variant]
        else:
            if self.variant is not None:
                raise UserError(f"lily: variant {self.variant!r} is for Vim (s, l, custom); a ViT has one "
                                "official setup, set rank/ne/targets directly")
            variant, preset = None, {"rank": 32, "ne_b": 4, "per_target": {}}
        rank = _first(self.rank, preset["rank"])
        ne_a = _first(self.ne_a, self.ne, depth if vim else 4)
        ne_b = _first(self.ne_b, self.ne, preset["ne_b"])
        default = ("in_proj", "dt_proj") if vim else ("k", "v", "mlp")
        targets = check_targets(family, default if self.targets is None else self.targets, "lily")  # () is refused
        router = self.router or ("single" if vim else "per_site")
        routing = self.routing or ("token" if vim else "batch")
        dropout = _first(self.dropout, 0.1 if vim else 0.0)
        if router not in ROUTERS:
            raise unknown_name("lily router", router, ROUTERS)
        if routing not in ROUTINGS:
            raise unknown_name("lily routing", routing, ROUTINGS)
        if self.a_grouping not in A_GROUPINGS:
            raise unknown_name("lily a_grouping", self.a_grouping, A_GROUPINGS)
        if not _number(self.scale) or not 0 <= self.scale < float("inf"):
            raise UserError(f"lily: scale must be a number >= 0, got {self.scale!r}")
        overrides = {t: dict(v) for t, v in preset["per_target"].items()}
        for target, values in nested_per_target(self.per_target, "lily").items():
            if target not in TARGETS[family]:
                raise unknown_name(f"lily per_target target for a {family} backbone", target, TARGETS[family])
            if target not in targets:
                raise UserError(f"lily: per_target names {target!r}, which is not among the targets {list(targets)}")
            for key in values:
                if key not in PER_TARGET_KEYS:
                    raise unknown_name(f"lily per_target key (target {target!r})", key, PER_TARGET_KEYS)
            overrides.setdefault(target, {}).update(values)
        per_target = {}
        for target in targets:
            plan = {"rank": rank, "ne_a": ne_a, "ne_b": ne_b, "dropout": dropout, **overrides.get(target, {})}
            _check_plan(target, plan, depth)
            plan["dropout"] = float(plan["dropout"])
            per_target[target] = plan
        grouping = self.a_grouping
        if all(a_groups(depth, p["ne_a"], grouping) == a_groups(depth, p["ne_a"], "stride")
               for p in per_target.values()):
            grouping = "stride"  # the same blocks share each A: the default's run, not a variant
        return replace(self, rank=rank, ne_a=ne_a, ne_b=ne_b, ne=None, targets=tuple(targets), router=router,
                       routing=routing, dropout=float(dropout), variant=variant, per_target=per_target,
                       scale=float(self.scale), a_grouping=grouping)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_plan(target: str, plan: dict[str, Any], depth: int) -> None:
    dropout = plan["dropout"]
    if not _number(dropout) or not 0.0 <= dropout < 1.0:
        raise UserError(f"lily ({target}): dropout must be a number in [0, 1), got {dropout!r}")
    for key in ("rank", "ne_a", "ne_b"):
        value = plan[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"lily ({target}): {key} must be an integer >= 1, got {value!r}")
    if plan["ne_a"] > depth:
        raise UserError(f"lily ({target}): ne_a={plan['ne_a']} A groups exceed the model depth {depth}")


def a_groups(depth: int, ne_a: int, grouping: str = "stride") -> list[list[int]]:
    """The blocks sharing each A, in order, for ``ne_a`` under ``grouping`` (see ``LilyConfig``).

    ``stride`` is the official ViT code's rule written for any depth: a new A starts at every
    block index that is a multiple of ``depth // ne_a`` (its 12 is the ViT-B depth), so a last
    group may be shorter (7 blocks, ne_a=2 -> 3,3,1).
    """
    if grouping == "balanced":
        return balanced_groups(depth, ne_a)
    if not 1 <= ne_a <= depth:
        raise UserError(f"lily: ne_a must be between 1 and the depth {depth}, got {ne_a}")
    stride = depth // ne_a
    return [list(range(start, min(start + stride, depth))) for start in range(0, depth, stride)]


def balanced_groups(depth: int, groups: int) -> list[list[int]]:
    """Contiguous block groups of sizes differing by at most one, larger ones first."""
    if not 1 <= groups <= depth:
        raise UserError(f"lily: number of A groups must be between 1 and the depth {depth}, got {groups}")
    size, extra = divmod(depth, groups)
    out, start = [], 0
    for g in range(groups):
        stop = start + size + (1 if g < extra else 0)
        out.append(list(range(start, stop)))
        start = stop
    return out


class LilyExperts(AdapterModule):
    """The ne_b B experts of one target kind, stacked as ``weight`` (ne_b, r, C_out); zero-init."""

    def __init__(self, experts: int, rank: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(experts, rank, out_features))

    def extra_repr(self) -> str:
        return "experts={}, rank={}, out_features={}".format(*self.weight.shape)


class LilyDelta(AdapterModule):
    """Lily's update at one site: ``s * x' (sum_i S_i B_i)`` with ``x' = dropout(act(A x))``.

    ``lily_A`` (nn.Linear, shared by the block group), ``lily_B`` (LilyExperts, shared by all
    blocks of the kind) and ``lily_router`` (own, shared, or None) are module references, so
    sharing is by object identity. The mean expert weights of the forward passes since the
    last ``reset_router_weights`` accumulate in two small non-persistent buffers.
    """

    def __init__(self, site_name: str, lily_A: nn.Linear, lily_B: LilyExperts, lily_router: nn.Linear | None,
                 scale: float, routing: str, relu: bool, out_slice: tuple[int, int] | None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.site_name = site_name
        self.lily_A = lily_A
        self.lily_B = lily_B
        self.lily_router = lily_router
        self.scale = scale
        self.routing = routing
        self.relu = relu
        self.out_slice = out_slice
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.naive = False  # True: expert-by-expert mixture (reference path)
        experts = lily_B.weight.shape[0]
        self.register_buffer("weight_sum", torch.zeros(experts), persistent=False)
        self.register_buffer("weight_count", torch.zeros(()), persistent=False)

    def expert_weights(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, ne_b) for ``token`` routing, (batch, ne_b) per example, (ne_b,) for
        ``batch`` routing or no router."""
        experts = self.lily_B.weight.shape[0]
        if self.lily_router is None:
            return hidden.new_full((experts,), 1.0 / experts)
        logits = self.lily_router(hidden)  # (batch, tokens, ne_b)
        if self.routing == "token":
            return F.softmax(logits, dim=-1)
        if self.routing == "sample":
            return F.softmax(logits, dim=-1).mean(dim=1)
        if self.routing == "eq2":
            return F.softmax(logits.sum(dim=1), dim=-1)
        return F.softmax(logits, dim=-1).mean(dim=(0, 1))  # "batch"

    def add_to(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # baddbmm/addmm add the update to the layer's output inside the matmul: one pass fewer
        # over a (batch, tokens, C_out) tensor, forward and backward.
        return self(x, base)

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """``s * x' (sum_i S_i B_i)``, plus ``base`` when given."""
        hidden = self.lily_A(x)
        if self.relu:
            hidden = F.relu(hidden)
        hidden = self.dropout(hidden)  # official Vim: on the A output, before router and B
        # (batch, tokens, r); a 2-D input is a batch of single-token examples.
        hidden = hidden.unsqueeze(1) if x.dim() == 2 else hidden.reshape(x.shape[0], -1, hidden.shape[-1])
        weights = self.expert_weights(hidden)
        experts = self.lily_B.weight
        count, rank, width = experts.shape
        self._record(weights.detach(), hidden.shape[0])
        if self.naive:
            delta = (self._mixture(hidden, weights, experts) * self.scale).reshape(*x.shape[:-1], width)
            return delta if base is None else base + delta
        flat_base = None if base is None else base.reshape(-1, width)
        if weights.dim() == 3:
            # Per token: sum_i S_ti (x'_t B_i) = [S_t1 x'_t, ..., S_tn x'_t] @ [B_1; ...; B_n], one
            # (tokens, ne_b*r) x (ne_b*r, C_out) matmul; no per-token combined B, no expert loop.
            spread = ((weights * self.scale).unsqueeze(-1) * hidden.unsqueeze(-2)).reshape(-1, count * rank)
            stacked = experts.reshape(count * rank, width)
            out = spread @ stacked if base is None else torch.addmm(flat_base, spread, stacked)
            return out.reshape(*x.shape[:-1], width)
        # Eq. 3: combine the experts (and the scale, on the small r x C matrix), then one matmul.
        combined = (weights * self.scale) @ experts.reshape(count, rank * width)
        if weights.dim() == 1:  # one matrix for the whole call ("batch" routing, no router)
            flat = hidden.reshape(-1, rank)
            combined = combined.reshape(rank, width)
            out = flat @ combined if base is None else torch.addmm(flat_base, flat, combined)
        else:
            combined = combined.reshape(-1, rank, width)
            out = (torch.bmm(hidden, combined) if base is None
                   else torch.baddbmm(base.reshape(hidden.shape[0], -1, width), hidden, combined))
        return out.reshape(*x.shape[:-1], width)

    @staticmethod
    def _mixture(hidden: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Reference: every expert's output ``x' B_i``, then the weighted sum."""
        delta = 0
        for i in range(experts.shape[0]):
            if weights.dim() == 1:
                w = weights[i]
            elif weights.dim() == 2:
                w = weights[:, i, None, None]
            else:
                w = weights[:, :, i, None]
            delta = delta + w * (hidden @ experts[i])
        return delta

    @torch.no_grad()
    def _record(self, weights: torch.Tensor, batch: int) -> None:
        """Weights per example (a token-routed example: its tokens' mean), summed over examples."""
        if weights.dim() == 3:
            weights = weights.mean(dim=1)
        if weights.dim() == 1:
            self.weight_sum += weights.float() * batch
        else:
            self.weight_sum += weights.float().sum(dim=0)
        self.weight_count += batch

    def extra_repr(self) -> str:
        return f"site={self.site_name}, scale={self.scale}, routing={self.routing}, relu={self.relu}"


def inject_lily(model: nn.Module, config: LilyConfig) -> None:
    """Add Lily to ``model`` as described by the resolved ``config``."""
    depth = model_depth(model)
    family = model_family(model)
    sites = resolve_sites(model, config.targets)
    # Parallel adapters wrap a whole sub-module (mlp), which moves the Linears inside it: do them last.
    order = sorted(config.targets, key=lambda t: any(p.style == "parallel" for p in TARGETS[family][t]))
    for target in order:
        plan = config.per_target[target]
        for part in TARGETS[family][target]:
            kind_sites = [s for s in sites if s.kind == part.kind]
            hidden = plan["rank"] * (2 if part.style == "parallel" else 1)
            first = kind_sites[0]
            groups = a_groups(depth, plan["ne_a"], config.a_grouping)
            a_modules = [nn.Linear(first.in_features, hidden, bias=False) for _ in groups]
            group_of = {layer: g for g, layers in enumerate(groups) for layer in layers}
            experts = LilyExperts(plan["ne_b"], hidden, first.out_features)
            has_router = config.router != "none" and plan["ne_b"] > 1
            shared_router = None
            if has_router and config.router == "single":
                shared_router = nn.Linear(hidden, plan["ne_b"], bias=False)
            for site in kind_sites:
                router = shared_router
                if has_router and config.router == "per_site":
                    router = nn.Linear(hidden, plan["ne_b"], bias=False)
                delta = LilyDelta(site.name, a_modules[group_of[site.layer]], experts, router, config.scale,
                                  config.routing, relu=part.style == "parallel", out_slice=site.out_slice,
                                  dropout=plan["dropout"])
                if site.style == "parallel":
                    set_submodule(model, site.path, ParallelAdapter(model.get_submodule(site.path), delta))
                else:
                    adapted_linear_at(model, site.path).add_delta(f"lily_{site.kind}", delta)


def lily_deltas(model: nn.Module) -> list[LilyDelta]:
    return [m for m in model.modules() if isinstance(m, LilyDelta)]


def lily_router_weights(model: nn.Module) -> dict[str, list[float]]:
    """``{site: mean expert weights}`` over the forward passes since the last reset.

    Sites without a recorded pass are left out; reading synchronises with the device.
    """
    out = {}
    for delta in lily_deltas(model):
        count = float(delta.weight_count)
        if count > 0:
            out[delta.site_name] = (delta.weight_sum / count).tolist()
    return out


def reset_router_weights(model: nn.Module) -> None:
    """Start a new recording window for ``lily_router_weights``."""
    for delta in lily_deltas(model):
        delta.weight_sum.zero_()
        delta.weight_count.zero_()


def set_lily_naive(model: nn.Module, naive: bool = True) -> None:
    """Switch every Lily site between the efficient form and the expert-by-expert mixture."""
    for delta in lily_deltas(model):
        delta.naive = naive
