"""Partial tuning: train a subset of the backbone's own parameters, add nothing.

- ``bitfit`` (Ben Zaken et al. 2022): every bias term (ViT-B/16: 102,912; published 0.10M).
- ``ln-tune`` (LayerNorm tuning, as in V-PETL Bench / PETL_Vision): every normalisation
  layer's weight and bias (ViT-B/16: 38,400); on Vim the RMSNorm weights.
- ``vim-partial`` (the partial tuning baselines of MambaPEFT, Yoshimura et al. 2025): a chosen
  set of Vim's own tensors (both scan directions each), ``parts`` from:
  ``A_log`` (``A_log``, ``A_b_log``; MambaPEFT's A-tuning, Vim-S 589,824), ``D`` (``D``, ``D_b``;
  D-tuning, 36,864), ``dt_bias`` (``dt_proj``/``dt_proj_b`` biases; Bias-tuning, 36,864),
  ``conv1d_weight`` (the depthwise conv weights, no bias; Conv1d-tuning, 147,456), ``conv1d``
  (conv weights and biases, 184,320) and ``bias`` (every bias outside the conv: the dt biases and
  the patch embedding's, 37,248). Parts may overlap; a tensor trains when any part names it. By
  default ``A_log, D, conv1d, bias``: 848,256 on Vim-S.
  MambaPEFT trains a zero-initialised delta on each tensor whose weight decay (x10, Bias x100)
  pulls it back to the pretrained value; here the tensor itself trains under the run's decay.
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


# part -> whether a parameter name belongs to it
VIM_PARTS = {
    "A_log": lambda name: name.endswith((".A_log", ".A_b_log")),
    "D": lambda name: name.endswith((".D", ".D_b")),
    "dt_bias": lambda name: name.endswith((".dt_proj.bias", ".dt_proj_b.bias")),
    "conv1d_weight": lambda name: name.endswith((".conv1d.weight", ".conv1d_b.weight")),
    "conv1d": lambda name: ".conv1d." in name or ".conv1d_b." in name,
    "bias": lambda name: name.endswith(".bias") and ".conv1d" not in name,
}
DEFAULT_VIM_PARTS = ("A_log", "D", "conv1d", "bias")


@dataclass
class VimPartialConfig:
    """``parts``: which of Vim's tensors train (``VIM_PARTS``; see the module docstring)."""

    parts: tuple[str, ...] = DEFAULT_VIM_PARTS

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
        if len(set(parts)) != len(parts):
            raise UserError(f"vim-partial: a part is named twice in {','.join(parts)}")
        return VimPartialConfig(parts)


def in_vim_parts(name: str, parts: tuple[str, ...]) -> bool:
    """Whether backbone parameter ``name`` belongs to any of ``parts`` (the head never does)."""
    return not name.startswith("head.") and any(VIM_PARTS[part](name) for part in parts)


def unfreeze_vim_parts(model: nn.Module, config: VimPartialConfig) -> None:
    for name, param in model.named_parameters():
        if in_vim_parts(name, config.parts):
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
