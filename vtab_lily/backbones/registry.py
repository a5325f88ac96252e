"""The backbone spec record shared by the per-family config files (``vit.py``, ``vim.py``), and the
input normalisations (``NORMS``) backbones were pre-trained with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.dataset import IMAGENET_MEAN, IMAGENET_STD  # the data layer's `normalize=True`: one copy

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# OpenAI's CLIP preprocessing (openai/CLIP clip.py _transform; timm's OPENAI_CLIP_MEAN/STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Per-channel (mean, std) of the 0..1 inputs, by name: the sets pretrained weights were trained with.
NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision / timm default: DINOv2, MAE, DeiT, Vim, Swin
    "inception": (INCEPTION_MEAN, INCEPTION_STD),  # Google's ViT releases: inputs scaled to [-1, 1]
    "clip": (CLIP_MEAN, CLIP_STD),
}
NO_NORM = "none"  # inputs left in [0, 1] (the official Lily recipe on Google's ViT and on Vim)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: architecture arguments and facts about its pretrained weights.

    ``arch`` holds the family's builder arguments (a timm model name and overrides for ViT,
    ``VimConfig`` fields for Vim). ``checkpoint_file`` is the file name of the published
    weights as the user downloads them into ``backbones/`` (documented in
    ``backbones/README.md``); ``None`` for test configs. ``source``: where the file comes from (a
    URL); ``hub``: the Hugging Face Hub repo the fetch command reads it from, when it is there.
    ``hub_file``: the file's path in that repo when it differs from ``checkpoint_file``
    (timm's repos all name it ``model.safetensors``; it lands under ``checkpoint_file``).
    ``drop_path`` is the recipe's stochastic-depth rate, used when ``create_backbone(drop_path=None)``.
    ``patch_size``: the patch (token) size in pixels; ``img_size`` the size runs use by default.
    ``norm``: the key of ``NORMS`` the weights were pre-trained with (``mean``/``std`` are its
    values); ``recipe_norm``: what the official fine-tuning recipe feeds this backbone, ``"none"``
    (0..1 inputs: the official Lily code on Google's ViT and on Vim) or a key of ``NORMS`` (a
    backbone's own pre-training set: DINOv2, CLIP, MAE). ``params_m``: the published parameter
    count in millions at ``pretrained_size`` when set (the resolution of the published weights:
    DINOv2's 518, whose position table runs resample to ``img_size``), checked on a meta-device
    build, counted as its paper counts it: ``params_classes`` is the size of the classification
    head the count includes (0: none, the ViT papers' convention; 1000: an ImageNet-1k head, as
    the Swin and Vim papers count).
    ``pre_logits``: keep the checkpoint's frozen pre-logits layer (Linear + tanh) before the new
    head when the file has one and ``create_backbone(pre_logits=None)`` (timm 0.4.12, which the
    official ViT code used, kept it; timm 1.x drops it).
    """

    name: str
    family: str  # "vit", "vim" or "swin"
    description: str
    img_size: int
    drop_path: float
    arch: dict[str, Any] = field(default_factory=dict)
    checkpoint_file: str | None = None
    source: str = ""  # where the published weights come from (documentation only)
    test_only: bool = False  # tiny configs for tests and the demo
    pre_logits: bool = False
    patch_size: int = 16
    norm: str = "imagenet"
    recipe_norm: str = NO_NORM
    hub: str | None = None
    hub_file: str | None = None  # the file's path in the ``hub`` repo when it differs from checkpoint_file
    params_m: float | None = None
    params_classes: int = 0
    pretrained_size: int | None = None  # the resolution of the published weights' last training phase, when not img_size

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"backbone {self.name}: norm {self.norm!r} is not one of {sorted(NORMS)}")
        if self.recipe_norm != NO_NORM and self.recipe_norm not in NORMS:
            raise ValueError(f"backbone {self.name}: recipe_norm {self.recipe_norm!r} is not "
                             f"{NO_NORM!r} nor one of {sorted(NORMS)}")

    @property
    def mean(self) -> tuple[float, float, float]:
        return NORMS[self.norm][0]

    @property
    def std(self) -> tuple[float, float, float]:
        return NORMS[self.norm][1]
