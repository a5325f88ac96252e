"""LoRA (Hu et al. 2021): ``y = x W0 + (alpha / r) * B(A(x))``, dropout on the input or after A.

A is Kaiming-uniform (nn.Linear default), B zeros. ``q``/``k``/``v`` adapt their slice of timm's
fused ``qkv`` separately (each its own A and B); ``qkv`` is one A and one B for the fused layer.
On Vim, ``in_proj_x``/``in_proj_z`` and ``x_proj_dt``/``x_proj_B``/``x_proj_C`` adapt one row
block of ``in_proj`` / of each direction's ``x_proj`` the same way (MambaPEFT's partial LoRA).
Named variants reproduce published baselines (see ``LoraConfig``). ``merge_lora``/``unmerge_lora``
fold the update into the frozen weight and restore the original weight bit-for-bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from vtab_lily.adapters.targets import VIT_LIKE, check_targets, model_family, nested_per_target, resolve_sites
from vtab_lily.adapters.wrappers import AdaptedLinear, AdapterModule, adapted_linear_at
from vtab_lily.errors import UserError, unknown_name

DROPOUT_POSITIONS = ("input", "after_a")

# ViT presets. noah: NOAH's LoRA behind the 74.5 VTAB row (fused qkv, one A 768x8 and one B
# 8x2304, scale 1, no dropout). lily: the Lily repository's baseline (q and v, dropout 0.1 on A's
# output, scale 1). alpha None = rank (scale 1).
VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "noah": {"targets": ("qkv",), "rank": 8, "dropout": 0.0, "dropout_position": "input"},
    "lily": {"targets": ("q", "v"), "rank": 8, "dropout": 0.1, "dropout_position": "after_a"},
}
CUSTOM = {"rank": 8, "dropout": 0.0, "dropout_position": "input"}


@dataclass
class LoraConfig:
    """LoRA settings; ``None`` fields take the variant's value.

    - ``variant`` (ViT and Swin): ``noah`` (default: fused ``qkv``, r=8, scale 1, no dropout; 294,912
      parameters on ViT-B/16), ``lily`` (``q, v``, r=8, dropout 0.1 after A), ``custom``
      (r=8, alpha=r, no dropout; targets ViT ``q, v``, Vim ``in_proj``). Without a variant,
      targets other than ``qkv`` or a ``per_target`` mean ``custom``; a named variant keeps its
      targets but takes explicit ``rank``/``alpha``/``dropout``. Vim: ``custom`` only.
    - ``rank`` r, ``alpha`` (None: = rank, i.e. scaling 1), ``dropout`` rate and
      ``dropout_position`` (``input``: on the LoRA input, HF PEFT; ``after_a``: on A's output).
    - ``targets``: ViT q, k, v, qkv, proj, fc1, fc2; Vim in_proj, x_proj, dt_proj, out_proj and
      the row blocks in_proj_x, in_proj_z (x and gate z halves), x_proj_dt, x_proj_B, x_proj_C.
    - ``per_target`` overrides such as ``{"qkv": {"rank": 16, "alpha": 32}}``. Resolved, it
      lists every target.
    """

    variant: str | None = None
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    dropout_position: str | None = None
    targets: tuple[str, ...] | None = None
    per_target: dict[str, dict[str, float]] | None = None

    def resolve(self, model: nn.Module) -> "LoraConfig":
        family = model_family(model)
        variant = self.variant
        if variant is None:  # no variant: NOAH's unless the targets say otherwise
            given = check_targets(family, self.targets, "lora", ("linear",)) if self.targets is not None else None
            noah = family in VIT_LIKE and given in (None, VIT_VARIANTS["noah"]["targets"]) and self.per_target is None
            variant = "noah" if noah else "custom"
        choices = (*VIT_VARIANTS, "custom") if family in VIT_LIKE else ("custom",)
        if variant not in choices:
            raise unknown_name(f"lora variant for a {family} backbone", variant, choices)
        preset = VIT_VARIANTS.get(variant, CUSTOM)
        default = preset.get("targets") or (("q", "v") if family in VIT_LIKE else ("in_proj",))
        targets = check_targets(family, default if self.targets is None else self.targets, "lora", allowed_styles=("linear",))
        if variant in VIT_VARIANTS and tuple(targets) != preset["targets"]:
            raise UserError(f"lora: variant {variant!r} adapts {','.join(preset['targets'])}, not "
                            f"{','.join(targets)}; use variant=custom for other targets")
        rank = preset["rank"] if self.rank is None else self.rank
        if not _integer(rank) or rank < 1:
            raise UserError(f"lora: rank must be an integer >= 1, got {rank!r}")
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))):
            raise UserError(f"lora: alpha must be a number >= 0, got {self.alpha!r}")
        alpha = float(rank if self.alpha is None else self.alpha)
        if not 0 <= alpha < float("inf"):
            raise UserError(f"lora: alpha must be a number >= 0, got {self.alpha!r}")
        dropout = preset["dropout"] if self.dropout is None else self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise UserError(f"lora: dropout must be in [0, 1), got {dropout!r}")
        position = self.dropout_position or preset["dropout_position"]
        if position not in DROPOUT_POSITIONS:
            raise unknown_name("lora dropout_position", position, DROPOUT_POSITIONS)
        overrides = nested_per_target(self.per_target, "lora")
        per_target = {}
        for target, override in overrides.items():
            if target not in targets:
                raise UserError(f"lora: per_target names {target!r}, which is not among the targets {list(targets)}")
            for key in override:
                if key not in ("rank", "alpha"):
                    raise unknown_name(f"lora per_target key (target {target!r})", key, ("rank", "alpha"))
        for target in targets:
            override = overrides.get(target, {})
            target_rank = override.get("rank", rank)
            if not _integer(target_rank) or target_rank < 1:
                raise UserError(f"lora ({target}): rank must be an integer >= 1, got {target_rank!r}")
            default_alpha = target_rank if self.alpha is None else alpha
            target_alpha = override.get("alpha", default_alpha)
            if isinstance(target_alpha, bool) or not isinstance(target_alpha, (int, float)) \
                    or not 0 <= target_alpha < float("inf"):
                raise UserError(f"lora ({target}): alpha must be a number >= 0, got {target_alpha!r}")
            per_target[target] = {"rank": target_rank, "alpha": float(target_alpha)}
        return replace(self, variant=variant, rank=rank, alpha=alpha, dropout=float(dropout),
                       dropout_position=position, targets=tuple(targets), per_target=per_target)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LoraDelta(AdapterModule):
    """``(alpha / r) * B(A(x))`` for one site with dropout on ``x`` (``input``) or on ``A(x)``
    (``after_a``); ``lora_A`` (r, in), ``lora_B`` (out, r). Dropout is off in eval mode, which is
    what makes ``delta_weight`` (and merging) exact."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 out_slice: tuple[int, int] | None, dropout_position: str = "input") -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_position = dropout_position
        self.scaling = alpha / rank
        self.out_slice = out_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout_position == "after_a":
            return self.lora_B(self.dropout(self.lora_A(x))) * self.scaling
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The (out, in) update this delta adds to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def inject_lora(model: nn.Module, config: LoraConfig) -> None:
    for site in resolve_sites(model, config.targets):
        plan = config.per_target[site.target]
        delta = LoraDelta(site.in_features, site.out_features, plan["rank"], plan["alpha"], config.dropout,
                          site.out_slice, config.dropout_position)
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
