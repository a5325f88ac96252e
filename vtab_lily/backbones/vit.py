"""ViT backbones: timm's ``VisionTransformer``, weights from Google's .npz or PyTorch files.

timm builds the model and reads the files (its npz reader for Google's JAX releases, its
checkpoint filter for PyTorch state dicts: position-embedding and patch-embedding
resampling). Nothing here lets timm reach the network: models are created with
``pretrained=False`` and weights only ever come from a local file.

Pre-logits: Google's in21k ViT-B_16.npz has a ``pre_logits`` Dense layer (768 -> 768, tanh)
between the final norm's class token and the head. timm 0.4.12, which the official Lily code
used, loaded it and kept it (frozen under PEFT) in front of the new head; timm 1.x drops it.
``read_pre_logits`` reads it (npz arrays ``pre_logits/kernel`` (in, out) and ``pre_logits/bias``,
or timm 0.4.12's ``pre_logits.fc.*`` tensors) and ``attach_pre_logits`` puts it back.
"""

from __future__ import annotations

import os

import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from ..errors import UserError
from .checkpoint import check_keys, guess_family, read_state_dict, sniff_format, wrong_family_error
from .registry import BackboneSpec
from .vit_specs import VIT_SPECS  # noqa: F401 - the registry entries (data), re-exported



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


