"""Backbones: ``create_backbone(name, num_classes, ...)`` over a registry of named configs.

``vit-*``: timm's VisionTransformer (``vit.py``); ``vim-*``: our Vision Mamba (``vim.py``),
whose selective scan lives in ``scan.py``. Every model returned has ``model.family``
("vit" / "vim"), ``model.depth`` (number of blocks) and ``model.get_classifier()``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import UserError, unknown_name
from ..options import NO_NORM as NONE_NAME
from ..options import norm_name
from .kernels import kernel_notes, scan_paths
from .registry import NO_NORM, NORMS, BackboneSpec
from .vim import VIM_SPECS, VimConfig, VisionMamba, build_vim, load_vim_checkpoint
from .vit import VIT_SPECS, attach_pre_logits, build_vit, load_vit_checkpoint

__all__ = [
    "ALIASES",
    "BACKBONES",
    "BackboneSpec",
    "NORMS",
    "NO_NORM",
    "VimConfig",
    "VisionMamba",
    "backbone_family",
    "backbone_rows",
    "create_backbone",
    "describe_input",
    "input_setup",
    "input_stats",
    "get_spec",
    "kernel_notes",
    "resolve_backbone_name",
    "scan_paths",
]

BACKBONES: dict[str, BackboneSpec] = {**VIT_SPECS, **VIM_SPECS}

# Short names the runner accepts: alias -> (full-size backbone, demo backbone).
ALIASES: dict[str, tuple[str, str]] = {
    "vit": ("vit-b16-in21k", "vit-tiny-test"),
    "vim": ("vim-s", "vim-tiny-test"),
    "vit-l": ("vit-l16-in21k", "vit-tiny-test"),
    "dinov2-b": ("dinov2-b14", "dinov2-tiny-test"),
    "dinov2-s": ("dinov2-s14", "dinov2-tiny-test"),
    "clip-b": ("clip-b16", "clip-tiny-test"),
    "mae-b": ("mae-b16", "mae-tiny-test"),
}


def resolve_backbone_name(name: str, demo: bool = False) -> str:
    """Full registry name for ``name``: an alias (``vit``, ``vim``, ``dinov2-b``...) maps to its
    full-size backbone (``vit-b16-in21k``, ``vim-s``, ``dinov2-b14``...) or, with ``demo``, to the
    tiny test config of the same family."""
    if name in ALIASES:
        return ALIASES[name][1 if demo else 0]
    if name not in BACKBONES:
        raise unknown_name("backbone", name, [*BACKBONES, *ALIASES])
    return name


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (aliases resolved as non-demo)."""
    return BACKBONES[resolve_backbone_name(name)]


def input_stats(normalize: bool | str) -> bool | tuple:
    """A recorded ``normalize`` value as ``data.load_split`` takes it: False, or (mean, std)."""
    name = norm_name(normalize)
    if name == NONE_NAME:
        return False
    if name not in NORMS:
        raise unknown_name("normalisation", name, [NONE_NAME, *NORMS])
    return NORMS[name]


def input_setup(name: str, normalize: bool | str, img_size: int) -> dict:
    """What a run feeds backbone ``name`` (for result.json's ``input`` and the dry run): the
    normalisation's name and values, the size, patch and token grid, and what the weights were
    pre-trained with."""
    spec = get_spec(name)
    stats = input_stats(normalize)
    return {"normalize": norm_name(normalize), "mean": list(stats[0]) if stats else None,
            "std": list(stats[1]) if stats else None, "img_size": img_size, "patch_size": spec.patch_size,
            "grid": img_size // spec.patch_size, "pretrained_norm": spec.norm,
            "pretrained_size": spec.pretrained_size or spec.img_size}


def describe_input(setup: dict) -> str:
    """One line: ``normalisation clip (mean ..., std ...; pre-trained with clip), 224 px, patch 16 (14x14 tokens)``."""
    norm = setup["normalize"]
    values = (f" (mean {', '.join(f'{v:g}' for v in setup['mean'])}; std {', '.join(f'{v:g}' for v in setup['std'])})"
              if setup["mean"] else " (inputs in [0, 1])")
    size = f"{setup['img_size']} px" + (f" (weights pre-trained at {setup['pretrained_size']})"
                                        if setup["pretrained_size"] != setup["img_size"] else "")
    return (f"normalisation {norm}{values}, pre-training's {setup['pretrained_norm']}; {size}, patch "
            f"{setup['patch_size']} ({setup['grid']}x{setup['grid']} tokens)")


