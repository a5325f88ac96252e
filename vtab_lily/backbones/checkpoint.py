"""Reading pretrained weight files safely, and explaining why one does not fit.

Formats are recognised by their bytes, not their names: PyTorch zip archives
(``torch.save``), legacy PyTorch pickles, safetensors, and NumPy ``.npz`` archives
(Google's ViT releases). PyTorch files are opened with ``torch.load(weights_only=True)``
allowing exactly one class beyond tensors and plain containers, ``argparse.Namespace``
(the official Vim checkpoints pickle their training ``args``); anything else that a pickle
would import or call is refused before it runs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ..errors import UserError

ALLOWED_GLOBALS = [argparse.Namespace]
_MAX_LISTED = 12  # keys shown per category in an error message


def sniff_format(path: str | os.PathLike) -> str:
    """'torch', 'safetensors' or 'npz' from the file's first bytes; UserError otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint path is not a file")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as err:
            raise UserError(f"{path}: damaged zip archive ({err})") from None
        if names and all(name.endswith(".npy") for name in names):
            return "npz"
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        raise UserError(f"{path}: a zip archive that is neither a PyTorch checkpoint nor a NumPy .npz")
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch.save's legacy (non-zip) format
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 0 < header_len <= path.stat().st_size - 8:
            return "safetensors"
    shown = head[:12]
    raise UserError(
        f"{path}: not a checkpoint (expected a PyTorch .pth/.pt, a .safetensors or a Google .npz "
        f"file; it starts with {shown!r})"
    )


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load`` restricted to tensors, plain containers and ``argparse.Namespace``."""
    try:
        if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: tensors only
            return torch.load(path, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{path}: refused to unpickle: the file asks for objects outside the allow-list "
            f"(tensors, plain containers, argparse.Namespace), so it was not loaded; nothing "
            f"in it was run ({detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read PyTorch checkpoint: {err}") from None


def load_safetensors_file(path: str | os.PathLike) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read safetensors file: {err}") from None


def unwrap_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict inside a checkpoint: the object itself, or its 'model' / 'state_dict'
    / 'module' entry; strips DDP ('module.') and torch.compile ('_orig_mod.') prefixes."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "module"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{path}: no state dict found (expected a dict of tensors, or one under 'model')")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise UserError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a PyTorch or safetensors checkpoint, loaded safely (see module docstring)."""
    fmt = sniff_format(path)
    if fmt == "npz":
        raise UserError(f"{path}: a NumPy .npz archive, not a PyTorch or safetensors state dict")
    if fmt == "safetensors":
        return unwrap_state_dict(load_safetensors_file(path), path)
    return unwrap_state_dict(load_torch_file(path), path)


def guess_family(keys: Iterable[str]) -> str | None:
    """'vit', 'vim' or 'swin' from characteristic parameter names, None when none fits. Swin is
    told from ViT (both have ``attn.qkv``) by its relative-position tables and staged blocks."""
    keys = list(keys)
    if any(".mixer.in_proj" in k or ".mixer.A_log" in k for k in keys):
        return "vim"
    if any(k.endswith("relative_position_bias_table") or re.match(r"layers\.\d+\.blocks\.\d+\.", k) for k in keys):
        return "swin"
    if any(".attn.qkv." in k for k in keys) or any(k.startswith("Transformer/") for k in keys):
        return "vit"
    return None


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def check_keys(
    path: str | os.PathLike,
    target: str,
    expected: Mapping[str, Tensor],
    found: Mapping[str, Tensor],
    ignore_prefixes: tuple[str, ...] = ("head.",),
) -> None:
    """UserError listing missing, unexpected and shape-mismatched keys (ignoring the head)."""

    def kept(key: str) -> bool:
        return not key.startswith(ignore_prefixes)

    missing = [k for k in expected if kept(k) and k not in found]
    unexpected = [k for k in found if kept(k) and k not in expected]
    mismatched = [
        f"{k} {list(found[k].shape)} (model: {list(expected[k].shape)})"
        for k in expected
        if kept(k) and k in found and found[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listed(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} with other shapes: {_listed(mismatched)}")
    raise UserError(f"{path}: checkpoint does not fit {target}: " + "; ".join(parts))


def wrong_family_error(path: str | os.PathLike, found_family: str, target: str) -> UserError:
    other = {"vit": "a ViT (vit-*)", "vim": "a Vision Mamba (vim-*)", "swin": "a Swin (swin-*)"}[found_family]
    return UserError(f"{path}: this is a checkpoint for {other} backbone, not for {target}")
