"""Affix-tuning for Vision Mamba (Yoshimura et al. 2025, "MambaPEFT"): learned tokens around
the sequence of every mixer, discarded after it.

Each layer's mixer sees ``[prefix, tokens, suffix]`` (``length`` learned tokens on each side:
the forward scan reads the prefix first, the backward scan the suffix), and only the original
positions leave the mixer, so the residual stream, the middle class token and the head are
unchanged in shape. Tokens are N(0, 0.02) initialised, so a fresh model is *not* the backbone
(tested: shapes, placement, gradients). Vim-S, length 3: 24 x 2 x 3 x 384 = 55,296 parameters.
The benchmark's per-dataset affix lengths are not shipped; the length is in the method label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vtab_lily.adapters.checks import check_sizes
from vtab_lily.adapters.targets import model_blocks, model_family, set_submodule
from vtab_lily.adapters.wrappers import AdapterModule
from vtab_lily.errors import UserError


@dataclass
class AffixConfig:
    """``length`` tokens before and after the sequence in every layer's mixer."""

    length: int = 3

    def resolve(self, model: nn.Module) -> "AffixConfig":
        if model_family(model) != "vim":
            raise UserError("affix tuning is defined for Vision Mamba mixers; use vpt-deep on ViT")
        check_sizes("affix", length=self.length)
        return self


class AffixTokens(AdapterModule):
    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        self.prefix = nn.Parameter(0.02 * torch.randn(length, width))
        self.suffix = nn.Parameter(0.02 * torch.randn(length, width))


class AffixMixer(nn.Module):
    """``mixer([prefix, x, suffix])`` with the affix positions dropped from the output."""

    def __init__(self, mixer: nn.Module, tokens: AffixTokens) -> None:
        super().__init__()
        self.mixer = mixer
        self.tokens = tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b, n = hidden.shape[0], self.tokens.prefix.shape[0]
        pre = self.tokens.prefix.to(hidden.dtype).expand(b, -1, -1)
        post = self.tokens.suffix.to(hidden.dtype).expand(b, -1, -1)
        out = self.mixer(torch.cat([pre, hidden, post], dim=1))
        return out[:, n:n + hidden.shape[1]]


def inject_affix(model: nn.Module, config: AffixConfig) -> None:
    for i, layer in enumerate(model_blocks(model)):
        width = layer.norm.weight.shape[0]
        set_submodule(model, f"layers.{i}.mixer", AffixMixer(layer.mixer, AffixTokens(config.length, width)))
