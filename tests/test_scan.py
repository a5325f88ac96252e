"""The fast selective scan equals the plain reference loop (values and gradients)."""

from __future__ import annotations

import itertools
import re
import subprocess
import warnings
import sys

import pytest
import torch
import torch.nn.functional as F

from vtab_lily.backbones import kernels, scan_paths
from vtab_lily.backbones.scan import causal_conv1d, selective_scan, selective_scan_ref
from vtab_lily.errors import UserError

RTOL, ATOL = 6e-4, 2e-3  # fp32 tolerance the brief asks for; we are far inside it


def _inputs(batch=2, d=8, length=19, n=4, groups=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bc_shape = (batch, n, length) if groups is None else (batch, groups, n, length)
    tensors = {
        "u": torch.randn(batch, d, length, generator=gen),
        "delta": torch.randn(batch, d, length, generator=gen) * 0.5,
        "A": -torch.rand(d, n, generator=gen) * 4 - 0.05,
        "B": torch.randn(*bc_shape, generator=gen),
        "C": torch.randn(*bc_shape, generator=gen),
        "D": torch.randn(d, generator=gen),
        "z": torch.randn(batch, d, length, generator=gen),
        "delta_bias": torch.randn(d, generator=gen) * 0.5,
    }
    return {k: v.requires_grad_() for k, v in tensors.items()}


def _compare(use_d=True, use_z=True, use_bias=True, softplus=True, **shape):
    t = _inputs(**shape)
    if not softplus:  # without softplus, delta must be positive for a decaying recurrence
        t["delta"] = t["delta"].detach().abs().add(0.01).requires_grad_()
    options = {
        "D": t["D"] if use_d else None,
        "z": t["z"] if use_z else None,
        "delta_bias": t["delta_bias"] if use_bias else None,
        "delta_softplus": softplus,
    }
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"])
    fast = selective_scan(*args, **options)
    ref = selective_scan_ref(*args, **options)
    torch.testing.assert_close(fast, ref, rtol=RTOL, atol=ATOL)
    weights = torch.randn_like(ref)
    used = [*args, *(v for v in options.values() if isinstance(v, torch.Tensor))]
    grads_fast = torch.autograd.grad((fast * weights).sum(), used)
    grads_ref = torch.autograd.grad((ref * weights).sum(), used)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(g_fast, g_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "use_d,use_z,use_bias,softplus", list(itertools.product([False, True], repeat=4))
)
def test_fast_matches_reference_all_options(use_d, use_z, use_bias, softplus):
    _compare(use_d, use_z, use_bias, softplus)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 16, 37])  # around the chunk size (8)
def test_fast_matches_reference_lengths(length):
    _compare(length=length)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_fast_matches_reference_grouped(groups):
    _compare(d=8, groups=groups, length=21)


@pytest.mark.parametrize("n", [3, 22])  # 22 = Vim's 16 states + additional-scan's 6: not a power of two
def test_fast_matches_reference_non_power_of_two_states(n):
    _compare(d=8, groups=2, n=n, length=13)


def test_grouped_bc_means_per_channel_rows():
    """Group g of B/C drives channels g*d/G..; equals running each group separately."""
    t = _inputs(d=6, groups=3, length=10)
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=True)
    for g in range(3):
        sl = slice(2 * g, 2 * g + 2)
        part = selective_scan_ref(
            t["u"][:, sl], t["delta"][:, sl], t["A"][sl], t["B"][:, g], t["C"][:, g], delta_softplus=True
        )
        torch.testing.assert_close(out[:, sl], part, rtol=RTOL, atol=ATOL)


def test_reference_matches_hand_computed_recurrence():
    """One channel, one state: h_t = exp(dt*a) h_{t-1} + dt*b*u, y = c*h + D*u."""
    u = torch.tensor([[[1.0, 2.0, -1.0]]])
    delta = torch.tensor([[[0.5, 1.0, 0.25]]])
    A = torch.tensor([[-2.0]])
    B = torch.tensor([[[1.0, 0.5, 2.0]]])
    C = torch.tensor([[[3.0, 1.0, -1.0]]])
    D = torch.tensor([0.5])
    h, expected = 0.0, []
    for t in range(3):
        h = torch.exp(delta[0, 0, t] * A[0, 0]) * h + delta[0, 0, t] * B[0, 0, t] * u[0, 0, t]
        expected.append(C[0, 0, t] * h + D[0] * u[0, 0, t])
    expected = torch.stack(expected).view(1, 1, 3)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C, D), expected)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D), expected)


