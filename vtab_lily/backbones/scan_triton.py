"""The selective scan in Triton: forward and backward kernels, chunked over time.

Same arguments and math as ``scan.selective_scan_ref`` (mamba-ssm's layout): u, delta, z
(b, d, L); A (d, N); B, C (b, N, L) or grouped (b, G, N, L), group g serving channels
g*d/G .. (g+1)*d/G (the Vim mixer runs both directions as two groups of one call); D and
delta_bias (d,); delta = softplus(delta + delta_bias) when asked; y = (C.h + D u) * silu(z).

One program owns BLOCK_D channels of one group of one example, with all N states, and walks
the sequence in chunks of CHUNK steps. Inside a chunk the recurrence h[t] = a[t] h[t-1] + x[t]
is an associative scan over (a, x) pairs, (a1, x1) then (a2, x2) -> (a1 a2, a2 x1 + x2), in
registers; the state entering each chunk carries over. Forward stores that entering state per
chunk (b, d, L/CHUNK, N); backward walks the chunks in reverse, recomputes the chunk's states
from it, and runs the adjoint g[t] = C[t] dy[t] + a[t+1] g[t+1] as a reverse scan. The shifted
quantities (h[t-1], a[t+1]) are built from loads at t-1 and t+1 rather than by dividing by a
decay, which underflows to 0 under strong decay. Sums over channels (dB, dC) and over the
batch (dA, dD, d delta_bias) are written per program and reduced by PyTorch afterwards:
deterministic, no atomics.

Everything is computed in fp32; the output has u's dtype and each gradient its input's dtype.
Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests its math).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from .scan_ref import check_shapes

BLOCK_D = 8  # channels per program: 8 x 16 states x 16 steps per tile keeps the backward's ~7 live tiles in registers
CHUNK = 16  # time steps per chunk (a power of two)
NUM_WARPS = 4
# The backward's adjoint is a reverse associative scan. Triton has had wrong results for reverse
# scans on some versions and GPUs, so the kernel can instead flip the tile, scan forward and flip
# back (the same combine order, one extra pass over registers); ``kernels.py`` turns this on when
# the reverse form fails its test call on a device and the flipped one passes.
REVERSE_BY_FLIP = False


@triton.jit
def _combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _delta(raw, bias, SOFTPLUS: tl.constexpr):
    x = raw + bias
    if SOFTPLUS:  # torch's softplus: linear above 20
        x = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
    return x


# Shared by both kernels: this program's channels and states (indices, masks) and their A,
# delta_bias and D (zeros when absent).
@triton.jit
def _program_tile(A_ptr, D_ptr, bias_ptr, H, NS,
                  HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr):
    pg, pk = tl.program_id(1), tl.program_id(2)
    j = pk * BD + tl.arange(0, BD)
    cmask = j < H
    ch = pg * H + j
    n = tl.arange(0, NP)
    nmask = n < NS
    an = cmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + ch[:, None] * NS + n[None, :], mask=an, other=0.0)
    bias = tl.zeros((BD,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=cmask, other=0.0)
    Dv = tl.zeros((BD,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=cmask, other=0.0)
    return cmask, ch, n, nmask, tl.arange(0, T), an, A, bias, Dv


@triton.jit
def _fwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, h_ptr,
                d, L, H, NS, nchunks, G,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr):
    pb, pg = tl.program_id(0), tl.program_id(1)
    cmask, ch, n, nmask, tt, an, A, bias, Dv = _program_tile(A_ptr, D_ptr, bias_ptr, H, NS, HAS_D, HAS_BIAS, NP, BD, T)
    row = (pb * d + ch[:, None]) * L  # (BD, 1) offsets of each channel's sequence
    bc = ((pb * G + pg) * NS + n[:, None]) * L  # (NP, 1)
    hbase = ((pb * d + ch[:, None]) * nchunks) * NS + n[None, :]
    h = tl.zeros((BD, NP), tl.float32)
    for k in range(nchunks):
        t = k * T + tt
        m2 = cmask[:, None] & (t < L)[None, :]
        bm = nmask[:, None] & (t < L)[None, :]
        u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0)
        dl = _delta(tl.load(dl_ptr + row + t[None, :], mask=m2, other=0.0), bias[:, None], SOFTPLUS)
        dl = tl.where(m2, dl, 0.0)  # padding steps: decay 1, no input, so the state passes through
        Bt = tl.load(B_ptr + bc + t[None, :], mask=bm, other=0.0)
        Ct = tl.load(C_ptr + bc + t[None, :], mask=bm, other=0.0)
        a = tl.exp(dl[:, None, :] * A[:, :, None])
        x = (dl * u)[:, None, :] * Bt[None, :, :]
        P, S = tl.associative_scan((a, x), 2, _combine)
        tl.store(h_ptr + hbase + k * NS, h, mask=an)  # the state entering chunk k, for backward
        hs = P * h[:, :, None] + S
        y = tl.sum(hs * Ct[None, :, :], 1)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + row + t[None, :], y, mask=m2)
        h = tl.sum(tl.where((tt == T - 1)[None, None, :], hs, 0.0), 2)


@triton.jit
def _bwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h_ptr, dout_ptr,
                du_ptr, ddl_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
                d, L, H, NS, nchunks, G, nblk,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, FLIP: tl.constexpr):
    pb, pg, pk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cmask, ch, n, nmask, tt, an, A, bias, Dv = _program_tile(A_ptr, D_ptr, bias_ptr, H, NS, HAS_D, HAS_BIAS, NP, BD, T)
    row = (pb * d + ch[:, None]) * L
    bc = ((pb * G + pg) * NS + n[:, None]) * L
    part = (((pb * G + pg) * nblk + pk) * NS + n[:, None]) * L  # this program's dB/dC partial rows
    hbase = ((pb * d + ch[:, None]) * nchunks) * NS + n[None, :]
    carry = tl.zeros((BD, NP), tl.float32)  # g at the first step of the chunk after this one
    dA_acc = tl.zeros((BD, NP), tl.float32)
    dD_acc = tl.zeros((BD,), tl.float32)
    dbias_acc = tl.zeros((BD,), tl.float32)
    for kk in range(nchunks):
        k = nchunks - 1 - kk
        t = k * T + tt
        tmask = t < L
        m2 = cmask[:, None] & tmask[None, :]
        bm = nmask[:, None] & tmask[None, :]
        u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0)
        raw = tl.load(dl_ptr + row + t[None, :], mask=m2, other=0.0)
        dl = tl.where(m2, _delta(raw, bias[:, None], SOFTPLUS), 0.0)
        Bt = tl.load(B_ptr + bc + t[None, :], mask=bm, other=0.0)
        Ct = tl.load(C_ptr + bc + t[None, :], mask=bm, other=0.0)
        # States before each step, h[t-1]: scan of the steps t-1 within the chunk; column 0 is the identity.
        pm = cmask[:, None] & ((tt > 0) & tmask)[None, :]
        up = tl.load(u_ptr + row + t[None, :] - 1, mask=pm, other=0.0)
        dlp = tl.load(dl_ptr + row + t[None, :] - 1, mask=pm, other=0.0)
        dlp = tl.where(pm, _delta(dlp, bias[:, None], SOFTPLUS), 0.0)
        Bp = tl.load(B_ptr + bc + t[None, :] - 1, mask=nmask[:, None] & ((tt > 0) & tmask)[None, :], other=0.0)
        ap = tl.exp(dlp[:, None, :] * A[:, :, None])
        xp = (dlp * up)[:, None, :] * Bp[None, :, :]
        Pp, Sp = tl.associative_scan((ap, xp), 2, _combine)
        h_in = tl.load(h_ptr + hbase + k * NS, mask=an, other=0.0)
        hprev = Pp * h_in[:, :, None] + Sp
        a = tl.exp(dl[:, None, :] * A[:, :, None])
        hs = a * hprev + (dl * u)[:, None, :] * Bt[None, :, :]
        dout = tl.load(dout_ptr + row + t[None, :], mask=m2, other=0.0)
        if HAS_Z:
            y = tl.sum(hs * Ct[None, :, :], 1) + Dv[:, None] * u
            zz = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0)
            sig = tl.sigmoid(zz)
            tl.store(dz_ptr + row + t[None, :], dout * y * sig * (1.0 + zz * (1.0 - sig)), mask=m2)
            dy = dout * zz * sig
        else:
            dy = dout
        # Adjoint: g[t] = C[t] dy[t] + a[t+1] g[t+1]; a[t+1] from loads at t+1 (0 past the end).
        nm = cmask[:, None] & (t + 1 < L)[None, :]
        dln = tl.load(dl_ptr + row + t[None, :] + 1, mask=nm, other=0.0)
        dln = _delta(dln, bias[:, None], SOFTPLUS)
        an_next = tl.where(nm[:, None, :], tl.exp(dln[:, None, :] * A[:, :, None]), 0.0)
        if FLIP:  # reverse scan = flip, forward scan, flip (see REVERSE_BY_FLIP)
            Pr, Gs = tl.associative_scan((tl.flip(an_next, 2), tl.flip(dy[:, None, :] * Ct[None, :, :], 2)), 2,
                                         _combine)
            Pr, Gs = tl.flip(Pr, 2), tl.flip(Gs, 2)
        else:
            Pr, Gs = tl.associative_scan((an_next, dy[:, None, :] * Ct[None, :, :]), 2, _combine, reverse=True)
        g = Gs + Pr * carry[:, :, None]
        carry = tl.sum(tl.where((tt == 0)[None, None, :], g, 0.0), 2)
        tl.store(dC_ptr + part + t[None, :], tl.sum(dy[:, None, :] * hs, 0), mask=bm)
        tl.store(dB_ptr + part + t[None, :], tl.sum(g * (dl * u)[:, None, :], 0), mask=bm)
        gB = tl.sum(g * Bt[None, :, :], 1)
        tl.store(du_ptr + row + t[None, :], gB * dl + Dv[:, None] * dy, mask=m2)
        gh = g * hprev * a  # d loss / d (delta A) at each step
        ddl = gB * u + tl.sum(gh * A[:, :, None], 1)
        dA_acc += tl.sum(gh * dl[:, None, :], 2)
        if SOFTPLUS:
            ddl = ddl * tl.sigmoid(raw + bias[:, None])
        ddl = tl.where(m2, ddl, 0.0)
        tl.store(ddl_ptr + row + t[None, :], ddl, mask=m2)
        dbias_acc += tl.sum(ddl, 1)
        dD_acc += tl.sum(dy * u, 1)
    tl.store(dA_ptr + (pb * d + ch[:, None]) * NS + n[None, :], dA_acc, mask=an)
    tl.store(dD_ptr + pb * d + ch, dD_acc, mask=cmask)
    tl.store(dbias_ptr + pb * d + ch, dbias_acc, mask=cmask)


def _on(x: Tensor):
    """Triton launches on the current CUDA device: make it x's (a run on cuda:1 must not launch on 0)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _f32(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.detach().float().contiguous()


