"""RepAdapter (Luo et al. 2023): a linear adapter before attention and before the MLP, merged
into the following weights for inference.

``a(x) = x + s * up(dropout(down(x)))`` with ``down`` Linear(C, h) and ``up`` a grouped Linear
(h -> C, ``groups`` block-diagonal pieces, as the official grouped 1x1 conv), both with bias;
down Xavier-uniform, up and both biases zero, so a fresh model computes exactly the backbone.
It reads the block's normalised input (``attn(a(norm1(x)))``, ``mlp(a(norm2(x)))``). With no
non-linearity the adapter is an affine map, so ``merge_repadapter`` folds it into ``attn.qkv``
and ``mlp.fc1`` and removes it (structural re-parameterisation).
ViT-B/16 at h=8, groups 2: 2 x 12 x (6,152 + 3,840) = 239,808 parameters; the published
0.22M counts the weights only (2 x 12 x (6,144 + 3,072) = 221,184; tested).

RepAdapter tunes s per task; the default ``scale="paper"`` takes it from the official configs
(luogen1996/RepAdapter ``configs/repblock/<task>.yaml``, see ``pertask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vtab_lily.adapters.checks import check_scale_dropout, check_sizes
from vtab_lily.adapters.pertask import PerTaskTable, check_paper_or, is_paper
from vtab_lily.adapters.targets import model_blocks, model_family, set_submodule
from vtab_lily.adapters.wrappers import AdapterModule
from vtab_lily.errors import UserError

# sub-module of a ViT block that the adapter runs before, and the Linear it merges into
PLACES = {"attn": "qkv", "mlp": "fc1"}


REPADAPTER_SCALES = PerTaskTable(
    source="RepAdapter official configs (configs/repblock/<task>.yaml)",
    values={task: {"scale": s} for task, s in {
        "cifar": 0.1, "caltech101": 5.0, "dtd": 1.0, "oxford_flowers102": 0.5, "oxford_iiit_pet": 0.1,
        "svhn": 10.0, "sun397": 0.1, "patch_camelyon": 1.0, "eurosat": 1.0, "resisc45": 5.0,
        "diabetic_retinopathy": 0.1, "clevr_count": 0.5, "clevr_dist": 0.1, "dmlab": 5.0, "kitti": 5.0,
        "dsprites_loc": 5.0, "dsprites_ori": 0.1, "smallnorb_azi": 10.0, "smallnorb_ele": 1.0}.items()},
    fallback={"scale": 1.0},
)


@dataclass
class RepAdapterConfig:
    """``rank`` h (bottleneck), ``groups`` of the up projection, ``scale`` s (or ``paper``: per
    task), ``dropout`` after down."""

    PAPER_TABLE: ClassVar[PerTaskTable] = REPADAPTER_SCALES
    rank: int = 8
    groups: int = 2
    scale: float | str = "paper"
    dropout: float = 0.1

    def resolve(self, model: nn.Module) -> "RepAdapterConfig":
        if model_family(model) != "vit":
            raise UserError("repadapter is defined for ViT blocks (before attn and mlp)")
        check_sizes("repadapter", rank=self.rank, groups=self.groups)
        if self.rank % self.groups:
            raise UserError(f"repadapter: rank {self.rank} must be divisible by groups {self.groups}")
        check_paper_or("repadapter", "scale", self.scale)
        check_scale_dropout("repadapter", 0.0 if is_paper(self.scale) else self.scale, self.dropout)
        return self


class RepAdapter(AdapterModule):
    def __init__(self, width: int, rank: int, groups: int, scale: float, dropout: float) -> None:
        super().__init__()
        if width % groups:
            raise UserError(f"repadapter: width {width} must be divisible by groups {groups}")
        self.down = nn.Linear(width, rank)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.up_weight = nn.Parameter(torch.zeros(groups, width // groups, rank // groups))
        self.up_bias = nn.Parameter(torch.zeros(width))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = scale

    def up_matrix(self) -> torch.Tensor:
        """The grouped up projection as a dense (C, h) block-diagonal matrix."""
        return torch.block_diag(*self.up_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.down(x))
        return x + self.scale * (hidden @ self.up_matrix().T + self.up_bias)

    @torch.no_grad()
    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, c)`` with ``a(x) = x M^T + c`` in eval mode."""
        up = self.up_matrix()
        eye = torch.eye(up.shape[0], dtype=up.dtype, device=up.device)
        return eye + self.scale * up @ self.down.weight, self.scale * (up @ self.down.bias + self.up_bias)


class PreAdapted(nn.Module):
    """``base_layer(adapter(x), ...)``."""

    def __init__(self, base_layer: nn.Module, adapter: RepAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base_layer(self.adapter(x), *args, **kwargs)


def inject_repadapter(model: nn.Module, config: RepAdapterConfig) -> None:
    for i, block in enumerate(model_blocks(model)):
        for place in PLACES:
            inner = block.get_submodule(place)
            width = getattr(inner, PLACES[place]).in_features
            adapter = RepAdapter(width, config.rank, config.groups, config.scale, config.dropout)
            set_submodule(model, f"blocks.{i}.{place}", PreAdapted(inner, adapter))


@torch.no_grad()
def merge_repadapter(model: nn.Module) -> int:
    """Fold every RepAdapter into the Linear after it (``W M``, ``W c + b``); returns how many."""
    paths = [name for name, m in model.named_modules() if isinstance(m, PreAdapted)]
    for path in paths:
        wrapped = model.get_submodule(path)
        linear = getattr(wrapped.base_layer, PLACES[path.rsplit(".", 1)[-1]])
        matrix, shift = wrapped.adapter.affine()
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        new_bias = bias + linear.weight @ shift.to(linear.weight.dtype)
        linear.weight.copy_(linear.weight @ matrix.to(linear.weight.dtype))
        if linear.bias is None:
            linear.bias = nn.Parameter(new_bias, requires_grad=False)
        else:
            linear.bias.copy_(new_bias)
        set_submodule(model, path, wrapped.base_layer)
    return len(paths)
