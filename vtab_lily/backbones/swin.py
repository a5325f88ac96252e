"""Swin Transformer backbones: timm's ``SwinTransformer``, weights from a PyTorch or safetensors file.

timm builds the model (``pretrained=False``: nothing is downloaded here) and converts state dicts
with its Swin ``checkpoint_filter_fn``, which resamples the relative-position bias tables when a
stage's window differs from the file's (another ``img_size``), and renames the original
Microsoft layout (patch merging at the end of a stage, ``head.*``) to timm's (merging at the
start of the next stage, ``head.fc.*``). Both layouts load.

A Swin model is four stages of blocks, ``layers[s].blocks[j]``, at widths C, 2C, 4C, 8C (Swin-B:
128, 256, 512, 1024) with patch merging between stages. Each block has the ViT block's adapter
sites (``attn.qkv`` fused q/k/v, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, ``mlp``), on features
laid out (batch, H, W, C) around the windowed attention and (batch, H*W, C) around the MLP.
``swin_blocks(model)`` lists the blocks in order over all stages, with their module paths.
"""

from __future__ import annotations

import os
import re

import timm
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import nn

from ..errors import UserError
from .checkpoint import check_keys, guess_family, read_state_dict, sniff_format, wrong_family_error
from .registry import BackboneSpec

SWIN_B = "swin_base_patch4_window7_224"

SWIN_SPECS = {
    "swin-b-in22k": BackboneSpec(
        name="swin-b-in22k",
        family="swin",
        description="Swin-B (patch 4, window 7), ImageNet-22k (Microsoft's release via timm), as in V-PETL Bench",
        img_size=224,
        drop_path=0.1,  # the ViT recipe's rate: see official.RECIPES["swin"]
        arch={"timm_name": SWIN_B},
        # The Hub file is timm's model.safetensors (hub_file); it lands under this name, as the other
        # timm backbones' files do under theirs.
        checkpoint_file="swin_base_patch4_window7_224.ms_in22k.safetensors",
        source="https://huggingface.co/timm/swin_base_patch4_window7_224.ms_in22k",
        hub="timm/swin_base_patch4_window7_224.ms_in22k",
        hub_file="model.safetensors",
        patch_size=4,
        norm="imagenet",  # timm's pretrained_cfg for ms_in22k: ImageNet mean/std
        recipe_norm="imagenet",
        # The Swin paper's Table 1 (arXiv 2103.14030): Swin-B 88M, counted with its ImageNet-1k head.
        params_m=88.0,
        params_classes=1000,
    ),
    "swin-tiny-test": BackboneSpec(
        name="swin-tiny-test",
        family="swin",
        description="tiny random Swin for tests and the demo (32px, patch 2, window 4, 4 stages of 2 blocks)",
        img_size=32,
        drop_path=0.0,
        # Four stages as Swin-B's (patch grid 16, 8, 4, 2): shifted windows in the first two stages,
        # one window in the third, a window clamped to the 2x2 grid in the last.
        arch={"timm_name": SWIN_B, "overrides": {"patch_size": 2, "window_size": 4, "embed_dim": 16,
                                                 "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}},
        test_only=True,
        patch_size=2,
        norm="imagenet",
        recipe_norm="imagenet",
    ),
}


def build_swin(spec: BackboneSpec, num_classes: int, img_size: int, drop_path: float) -> SwinTransformer:
    """A randomly initialised timm Swin for ``spec`` (never downloads anything)."""
    return timm.create_model(spec.arch["timm_name"], pretrained=False, num_classes=num_classes,
                             img_size=img_size, drop_path_rate=drop_path, **spec.arch.get("overrides", {}))


def swin_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, block)`` for every block, stage by stage: ``layers.0.blocks.0``, ``layers.0.blocks.1``, ..."""
    return [(f"layers.{s}.blocks.{j}", block)
            for s, stage in enumerate(model.layers) for j, block in enumerate(stage.blocks)]


def _check_structure(model: SwinTransformer, state: dict, path: str | os.PathLike, target: str) -> None:
    """Refuse, by name, a file of other blocks or another patch size before timm's filter sees it.

    timm's filter would fail on a block the model lacks with a bare attribute error, and would
    silently resample a patch embedding of another patch size (another architecture, not
    another input size). Other windows are left to it: resampling the bias tables is how a
    stage's window follows ``img_size``.
    """
    ours = {p for p, _ in swin_blocks(model)}
    theirs = {m.group(0) for k in state if (m := re.match(r"layers\.\d+\.blocks\.\d+", k))}
    extra, missing = sorted(theirs - ours), sorted(ours - theirs)
    if extra or missing:
        def listed(paths: list[str]) -> str:
            return ", ".join(paths[:4]) + (", ..." if len(paths) > 4 else "")

        parts = [f"{len(extra)} more blocks ({listed(extra)})" if extra else "",
                 f"{len(missing)} of its blocks missing ({listed(missing)})" if missing else ""]
        raise UserError(f"{path}: checkpoint does not fit {target}: the file has "
                        + " and ".join(p for p in parts if p) + f"; {target} has {len(ours)} blocks in stages of "
                        f"{[len(stage.blocks) for stage in model.layers]}")
    weight = state.get("patch_embed.proj.weight")
    expected = tuple(model.patch_embed.proj.weight.shape)
    if weight is not None and weight.dim() == 4 and tuple(weight.shape[-2:]) != expected[-2:]:
        raise UserError(f"{path}: patch size {tuple(weight.shape[-2:])} in the file, {target} has {expected[-2:]}: "
                        "a checkpoint of another Swin variant")


def load_swin_checkpoint(model: SwinTransformer, path: str | os.PathLike, target: str) -> None:
    """Load a PyTorch or safetensors Swin state dict (timm's or Microsoft's key layout).

    The head is not loaded (callers reset it). Every other key must match; problems become a
    UserError naming the file.
    """
    if sniff_format(path) == "npz":
        raise UserError(f"{path}: a Google .npz (ViT) checkpoint; {target} needs a Swin state dict "
                        f"(.safetensors or .pth) such as timm's {SWIN_SPECS['swin-b-in22k'].hub}")
    state = read_state_dict(path)
    family = guess_family(state)
    if family != "swin":
        if family is not None:
            raise wrong_family_error(path, family, target)
        raise UserError(f"{path}: not a Swin state dict (no relative_position_bias_table, no layers.N.blocks.M "
                        f"keys); {target} needs one such as timm's {SWIN_SPECS['swin-b-in22k'].hub}")
    _check_structure(model, state, path, target)
    try:
        state = checkpoint_filter_fn(state, model)  # bias tables, Microsoft's layout
    except Exception as err:  # timm raises assorted errors on foreign shapes
        raise UserError(f"{path}: cannot convert this state dict for {target}: {err}") from None
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    check_keys(path, target, model.state_dict(), state)
    model.load_state_dict(state, strict=False)
