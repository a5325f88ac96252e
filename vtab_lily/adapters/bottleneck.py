"""Bottleneck adapters in series (Houlsby et al. 2019; Pfeiffer et al. 2021) and Convpass
(Jie & Deng 2022), all on ViT blocks.

- ``houlsby``: ``h + up(relu(down(h)))`` on the output ``h`` of both attention and the MLP,
  before the residual add. r=8 on ViT-B/16: 24 x 13,064 = 313,536 parameters.
- ``pfeiffer``: the same after the MLP only. r=8: 12 x 13,064 = 156,768 (the "Adapter" 0.16M
  row of the published VTAB-1K tables).
- ``convpass``: beside attention and the MLP, reading their normalised input: 1x1 down, a 3x3
  convolution over the patch grid (the class token as a 1x1 image), 1x1 up, QuickGELU after
  down and conv, dropout 0.1, scale s=10; the 3x3 kernel starts as the identity at its centre
  and up at zero. r=8: 24 x 13,648 = 327,552 (published 0.33M).
Up projections start at zero, so a fresh model computes exactly the backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vtab_lily.adapters.adaptformer import Bottleneck
from vtab_lily.adapters.checks import check_scale_dropout, check_sizes
from vtab_lily.adapters.targets import model_blocks, model_family, set_submodule
from vtab_lily.adapters.wrappers import AdapterModule, ParallelAdapter
from vtab_lily.errors import UserError
from vtab_lily.options import setting


@dataclass
class HoulsbyConfig:
    """``rank`` (bottleneck), ``scale`` of the bottleneck's output, ``dropout`` after its ReLU."""

    rank: int = 8
    scale: float = 1.0
    dropout: float = 0.0
    places: tuple[str, ...] = ("attn", "mlp")
    init_std: float = setting(0.0, at_least=0, at_most=1, unrecorded_default=True,
                              help="std of the up projection's initial weights (normal); 0: zeros, so the "
                              "adapter starts as the identity; > 0: a near-identity start, as Houlsby et al.")

    def resolve(self, model: nn.Module) -> "HoulsbyConfig":
        if model_family(model) != "vit":
            raise UserError(f"{type(self).__name__[:-6].lower()} adapters are defined for ViT blocks")
        check_sizes("adapter", rank=self.rank)
        check_scale_dropout("adapter", self.scale, self.dropout)
        if not self.places:
            raise UserError("adapter: places must name attn and/or mlp, got none")
        for place in self.places:
            if place not in ("attn", "mlp"):
                raise UserError(f"adapter: places must be attn and/or mlp, got {place!r}")
        return self


@dataclass
class PfeifferConfig(HoulsbyConfig):
    places: tuple[str, ...] = ("mlp",)


class Serial(nn.Module):
    """``h + adapter(h)`` with ``h = base_layer(x, ...)``."""

    def __init__(self, base_layer: nn.Module, adapter: AdapterModule) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        return self.adapter.add_to(h, h)


def inject_serial(model: nn.Module, config: HoulsbyConfig) -> None:
    for i, block in enumerate(model_blocks(model)):
        for place in config.places:
            width = block.norm1.normalized_shape[0]
            adapter = Bottleneck(width, config.rank, config.scale, config.dropout)
            if config.init_std > 0:
                nn.init.normal_(adapter.up.weight, std=config.init_std)
            set_submodule(model, f"blocks.{i}.{place}", Serial(block.get_submodule(place), adapter))


@dataclass
class ConvpassConfig:
    rank: int = 8
    scale: float = 10.0
    dropout: float = 0.1

    def resolve(self, model: nn.Module) -> "ConvpassConfig":
        if model_family(model) != "vit":
            raise UserError("convpass is defined for ViT blocks (a convolution over the patch grid)")
        check_sizes("convpass", rank=self.rank)
        check_scale_dropout("convpass", self.scale, self.dropout)
        return self


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class ConvBypass(AdapterModule):
    def __init__(self, width: int, rank: int, scale: float, dropout: float, prefix: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.conv = nn.Conv2d(rank, rank, 3, padding=1)
        self.up = nn.Linear(rank, width)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        with torch.no_grad():
            self.conv.weight[:, :, 1, 1] += torch.eye(rank)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale, self.prefix = scale, prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = quick_gelu(self.down(x))
        side = math.isqrt(n - self.prefix)
        grid = h[:, self.prefix:].transpose(1, 2).reshape(b, -1, side, side)
        patches = self.conv(grid).flatten(2).transpose(1, 2)
        prefix = self.conv(h[:, :self.prefix].transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)
        h = quick_gelu(torch.cat([prefix, patches], dim=1))
        return self.up(self.dropout(h)) * self.scale


def inject_convpass(model: nn.Module, config: ConvpassConfig) -> None:
    prefix = getattr(model, "num_prefix_tokens", 1)
    for i, block in enumerate(model_blocks(model)):
        width = block.norm1.normalized_shape[0]
        for place in ("attn", "mlp"):
            bypass = ConvBypass(width, config.rank, config.scale, config.dropout, prefix)
            set_submodule(model, f"blocks.{i}.{place}", ParallelAdapter(block.get_submodule(place), bypass))
