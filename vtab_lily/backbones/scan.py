"""Selective scan (the S6 recurrence of Mamba) and a causal depthwise conv1d, in PyTorch.

Argument layout follows mamba-ssm so its CUDA kernels can be swapped in:
``u``, ``delta``, ``z``: (batch, d, L); ``A``: (d, N) (real, negative); ``B``, ``C``:
(batch, N, L) or grouped (batch, G, N, L), where group g serves channels
``g*d/G .. (g+1)*d/G``; ``D``, ``delta_bias``: (d,).

For every channel c and state n (the math, as in ``selective_scan_ref``):

    delta = softplus(delta + delta_bias)              (each optional)
    h[t]  = exp(delta[t] * A) * h[t-1] + delta[t] * B[t] * u[t]      h[-1] = 0
    y[t]  = sum_n C[t, n] * h[t, n]  +  D * u[t]
    y    *= silu(z)

``selective_scan`` runs, for CUDA tensors, mamba-ssm's kernel or else our Triton kernel
(``scan_triton.py``), whichever passed its real test call (``kernels.py`` decides and records
why the others did not; ``VTAB_LILY_SCAN`` forces one). Otherwise, and always on a CPU: a
chunked PyTorch autograd function that keeps its inputs plus one state per chunk for backward
and recomputes the rest there (like the CUDA kernel), so a 24-layer Vim does not hold
(batch, d, L, N) tensors per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from .kernels import KERNELS_ENV
from .scan_ref import causal_conv1d_torch, check_shapes, selective_scan_ref

__all__ = ["KERNELS_ENV", "causal_conv1d", "causal_conv1d_torch", "selective_scan", "selective_scan_ref"]


# --------------------------------------------------------------------------------------
# Fast PyTorch path.
#
# Internally everything is laid out time-major, (L, b, G, H, N) with H = d / G, so one
# time step is a contiguous slab, and the sequence is processed in chunks of a few time
# steps: a chunk's (T, b, d, N) decay / drive / state tensors stay in the CPU cache, and
# the recurrence inside a chunk is T in-place addcmul calls (the fewest flops of any
# formulation; a parallel scan does log(L) times more work, which 2 cores pay in full).
# Materialising whole (L, b, d, N) tensors instead is memory-bound: we measured it 1.6x
# (forward) to 1.8x (forward+backward) slower at (b=8, d=768, L=197, N=16).
# Forward keeps the state entering each chunk; backward recomputes a chunk's states from
# it and runs the adjoint recurrence backwards in time, chunk by chunk.  Sums over N or
# H are batched matmuls.
# --------------------------------------------------------------------------------------

CHUNK = 8  # time steps per chunk; 4..32 measured within noise of each other on 2 cores


def _time_major(x: Tensor, groups: int) -> Tensor:
    """(b, d, L) -> contiguous (L, b, G, H, 1)."""
    batch, d, length = x.shape
    return x.permute(2, 0, 1).reshape(length, batch, groups, d // groups, 1).contiguous()


def _from_time_major(x: Tensor) -> Tensor:
    """(L, b, G, H, 1) -> (b, d, L)."""
    length, batch, groups, h, _ = x.shape
    return x.reshape(length, batch, groups * h).permute(1, 2, 0).contiguous()


def _bc_time_major(BC: Tensor) -> Tensor:
    """(b, G, N, L) -> contiguous (L, b, G, 1, N)."""
    return BC.permute(3, 0, 1, 2).unsqueeze(3).contiguous()


def _bc_from_time_major(x: Tensor) -> Tensor:
    """(L, b, G, 1, N) -> (b, G, N, L)."""
    return x.squeeze(3).permute(1, 2, 3, 0).contiguous()


def _rowdot(big: Tensor, small: Tensor) -> Tensor:
    """sum_N big * small for big (T, b, G, H, N) and small (T, b, G, 1, N) -> (T, b, G, H, 1)."""
    steps, batch, groups, h, n = big.shape
    out = torch.bmm(big.reshape(-1, h, n), small.reshape(-1, n, 1))
    return out.view(steps, batch, groups, h, 1)


def _coldot(small: Tensor, big: Tensor) -> Tensor:
    """sum_H small * big for small (T, b, G, H, 1) and big (T, b, G, H, N) -> (T, b, G, 1, N)."""
    steps, batch, groups, h, n = big.shape
    out = torch.bmm(small.reshape(-1, 1, h), big.reshape(-1, h, n))
    return out.view(steps, batch, groups, 1, n)


def _chunk_states(u_c: Tensor, delta_c: Tensor, A_g: Tensor, B_c: Tensor, h_in: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: decay = exp(delta A) and the states h, both (T, b, G, H, N).

    h[t] = decay[t] h[t-1] + delta[t] u[t] B[t], starting from h_in."""
    decay = torch.exp(delta_c * A_g)
    states = (delta_c * u_c) * B_c
    states[0].addcmul_(decay[0], h_in)
    for t in range(1, states.shape[0]):
        states[t].addcmul_(decay[t], states[t - 1])
    return decay, states