def backbone_rows() -> list[dict]:
    """One row per registered backbone for ``--list-backbones``: its aliases, family, sizes, patch,
    the recipe's and the pre-training's normalisation, the parameter count without the head (a
    meta-device build at the run size) and the weights file (None for test configs)."""
    rows = []
    for name, spec in BACKBONES.items():
        with torch.device("meta"):
            model = create_backbone(name, num_classes=2, img_size=None, pre_logits=False)
        head = model.get_classifier()
        params = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in head.parameters())
        rows.append({"name": name, "aliases": [a for a, pair in ALIASES.items() if name in pair],
                     "family": spec.family, "img_size": spec.img_size, "pretrained_size": spec.pretrained_size,
                     "patch_size": spec.patch_size, "normalize": spec.recipe_norm, "pretrained_norm": spec.norm,
                     "params": params, "checkpoint_file": spec.checkpoint_file, "test_only": spec.test_only,
                     "description": spec.description})
    return rows


def backbone_family(name: str) -> str:
    """'vit' or 'vim'."""
    return get_spec(name).family


def _check_finite(model: nn.Module, path: str | os.PathLike) -> None:
    """UserError naming the first tensor loaded from ``path`` that holds NaN or inf (a damaged or
    diverged file would otherwise fail much later, as a NaN loss)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all():
            raise UserError(f"{path}: {name} holds non-finite values (NaN or inf): the checkpoint is damaged")


def create_backbone(
    name: str,
    num_classes: int,
    checkpoint: str | os.PathLike | None = None,
    img_size: int | None = 224,
    drop_path: float | None = None,
    pre_logits: bool | None = None,
) -> nn.Module:
    """Build backbone ``name`` with a fresh ``num_classes`` head, optionally from weights.

    ``checkpoint``: a local file (Google .npz for ViT; PyTorch .pth or .safetensors for
    either family; the official Vim ``{'model': ..., 'args': Namespace}`` file); its head is
    never used, and position embeddings are interpolated when ``img_size`` differs from the
    checkpoint's. ``img_size=None`` means the config's native size (224, or 32 for the test
    configs). ``drop_path=None`` means the recipe's rate for the family (ViT 0.1, Vim 0.05,
    test configs 0). ``pre_logits`` (ViT): keep the checkpoint's frozen pre-logits layer
    (Linear + tanh) before the new head, as timm 0.4.12 and the official code did: None = the
    backbone's default (vit-b16-in21k: keep when the file has it), True = required, False =
    drop; True without a checkpoint builds the layer (zeros) for a state dict to be loaded into.
    ``model.pre_logits_kept`` says which. Bad names, files or shapes raise ``UserError``.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    size = spec.img_size if img_size is None else int(img_size)
    patch = spec.patch_size
    if size < patch or size % patch:
        raise UserError(f"img_size {size} must be a positive multiple of {spec.name}'s patch size {patch}")
    rate = spec.drop_path if drop_path is None else float(drop_path)
    if not 0.0 <= rate < 1.0:
        raise UserError(f"drop_path must be in [0, 1), got {rate}")

    if pre_logits is not None and not isinstance(pre_logits, bool):
        raise UserError(f"pre_logits must be true, false or unset, got {pre_logits!r}")
    kept = False
    if spec.family == "vit":
        model = build_vit(spec, num_classes, size, rate)
        layer = None
        if checkpoint is not None:
            layer = load_vit_checkpoint(model, checkpoint, spec.name)
        if pre_logits and layer is None:
            if checkpoint is not None:
                raise UserError(f"pre_logits=True needs a checkpoint with a pre-logits layer ({checkpoint}: has none)")
            # No file: the layer's structure only (zeros), for meta-device builds and for callers that
            # load a state dict holding ``pre_logits.*`` into it (the runner's weights cache).
            width = model.embed_dim
            layer = (torch.zeros(width, width), torch.zeros(width))
        if layer is not None and (pre_logits if pre_logits is not None else spec.pre_logits):
            attach_pre_logits(model, layer, checkpoint)
            kept = True
    else:
        if pre_logits:
            raise UserError(f"pre_logits=True: {spec.name} (Vim) has no pre-logits layer")
        model = build_vim(spec, num_classes, size, rate)
        if checkpoint is not None:
            load_vim_checkpoint(model, checkpoint, spec.name)
    if checkpoint is not None:
        _check_finite(model, checkpoint)
    # The head is drawn last, with or without weights, as each family's official code makes it:
    # ViT a fresh nn.Linear (timm's reset_classifier: PyTorch's default init, +-1/sqrt(fan_in),
    # bias too), Vim trunc_normal(0.02) with a zero bias. A build that copies cached weights in
    # afterwards (the runner) then draws the same numbers as one that reads the file.
    model.reset_classifier(num_classes)
    model.family = spec.family
    model.depth = len(model.blocks) if spec.family == "vit" else len(model.layers)
    model.backbone_name = spec.name
    model.pre_logits_kept = kept
    return model
