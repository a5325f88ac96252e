"""Partial tuning: train a subset of the backbone's own parameters, add nothing.

- ``bitfit`` (Ben Zaken et al. 2022): every bias term (ViT-B/16: 102,912; published 0.10M).
- ``ln-tune`` (LayerNorm tuning, as in V-PETL Bench / PETL_Vision): every normalisation
  layer's weight and bias (ViT-B/16: 38,400); on Vim the RMSNorm weights.
A fresh model computes exactly the backbone (nothing is added). ``count_parameters`` counts
these trainable backbone tensors as the method's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vtab_lily.adapters.targets import model_family


@dataclass
class BitFitConfig:
    """No options: every bias of the backbone trains (the head trains as always)."""

    def resolve(self, model: nn.Module) -> "BitFitConfig":
        model_family(model)
        return self


@dataclass
class LNTuneConfig:
    """No options: every normalisation layer's affine parameters train."""

    def resolve(self, model: nn.Module) -> "LNTuneConfig":
        model_family(model)
        return self


def unfreeze_biases(model: nn.Module, config: BitFitConfig) -> None:
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias":
            param.requires_grad_(True)


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__ in ("RMSNorm", "LayerNorm2d")


def unfreeze_norms(model: nn.Module, config: LNTuneConfig) -> None:
    for module in model.modules():
        if is_norm(module):
            module.requires_grad_(True)