class _SelectiveScanCore(torch.autograd.Function):
    """y = C . h with h the recurrence above; fp32; inputs already in the (b, d, L) layout."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        with torch.autocast(u.device.type, enabled=False):
            groups, length = B.shape[1], u.shape[-1]
            u_t, delta_t = _time_major(u, groups), _time_major(delta, groups)
            B_t, C_t = _bc_time_major(B), _bc_time_major(C)
            A_g = A.view(groups, -1, A.shape[1])
            y = u_t.new_empty(u_t.shape)
            h = u_t.new_zeros(u_t.shape[1:-1] + (A.shape[1],))
            entering = []  # state entering each chunk, for backward
            for s in range(0, length, CHUNK):
                e = min(s + CHUNK, length)
                entering.append(h)
                _, states = _chunk_states(u_t[s:e], delta_t[s:e], A_g, B_t[s:e], h)
                y[s:e] = _rowdot(states, C_t[s:e])
                h = states[-1].clone()
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(entering))
        return _from_time_major(y)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        u, delta, A, B, C, entering = ctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            groups, length = B.shape[1], u.shape[-1]
            u_t, delta_t = _time_major(u, groups), _time_major(delta, groups)
            B_t, C_t = _bc_time_major(B), _bc_time_major(C)
            dy_t = _time_major(grad_y.float(), groups)
            A_g = A.view(groups, -1, A.shape[1])
            grad_u, grad_delta = torch.empty_like(u_t), torch.empty_like(delta_t)
            grad_B, grad_C = torch.empty_like(B_t), torch.empty_like(C_t)
            grad_A = torch.zeros_like(A_g)
            carry = None  # decay[e] * g[e] from the chunk after this one: flows into g[e-1]
            starts = list(range(0, length, CHUNK))
            for i in reversed(range(len(starts))):
                s = starts[i]
                e = min(s + CHUNK, length)
                u_c, delta_c, B_c = u_t[s:e], delta_t[s:e], B_t[s:e]
                decay, states = _chunk_states(u_c, delta_c, A_g, B_c, entering[i])
                # Adjoint recurrence, backwards in time: g[t] = C[t] dy[t] + decay[t+1] g[t+1].
                g = dy_t[s:e] * C_t[s:e]
                if carry is not None:
                    g[-1] += carry
                for t in range(g.shape[0] - 2, -1, -1):
                    g[t].addcmul_(decay[t + 1], g[t + 1])
                carry = decay[0] * g[0]

                grad_C[s:e] = _coldot(dy_t[s:e], states)
                # drive = delta u B, so d(drive) = g.
                g_dot_b = _rowdot(g, B_c)
                grad_u[s:e] = g_dot_b * delta_c
                grad_B[s:e] = _coldot(delta_c * u_c, g)
                # decay path: dL/d(delta A) = g[t] decay[t] h[t-1]; built in place in decay,
                # which is no longer needed.
                e_term = decay
                e_term[1:].mul_(states[:-1])
                e_term[0].mul_(entering[i])
                e_term.mul_(g)
                if ctx.needs_input_grad[2]:
                    grad_A += (e_term * delta_c).sum(dim=(0, 1))
                grad_delta[s:e] = g_dot_b * u_c + e_term.mul_(A_g).sum(-1, keepdim=True)
        return (
            _from_time_major(grad_u),
            _from_time_major(grad_delta),
            grad_A.view(A.shape) if ctx.needs_input_grad[2] else None,
            _bc_from_time_major(grad_B),
            _bc_from_time_major(grad_C),
        )


def selective_scan(
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
    """Selective scan with mamba-ssm's signature; output (batch, d, L) in ``u``'s dtype.

    For CUDA tensors: the path ``kernels.scan_path`` picks (mamba-ssm, Triton, or PyTorch);
    the PyTorch and Triton paths compute in fp32 whatever the autocast state.
    """
    check_shapes(u, delta, A, B, C)
    if u.is_cuda or kernels.forced("scan") not in (None, "pytorch"):
        path = _kernel_path("scan", u.device)
        if path == "triton":  # a custom op: one call inside a torch.compile graph
            return kernels.triton_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        if path == "mamba_ssm":
            return _mamba_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    dtype = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        u32, delta32 = u.float(), delta.float()
        if delta_bias is not None:
            delta32 = delta32 + delta_bias.float()[:, None]
        if delta_softplus:
            delta32 = F.softplus(delta32)
        B4 = B if B.dim() == 4 else B.unsqueeze(1)
        C4 = C if C.dim() == 4 else C.unsqueeze(1)
        y = _SelectiveScanCore.apply(u32, delta32, A.float(), B4.float(), C4.float())
        if D is not None:
            y = y + u32 * D.float()[:, None]
        if z is not None:
            y = y * F.silu(z.float())
    return y.to(dtype)


@torch.compiler.assume_constant_result
def _kernel_path(kind: str, device: torch.device) -> str:
    """``kernels.scan_path`` / ``conv_path`` for ``device``. The first call on a device runs a real
    test call of each kernel, which must not happen while torch.compile traces (``compile_model``
    asks before compiling); inside a graph the answer is a constant, so asking costs no graph break."""
    return kernels.scan_path(device) if kind == "scan" else kernels.conv_path(device)


# mamba-ssm's and causal-conv1d's kernels are C++ extensions that torch.compile cannot trace:
# each call is a graph break (the PyTorch and Triton paths have none).
_mamba_scan = torch.compiler.disable(kernels.mamba_scan)
_conv_kernel = torch.compiler.disable(kernels.causal_conv_kernel)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Depthwise causal conv over time: x (b, d, L), weight (d, 1, k) or (d, k) -> (b, d, L).

    Output t sees inputs t-k+1 .. t (zero padding on the left). ``activation``: None or "silu".
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    d, k = weight.shape[0], weight.shape[-1]
    if x.is_cuda and _kernel_path("conv", x.device) == "causal_conv1d":
        return _conv_kernel(x, weight.reshape(d, k), bias, activation)
    return causal_conv1d_torch(x, weight, bias, activation)
