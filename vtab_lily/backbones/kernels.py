"""Which selective scan and causal conv1d run on a device: decided by a real call, recorded.

Scan paths, fastest first: ``mamba_ssm`` (mamba-ssm's compiled CUDA kernel), ``triton``
(our Triton kernel, ``scan_triton.py``), ``pytorch`` (the chunked PyTorch scan in ``scan.py``,
the only one on a CPU). Conv paths: ``causal_conv1d`` (the causal-conv1d CUDA kernel) or
``pytorch``.

An installed package is not enough: mamba-ssm >= 2.3 imports without its compiled extension
and fails on the first call. So a path counts as available on a CUDA device only when its
compiled module imports AND a tiny forward + backward on that device matches the reference
(done once per device, cached). Every failure is kept with its reason (``kernel_notes()``),
and one that is not simply "not installed" is also warned about, so a 10-50x slower fallback
is never silent. The Triton scan's test call checks its output (the forward scan) and its
gradients (the backward's reverse scan) apart; when only the reverse scan is wrong, the kernel's
flip-based reverse scan (``scan_triton.REVERSE_BY_FLIP``) is tested and used instead, with a note.

Forcing a path (bench, tests, debugging): ``VTAB_LILY_SCAN=auto|pytorch|triton|mamba_ssm`` and
``VTAB_LILY_CONV=auto|pytorch|causal_conv1d``; the older ``VTAB_LILY_KERNELS=torch`` means
pytorch for both. A forced path that cannot run raises ``UserError`` saying why. On a CPU,
``triton`` can be forced only under ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from typing import Callable

import torch

from ..errors import UserError
from .scan_ref import causal_conv1d_torch, selective_scan_ref

SCAN_ENV, CONV_ENV, KERNELS_ENV = "VTAB_LILY_SCAN", "VTAB_LILY_CONV", "VTAB_LILY_KERNELS"
SCAN_PATHS = ("mamba_ssm", "triton", "pytorch")
CONV_PATHS = ("causal_conv1d", "pytorch")

_notes: dict[str, str] = {}  # path -> why it is not used
_checked: dict[tuple[str, int], str | None] = {}  # (path, cuda index) -> None if it works, else why not
_warned_fallback: set[torch.device] = set()


def kernel_notes() -> dict[str, str]:
    """Why each unavailable path is unavailable (filled as paths are tried), for logs."""
    return dict(_notes)


def _unavailable(path: str, reason: str, warn: bool) -> None:
    _notes[path] = reason
    if warn:
        warnings.warn(f"vtab-lily: {path} is not used: {reason}", RuntimeWarning, stacklevel=3)
    return None


def forced(kind: str) -> str | None:
    """The path forced by the environment for ``kind`` ("scan" or "conv"), or None for auto."""
    env, paths = (SCAN_ENV, SCAN_PATHS) if kind == "scan" else (CONV_ENV, CONV_PATHS)
    raw = os.environ.get(env, "")
    value = raw.strip().lower() or "auto"
    if value not in ("auto", *paths):
        raise UserError(f"environment variable {env}={raw!r}: choose one of auto, {', '.join(paths)}")
    if value == "auto" and os.environ.get(KERNELS_ENV, "").strip().lower() == "torch":
        return "pytorch"
    return None if value == "auto" else value


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---- loaders: the callable, or None with the reason recorded (cached per process) ----------------


@functools.lru_cache(maxsize=None)
def mamba_scan_fn() -> Callable | None:
    """mamba-ssm's ``selective_scan_fn`` when its compiled extension imports, else None."""
    if not _installed("mamba_ssm"):
        return _unavailable("mamba_ssm", "mamba-ssm is not installed (optional: see README, Requirements)", False)
    try:
        importlib.import_module("selective_scan_cuda")  # the compiled extension, not just the package
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # missing .so, ABI or CUDA mismatch: recorded and warned, never silent
        return _unavailable("mamba_ssm", f"mamba-ssm is installed but its CUDA extension does not import "
                            f"({type(err).__name__}: {err})", True)
    return selective_scan_fn


