"""LoRA (Hu et al. 2021): ``y = x W0 + (alpha / r) * dropout(x) A B`` on each target.

A is Kaiming-uniform (nn.Linear default), B zeros. ``q``/``k``/``v`` adapt their slice of timm's
fused ``qkv`` separately (each its own A and B). ``merge_lora``/``unmerge_lora`` fold the
update into the frozen weight and restore the original weight bit-for-bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from vtab_lily.adapters.targets import check_targets, model_family, resolve_sites
from vtab_lily.adapters.wrappers import AdaptedLinear, AdapterModule, adapted_linear_at
from vtab_lily.errors import UserError, unknown_name


@dataclass
class LoraConfig:
    """``rank`` r, ``alpha`` (None: = rank, i.e. scaling 1), ``dropout`` on the LoRA input,
    ``targets`` (default ViT ``q, v``, Vim ``in_proj``; ViT: q, k, v, qkv, proj, fc1, fc2; Vim:
    in_proj, x_proj, dt_proj, out_proj), ``per_target`` overrides such as
    ``{"qkv": {"rank": 16, "alpha": 32}}``. Resolved, ``per_target`` lists every target."""

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    per_target: dict[str, dict[str, float]] | None = None

    def resolve(self, model: nn.Module) -> "LoraConfig":
        family = model_family(model)
        default = ("q", "v") if family == "vit" else ("in_proj",)
        targets = check_targets(family, self.targets or default, "lora", allowed_styles=("linear",))
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise UserError(f"lora: rank must be an integer >= 1, got {self.rank!r}")
        alpha = float(self.rank if self.alpha is None else self.alpha)
        if alpha < 0:
            raise UserError(f"lora: alpha must be >= 0, got {alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        overrides = self.per_target or {}
        per_target = {}
        for target, override in overrides.items():
            if target not in targets:
                raise UserError(f"lora: per_target names {target!r}, which is not among the targets {list(targets)}")
            for key in override:
                if key not in ("rank", "alpha"):
                    raise unknown_name(f"lora per_target key (target {target!r})", key, ("rank", "alpha"))
        for target in targets:
            override = overrides.get(target, {})
            rank = override.get("rank", self.rank)
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise UserError(f"lora ({target}): rank must be an integer >= 1, got {rank!r}")
            default_alpha = rank if self.alpha is None else alpha
            per_target[target] = {"rank": rank, "alpha": float(override.get("alpha", default_alpha))}
        return replace(self, alpha=alpha, dropout=float(self.dropout), targets=tuple(targets), per_target=per_target)


class LoraDelta(AdapterModule):
    """``(alpha / r) * dropout(x) @ A^T @ B^T`` for one site; ``lora_A`` (r, in), ``lora_B`` (out, r)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 out_slice: tuple[int, int] | None) -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank
        self.out_slice = out_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The (out, in) update this delta adds to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def inject_lora(model: nn.Module, config: LoraConfig) -> None:
    for site in resolve_sites(model, config.targets):
        plan = config.per_target[site.target]
        delta = LoraDelta(site.in_features, site.out_features, plan["rank"], plan["alpha"], config.dropout,
                          site.out_slice)
        delta.target = site.target
        adapted_linear_at(model, site.path).add_delta(f"lora_{site.kind}", delta)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its frozen weight (for fast inference); returns layers merged."""
    layers = [m for m in model.modules() if isinstance(m, AdaptedLinear) and m.deltas]
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo ``merge_lora`` exactly (the original weights are restored bit-for-bit)."""
    layers = [m for m in model.modules() if isinstance(m, AdaptedLinear) and m.merged]
    for layer in layers:
        layer.unmerge()
    return len(layers)