# The kernels run inside two torch.library custom ops (forward; backward from the forward's
# saved chunk states), so torch.compile keeps the scan in its graph as one opaque call (no graph
# break) and autograd, fake tensors and CUDA graphs see ordinary operators.
_LIB = "vtab_lily"


@torch.library.custom_op(f"{_LIB}::triton_scan_fwd", mutates_args=())
def _scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
              delta_bias: Tensor | None, softplus: bool) -> tuple[Tensor, Tensor]:
    """(y in u's dtype, the fp32 state entering each chunk (b, d, chunks, N)); B, C grouped."""
    batch, d, length = u.shape
    groups, ns = B.shape[1], A.shape[1]
    u32, dl32, A32, B32, C32 = (_f32(x) for x in (u, delta, A, B, C))
    D32, z32, bias32 = _f32(D), _f32(z), _f32(delta_bias)
    meta = _meta(d, groups, ns, D32, z32, bias32, softplus)
    nchunks = triton.cdiv(length, meta["const"]["T"])
    out = torch.empty_like(u32)
    states = u32.new_empty(batch, d, nchunks, ns)
    with _on(u32):
        _fwd_kernel[meta["grid"](batch)](u32, dl32, A32, B32, C32, D32 if D is not None else u32,
                                         z32 if z is not None else u32, bias32 if delta_bias is not None else u32,
                                         out, states, d, length, d // groups, ns, nchunks, groups,
                                         **meta["const"], num_warps=meta["warps"])
    return out.to(u.dtype), states


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus):
    batch, d, length = u.shape
    return u.new_empty(u.shape), u.new_empty(batch, d, triton.cdiv(length, CHUNK), A.shape[1], dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::triton_scan_bwd", mutates_args=())
def _scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
              delta_bias: Tensor | None, softplus: bool, states: Tensor, dout: Tensor) -> list[Tensor]:
    """fp32 gradients [du, d delta, dA, dB, dC, dD, dz, d delta_bias]; an absent input's is empty."""
    u, dl, A, B, C, D, z, bias = (_f32(x) for x in (u, delta, A, B, C, D, z, delta_bias))
    batch, d, length = u.shape
    groups, ns, nchunks = B.shape[1], A.shape[1], states.shape[2]
    meta = _meta(d, groups, ns, D, z, bias, softplus)
    nblk = meta["nblk"]
    du, ddl = torch.empty_like(u), torch.empty_like(u)
    dz = torch.empty_like(u) if z is not None else u  # never written without z
    dA = u.new_empty(batch, d, ns)
    dD, dbias = u.new_empty(batch, d), u.new_empty(batch, d)
    dB, dC = u.new_empty(batch, groups, nblk, ns, length), u.new_empty(batch, groups, nblk, ns, length)
    with _on(u):
        _bwd_kernel[meta["grid"](batch)](u, dl, A, B, C, D if D is not None else u, z if z is not None else u,
                                         bias if bias is not None else u, states.contiguous(),
                                         dout.float().contiguous(), du, ddl, dz, dA, dD, dbias, dB, dC,
                                         d, length, d // groups, ns, nchunks, groups, nblk,
                                         **meta["const"], FLIP=REVERSE_BY_FLIP, num_warps=meta["warps"])
    return [du, ddl, dA.sum(0), dB.sum(2), dC.sum(2), u.new_empty(0) if D is None else dD.sum(0),
            u.new_empty(0) if z is None else dz, u.new_empty(0) if bias is None else dbias.sum(0)]


