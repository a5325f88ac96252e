"""The Triton scan's test call checks both directions of the scan (the output: the forward scan;
the gradients: the backward's reverse scan), and falls back to the flip-based reverse scan when
only the reverse one is wrong. The kernel is replaced by the reference scan with a fault injected
(the kernel itself runs under Triton's interpreter in test_scan_triton.py)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from vtab_lily.backbones import kernels
from vtab_lily.backbones.scan import selective_scan_ref

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def faulty(wrong_forward: bool = False, wrong_reverse_unless_flipped: bool = True, wrong_flipped: bool = False):
    from vtab_lily.backbones import scan_triton

    def scan(*args, **kwargs):
        out = selective_scan_ref(*args, **kwargs)
        if wrong_forward:
            return out * 1.5
        flipped = scan_triton.REVERSE_BY_FLIP
        if (wrong_reverse_unless_flipped and not flipped) or (wrong_flipped and flipped):
            return out + 0.5 * (out - out.detach())  # same values, gradients 1.5x: only the adjoint is wrong
        return out

    return scan


@pytest.fixture(autouse=True)
def reset(monkeypatch):
    from vtab_lily.backbones import scan_triton

    monkeypatch.setattr(scan_triton, "REVERSE_BY_FLIP", False)
    monkeypatch.setattr(kernels, "_notes", {})
    yield


def test_a_wrong_reverse_scan_switches_to_the_flip_form(monkeypatch):
    from vtab_lily.backbones import scan_triton

    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: faulty())
    assert kernels.REVERSE_WRONG in kernels._trial("triton", torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="flip-based reverse scan"):
        assert kernels._trial_triton(torch.device("cpu")) is None
    assert scan_triton.REVERSE_BY_FLIP is True
    assert "flip-based" in kernels.kernel_notes()["triton reverse scan"]


def test_a_wrong_forward_scan_is_not_rescued_by_the_flip(monkeypatch):
    from vtab_lily.backbones import scan_triton

    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: faulty(wrong_forward=True))
    reason = kernels._trial_triton(torch.device("cpu"))
    assert reason is not None and "forward" in reason and scan_triton.REVERSE_BY_FLIP is False


def test_when_the_flip_form_fails_too_triton_is_not_used(monkeypatch):
    from vtab_lily.backbones import scan_triton

    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: faulty(wrong_flipped=True))
    reason = kernels._trial_triton(torch.device("cpu"))
    assert reason is not None and "with the flip-based reverse scan too" in reason
    assert scan_triton.REVERSE_BY_FLIP is False


def test_a_correct_kernel_keeps_the_reverse_scan(monkeypatch):
    from vtab_lily.backbones import scan_triton

    monkeypatch.setattr(kernels, "triton_scan_fn", lambda: faulty(wrong_reverse_unless_flipped=False))
    assert kernels._trial_triton(torch.device("cpu")) is None and scan_triton.REVERSE_BY_FLIP is False
