"""Compute precision on a device: which one a run defaults to, and torch's flags for it.

The names and what each family's official code ran in are in :mod:`vtab_lily.official`
(``PRECISIONS``, ``official_precision``). Here: whether a device has TF32 tensor cores, the
default for a run (also for a GPU this machine does not have, so a dry run can say it), and
:func:`use_precision`, the one place that sets torch's TF32 switches; it puts them back on exit,
so runs of one process (``--batch``, the device check) never inherit each other's.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import UserError, unknown_name
from .official import BORROWED_RECIPE, PRECISIONS, TF32_PRECISIONS, official_precision

TF32_CAPABILITY = (8, 0)  # Ampere: the first GPUs with TF32 tensor cores

# (CUDA matmul in TF32, cuDNN convolution in TF32) per precision. bf16 autocasts matmuls and
# convolutions; the little it leaves in fp32 (the head, for fp32 logits) stays full fp32.
_FLAGS = {"fp32": (False, False), "tf32": (True, True), "tf32-conv": (False, True), "bf16": (False, False)}


def device_has_tf32(device: str | torch.device) -> bool:
    """Whether ``device`` (a name as ``--device`` takes it, ``auto`` included) is a visible CUDA
    GPU with TF32 tensor cores. An unknown or absent device is False (the runner reports it)."""
    try:
        if str(device) == "auto":
            device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return False
        index = device.index if device.index is not None else torch.cuda.current_device()
        return tuple(torch.cuda.get_device_capability(index)) >= TF32_CAPABILITY
    except (RuntimeError, AssertionError, ValueError):
        return False


def resolve_precision(asked: str | None, family: str, device: str | torch.device) -> str:
    """``asked`` (``--precision``), or the family's official precision on ``device`` when None."""
    if asked is None:
        return official_precision(family, device_has_tf32(device))
    if asked not in PRECISIONS:
        raise unknown_name("precision", str(asked), PRECISIONS)
    return asked


def cuda_default_note(family: str, device: str | torch.device) -> str | None:
    """For a dry run where the device has no TF32: the default a CUDA GPU with TF32 would get."""
    if device_has_tf32(device):
        return None
    return (f"this device has no TF32; on a CUDA GPU with TF32 (compute capability {TF32_CAPABILITY[0]}."
            f"{TF32_CAPABILITY[1]} or newer) the default is {official_precision(family, True)}, "
            f"as the official {BORROWED_RECIPE.get(family, family)} code ran there"
            + (f" ({family} reuses its recipe)" if family in BORROWED_RECIPE else ""))


def check_device(precision: str, device: torch.device) -> None:
    """A TF32 precision asked for a device that has none would record a setting that never ran."""
    if precision in TF32_PRECISIONS and not device_has_tf32(device):
        raise UserError(f"--precision {precision} needs a CUDA GPU with TF32 (compute capability "
                        f"{TF32_CAPABILITY[0]}.{TF32_CAPABILITY[1]} or newer); this run's device is {device}: "
                        "use --precision fp32 (or leave --precision out for the device's default)")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision (None: no autocast)."""
    return torch.bfloat16 if precision == "bf16" else None


def current_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_flags(matmul: bool, conv: bool) -> None:
    # the CUDA-only switches: CPU (oneDNN) matmuls and convolutions are untouched
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = conv


@contextlib.contextmanager
def use_precision(precision: str) -> Iterator[None]:
    """Set torch's TF32 switches for ``precision`` for the duration of a run, then restore them."""
    if precision not in _FLAGS:
        raise unknown_name("precision", str(precision), PRECISIONS)
    before = current_flags()
    _set_flags(*_FLAGS[precision])
    try:
        yield
    finally:
        _set_flags(*before)
