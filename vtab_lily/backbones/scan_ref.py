"""The selective scan and the causal conv1d written out plainly: the ground truth the fast paths
(``scan.py``'s chunked PyTorch, ``scan_triton.py``, mamba-ssm / causal-conv1d) are checked against.

It sits below both the dispatcher (``kernels.py``, whose test call compares each path with it) and
the kernels, so neither needs the other to reach it. Layout and math: see ``scan.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor



def per_channel(BC: Tensor, d: int) -> Tensor:
    """(b, N, L) or (b, G, N, L) -> (b, d, N, L): the B or C row each channel uses."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, d, -1, -1)
    groups = BC.shape[1]
    return BC.repeat_interleave(d // groups, dim=1)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The selective scan as a plain loop over time (slow; the ground truth for tests)."""
    check_shapes(u, delta, A, B, C)
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d, length = u.shape
    B, C = per_channel(B.float(), d), per_channel(C.float(), d)
    A = A.float()
    h = u.new_zeros(batch, d, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((h * C[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, d, L); got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d={d}, N); got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4) or t.shape[0] != batch or t.shape[-1] != length or t.shape[-2] != A.shape[1]:
            raise ValueError(f"{name} must be (batch, N, L) or (batch, G, N, L); got {tuple(t.shape)}")
        if t.dim() == 4 and d % t.shape[1]:
            raise ValueError(f"{name} has {t.shape[1]} groups, which do not divide d={d}")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape; got {tuple(B.shape)}, {tuple(C.shape)}")


def causal_conv1d_torch(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """The PyTorch causal conv (any device): a grouped conv1d padded on both sides, cut to L."""
    d, k = weight.shape[0], weight.shape[-1]
    y = F.conv1d(x, weight.reshape(d, 1, k), bias, padding=k - 1, groups=d)[..., : x.shape[-1]]
    return F.silu(y) if activation else y