def load_vit_checkpoint(model: nn.Module, path: str | os.PathLike,
                        target: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Load a Google .npz (timm's reader) or a PyTorch / safetensors ViT state dict.

    PyTorch layouts: timm's (its Hub files), and what timm's checkpoint filter converts (the
    original DINOv2 ``.pth``, OpenAI/OpenCLIP ``visual.*`` keys). The head is not loaded (callers
    reset it). Position embeddings are resampled to the model's grid by timm; a file of another
    patch size or variant (LayerScale, CLIP's ``norm_pre``) is refused rather than resampled or
    half-loaded. Problems become a UserError naming the file. Returns the file's pre-logits layer
    (weight (out, in), bias) or None; loading it is the caller's choice.
    """
    if sniff_format(path) == "npz":
        _check_variant(path, target, model, "a Google ViT .npz", set())
        _load_npz(model, path, target)
        return read_pre_logits(path)
    state = read_state_dict(path)
    family = guess_family(state)
    if family == "vim":
        raise wrong_family_error(path, family, target)
    _check_patch(path, target, model, state)
    layer = _torch_pre_logits(state, path)
    try:
        state = checkpoint_filter_fn(state, model)  # resamples pos_embed, drops pre_logits
    except Exception as err:  # timm raises assorted errors on foreign layouts
        raise UserError(f"{path}: cannot convert this state dict for {target}: {err}") from None
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "pre_logits."))}
    _check_variant(path, target, model, "this checkpoint", set(state))
    check_keys(path, target, model.state_dict(), state)
    model.load_state_dict(state, strict=False)
    return layer


# Parameters that tell the timm ViT variants apart, and what a message calls them.
_VARIANT_MARKS = {".ls1.gamma": "LayerScale gains ls1/ls2 (DINOv2)", "norm_pre.weight": "a pre-block norm_pre (CLIP)"}


def _marks(keys: set[str]) -> set[str]:
    return {mark for mark in _VARIANT_MARKS if any(k.endswith(mark) or k == mark for k in keys)}


def _check_variant(path: str | os.PathLike, target: str, model: nn.Module, what: str, keys: set[str]) -> None:
    """UserError when the file and the model differ in a variant's own parameters (a DINOv2
    file for CLIP, a Google npz for DINOv2), naming what each has."""
    want, have = _marks(set(model.state_dict())), _marks(keys)
    if want == have:
        return

    def said(marks: set[str]) -> str:
        return " and ".join(_VARIANT_MARKS[m] for m in sorted(marks)) or "neither LayerScale nor norm_pre (a plain ViT)"

    raise UserError(f"{path}: {what} has {said(have)}, but {target} has {said(want)}: it is a checkpoint of another "
                    f"ViT variant (python -m vtab_lily.run --list-backbones names each backbone's file)")


def _check_patch(path: str | os.PathLike, target: str, model: nn.Module, state: dict) -> None:
    """A file of another patch size is refused (timm would resample its patch embedding)."""
    weight = state.get("patch_embed.proj.weight", state.get("visual.conv1.weight"))
    if weight is None or weight.dim() != 4:
        return  # check_keys names what is missing
    ours = tuple(model.patch_embed.proj.weight.shape[-2:])
    if tuple(weight.shape[-2:]) != ours:
        raise UserError(f"{path}: patch size {tuple(weight.shape[-2:])} in the file, {target} has {ours}: a "
                        "checkpoint of another model")


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


NPZ_PRE_LOGITS = ("pre_logits/kernel", "pre_logits/bias")
TORCH_PRE_LOGITS = ("pre_logits.fc.weight", "pre_logits.fc.bias")


def read_pre_logits(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The .npz's pre-logits layer as (weight (out, in), bias), or None if it has none."""
    with np.load(path, allow_pickle=False) as arrays:  # arrays only: nothing is unpickled
        if NPZ_PRE_LOGITS[0] not in arrays.files:
            return None
        if NPZ_PRE_LOGITS[1] not in arrays.files:
            raise UserError(f"{path}: has {NPZ_PRE_LOGITS[0]} but not {NPZ_PRE_LOGITS[1]}")
        kernel, bias = (np.asarray(arrays[key], dtype=np.float32) for key in NPZ_PRE_LOGITS)
    if kernel.ndim != 2:
        raise UserError(f"{path}: {NPZ_PRE_LOGITS[0]} has shape {kernel.shape}, expected (in, out)")
    return torch.from_numpy(kernel.T.copy()), torch.from_numpy(bias.copy())  # Flax kernels are (in, out)


def _torch_pre_logits(state: dict, path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor] | None:
    if TORCH_PRE_LOGITS[0] not in state:
        return None
    if TORCH_PRE_LOGITS[1] not in state:
        raise UserError(f"{path}: has {TORCH_PRE_LOGITS[0]} but not {TORCH_PRE_LOGITS[1]}")
    return state[TORCH_PRE_LOGITS[0]].float(), state[TORCH_PRE_LOGITS[1]].float()


class PreLogits(nn.Module):
    """``tanh(fc(x))``: the pre-logits layer of Google's ViT releases (timm 0.4.12 naming)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)
        self.fc.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class PreLogitsVisionTransformer(VisionTransformer):
    """timm's ViT with ``pre_logits`` applied after pooling and the final norm, before the head
    (as timm 0.4.12). ``forward_head(x, pre_logits=True)`` returns the layer's output."""

    pre_logits: PreLogits

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(super().forward_head(x, pre_logits=True))
        return x if pre_logits else self.head(x)


def attach_pre_logits(model: nn.Module, layer: tuple[torch.Tensor, torch.Tensor], path: str | os.PathLike) -> None:
    """Put the checkpoint's pre-logits layer (frozen) between pooling and ``model``'s head."""
    weight, bias = layer
    if weight.dim() != 2 or bias.dim() != 1:
        raise UserError(f"{path}: pre_logits has shapes {tuple(weight.shape)}, {tuple(bias.shape)}")
    width = model.embed_dim
    if tuple(weight.shape) != (width, width) or tuple(bias.shape) != (width,):
        raise UserError(f"{path}: pre_logits has shapes {tuple(weight.shape)}, {tuple(bias.shape)}; "
                        f"the model needs ({width}, {width}) and ({width},)")
    if not weight.is_meta and not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise UserError(f"{path}: pre_logits holds non-finite values")
    if type(model) is not VisionTransformer:
        raise UserError(f"cannot add pre_logits to a {type(model).__name__}")
    reference = model.head.weight
    model.add_module("pre_logits", PreLogits(weight.to(reference.device, reference.dtype),
                                             bias.to(reference.device, reference.dtype)))
    model.__class__ = PreLogitsVisionTransformer  # same state, forward_head with the layer