@_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, states, dout):
    f32 = dict(dtype=torch.float32)
    return [u.new_empty(u.shape, **f32), u.new_empty(u.shape, **f32), A.new_empty(A.shape, **f32),
            B.new_empty(B.shape, **f32), C.new_empty(C.shape, **f32)] + [
        u.new_empty(0, **f32) if x is None else x.new_empty(x.shape, **f32) for x in (D, z, delta_bias)]


def _save(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1])
    ctx.softplus = softplus


def _backward(ctx, dout, _dstates):
    *saved, states = ctx.saved_tensors
    grads = _scan_bwd(*saved, ctx.softplus, states, dout)
    return (*[g.to(x.dtype) if x is not None and need else None
              for g, x, need in zip(grads, saved, ctx.needs_input_grad)], None)


_scan_fwd.register_autograd(_backward, setup_context=_save)


def _meta(d: int, groups: int, ns: int, D, z, bias, softplus: bool) -> dict:
    """Launch settings; BLOCK_D, CHUNK and NUM_WARPS are read at call time (tests shrink them)."""
    nblk = triton.cdiv(d // groups, BLOCK_D)
    const = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
                 NP=triton.next_power_of_2(ns), BD=BLOCK_D, T=CHUNK)
    return {"nblk": nblk, "const": const, "warps": NUM_WARPS, "grid": lambda batch: (batch, groups, nblk)}


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None,
                          delta_softplus: bool = False) -> Tensor:
    """The selective scan on the Triton kernels; output (b, d, L) in u's dtype."""
    check_shapes(u, delta, A, B, C)
    grouped = B.dim() == 4
    B4, C4 = (B, C) if grouped else (B.unsqueeze(1), C.unsqueeze(1))
    with torch.autocast(u.device.type, enabled=False):
        return _scan_fwd(u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus))[0]
