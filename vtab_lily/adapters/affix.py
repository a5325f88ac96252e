"""Affix-tuning for Vision Mamba (Yoshimura et al. 2025, "MambaPEFT"): learned tokens at the start
of each scan direction inside every mixer, discarded after the scan.

MambaPEFT's definition (``prefix_type="inner_dual_prefix"``, without the projection, the
configuration its README runs on VTAB-1K): the tokens live in the mixer's inner ``xz`` space, the
``in_proj`` output (2 x d_inner wide: 1536 on Vim-S), N(0, 1) initialised. Each scan direction gets
its own ``length`` tokens placed at the start of its sequence: they go through the frozen causal
conv1d, x_proj, dt_proj and selective scan, and the outputs at their positions are dropped before
``out_proj``, so the residual stream, the middle class token and the head keep their shapes.

Here both directions share the mixer's one sequence: ``in_proj``'s output becomes
``[forward tokens, xz, backward tokens reversed]``. The backward scan runs on the flipped
sequence, so it starts with its own tokens in order; the conv and the scans are causal, so the
forward scan never sees the backward tokens before a kept position, nor the backward scan the
forward ones. This is exactly MambaPEFT's two sequences (tested against a hand-written version of
them). ``out_proj`` then reads the kept positions only.

Each token's z half (its last d_inner entries) gates only its own, dropped, position, so it gets
zero gradient and never changes (as in MambaPEFT): 221,184 parameters on Vim-S at length 3
(24 layers x 2 directions x 3 x 1536), of which half (the x halves) act. A fresh model is *not*
the backbone. ``init_std`` is the tokens' N(0, std) scale (1 as MambaPEFT's nn.Embedding).

``projection=True`` is MambaPEFT's best Affix row (its default ``prefix_projection=True``; the
HF PEFT prefix-tuning reparameterisation): the tokens are no longer parameters but the output of
one model-wide MLP, ``Embedding(length, 2 d_inner)`` (N(0, init_std)) -> ``Linear(2 d_inner,
2 d_inner)`` -> tanh -> ``Linear(2 d_inner, depth * 2 * 2 d_inner)`` (nn.Linear's default inits).
Row i of its output holds token i of every layer: layer l reads columns
``[l * 2W, (l + 1) * 2W)`` (W = 2 d_inner), the first W its forward tokens, the next W its
backward ones. Placement and dropping are as above; the MLP is only a reparameterisation. It is
evaluated once per model forward (a pre-hook opens a cache that the layers share, a hook closes
it; a mixer called on its own computes it afresh). Vim-S, length 3: 3 * 1536 + (1536 * 1536 + 1536)
+ (1536 * 73728 + 73728) = 115,685,376 trainable parameters. MambaPEFT prints 117,000K for this
row, which with its ~9K head would be ~116.99M: 1.3M more than its code gives (not reconciled;
``tests/test_mambapeft.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vtab_lily.adapters.checks import check_sizes
from vtab_lily.adapters.targets import model_blocks, model_family
from vtab_lily.adapters.wrappers import AdapterModule
from vtab_lily.errors import UserError
from vtab_lily.options import setting


@dataclass
class AffixConfig:
    """``length`` tokens per scan direction in every layer's mixer, in the in_proj output space."""

    length: int = 3
    init_std: float = 1.0
    # recorded only when true: runs from before the option keep their hashes and labels
    projection: bool = setting(False, unrecorded_default=True, help="all layers' tokens made by one MLP "
                               "(MambaPEFT's best Affix row)")

    def resolve(self, model: nn.Module) -> "AffixConfig":
        if model_family(model) != "vim":
            raise UserError("affix tuning is defined for Vision Mamba mixers; use vpt-deep on ViT")
        check_sizes("affix", length=self.length)
        std = self.init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < math.inf:
            raise UserError(f"affix: init_std must be a finite number > 0, got {std!r}")
        if not isinstance(self.projection, bool):
            raise UserError(f"affix: projection must be true or false, got {self.projection!r}")
        return AffixConfig(self.length, float(std), self.projection)