def test_large_decay_is_stable():
    """Strong decay (delta*A down to -200 per step) must not overflow or produce NaN."""
    t = _inputs(length=40)
    delta = (t["delta"].detach().abs() * 20 + 1).requires_grad_()
    A = (t["A"].detach() * 10).requires_grad_()
    fast = selective_scan(t["u"], delta, A, t["B"], t["C"])
    ref = selective_scan_ref(t["u"], delta, A, t["B"], t["C"])
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, ref, rtol=RTOL, atol=ATOL)
    fast.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (delta, A, t["u"], t["B"], t["C"]))


def test_frozen_A_skips_its_gradient_and_keeps_others():
    t = _inputs()
    A = t["A"].detach()  # frozen, as under PEFT
    out = selective_scan(t["u"], t["delta"], A, t["B"], t["C"], delta_softplus=True)
    out.sum().backward()
    assert A.grad is None and t["u"].grad is not None and t["B"].grad is not None


def test_bf16_inputs_and_autocast_compute_in_fp32():
    t = _inputs()
    args = [t[k].detach() for k in ("u", "delta", "A", "B", "C")]
    ref = selective_scan_ref(*args, delta_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan(*args, delta_softplus=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    out16 = selective_scan(args[0].bfloat16(), *args[1:], delta_softplus=True)
    assert out16.dtype == torch.bfloat16


def test_shape_errors_are_clear():
    t = _inputs()
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(t["u"], t["delta"], t["A"][:3], t["B"], t["C"])
    with pytest.raises(ValueError, match="groups"):
        bad = torch.randn(2, 3, 4, 19)
        selective_scan(t["u"], t["delta"], t["A"], bad, bad)


def test_causal_conv1d_matches_direct_sum():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 11, generator=gen)
    weight = torch.randn(5, 1, 4, generator=gen)
    bias = torch.randn(5, generator=gen)
    out = causal_conv1d(x, weight, bias, activation="silu")
    expected = torch.zeros_like(x)
    for t in range(11):
        acc = bias.clone()
        for j in range(4):  # tap j looks back 3 - j steps
            s = t - 3 + j
            if s >= 0:
                acc = acc + weight[:, 0, j] * x[:, :, s]
        expected[:, :, t] = F.silu(acc)
    torch.testing.assert_close(out, expected)
    # causal: changing a future input leaves earlier outputs alone
    x2 = x.clone()
    x2[:, :, 7] += 10
    out2 = causal_conv1d(x2, weight, bias)
    torch.testing.assert_close(out2[:, :, :7], causal_conv1d(x, weight, bias)[:, :, :7])
    assert not torch.allclose(out2[:, :, 7], causal_conv1d(x, weight, bias)[:, :, 7])


def test_kernels_never_used_for_cpu_tensors(monkeypatch):
    from vtab_lily.backbones import kernels

    calls = []
    monkeypatch.setattr(kernels, "mamba_scan_fn", lambda: lambda *a, **k: calls.append(1))
    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: lambda *a, **k: calls.append(1))
    monkeypatch.delenv(kernels.SCAN_ENV, raising=False)
    t = _inputs()
    selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])
    assert calls == []
    assert scan_paths("cpu") == {"scan": "pytorch", "conv": "pytorch"}


@pytest.mark.parametrize("env,value,message", [
    ("VTAB_LILY_SCAN", "cuda-please", "VTAB_LILY_SCAN='cuda-please': choose one of auto, mamba_ssm, triton, pytorch"),
    ("VTAB_LILY_SCAN", "mamba_ssm", "VTAB_LILY_SCAN=mamba_ssm: not available on cpu"),
    ("VTAB_LILY_CONV", "causal_conv1d", "VTAB_LILY_CONV=causal_conv1d: not available on cpu"),
    ("VTAB_LILY_CONV", "nope", "VTAB_LILY_CONV='nope'"),
])
def test_forcing_a_path_that_cannot_run_is_a_user_error(monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(UserError, match=re.escape(message)):
        scan_paths("cpu")
    t = _inputs()
    if env == "VTAB_LILY_SCAN":  # the scan itself refuses too, rather than silently using PyTorch
        with pytest.raises(UserError, match=re.escape(message)):
            selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])


def test_forcing_pytorch_and_the_legacy_variable(monkeypatch):
    monkeypatch.setenv("VTAB_LILY_SCAN", " PyTorch ")
    assert scan_paths("cpu")["scan"] == "pytorch"
    monkeypatch.delenv("VTAB_LILY_SCAN")
    monkeypatch.setenv("VTAB_LILY_KERNELS", "torch")
    assert kernels.forced("scan") == "pytorch" and kernels.forced("conv") == "pytorch"
    monkeypatch.setenv("VTAB_LILY_KERNELS", "auto")
    assert kernels.forced("scan") is None


