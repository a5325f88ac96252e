"""The backbone spec record shared by the per-family config files (``vit.py``, ``vim.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: architecture arguments and facts about its pretrained weights.

    ``arch`` holds the family's builder arguments (a timm model name and overrides for ViT,
    ``VimConfig`` fields for Vim). ``checkpoint_file`` is the file name of the published
    weights as the user downloads them into ``backbones/`` (documented in
    ``backbones/README.md``); ``None`` for test configs. ``drop_path`` is the recipe's
    stochastic-depth rate, used when ``create_backbone(drop_path=None)``. ``mean``/``std`` is
    the normalisation the weights were trained with (informational: the data layer decides).
    ``pre_logits``: keep the checkpoint's frozen pre-logits layer (Linear + tanh) before the new
    head when the file has one and ``create_backbone(pre_logits=None)`` (timm 0.4.12, which the
    official ViT code used, kept it; timm 1.x drops it).
    """

    name: str
    family: str  # "vit" or "vim"
    description: str
    img_size: int
    drop_path: float
    arch: dict[str, Any] = field(default_factory=dict)
    checkpoint_file: str | None = None
    source: str = ""  # where the published weights come from (documentation only)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    test_only: bool = False  # tiny configs for tests and the demo
    pre_logits: bool = False
