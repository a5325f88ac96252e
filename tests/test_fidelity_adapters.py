"""The adapters and the ViT head against independent references written from the official code.

Each reference below is written from the equations of the official implementations (Lily's
``vit/lily.py`` and ``vim/lily.py``, AdaptFormer's ``custom_modules.py``, NOAH's fused-qkv
LoRA, timm 0.4.12's pre-logits head), not by calling the code under test: the tests give the
project's modules the same weights and compare outputs.
"""

import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from vtab_lily.adapters import (
    adapter_deviations,
    apply_adapter,
    count_parameters,
    merge_lora,
    official_adapter_settings,
    unmerge_lora,
)
from vtab_lily.adapters.wrappers import AdaptedLinear
from vtab_lily.backbones import BACKBONES, create_backbone
from vtab_lily.errors import UserError
from adapter_helpers import randomize_trainable, tiny_vit  # noqa: E402
from test_backbones_checkpoint import _google_npz, _pretrained  # noqa: E402

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))


def tiny_vim() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("vim-tiny-test", 5, img_size=16).eval()


# ----------------------------------------------------------------- (a) Lily on ViT, batch routing


def official_lily(x, A, R, experts, relu):
    """Official ViT ``lily_adapter``: token softmax averaged over batch and tokens, experts
    combined with those weights, one product."""
    hidden = x @ A.T
    if relu:
        hidden = torch.relu(hidden)
    probs = torch.softmax(hidden @ R.T, dim=-1).mean(dim=(0, 1))
    return hidden @ torch.einsum("e,eio->io", probs, experts)


def official_vit_logits(plain, p, x, scale, ne):
    """The official ``forward_attn_lily_kv`` / ``forward_mlp_lily`` forward, written out."""
    h = plain._pos_embed(plain.patch_embed(x))
    stride = len(plain.blocks) // ne  # official: a new A set at block idx when idx % stride == 0
    for i, blk in enumerate(plain.blocks):
        g = i // stride
        y = blk.norm1(h)
        b, n, c = y.shape
        heads = blk.attn.num_heads
        q, k, v = F.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(b, n, 3, heads, c // heads).permute(
            2, 0, 3, 1, 4)
        k = k + (scale * official_lily(y, p["A_k"][g], p["R_k"][i], p["B_k"], False)).reshape(
            b, n, heads, c // heads).transpose(1, 2)
        v = v + (scale * official_lily(y, p["A_v"][g], p["R_v"][i], p["B_v"], False)).reshape(
            b, n, heads, c // heads).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1)
        h = h + blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        y = blk.norm2(h)
        mlp = blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(y)))
        h = h + mlp + scale * official_lily(y, p["A_mlp"][g], p["R_mlp"][i], p["B_mlp"], True)
    return plain.head(plain.norm(h)[:, 0])


def official_params(depth, c, r, ne, seed=7):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.3

    p = {}
    for kind, hidden in (("k", r), ("v", r), ("mlp", 2 * r)):
        p[f"A_{kind}"] = [rand(hidden, c) for _ in range(ne)]
        p[f"B_{kind}"] = rand(ne, hidden, c)
        p[f"R_{kind}"] = [rand(ne, hidden) for _ in range(depth)]
    return p


