"""The registered timm ViT backbones (data only; ``vit.py`` builds and loads them).

Google's releases (ViT-B/16, ViT-L/16) are Flax ``.npz`` files from Google's bucket, read by
timm's npz reader, with their frozen ``pre_logits`` layer; the official Lily recipe feeds them
0..1 inputs (no normalisation). The self-supervised and contrastive ViTs come from timm's Hub
repos (``timm/<model>.<tag>``, one ``model.safetensors`` each) and default to the mean/std they
were pre-trained with, as PETL_Vision and V-PETL Bench feed them. Every run uses 224 px; a
patch-14 model sees a 16x16 grid there and timm resamples the file's position table to it.

Architecture facts (timm 1.0's model functions): DINOv2 blocks have LayerScale (``ls1``/``ls2``,
learned per-channel gains, initial 1e-5) and the file's position table is 37x37 (518 px); CLIP's
image tower has a LayerNorm before the blocks (``norm_pre``, OpenAI's ``ln_pre``), no patch-embed
bias and QuickGELU activations (OpenAI's; timm's ``_quickgelu_`` variant, whose weights are the
``.openai`` repo's), and its ``head`` in the file is the 768->512 projection into the joint
image-text space, dropped here like any pretrained head; MAE's encoder is a plain ViT-B/16 (its
file has no head), classified from the class token after the pretrained final norm (timm's
default pooling, which uses only pretrained weights; MAE's own fine-tuning averaged the patch
tokens through a new norm instead).
"""

from __future__ import annotations

from .registry import BackboneSpec

GOOGLE = "https://storage.googleapis.com/vit_models/"
HUB = "https://huggingface.co/"
# The test configs: each family's code path (its timm model function) at a tiny size (32 px, patch 4).
TINY = {"patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 3}


def _google(name: str, timm_name: str, path: str, description: str, params_m: float,
            pre_logits: bool = False) -> BackboneSpec:
    """A Google release: the Flax ``.npz`` at ``GOOGLE + path`` (landing under its own name), trained
    on [-1, 1] inputs (``inception``); the official Lily recipe feeds it 0..1 inputs."""
    return BackboneSpec(
        name=name, family="vit", description=description, img_size=224, drop_path=0.1,
        arch={"timm_name": timm_name}, checkpoint_file=path.rsplit("/", 1)[-1], source=GOOGLE + path,
        norm="inception", pre_logits=pre_logits, params_m=params_m)


def _timm_hub(name: str, timm_name: str, repo: str, description: str, norm: str, params_m: float,
              patch_size: int = 16, pretrained_size: int | None = None) -> BackboneSpec:
    """A backbone whose weights are timm's ``model.safetensors`` in the Hub repo ``timm/<repo>``;
    the file lands as ``backbones/<repo>.safetensors``; the recipe feeds its pre-training mean/std."""
    return BackboneSpec(
        name=name, family="vit", description=description, img_size=224, drop_path=0.1,
        arch={"timm_name": timm_name}, checkpoint_file=f"{repo}.safetensors", source=f"{HUB}timm/{repo}",
        hub=f"timm/{repo}", hub_file="model.safetensors", norm=norm, recipe_norm=norm, params_m=params_m,
        patch_size=patch_size, pretrained_size=pretrained_size)


def _tiny(name: str, timm_name: str, description: str, norm: str, recipe_norm: str,
          weights: str = "random") -> BackboneSpec:
    return BackboneSpec(
        name=name, family="vit", description=f"tiny {description} for tests and the demo (32px, patch 4, "
        f"4 blocks; {weights})", img_size=32, drop_path=0.0, arch={"timm_name": timm_name, "overrides": dict(TINY)},
        test_only=True, patch_size=4, norm=norm, recipe_norm=recipe_norm)


# params_m: the published count without a classification head. ViT-B/16 and MAE 85.8M, ViT-L/16
# 303.3M, DINOv2 86.6M / 22.1M (at 518 px) and CLIP 86.2M: the "Params (M)" of timm's model cards
# (huggingface.co/timm/<model>); CLIP's 86.2M includes the 0.39M projection its file keeps as
# ``head``, so 85.8M without it. torchvision's vit_l_16 lists 304.3M with its 1000-class head
# (1.03M): 303.3M without.
VIT_SPECS = {
    "vit-b16-in21k": _google("vit-b16-in21k", "vit_base_patch16_224.orig_in21k", "imagenet21k/ViT-B_16.npz",
                             "ViT-B/16, Google's original ImageNet-21k release (ViT-B_16.npz), as in Lily/VPT/NOAH",
                             85.8, pre_logits=True),
    "vit-b16-in1k": _google("vit-b16-in1k", "vit_base_patch16_224.augreg_in1k", "augreg/B_16-i1k-300ep-lr_0.001-"
                            "aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz",
                            "ViT-B/16 trained on ImageNet-1k only (AugReg), for the paper's Vim comparison rows", 85.8),
    # like ViT-B_16.npz, a 1024->1024 Linear+tanh before the 21k head, kept frozen
    "vit-l16-in21k": _google("vit-l16-in21k", "vit_large_patch16_224.orig_in21k", "imagenet21k/ViT-L_16.npz",
                             "ViT-L/16, Google's original ImageNet-21k release (ViT-L_16.npz), as V-PETL Bench's "
                             "ViT-L", 303.3, pre_logits=True),
    "dinov2-b14": _timm_hub("dinov2-b14", "vit_base_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2.lvd142m",
                            "DINOv2 ViT-B/14 (self-supervised, LVD-142M; LayerScale), as PETL_Vision's DINOv2",
                            "imagenet", 86.6, patch_size=14, pretrained_size=518),
    "dinov2-s14": _timm_hub("dinov2-s14", "vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_dinov2.lvd142m",
                            "DINOv2 ViT-S/14 (self-supervised, LVD-142M; LayerScale)",
                            "imagenet", 22.1, patch_size=14, pretrained_size=518),
    "clip-b16": _timm_hub("clip-b16", "vit_base_patch16_clip_quickgelu_224.openai", "vit_base_patch16_clip_224.openai",
                          "OpenAI CLIP ViT-B/16 image tower (QuickGELU, ln_pre), as PETL_Vision's CLIP",
                          "clip", 85.8),
    "mae-b16": _timm_hub("mae-b16", "vit_base_patch16_224.mae", "vit_base_patch16_224.mae",
                         "MAE ViT-B/16 encoder (self-supervised masked autoencoder, ImageNet-1k)", "imagenet", 85.8),
    # random in tests; --demo loads weights pre-trained on generated textures (backbones/demo_weights.py)
    "vit-tiny-test": _tiny("vit-tiny-test", "vit_base_patch16_224", "ViT (Google's ViT-B/L family)", "inception",
                           "none", weights="random, or with --demo pre-trained on generated textures"),
    "dinov2-tiny-test": _tiny("dinov2-tiny-test", "vit_small_patch14_dinov2", "DINOv2 ViT (LayerScale)", "imagenet",
                              "imagenet"),
    "clip-tiny-test": _tiny("clip-tiny-test", "vit_base_patch16_clip_quickgelu_224", "CLIP ViT (ln_pre, QuickGELU)",
                            "clip", "clip"),
    "mae-tiny-test": _tiny("mae-tiny-test", "vit_base_patch16_224", "MAE ViT", "imagenet", "imagenet"),
}
