"""DoRA (Liu et al. 2024): LoRA's direction update with a learned magnitude per output row.

``W' = m * V / ||V||`` with ``V = W0 + s * B A`` and ``||V||`` the (detached, as the paper's
Sec. 4.3) norm of each output row; ``m`` starts at ``||W0||`` and B at zero, so a fresh model
computes exactly the backbone. Computed without forming W' in the forward pass:
``y = y0 + (m/||V|| - 1) * (x W0^T) + (m/||V||) * s * x A^T B^T`` (``y0`` the frozen layer's
output, bias included). ``delta_weight`` gives ``W' - W0`` for merging (``merge_lora`` folds it).
ViT-B/16, q and v at r=8: LoRA's 294,912 + magnitudes 18,432 = 313,344 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from vtab_lily.adapters.lora import LoraConfig, LoraDelta
from vtab_lily.adapters.targets import VIT_LIKE, check_targets, model_family, resolve_sites
from vtab_lily.adapters.wrappers import adapted_linear_at


@dataclass
class DoraConfig(LoraConfig):
    """LoRA's options (``rank``, ``alpha``, ``dropout``, ``targets``, ``per_target``); default r=8 on
    ViT ``q, v`` (Vim ``in_proj``), LoRA's ``custom`` variant (the DoRA paper's setting)."""

    def resolve(self, model: nn.Module) -> "DoraConfig":
        targets = self.targets
        if targets is None:
            targets = ("q", "v") if model_family(model) in VIT_LIKE else ("in_proj",)
        else:  # checked under DoRA's name; an empty tuple is refused, never read as "unset"
            targets = check_targets(model_family(model), targets, "dora", allowed_styles=("linear",))
        return super(DoraConfig, replace(self, targets=targets, variant=self.variant or "custom")).resolve(model)


class DoraDelta(LoraDelta):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 out_slice: tuple[int, int] | None) -> None:
        start, stop = out_slice or (0, base.out_features)
        super().__init__(base.in_features, stop - start, rank, alpha, dropout, out_slice)
        self._frozen = lambda: (base.weight[start:stop], None if base.bias is None else base.bias[start:stop])
        self.magnitude = nn.Parameter(base.weight[start:stop].detach().float().norm(dim=1))

    def _factor(self) -> torch.Tensor:
        weight, _ = self._frozen()
        direction = weight + (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return self.magnitude / direction.norm(dim=1).detach()

    def add_to(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, bias = self._frozen()
        factor = self._factor().to(base.dtype)
        plain = base if bias is None else base - bias  # x W0^T
        return base + (factor - 1) * plain + factor * super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The amount this delta adds to the frozen layer's output (``x (W' - W0)^T``)."""
        return x @ self.delta_weight().T.to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        weight, _ = self._frozen()
        direction = weight + (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return self._factor()[:, None] * direction - weight


def inject_dora(model: nn.Module, config: DoraConfig) -> None:
    for site in resolve_sites(model, config.targets):
        plan = config.per_target[site.target]
        layer = adapted_linear_at(model, site.path)
        delta = DoraDelta(layer.base_layer, plan["rank"], plan["alpha"], config.dropout, site.out_slice)
        delta.target = site.target
        layer.add_delta(f"dora_{site.kind}", delta)