def load_official_params(model, p, ne):
    stride = len(model.blocks) // ne
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            for kind, delta in (("k", blk.attn.qkv.deltas["lily_k"]), ("v", blk.attn.qkv.deltas["lily_v"]),
                                ("mlp", blk.mlp.delta)):
                delta.lily_A.weight.copy_(p[f"A_{kind}"][i // stride])
                delta.lily_B.weight.copy_(p[f"B_{kind}"])
                delta.lily_router.weight.copy_(p[f"R_{kind}"][i])


def test_lily_vit_default_equals_the_official_forward():
    r, ne, scale = 4, 2, 0.7
    model = apply_adapter(tiny_vit(), "lily", rank=r, ne=ne, scale=scale).double()  # default routing
    assert model.adapter_config.routing == "batch" and model.adapter_config.targets == ("k", "v", "mlp")
    p = official_params(depth=4, c=48, r=r, ne=ne)
    load_official_params(model, p, ne)
    plain = tiny_vit().double()
    with torch.no_grad():
        expected = official_vit_logits(plain, p, IMAGES.double(), scale, ne)
        ours = model(IMAGES.double())
        assert (expected - plain(IMAGES.double())).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
        # Per-example routing is a different function: the comparison can fail.
        other = apply_adapter(tiny_vit(), "lily", rank=r, ne=ne, scale=scale, routing="sample").double()
        load_official_params(other, p, ne)
        assert (other(IMAGES.double()) - expected).abs().max() > 1e-4


# ----------------------------------------------------------------- (b) Vim: per-token routing


def official_vim_in_proj(x, A, R, experts):
    """Official Vim ``lily_hp``: per-token softmax, a combined adapter per token, then the product."""
    hidden = x @ A.T
    probs = torch.softmax(hidden @ R.T, dim=-1)
    combined = torch.einsum("ble,eio->blio", probs, experts)
    return torch.einsum("bld,blde->ble", hidden, combined)


def expert_by_expert(x, A, R, experts):
    hidden = x @ A.T
    probs = torch.softmax(hidden @ R.T, dim=-1)
    return sum(probs[..., e, None] * (hidden @ experts[e]) for e in range(experts.shape[0]))


def test_vim_token_routing_equals_the_per_token_mixture_and_its_gradients():
    model = apply_adapter(tiny_vim(), "lily", rank=3, ne_b=4).double()
    randomize_trainable(model)
    layer = model.layers[1].mixer.in_proj
    delta = layer.deltas["lily_in_proj"]
    x = torch.randn(2, 7, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    A, R, B = delta.lily_A.weight, delta.lily_router.weight, delta.lily_B.weight
    results = []
    for fn in (lambda: layer(x) - layer.base_layer(x), lambda: official_vim_in_proj(x, A, R, B),
               lambda: expert_by_expert(x, A, R, B)):
        model.zero_grad(set_to_none=True)
        out = fn()
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        results.append((out.detach(), [t.grad.clone() for t in (A, R, B)]))
    (ours, our_grads), *references = results
    assert ours.abs().max() > 1e-3
    for out, grads in references:
        torch.testing.assert_close(ours, out, rtol=1e-10, atol=1e-10)
        for mine, theirs in zip(our_grads, grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)


def test_vim_dropout_acts_on_the_a_output_before_router_and_b():
    model = apply_adapter(tiny_vim(), "lily").double()
    randomize_trainable(model)
    model.train()
    delta = model.layers[0].mixer.in_proj.deltas["lily_in_proj"]
    x = torch.randn(2, 5, delta.lily_A.in_features, dtype=torch.float64)
    A, R, B = delta.lily_A.weight, delta.lily_router.weight, delta.lily_B.weight
    torch.manual_seed(11)
    ours = delta(x)
    torch.manual_seed(11)
    hidden = F.dropout(x @ A.T, p=0.1, training=True)
    probs = torch.softmax(hidden @ R.T, dim=-1)
    expected = torch.einsum("bld,blde->ble", hidden, torch.einsum("ble,eio->blio", probs, B))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    model.eval()
    torch.testing.assert_close(delta(x), official_vim_in_proj(x, A, R, B), rtol=1e-10, atol=1e-10)
    dt = model.layers[0].mixer.dt_proj.deltas["lily_dt_proj"]
    assert isinstance(dt.dropout, torch.nn.Identity) and dt.lily_router is None  # official dt_proj: plain


# ----------------------------------------------------------------- (c) AdaptFormer placement


class ZeroPath(torch.nn.Module):
    """Stands in for drop_path dropping its branch."""

    def forward(self, x):
        return torch.zeros_like(x)


def test_adaptformer_official_reads_the_pre_norm_stream_outside_drop_path():
    model = apply_adapter(tiny_vit(), "adaptformer", rank=4, dropout=0.0)
    assert model.adapter_config.placement == "official"
    randomize_trainable(model)
    wrapper = model.blocks[1]
    blk, bottleneck = wrapper.base_layer, wrapper.delta
    x = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(1))
    seen = []
    bottleneck.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        mid = x + blk.attn(blk.norm1(x))
        adapter = 0.1 * bottleneck.up(torch.relu(bottleneck.down(mid)))
        expected = mid + blk.mlp(blk.norm2(mid)) + adapter
        torch.testing.assert_close(wrapper(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seen[-1], mid)
        blk.norm2.weight.mul_(3.0)  # the adapter input does not go through norm2
        wrapper(x)
        torch.testing.assert_close(seen[-1], mid)
        blk.drop_path1, blk.drop_path2 = ZeroPath(), ZeroPath()  # both branches dropped
        torch.testing.assert_close(wrapper(x), x + 0.1 * bottleneck.up(torch.relu(bottleneck.down(x))))


def test_adaptformer_paper_placement_reads_ln_x_inside_drop_path():
    model = apply_adapter(tiny_vit(), "adaptformer", rank=4, dropout=0.0, placement="paper")
    randomize_trainable(model)
    blk = model.blocks[1]
    seen = []
    blk.mlp.delta.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        blk(x)
        mid = x + blk.attn(blk.norm1(x))
        torch.testing.assert_close(seen[-1], blk.norm2(mid))
        blk.drop_path1, blk.drop_path2 = ZeroPath(), ZeroPath()
        torch.testing.assert_close(blk(x), x)  # the adapter was inside the dropped branch


def test_adaptformer_official_on_vim_adds_the_residual_bottleneck():
    model = apply_adapter(tiny_vim(), "adaptformer", rank=3, dropout=0.0)
    randomize_trainable(model)
    wrapper = model.layers[1]
    r = torch.randn(2, 6, wrapper.delta.down.in_features)
    with torch.no_grad():
        expected = wrapper.base_layer(r) + 0.1 * wrapper.delta.up(torch.relu(wrapper.delta.down(r)))
        torch.testing.assert_close(wrapper(r), expected)
        fresh = apply_adapter(tiny_vim(), "adaptformer")
        assert torch.equal(fresh(IMAGES[:, :, :16, :16]), tiny_vim()(IMAGES[:, :, :16, :16]))


# ----------------------------------------------------------------- (d) LoRA variants


def vit_b():
    with torch.device("meta"):
        return timm.create_model("vit_base_patch16_224", pretrained=False)


def test_lora_noah_is_one_fused_a_and_b_on_qkv():
    model = apply_adapter(vit_b(), "lora")
    assert model.adapter_config.variant == "noah"
    layers = [m for m in model.modules() if isinstance(m, AdaptedLinear)]
    assert len(layers) == 12 and all(layer is blk.attn.qkv for layer, blk in zip(layers, model.blocks))
    for layer in layers:
        (name, delta), = layer.deltas.items()
        assert name == "lora_qkv" and delta.out_slice is None and delta.scaling == 1.0
        assert delta.lora_A.weight.shape == (8, 768) and delta.lora_B.weight.shape == (2304, 8)
        assert isinstance(delta.dropout, torch.nn.Identity)
    assert count_parameters(model)["adapter"] == 12 * 8 * (768 + 2304) == 294_912
    assert apply_adapter(tiny_vit(), "lora", targets="qkv", rank=4).adapter_config.variant == "noah"
    assert apply_adapter(tiny_vit(), "lora", targets="q,v").adapter_config.variant == "custom"


def test_lora_lily_variant_is_q_and_v_with_dropout_after_a():
    model = apply_adapter(vit_b(), "lora", variant="lily")
    assert set(model.blocks[0].attn.qkv.deltas) == {"lora_q", "lora_v"}
    assert count_parameters(model)["adapter"] == 294_912
    tiny = apply_adapter(tiny_vit(), "lora", variant="lily")
    randomize_trainable(tiny)
    tiny.train()
    delta = tiny.blocks[0].attn.qkv.deltas["lora_v"]
    assert delta.dropout.p == 0.1
    x = torch.randn(2, 5, 48)
    torch.manual_seed(5)
    ours = delta(x)
    torch.manual_seed(5)
    expected = F.dropout(x @ delta.lora_A.weight.T, p=0.1, training=True) @ delta.lora_B.weight.T
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("config", [{}, {"variant": "lily"}, {"targets": ("k", "fc1"), "rank": 3, "dropout": 0.2}])
def test_lora_merge_is_exact_for_every_variant(config):
    model = apply_adapter(tiny_vit(), "lora", **config)
    randomize_trainable(model)
    model.eval()  # dropout off: the merged weight is the same function
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        before = model(IMAGES)
        assert merge_lora(model) > 0
        torch.testing.assert_close(model(IMAGES), before, rtol=1e-5, atol=1e-5)
        unmerge_lora(model)
        assert torch.equal(model(IMAGES), before)
    assert all(torch.equal(p, originals[n]) for n, p in model.named_parameters() if n in originals)


@pytest.mark.parametrize("config,message", [
    ({"variant": "noah", "targets": ("q",)}, "variant 'noah' adapts qkv"),
    ({"variant": "hu"}, "unknown lora variant"),
    ({"dropout_position": "output"}, "unknown lora dropout_position"),
    ({"alpha": float("nan")}, "alpha must be a number >= 0"),
])
def test_lora_variant_errors(config, message):
    with pytest.raises(UserError, match=message):
        apply_adapter(tiny_vit(), "lora", **config)
    with pytest.raises(UserError, match="unknown lora variant for a vim backbone 'noah'"):
        apply_adapter(tiny_vim(), "lora", variant="noah")


# ----------------------------------------------------------------- (e) pre_logits


def npz_with_pre_logits(tmp_path, kernel=None, bias=None, drop=False):
    source = _pretrained("vit-tiny-test")
    path = tmp_path / "vit.npz"
    _google_npz(source, path, heads=3)
    arrays = dict(np.load(path))
    gen = np.random.default_rng(0)
    arrays["pre_logits/kernel"] = gen.normal(size=(48, 48)).astype(np.float32) if kernel is None else kernel
    arrays["pre_logits/bias"] = gen.normal(size=48).astype(np.float32) if bias is None else bias
    if drop:
        del arrays["pre_logits/kernel"], arrays["pre_logits/bias"]
    np.savez(path, **arrays)
    return path, arrays


def test_pre_logits_kept_from_the_npz_is_tanh_of_the_dense_layer(tmp_path):
    path, arrays = npz_with_pre_logits(tmp_path)
    model = create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None, pre_logits=True).eval()
    assert model.pre_logits_kept and model.get_classifier().out_features == 3
    with torch.no_grad():
        cls = model.forward_features(IMAGES)[:, 0]  # final norm, class token
        kernel, bias = (torch.from_numpy(arrays[k]) for k in ("pre_logits/kernel", "pre_logits/bias"))
        features = torch.tanh(cls @ kernel + bias)  # Flax Dense: x @ kernel (in, out)
        torch.testing.assert_close(model(IMAGES), model.head(features), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.forward_head(model.forward_features(IMAGES), pre_logits=True), features)
        dropped = create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None, pre_logits=False).eval()
        dropped.head.load_state_dict(model.head.state_dict())
        assert not dropped.pre_logits_kept
        torch.testing.assert_close(dropped(IMAGES), model.head(cls))
    adapted = apply_adapter(model, "lora")
    assert not any(p.requires_grad for p in adapted.pre_logits.parameters())  # frozen with the backbone
    assert count_parameters(adapted)["adapter"] == count_parameters(apply_adapter(
        create_backbone("vit-tiny-test", 3, img_size=None), "lora"))["adapter"]


def test_pre_logits_default_follows_the_backbone(tmp_path, monkeypatch):
    path, _ = npz_with_pre_logits(tmp_path)
    assert not create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None).pre_logits_kept
    assert BACKBONES["vit-b16-in21k"].pre_logits and not BACKBONES["vit-b16-in1k"].pre_logits
    monkeypatch.setitem(BACKBONES, "vit-tiny-test", dataclasses.replace(BACKBONES["vit-tiny-test"], pre_logits=True))
    assert create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None).pre_logits_kept
    (tmp_path / "plain").mkdir()
    plain, _ = npz_with_pre_logits(tmp_path / "plain", drop=True)
    assert not create_backbone("vit-tiny-test", 3, checkpoint=plain, img_size=None).pre_logits_kept
    assert not create_backbone("vit-tiny-test", 3, img_size=None).pre_logits_kept


