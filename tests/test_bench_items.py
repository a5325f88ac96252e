"""The benchmark items compare like with like: peers compute the same function, data loads."""

from __future__ import annotations

import os

import pytest
import torch

from vtab_lily.backbones.kernels import SCAN_ENV
from vtab_lily.backbones.scan import selective_scan_ref
from vtab_lily.bench.context import Context
from vtab_lily.bench.data_speed import epoch_seconds, write_jpegs
from vtab_lily.bench.lily_forms import make_site
from vtab_lily.bench.sizes import sizes_for
from vtab_lily.bench.train_steps import backbone_sharing
from vtab_lily.bench.vim_scan import mambapy_scan, ours_torch_path, scan_inputs
from vtab_lily.backbones import create_backbone
from vtab_lily.data import load_split
from vtab_lily.tasks import Task


@pytest.fixture
def toy_ctx():
    return Context(torch.device("cpu"), sizes_for("toy", "cpu"), log=lambda _: None)


def test_scan_candidates_compute_the_reference(toy_ctx, monkeypatch):
    monkeypatch.setenv(SCAN_ENV, "auto")
    x = scan_inputs(toy_ctx, requires_grad=False)
    expected = selective_scan_ref(**x)
    torch.testing.assert_close(ours_torch_path(**x), expected, rtol=1e-4, atol=1e-4)
    assert os.environ[SCAN_ENV] == "auto"  # restored after forcing the PyTorch path


def test_mambapy_peer_computes_the_reference(toy_ctx):
    pytest.importorskip("mambapy", reason="mambapy is an optional peer for the benchmark")
    x = scan_inputs(toy_ctx, requires_grad=False)
    peer = mambapy_scan()
    assert peer is not None
    torch.testing.assert_close(peer(**x), selective_scan_ref(**x), rtol=1e-4, atol=1e-4)


def test_lily_site_forms_agree():
    site = make_site(width=24, rank=4, experts=3)
    x = torch.randn(2, 5, 24)
    site.naive = False
    fast = site(x)
    site.naive = True
    torch.testing.assert_close(site(x), fast, rtol=1e-5, atol=1e-6)
    assert fast.abs().sum() > 0  # B is random, so the update is not trivially zero


def test_models_share_the_frozen_backbone():
    base = create_backbone("vit-tiny-test", 10, img_size=32)
    other = backbone_sharing(base, "vit-tiny-test", 32)
    assert other.blocks[0].attn.qkv.weight.data_ptr() == base.blocks[0].attn.qkv.weight.data_ptr()
    assert other.head.weight.data_ptr() != base.head.weight.data_ptr()  # each model trains its own head


def test_generated_jpegs_load_with_and_without_cache(tmp_path):
    task = Task("bench_jpegs", "Natural", 5, 6)
    write_jpegs(tmp_path, task, 6, (40, 30))
    plain = load_split(tmp_path, task, "test", img_size=16, use_cache=False, progress=False)
    assert plain.images.shape == (6, 3, 16, 16) and plain.labels.tolist() == [0, 1, 2, 3, 4, 0]
    assert plain.images.float().std() > 5  # real content, not a blank image
    assert epoch_seconds(tmp_path, task, True, 4, 16) > 0  # builds the cache
    cached = load_split(tmp_path, task, "test", img_size=16, progress=False)
    assert torch.equal(cached.images, plain.images)
    assert list((tmp_path / ".cache").rglob("*.npy"))  # the cached epoch really used a cache file
