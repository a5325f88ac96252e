"""The Triton selective scan equals the reference loop (values and every gradient), on the CPU
under Triton's interpreter, at small sizes.

``TRITON_INTERPRET=1`` is read when ``@triton.jit`` decorates a function, including Triton's own
library functions (``tl.zeros``, ``tl.sigmoid``...), and importing timm already imports triton.
So the cases run in ONE child process started with the variable set (this file run as a
script); it prints each case's errors as JSON and the tests below judge them. The interpreter
calls the scan's combine function once per element, so each case is a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (the test extra installs it on Linux x86_64)")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
ROOT = Path(__file__).resolve().parents[1]
# case -> (shape and options, inputs used); shapes chosen to hit partial channel blocks
# (BLOCK_D=4), padded states (N=3 -> 4), several chunks (CHUNK=8) with a partial last one.
CASES = {
    "all options, grouped as the Vim mixer": (dict(d=12, length=19, n=3, groups=2), NAMES),
    "no options, ungrouped B/C": (dict(d=4, length=11, n=2, groups=None, softplus=False),
                                  ("u", "delta", "A", "B", "C")),
    "D only": (dict(d=4, length=9, n=2, groups=1), ("u", "delta", "A", "B", "C", "D")),
    "z only": (dict(d=4, length=9, n=2, groups=1), ("u", "delta", "A", "B", "C", "z")),
    "delta_bias only": (dict(d=4, length=9, n=2, groups=1), ("u", "delta", "A", "B", "C", "delta_bias")),
    "22 states (Vim 16 + additional-scan 6), padded to 32": (dict(d=8, length=11, n=22, groups=2), NAMES),
    "strong decay (delta*A to about -100 per step)": (dict(d=4, length=17, n=2, groups=1, strong=True), NAMES),
}
TOL = 1e-4  # max |ours - reference| / (max |reference| + 1), fp32


def _inputs(torch, batch=1, d=12, length=19, n=3, groups=2, softplus=True, strong=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    t = {
        "u": torch.randn(batch, d, length, generator=gen),
        "delta": torch.randn(batch, d, length, generator=gen) * 0.5,
        "A": -torch.rand(d, n, generator=gen) * 3 - 0.05,
        "B": torch.randn(*bc, generator=gen),
        "C": torch.randn(*bc, generator=gen),
        "D": torch.randn(d, generator=gen),
        "z": torch.randn(batch, d, length, generator=gen),
        "delta_bias": torch.randn(d, generator=gen) * 0.5,
    }
    if not softplus:  # the raw delta is the step size: keep it positive
        t["delta"] = t["delta"].abs() + 0.05
    if strong:
        t["delta"], t["A"] = t["delta"] * 4 + 8, t["A"] * 8
    return {k: v.requires_grad_() for k, v in t.items()}


def _run_case(torch, scan_fn, ref_fn, spec: dict, use: tuple[str, ...]) -> dict:
    spec = dict(spec)
    softplus = spec.pop("softplus", True)
    t = _inputs(torch, **spec, softplus=softplus)
    args = {k: (t[k] if k in use else None) for k in NAMES}
    out = scan_fn(**args, delta_softplus=softplus)
    ref = ref_fn(**args, delta_softplus=softplus)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    leaves = [t[k] for k in use]
    got = torch.autograd.grad((out * weights).sum(), leaves)
    want = torch.autograd.grad((ref * weights).sum(), leaves)

    def err(a, b):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        return float((a - b).abs().max() / (b.abs().max() + 1))

    return {"output": err(out, ref), **{f"grad {k}": err(g, w) for k, g, w in zip(use, got, want)}}


def _worker() -> None:
    """Child process body (TRITON_INTERPRET=1 set before anything imported triton)."""
    import torch

    from vtab_lily.backbones import scan_paths, scan_triton
    from vtab_lily.backbones.scan import selective_scan, selective_scan_ref

    assert os.environ.get("TRITON_INTERPRET") == "1"
    scan_triton.BLOCK_D, scan_triton.CHUNK = 4, 8
    results = {name: _run_case(torch, scan_triton.selective_scan_triton, selective_scan_ref, spec, use)
               for name, (spec, use) in CASES.items()}

    # bf16 input: bf16 output and gradient, values within bf16 rounding.
    t = {k: v.detach() for k, v in _inputs(torch, d=4, length=9, n=2, groups=1).items()}
    u = t["u"].bfloat16().requires_grad_()
    out = scan_triton.selective_scan_triton(u, t["delta"], t["A"], t["B"], t["C"], delta_softplus=True)
    ref = selective_scan_ref(u.detach().float(), t["delta"], t["A"], t["B"], t["C"], delta_softplus=True)
    out.float().sum().backward()
    results["bf16"] = {"dtypes": [str(out.dtype), str(u.grad.dtype)],
                       "error": float((out.float() - ref).abs().max() / (ref.abs().max() + 1))}

    # A whole (tiny) Vim mixer, forward and backward: the Triton path equals the PyTorch path.
    from vtab_lily.backbones import kernels
    from vtab_lily.backbones.vim import BiMambaMixer

    torch.manual_seed(0)
    mixer = BiMambaMixer(d_model=8, d_state=3, d_conv=4, expand=2)
    mixer.reset_ssm_parameters()
    hidden = torch.randn(2, 7, 8)
    grads = {}
    for path in ("pytorch", "triton"):
        os.environ["VTAB_LILY_SCAN"] = path
        mixer.zero_grad()
        h = hidden.clone().requires_grad_()
        out = mixer(h)
        out.square().sum().backward()
        grads[path] = [out.detach(), h.grad] + [p.grad for p in mixer.parameters()]
    results["vim mixer"] = {"error": max(float((a - b).abs().max() / (b.abs().max() + 1))
                                         for a, b in zip(grads["triton"], grads["pytorch"]))}
    results["trial"] = {"reason": kernels._trial("triton", torch.device("cpu"))}

    # The fallback form of the backward's reverse scan (flip, forward scan, flip) gives the same numbers.
    scan_triton.REVERSE_BY_FLIP = True
    spec, use = CASES["all options, grouped as the Vim mixer"]
    results["flip"] = _run_case(torch, scan_triton.selective_scan_triton, selective_scan_ref, spec, use)
    results["flip trial"] = {"reason": kernels._trial("triton", torch.device("cpu"))}
    scan_triton.REVERSE_BY_FLIP = False

    # The dispatcher: VTAB_LILY_SCAN=triton routes CPU tensors through the kernel (interpreter only).
    calls = []
    real = kernels.triton_scan
    kernels.triton_scan = lambda *a: calls.append(1) or real(*a)
    os.environ["VTAB_LILY_SCAN"] = "triton"
    paths = scan_paths("cpu")
    x = _inputs(torch, d=4, length=10, n=2, groups=2)
    out = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
    results["dispatch"] = {"paths": paths, "calls": len(calls), "error": float((out - ref).abs().max())}
    print(json.dumps(results))


@pytest.fixture(scope="module")
def results() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("VTAB_LILY_SCAN", None)
    env.pop("VTAB_LILY_KERNELS", None)
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_all_gradients_match_the_reference(results, case):
    errors = results[case]
    assert set(errors) == {"output", *(f"grad {k}" for k in CASES[case][1])}
    bad = {k: v for k, v in errors.items() if isinstance(v, str) or not v <= TOL}  # `not <=` catches NaN
    assert not bad, f"{case}: {bad}"


def test_bf16_input_gives_bf16_output_and_gradient(results):
    assert results["bf16"]["dtypes"] == ["torch.bfloat16", "torch.bfloat16"]
    assert results["bf16"]["error"] < 2e-2


def test_vim_mixer_on_the_triton_path_matches_pytorch(results):
    """Output, input gradient and every parameter gradient of a tiny bidirectional mixer."""
    assert results["vim mixer"]["error"] < 1e-4


def test_the_real_call_check_accepts_the_triton_kernel(results):
    assert results["trial"]["reason"] is None


def test_the_flip_based_reverse_scan_matches_the_reference(results):
    errors = results["flip"]
    assert set(errors) == {"output", *(f"grad {k}" for k in NAMES)}
    assert all(isinstance(v, float) and v <= TOL for v in errors.values()), errors
    assert results["flip trial"]["reason"] is None


def test_forced_triton_path_runs_through_selective_scan(results):
    assert results["dispatch"]["paths"] == {"scan": "triton", "conv": "pytorch"}
    assert results["dispatch"]["calls"] == 1
    assert results["dispatch"]["error"] < 1e-4


if __name__ == "__main__":
    _worker()