def test_pre_logits_from_a_timm_0_4_state_dict(tmp_path):
    source = _pretrained("vit-tiny-test")
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    state["pre_logits.fc.weight"], state["pre_logits.fc.bias"] = torch.randn(48, 48), torch.randn(48)
    torch.save(state, tmp_path / "vit.pth")
    model = create_backbone("vit-tiny-test", 3, checkpoint=tmp_path / "vit.pth", img_size=None, pre_logits=True)
    torch.testing.assert_close(model.pre_logits.fc.weight, state["pre_logits.fc.weight"])


def test_pre_logits_errors(tmp_path):
    plain, _ = npz_with_pre_logits(tmp_path, drop=True)
    with pytest.raises(UserError, match=r"vit.npz: has none"):
        create_backbone("vit-tiny-test", 3, checkpoint=plain, img_size=None, pre_logits=True)
    # no file: the structure only, zeros, for a state dict (the runner's weights cache) or a meta build
    shell = create_backbone("vit-tiny-test", 3, img_size=None, pre_logits=True)
    assert shell.pre_logits_kept and not shell.pre_logits.fc.weight.any()
    with torch.device("meta"):
        assert create_backbone("vit-tiny-test", 3, img_size=None, pre_logits=True).pre_logits_kept
    with pytest.raises(UserError, match="has no pre-logits layer"):
        create_backbone("vim-tiny-test", 3, img_size=None, pre_logits=True)
    with pytest.raises(UserError, match="pre_logits must be true, false or unset"):
        create_backbone("vit-tiny-test", 3, img_size=None, pre_logits="yes")
    wrong, _ = npz_with_pre_logits(tmp_path, kernel=np.zeros((48, 40), np.float32))
    with pytest.raises(UserError, match=r"pre_logits has shapes \(40, 48\)"):
        create_backbone("vit-tiny-test", 3, checkpoint=wrong, img_size=None, pre_logits=True)
    bad, _ = npz_with_pre_logits(tmp_path, bias=np.full(48, np.nan, np.float32))
    with pytest.raises(UserError, match="non-finite"):
        create_backbone("vit-tiny-test", 3, checkpoint=bad, img_size=None, pre_logits=True)