def test_causal_conv_kernel_gets_activation_by_keyword(monkeypatch):
    """causal-conv1d >= 1.1 has seq_idx as its 4th parameter: activation must be a keyword."""
    seen = {}

    def fake(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
             final_states_out=None, activation=None):
        seen.update(seq_idx=seq_idx, activation=activation, weight_shape=tuple(weight.shape))
        return x

    monkeypatch.setattr(kernels, "causal_conv_fn", lambda: fake)
    x = torch.randn(1, 3, 5)
    kernels.causal_conv_kernel(x, torch.randn(3, 4), None, "silu")
    assert seen == {"seq_idx": None, "activation": "silu", "weight_shape": (3, 4)}


def test_missing_packages_are_recorded_with_a_reason(monkeypatch):
    """Not installed: no kernel, and the reason is kept for the logs (never silent)."""
    monkeypatch.setattr(kernels, "_installed", lambda name: False)
    for loader, path in ((kernels.mamba_scan_fn, "mamba_ssm"), (kernels.causal_conv_fn, "causal_conv1d")):
        loader.cache_clear()
        try:
            assert loader() is None
            assert "not installed" in kernels.kernel_notes()[path]
        finally:
            loader.cache_clear()


def test_installed_package_without_its_extension_warns(monkeypatch):
    """mamba-ssm >= 2.3 imports without selective_scan_cuda: that is detected, recorded and warned."""
    monkeypatch.setattr(kernels, "_installed", lambda name: True)
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)  # import of the extension fails
    kernels.mamba_scan_fn.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="mamba_ssm is not used: mamba-ssm is installed but its CUDA extension"):
            assert kernels.mamba_scan_fn() is None
        assert "selective_scan_cuda" in kernels.kernel_notes()["mamba_ssm"]
    finally:
        kernels.mamba_scan_fn.cache_clear()


def test_package_imports_without_cuda_extensions():
    """``import vtab_lily.backbones`` and a Vim forward work with mamba_ssm / causal_conv1d unimportable."""
    code = (
        "import sys; sys.modules['mamba_ssm'] = None; sys.modules['causal_conv1d'] = None\n"
        "import torch, vtab_lily\n"
        "from vtab_lily.backbones import create_backbone, kernels, scan_paths\n"
        "m = create_backbone('vim-tiny-test', 3, img_size=None)\n"
        "assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)\n"
        "assert kernels.mamba_scan_fn() is None and kernels.causal_conv_fn() is None\n"
        "assert scan_paths('cpu') == {'scan': 'pytorch', 'conv': 'pytorch'}\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_trial_call_rejects_a_kernel_that_is_wrong_or_raises(monkeypatch):
    """The real-call check compares a kernel's output and gradients with the reference (run here on
    CPU tensors with stand-in kernels; on a GPU it runs once per device)."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: selective_scan_ref)
    assert kernels._trial("triton", cpu) is None
    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: lambda *a: selective_scan_ref(*a) * 1.01)
    assert "wrong results" in kernels._trial("triton", cpu)
    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: lambda *a: selective_scan_ref(*a) * float("nan"))
    assert "wrong results" in kernels._trial("triton", cpu)

    def broken(*args):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: broken)
    assert "failed its test call on cpu (RuntimeError: no kernel image" in kernels._trial("triton", cpu)
    from vtab_lily.backbones.scan import causal_conv1d_torch

    monkeypatch.setattr(kernels, "causal_conv_fn", lambda: lambda x, w, b, activation=None: causal_conv1d_torch(
        x, w, b, activation))
    assert kernels._trial("causal_conv1d", cpu) is None
    monkeypatch.setattr(kernels, "causal_conv_fn", lambda: lambda x, w, b, activation=None: causal_conv1d_torch(
        x, w, b, None))  # ignores the activation
    assert "wrong results" in kernels._trial("causal_conv1d", cpu)


def test_falling_back_to_pytorch_on_a_gpu_warns_once_with_the_reasons(monkeypatch):
    """No kernel passes its test call on a (pretend) CUDA device: PyTorch path, one warning saying why."""
    gpu = torch.device("cuda", 0)
    monkeypatch.delenv("VTAB_LILY_SCAN", raising=False)
    monkeypatch.delenv("VTAB_LILY_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "works_on", lambda path, device: False)
    monkeypatch.setattr(kernels, "_warned_fallback", set())
    monkeypatch.setitem(kernels._notes, "triton", "triton is not installed")
    with pytest.warns(RuntimeWarning, match="uses the PyTorch path.*triton: triton is not installed"):
        assert kernels.scan_path(gpu) == "pytorch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.scan_path(gpu) == "pytorch"  # once per device
    monkeypatch.setattr(kernels, "works_on", lambda path, device: path == "triton")
    assert kernels.scan_path(gpu) == "triton"
    monkeypatch.setenv("VTAB_LILY_SCAN", "mamba_ssm")
    with pytest.raises(UserError, match="VTAB_LILY_SCAN=mamba_ssm: mamba_ssm cannot run"):
        kernels.scan_path(gpu)
