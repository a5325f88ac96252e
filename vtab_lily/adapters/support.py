"""Adapters a backbone family refuses, each with the reason (``apply_adapter`` asks before building).

ViT and Vim are the families every adapter was written for (the Vim-only and ViT-only methods
refuse the other family in their own ``resolve``). Swin came later: its blocks carry the ViT
block's sites (fused ``qkv``, ``proj``, ``fc1``, ``fc2``, ``mlp``), but at four widths (Swin-B:
128, 256, 512, 1024, one per stage), its attention runs inside windows of the patch grid with
no class token, and patch merging sits between stages. Methods that need none of those
run; the others are refused here, by name, rather than run in a form nobody published.
docs/backbones.md shows the same table to users (a test keeps the two in step).
"""

from __future__ import annotations

from torch import nn

from vtab_lily.adapters.targets import model_family
from vtab_lily.errors import UserError

_VIM_ONLY = "it changes Vision Mamba's selective scan or SSM tensors; Swin has none"

REFUSED: dict[str, dict[str, str]] = {
    "swin": {
        "lily": "Lily shares its A projections and its B experts across layers, which needs one width, "
                "and Swin's four stages have four (Swin-B 128/256/512/1024); no published Lily-on-Swin "
                "setup says how to share across stages",
        "vpt-deep": "its prompt tokens join the class token's sequence, and Swin's windowed attention has "
                    "neither a class token nor a sequence to add tokens to",
        "vpt-shallow": "its prompt tokens join the class token's sequence, and Swin's windowed attention has "
                       "neither a class token nor a sequence to add tokens to",
        "fact-tt": "FacT factorises all layers' weights as one tensor, which needs one width; Swin's stages "
                   "have four",
        "fact-tk": "FacT factorises all layers' weights as one tensor, which needs one width; Swin's stages "
                   "have four",
        "convpass": "its convolution runs over a ViT's patch grid behind a class token; Swin has no class token "
                    "and changes the grid between stages",
        "ssf": "only SSF's ViT placement is implemented; its Swin placement (patch merging too) is not",
        "repadapter": "it is written around timm's ViT Block (before attn and mlp); no Swin form is implemented",
        "houlsby": "it is written around timm's ViT Block forward; no Swin form is implemented",
        "pfeiffer": "it is written around timm's ViT Block forward; no Swin form is implemented",
        "vim-partial": _VIM_ONLY,
        "affix": _VIM_ONLY,
        "additional-scan": _VIM_ONLY,
    },
}

FAMILY_NAMES = {"vit": "ViT", "vim": "Vision Mamba", "swin": "Swin"}


def refusal(family: str, adapter: str) -> str | None:
    """Why ``adapter`` does not run on ``family`` (None: it runs)."""
    return REFUSED.get(family, {}).get(adapter)


def check_supported(model: nn.Module, adapter: str, available: list[str] | tuple[str, ...] = ()) -> None:
    """UserError naming the backbone and the adapter when ``family`` refuses ``adapter``;
    ``available``: every adapter name, to list the ones that do run."""
    family = model_family(model)
    why = refusal(family, adapter)
    if why is None:
        return
    backbone = getattr(model, "backbone_name", None) or type(model).__name__
    runs = [name for name in available if refusal(family, name) is None]
    listed = f" Adapters that run on {FAMILY_NAMES[family]}: {', '.join(runs)}." if runs else ""
    raise UserError(f"adapter {adapter!r} does not run on backbone {backbone} ({FAMILY_NAMES[family]}): "
                    f"{why}.{listed}")