# ----------------------------------------------------------------- (f) official defaults


def test_official_defaults_and_vim_parameter_counts():
    assert official_adapter_settings("vit", "lily")["routing"] == "batch"
    vim = official_adapter_settings("vim", "lily")
    assert (vim["routing"], vim["dropout"], vim["router"], vim["variant"]) == ("token", 0.1, "single", "l")
    assert vim["per_target"]["dt_proj"] == {"rank": 4, "ne_a": 24, "ne_b": 1, "dropout": 0.0}
    assert official_adapter_settings("vit", "lora")["targets"] == ("qkv",)
    assert official_adapter_settings("vit", "adaptformer")["placement"] == "official"
    with torch.device("meta"):
        default, small = create_backbone("vim-s", 10), create_backbone("vim-s", 10)
    apply_adapter(default, "lily")
    assert count_parameters(default)["adapter"] == 145_960
    assert dataclasses.asdict(default.adapter_config) == vim
    apply_adapter(small, "lily", variant="s")  # Lily-S: in_proj r=4 with 3 experts, dt_proj r=4
    assert count_parameters(small)["adapter"] == 24 * 384 * 4 + 3 * 4 * 1536 + 4 * 3 + 2 * (24 * 24 * 4 + 4 * 768)


def test_adapter_deviations():
    def resolved(family, **config):
        with torch.device("meta"):
            model = create_backbone("vit-b16-in21k" if family == "vit" else "vim-s", 10)
        cfg = apply_adapter(model, name, **config).adapter_config
        return json.loads(json.dumps(dataclasses.asdict(cfg)))  # as run.py stores it: lists

    for name in ("lily", "lora", "adaptformer", "linear"):
        for family in ("vit", "vim"):
            assert adapter_deviations(family, name, resolved(family)) == [], (family, name)
    name = "lily"
    assert adapter_deviations("vit", "lily", resolved("vit", routing="sample", rank=16)) == ["rank=16",
                                                                                            "routing=sample"]
    assert adapter_deviations("vim", "lily", resolved("vim", variant="s", ne_b=6)) == ["rank=4", "ne_b=6",
                                                                                      "variant=s"]
    assert adapter_deviations("vim", "lily", resolved("vim", per_target={"dt_proj": {"rank": 8}})) == [
        "dt_proj.rank=8"]
    name = "lora"
    assert adapter_deviations("vit", "lora", resolved("vit", variant="lily")) == [
        "variant=lily", "dropout=0.1", "dropout_position=after_a", "targets=q,v"]
    name = "adaptformer"
    assert adapter_deviations("vit", "adaptformer", resolved("vit", placement="paper")) == ["placement=paper"]
    with pytest.raises(UserError, match="unknown backbone family"):
        official_adapter_settings("cnn", "lily")
