"""AdaptFormer (Chen et al. 2022): a scaled ReLU bottleneck in parallel with every block's MLP.

Two placements (``AdaptFormerConfig.placement``):

- ``official`` (default), as the AdaptFormer code runs it (its ``ffn_option="parallel"``, no
  adapter LayerNorm) and as the Lily repository's and PETL_Vision's baselines: the bottleneck
  reads the pre-norm residual stream x (the block's state after attention) and its output is
  added to the block output outside stochastic depth::

      x   = x + drop_path(attn(norm1(x)))
      out = x + drop_path(mlp(norm2(x))) + s * up(dropout(relu(down(x))))

  On Vim, whose layers are ``r + drop_path(mixer(norm(r)))``, the same rule gives
  ``r + drop_path(mixer(norm(r))) + bottleneck(r)`` (no official Vim AdaptFormer exists). A Swin
  block is a ViT block with windowed attention: the same two steps, the bottleneck at the block's
  own width (it doubles from stage to stage).
- ``paper``: the paper's Eq. 4, ``y = MLP(LN(x)) + s * bottleneck(LN(x))``: it wraps
  ``blocks[i].mlp`` (Vim: ``layers[i].mixer``; Swin: each block's ``mlp``), so it reads the normalised input and sits
  inside drop_path.

``down`` is Kaiming-uniform with a zero bias, ``up`` is zero (weight and bias): a fresh model
computes exactly the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from vtab_lily.adapters.targets import block_paths, model_blocks, model_family, set_submodule
from vtab_lily.adapters.wrappers import AdapterModule, ParallelAdapter
from vtab_lily.errors import UserError, unknown_name
from vtab_lily.options import SIZE, setting

PLACEMENTS = ("official", "paper")
# The sub-module of each block that the "paper" placement runs beside.
PAPER_SITE = {"vit": "mlp", "vim": "mixer", "swin": "mlp"}


@dataclass
class AdaptFormerConfig:
    """``rank`` (bottleneck width), ``scale`` s (0.1), ``dropout`` after the ReLU (0.1),
    ``placement`` ``official`` (pre-norm x, outside drop_path) or ``paper`` (LN(x), inside)."""

    rank: int = setting(8, integer=True, at_least=1, at_most=SIZE, help="bottleneck width")
    scale: float = setting(0.1, at_least=0, help="multiplies the bottleneck's output")
    dropout: float = setting(0.1, at_least=0, below=1, help="after the ReLU")
    placement: str = setting("official", help="official (pre-norm x, outside drop_path) or paper (LN(x), inside)")

    def resolve(self, model: nn.Module) -> "AdaptFormerConfig":
        model_family(model)  # the bounds of the numbers are checked from their declarations (make_config)
        if self.placement not in PLACEMENTS:
            raise unknown_name("adaptformer placement", self.placement, PLACEMENTS)
        return replace(self, scale=float(self.scale), dropout=float(self.dropout))


class Bottleneck(AdapterModule):
    """``s * up(dropout(relu(down(x))))`` with biases; zero output at initialisation."""

    def __init__(self, width: int, rank: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(x)))) * self.scale


class ViTBlockAdapter(nn.Module):
    """A timm ViT ``Block`` (``base_layer``) with the bottleneck on the pre-norm stream, outside
    drop_path. The block's two residual steps are spelled out (as in timm's ``Block.forward``)
    because the adapter reads the state between them."""

    def __init__(self, base_layer: nn.Module, delta: Bottleneck) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = delta

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        block = self.base_layer
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))) + self.delta(x)


class SwinBlockAdapter(nn.Module):
    """A timm ``SwinTransformerBlock`` (``base_layer``) with the bottleneck on the pre-norm stream
    after windowed attention, outside drop_path: the block's two residual steps as timm's
    ``SwinTransformerBlock.forward`` takes them ((b, H, W, C) around attention, (b, H*W, C) around
    the MLP)."""

    def __init__(self, base_layer: nn.Module, delta: Bottleneck) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.base_layer
        b, h, w, c = x.shape
        x = x + block.drop_path1(block._attn(block.norm1(x)))
        x = x.reshape(b, -1, c)
        x = x + block.drop_path2(block.mlp(block.norm2(x))) + self.delta(x)
        return x.reshape(b, h, w, c)


class VimBlockAdapter(nn.Module):
    """A Vim layer ``r + drop_path(mixer(norm(r)))`` plus the bottleneck of the residual r."""

    def __init__(self, base_layer: nn.Module, delta: Bottleneck) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = delta

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        # The residual stream is fp32; the bottleneck runs in its own (the backbone's) dtype.
        update = self.delta(residual.to(self.delta.down.weight.dtype))
        return self.base_layer(residual) + update.float()


def block_width(block: nn.Module) -> int:
    """Residual width of a block: the input width of its first Linear."""
    for module in block.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
    raise UserError(f"cannot infer the width of {type(block).__name__}")


def _official_wrapper(family: str, block: nn.Module) -> type[nn.Module]:
    if family == "vit":
        from timm.models.vision_transformer import Block

        if type(block) is not Block:  # the two-step forward above is timm's Block's
            raise UserError(f"adaptformer placement 'official' needs timm's ViT Block, got {type(block).__name__}; "
                            "use placement=paper")
        return ViTBlockAdapter
    if family == "swin":
        from timm.models.swin_transformer import SwinTransformerBlock

        if type(block) is not SwinTransformerBlock:  # the two-step forward above is timm's
            raise UserError(f"adaptformer placement 'official' needs timm's SwinTransformerBlock, got "
                            f"{type(block).__name__}; use placement=paper")
        return SwinBlockAdapter
    from vtab_lily.backbones.vim import VimBlock

    if type(block) is not VimBlock:
        raise UserError(f"adaptformer placement 'official' needs a VimBlock, got {type(block).__name__}")
    return VimBlockAdapter


def inject_adaptformer(model: nn.Module, config: AdaptFormerConfig) -> None:
    family = model_family(model)
    for block_path, block in zip(block_paths(model), model_blocks(model)):
        if config.placement == "official":
            wrapper = _official_wrapper(family, block)
            delta = Bottleneck(block_width(block), config.rank, config.scale, config.dropout)
            set_submodule(model, block_path, wrapper(block, delta))
            continue
        path = f"{block_path}.{PAPER_SITE[family]}"
        inner = model.get_submodule(path)
        delta = Bottleneck(block_width(inner), config.rank, config.scale, config.dropout)
        set_submodule(model, path, ParallelAdapter(inner, delta))
