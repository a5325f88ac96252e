"""ViT backbones: timm's ``VisionTransformer``, weights from Google's .npz or PyTorch files.

timm builds the model and reads the files (its npz reader for Google's JAX releases, its
checkpoint filter for PyTorch state dicts: position-embedding and patch-embedding
resampling, ``pre_logits`` dropped). Nothing here lets timm reach the network: models are
created with ``pretrained=False`` and weights only ever come from a local file.
"""

from __future__ import annotations

import os

import timm
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ..errors import UserError
from .checkpoint import check_keys, guess_family, read_state_dict, sniff_format, wrong_family_error
from .registry import INCEPTION_MEAN, INCEPTION_STD, BackboneSpec

VIT_SPECS = {
    "vit-b16-in21k": BackboneSpec(
        name="vit-b16-in21k",
        family="vit",
        description="ViT-B/16, Google's original ImageNet-21k release (ViT-B_16.npz), as in Lily/VPT/NOAH",
        img_size=224,
        drop_path=0.1,
        arch={"timm_name": "vit_base_patch16_224.orig_in21k"},
        checkpoint_file="ViT-B_16.npz",
        source="https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    ),
    "vit-b16-in1k": BackboneSpec(
        name="vit-b16-in1k",
        family="vit",
        description="ViT-B/16 trained on ImageNet-1k only (AugReg), for the paper's Vim comparison rows",
        img_size=224,
        drop_path=0.1,
        arch={"timm_name": "vit_base_patch16_224.augreg_in1k"},
        checkpoint_file="B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz",
        source="https://storage.googleapis.com/vit_models/augreg/"
        "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz",
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
    ),
    "vit-tiny-test": BackboneSpec(
        name="vit-tiny-test",
        family="vit",
        description="tiny random ViT for tests and the demo (32px, patch 4, 4 blocks)",
        img_size=32,
        drop_path=0.0,
        arch={
            "timm_name": "vit_base_patch16_224",
            "overrides": {"patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 3},
        },
        test_only=True,
    ),
}


def build_vit(spec: BackboneSpec, num_classes: int, img_size: int, drop_path: float) -> nn.Module:
    """A randomly initialised timm ViT for ``spec`` (never downloads anything)."""
    return timm.create_model(
        spec.arch["timm_name"],
        pretrained=False,
        num_classes=num_classes,
        img_size=img_size,
        drop_path_rate=drop_path,
        **spec.arch.get("overrides", {}),
    )


def load_vit_checkpoint(model: nn.Module, path: str | os.PathLike, target: str) -> None:
    """Load a Google .npz (timm's reader) or a PyTorch / safetensors ViT state dict.

    The head is not loaded (callers reset it). Position embeddings are resampled to the
    model's grid by timm. Problems become a UserError naming the file.
    """
    if sniff_format(path) == "npz":
        _load_npz(model, path, target)
        return
    state = read_state_dict(path)
    family = guess_family(state)
    if family == "vim":
        raise wrong_family_error(path, family, target)
    try:
        state = checkpoint_filter_fn(state, model)  # resamples pos_embed, drops pre_logits
    except Exception as err:  # timm raises assorted errors on foreign layouts
        raise UserError(f"{path}: cannot convert this state dict for {target}: {err}") from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    check_keys(path, target, model.state_dict(), state)
    model.load_state_dict(state, strict=False)


def _load_npz(model: nn.Module, path: str | os.PathLike, target: str) -> None:
    try:
        model.load_pretrained(str(path))  # timm's reader for Google's JAX/Flax .npz releases
    except KeyError as err:
        raise UserError(
            f"{path}: not a Google ViT .npz for {target}: array {err} is missing "
            "(is it a checkpoint of another architecture?)"
        ) from None
    except (ValueError, RuntimeError) as err:
        raise UserError(f"{path}: .npz does not fit {target}: {err}") from None