@functools.lru_cache(maxsize=None)
def causal_conv_fn() -> Callable | None:
    """causal-conv1d's ``causal_conv1d_fn`` when its compiled extension imports, else None."""
    if not _installed("causal_conv1d"):
        return _unavailable("causal_conv1d", "causal-conv1d is not installed (optional: see README)", False)
    try:
        importlib.import_module("causal_conv1d_cuda")
        from causal_conv1d import causal_conv1d_fn
    except Exception as err:
        return _unavailable("causal_conv1d", f"causal-conv1d is installed but its CUDA extension does not import "
                            f"({type(err).__name__}: {err})", True)
    return causal_conv1d_fn


@functools.lru_cache(maxsize=None)
def triton_scan_fn() -> Callable | None:
    """Our Triton selective scan, or None when triton does not import."""
    if not _installed("triton"):
        return _unavailable("triton", "triton is not installed (it ships with Linux CUDA builds of torch)", False)
    try:
        from .scan_triton import selective_scan_triton
    except Exception as err:
        return _unavailable("triton", f"triton does not import ({type(err).__name__}: {err})", True)
    return selective_scan_triton


def mamba_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba-ssm's kernel with its dtype rules: delta, B, C, z in u's dtype; A, D, delta_bias fp32."""
    dtype = u.dtype
    return mamba_scan_fn()(
        u.contiguous(), delta.to(dtype).contiguous(), A.float().contiguous(), B.to(dtype).contiguous(),
        C.to(dtype).contiguous(), D=None if D is None else D.float(), z=None if z is None else z.to(dtype).contiguous(),
        delta_bias=None if delta_bias is None else delta_bias.float(), delta_softplus=delta_softplus)


def triton_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Our Triton scan (imported here, not at the top: triton is optional)."""
    from .scan_triton import selective_scan_triton

    return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def causal_conv_kernel(x, weight, bias, activation):
    # causal-conv1d >= 1.1: (x, weight, bias, seq_idx, ..., activation): activation by keyword only.
    return causal_conv_fn()(x, weight, bias, activation=activation)


# ---- the real call on a device ---------------------------------------------------------------


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _trial(path: str, device: torch.device) -> str | None:
    """Run ``path`` once on ``device`` (forward + backward, the mixer's grouped layout) against the
    PyTorch reference; None when it works, else why not."""
    loader = {"mamba_ssm": mamba_scan_fn, "triton": triton_scan_fn, "causal_conv1d": causal_conv_fn}[path]
    if loader() is None:
        return _notes.get(path, f"{path} does not import")
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device).requires_grad_()

    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            if path == "causal_conv1d":
                args = (leaf(2, 8, 13), leaf(8, 4), leaf(8))
                ours = causal_conv_kernel(*args, "silu")
                ref = causal_conv1d_torch(*args, "silu")
            else:
                u, delta, z = leaf(2, 8, 13), leaf(2, 8, 13, scale=0.5), leaf(2, 8, 13)
                A, B, C = leaf(8, 4, scale=0.3, shift=-1.0), leaf(2, 2, 4, 13), leaf(2, 2, 4, 13)
                D, bias = leaf(8), leaf(8, scale=0.5)
                args = (u, delta, A, B, C, D, z, bias, True)
                ours = (mamba_scan if path == "mamba_ssm" else triton_scan_fn())(*args)
                ref = selective_scan_ref(*args)
            weights = torch.randn(ref.shape, generator=gen).to(device)
            leaves = args[:3] if path == "causal_conv1d" else args[:5]  # u, delta, A, B, C: all read the adjoint
            got = torch.autograd.grad((ours * weights).sum(), leaves)
            want = torch.autograd.grad((ref * weights).sum(), leaves)
            forward = _relative_error(ours, ref)  # the scan forward in time
            backward = max(_relative_error(a, b) for a, b in zip(got, want))  # its adjoint: a reverse scan
    except Exception as err:
        return f"failed its test call on {device} ({type(err).__name__}: {err})"
    if not forward <= 1e-3:  # also catches NaN
        return f"gave wrong results in its test call on {device} (forward: relative error {forward:.2g})"
    if not backward <= 1e-3:
        return f"gave wrong results in its test call on {device} ({REVERSE_WRONG}: relative error {backward:.2g})"
    return None