class AffixTokens(AdapterModule):
    """One mixer's tokens, (length, 2 d_inner) per direction: [:, :d_inner] x, [:, d_inner:] z."""

    def __init__(self, length: int, width: int, std: float) -> None:
        super().__init__()
        self.forward_tokens = nn.Parameter(std * torch.randn(length, width))
        self.backward_tokens = nn.Parameter(std * torch.randn(length, width))


class AffixProjection(AdapterModule):
    """Every layer's tokens from one embedding through an MLP: (length, depth * 2 * width)."""

    def __init__(self, length: int, width: int, depth: int, std: float) -> None:
        super().__init__()
        self.width, self.depth = width, depth
        self.embedding = nn.Embedding(length, width)
        nn.init.normal_(self.embedding.weight, std=std)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, depth * 2 * width))
        self._cache: torch.Tensor | None = None
        self._open = False

    def forward(self) -> torch.Tensor:
        if not self._open:
            return self.mlp(self.embedding.weight)
        if self._cache is None:
            self._cache = self.mlp(self.embedding.weight)
        return self._cache

    def open_cache(self, *_: object) -> None:
        self._open, self._cache = True, None

    def close_cache(self, *_: object) -> None:
        self._open, self._cache = False, None

    def layer_tokens(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s (forward, backward) tokens, each (length, width)."""
        own = self()[:, layer * 2 * self.width:(layer + 1) * 2 * self.width]
        return own[:, :self.width], own[:, self.width:]


class ProjectedTokens(nn.Module):
    """One layer's view of the projection's output, read like ``AffixTokens`` (no parameters of
    its own: the projection is registered once, on the model)."""

    def __init__(self, projection: AffixProjection, layer: int) -> None:
        super().__init__()
        object.__setattr__(self, "projection", projection)  # not a submodule: counted and saved once
        self.layer = layer

    @property
    def forward_tokens(self) -> torch.Tensor:
        return self.projection.layer_tokens(self.layer)[0]

    @property
    def backward_tokens(self) -> torch.Tensor:
        return self.projection.layer_tokens(self.layer)[1]


class AffixInProj(nn.Module):
    """``in_proj`` with the tokens around its output: (b, L, d) -> (b, length + L + length, 2 d_inner)."""

    def __init__(self, base_layer: nn.Module, tokens: AffixTokens) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.tokens = tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        xz = self.base_layer(hidden)
        batch = xz.shape[0]
        before = self.tokens.forward_tokens.to(xz.dtype).expand(batch, -1, -1)
        after = self.tokens.backward_tokens.flip(0).to(xz.dtype).expand(batch, -1, -1)
        return torch.cat([before, xz, after], dim=1)


class AffixOutProj(nn.Module):
    """``out_proj`` on the kept positions only (drops ``length`` at each end)."""

    def __init__(self, base_layer: nn.Module, length: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.length = length

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.base_layer(y[:, self.length:y.shape[1] - self.length])


def inject_affix(model: nn.Module, config: AffixConfig) -> None:
    layers = model_blocks(model)
    projection = None
    if config.projection:
        projection = AffixProjection(config.length, layers[0].mixer.in_proj.out_features, len(layers),
                                     config.init_std)
        model.affix_projection = projection
        model.register_forward_pre_hook(projection.open_cache)
        model.register_forward_hook(projection.close_cache, always_call=True)
    for index, layer in enumerate(layers):
        mixer = layer.mixer
        if projection is None:
            tokens = AffixTokens(config.length, mixer.in_proj.out_features, config.init_std)
        else:
            tokens = ProjectedTokens(projection, index)
        mixer.in_proj = AffixInProj(mixer.in_proj, tokens)
        mixer.out_proj = AffixOutProj(mixer.out_proj, config.length)
