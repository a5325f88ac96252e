"""Partial tuning: train a subset of the backbone's own parameters, add nothing.

- ``bitfit`` (Ben Zaken et al. 2022): every bias term (ViT-B/16: 102,912; published 0.10M).
- ``ln-tune`` (LayerNorm tuning, as in V-PETL Bench / PETL_Vision): every normalisation
  layer's weight and bias (ViT-B/16: 38,400); on Vim the RMSNorm weights.
- ``vim-partial`` (the partial tuning baselines of the Mamba PEFT benchmark): a chosen set of
  Vim's SSM tensors: ``A_log`` (and ``A_b_log``), ``D`` (``D_b``), the depthwise ``conv1d``
  (``conv1d_b``) weights and biases, and every ``bias``; by default all of them (Vim-S:
  A 2 x 24 x 12,288 + D 2 x 24 x 768 + conv 2 x 24 x 3,840 + dt biases 2 x 24 x 768 + patch bias 384).
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


VIM_PARTS = ("A_log", "D", "conv1d", "bias")


@dataclass
class VimPartialConfig:
    """``parts``: which of ``A_log``, ``D``, ``conv1d``, ``bias`` train."""

    parts: tuple[str, ...] = VIM_PARTS

    def resolve(self, model: nn.Module) -> "VimPartialConfig":
        from vtab_lily.errors import UserError, unknown_name

        if model_family(model) != "vim":
            raise UserError("vim-partial tunes Vision Mamba's SSM tensors; use bitfit or ln-tune on ViT")
        parts = tuple(self.parts) if not isinstance(self.parts, str) else tuple(self.parts.split(","))
        for part in parts:
            if part not in VIM_PARTS:
                raise unknown_name("vim-partial part", part, VIM_PARTS)
        if not parts:
            raise UserError("vim-partial: parts must name at least one of " + ", ".join(VIM_PARTS))
        return VimPartialConfig(parts)


def vim_part_of(name: str) -> str | None:
    """Which ``VIM_PARTS`` entry a parameter name belongs to (None: none)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("A_log", "A_b_log"):
        return "A_log"
    if leaf in ("D", "D_b"):
        return "D"
    if ".conv1d" in name:
        return "conv1d"
    return "bias" if leaf == "bias" else None


def unfreeze_vim_parts(model: nn.Module, config: VimPartialConfig) -> None:
    for name, param in model.named_parameters():
        if vim_part_of(name) in config.parts and not name.startswith("head"):
            param.requires_grad_(True)


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