REVERSE_WRONG = "reverse scan (gradients)"


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / (b.detach().abs().max() + 1.0))


def _trial_triton(device: torch.device) -> str | None:
    """The Triton scan's test call; when only its reverse scan is wrong, the same test with the
    reverse scan done as flip + forward scan + flip, kept (with a note) if that one passes."""
    reason = _trial("triton", device)
    if reason is None or REVERSE_WRONG not in reason:
        return reason
    from . import scan_triton  # imports: triton_scan_fn() above has loaded it

    scan_triton.REVERSE_BY_FLIP = True
    flipped = _trial("triton", device)
    if flipped is not None:
        scan_triton.REVERSE_BY_FLIP = False
        return f"{reason}; with the flip-based reverse scan too: {flipped}"
    _unavailable("triton reverse scan", f"{reason}; the Triton scan runs with its flip-based reverse scan", True)
    return None


def works_on(path: str, device: torch.device) -> bool:
    """Whether ``path`` passed its real call on CUDA ``device`` (run once per device, cached)."""
    key = (path, _cuda_index(device))
    if key not in _checked:
        device = torch.device("cuda", key[1])
        _checked[key] = reason = _trial_triton(device) if path == "triton" else _trial(path, device)
        if reason is not None and reason != _notes.get(path):  # import failures were already recorded
            _unavailable(path, reason, True)
    return _checked[key] is None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def scan_path(device: torch.device | str) -> str:
    """The selective-scan path the Vim forward uses for tensors on ``device``."""
    device = torch.device(device)
    want = forced("scan")
    if want == "pytorch" or (want is None and device.type != "cuda"):
        return "pytorch"
    if device.type != "cuda":
        if want == "triton" and _interpreting() and triton_scan_fn() is not None:
            return "triton"
        raise UserError(f"{SCAN_ENV}={want}: not available on {device} (mamba-ssm needs CUDA; the Triton scan "
                        "needs CUDA, or TRITON_INTERPRET=1 for the interpreter)")
    if want is not None:
        if works_on(want, device):
            return want
        raise UserError(f"{SCAN_ENV}={want}: {want} cannot run: {_notes.get(want, 'unknown reason')}")
    for path in ("mamba_ssm", "triton"):
        if works_on(path, device):
            return path
    if device not in _warned_fallback:  # the slow path on a GPU is never silent
        _warned_fallback.add(device)
        why = "; ".join(f"{p}: {_notes.get(p, 'unavailable')}" for p in ("mamba_ssm", "triton"))
        warnings.warn(f"vtab-lily: the selective scan on {device} uses the PyTorch path, 10-50x slower than a "
                      f"kernel ({why})", RuntimeWarning, stacklevel=2)
    return "pytorch"


def conv_path(device: torch.device | str) -> str:
    """The causal conv1d path the Vim forward uses for tensors on ``device``."""
    device = torch.device(device)
    want = forced("conv")
    if want == "pytorch" or (want is None and device.type != "cuda"):
        return "pytorch"
    if device.type != "cuda":
        raise UserError(f"{CONV_ENV}={want}: not available on {device} (causal-conv1d needs CUDA)")
    if works_on("causal_conv1d", device):
        return "causal_conv1d"
    if want is not None:
        raise UserError(f"{CONV_ENV}={want}: cannot run: {_notes.get('causal_conv1d', 'unknown reason')}")
    return "pytorch"


def scan_paths(device: torch.device | str) -> dict[str, str]:
    """``{"scan": "mamba_ssm"|"triton"|"pytorch", "conv": "causal_conv1d"|"pytorch"}``: what a Vim
    forward on ``device`` uses (after a real call of each candidate on a CUDA device)."""
    return {"scan": scan_path(device), "conv": conv_path(device)}
