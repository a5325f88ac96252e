"""SSF (Lian et al. 2022): scale and shift the features after every operation.

``y = gamma * op(x) + beta`` (per channel) after each block's ``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, after the patch embedding and after the
final norm, as in the paper's ViT setup. gamma ~ N(1, 0.02) and beta ~ N(0, 0.02), as the
official code initialises them: a fresh SSF model is *not* the backbone (tested as such).
ViT-B/16: 2 x (12 x 8,448 + 768 + 768) = 205,824 parameters (published 0.20-0.24M).
Every op is linear or a norm with an affine output, so SSF merges into the frozen weights for
inference (``merge_ssf``), exactly up to floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vtab_lily.adapters.targets import model_blocks, model_family, set_submodule
from vtab_lily.adapters.wrappers import AdapterModule
from vtab_lily.errors import UserError

BLOCK_OPS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


@dataclass
class SSFConfig:
    """``init_std`` of gamma around 1 and beta around 0 (0.02, the official value)."""

    init_std: float = 0.02

    def resolve(self, model: nn.Module) -> "SSFConfig":
        if model_family(model) != "vit":
            raise UserError("ssf is defined for ViT backbones (the SSF paper); use lora or lily on Vim")
        if not 0 <= self.init_std < 1:
            raise UserError(f"ssf: init_std must be in [0, 1), got {self.init_std}")
        return self


class ScaleShift(AdapterModule):
    def __init__(self, width: int, std: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width) + std * torch.randn(width))
        self.beta = nn.Parameter(std * torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class SSFWrapped(nn.Module):
    """``ssf(base_layer(x))``; ``merged()`` returns the base layer with SSF folded in."""

    def __init__(self, base_layer: nn.Module, ssf: ScaleShift) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.ssf = ssf

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.ssf(self.base_layer(x, *args, **kwargs))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        import copy

        layer = copy.deepcopy(self.base_layer)
        target = layer.proj if hasattr(layer, "proj") and isinstance(layer.proj, nn.Conv2d) else layer
        if not isinstance(target, (nn.Linear, nn.LayerNorm, nn.Conv2d)) or target.weight is None:
            raise TypeError(f"cannot fold SSF into {type(layer).__name__}")
        if hasattr(layer, "norm") and not isinstance(layer.norm, nn.Identity):
            raise TypeError("cannot fold SSF through a patch-embedding norm")
        gamma, beta = self.ssf.gamma, self.ssf.beta
        shape = (-1,) + (1,) * (target.weight.dim() - 1)
        target.weight.mul_(gamma.reshape(shape).to(target.weight.dtype))
        bias = target.bias if target.bias is not None else torch.zeros_like(beta)
        new_bias = bias * gamma + beta
        if target.bias is None:
            target.bias = nn.Parameter(new_bias, requires_grad=False)
        else:
            target.bias.copy_(new_bias)
        return layer


def _width(module: nn.Module) -> int:
    for attr in ("out_features", "normalized_shape"):
        value = getattr(module, attr, None)
        if value is not None:
            return int(value if isinstance(value, int) else value[-1])
    if hasattr(module, "proj") and isinstance(module.proj, nn.Conv2d):
        return module.proj.out_channels
    raise UserError(f"ssf: cannot infer the output width of {type(module).__name__}")


def inject_ssf(model: nn.Module, config: SSFConfig) -> None:
    paths = ["patch_embed", *(f"blocks.{i}.{op}" for i in range(len(model_blocks(model))) for op in BLOCK_OPS), "norm"]
    for path in paths:
        module = model.get_submodule(path)
        set_submodule(model, path, SSFWrapped(module, ScaleShift(_width(module), config.init_std)))


def merge_ssf(model: nn.Module) -> int:
    """Replace every SSF wrapper by its base layer with SSF folded in; returns how many."""
    paths = [name for name, m in model.named_modules() if isinstance(m, SSFWrapped)]
    for path in paths:
        set_submodule(model, path, model.get_submodule(path).merged())
    return len(paths)
