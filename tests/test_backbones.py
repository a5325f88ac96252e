"""Registry, model contracts, and Vim's structure against a slow direct formulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vtab_lily.backbones import (
    ALIASES,
    BACKBONES,
    backbone_family,
    create_backbone,
    resolve_backbone_name,
)
from vtab_lily.backbones.scan import selective_scan_ref
from vtab_lily.errors import UserError

DATA = Path(__file__).parent / "data"
MIXER_LINEARS = ("in_proj", "x_proj", "x_proj_b", "dt_proj", "dt_proj_b", "out_proj")


def _official_vim_s_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (DATA / "vim_s_official_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            keys[name] = tuple(int(s) for s in shape.split(","))
    return keys


# ----------------------------------------------------------------------------- registry


def test_registry_names_families_and_aliases():
    assert {"vit-b16-in21k", "vit-b16-in1k", "vit-tiny-test", "vim-s", "vim-t", "vim-tiny-test"} <= set(BACKBONES)
    assert backbone_family("vit-b16-in21k") == "vit" and backbone_family("vim-s") == "vim"
    assert resolve_backbone_name("vit") == "vit-b16-in21k"
    assert resolve_backbone_name("vit", demo=True) == "vit-tiny-test"
    assert resolve_backbone_name("vim") == "vim-s"
    assert resolve_backbone_name("vim", demo=True) == "vim-tiny-test"
    assert resolve_backbone_name("vim-t") == "vim-t"
    assert resolve_backbone_name("vim-t", demo=True) == "vim-tiny-test"  # vim-t is also an alias (round 4)
    assert resolve_backbone_name("vit-b16-in21k", demo=True) == "vit-b16-in21k"  # a full name stays itself
    assert {"vit", "vim", "vim-t", "vim-b", "swin-b"} <= set(ALIASES)
    assert BACKBONES["vit-b16-in21k"].arch["timm_name"] == "vit_base_patch16_224.orig_in21k"
    assert BACKBONES["vim-s"].checkpoint_file == "vim_s_midclstok_80p5acc.pth"


def test_unknown_name_suggests():
    with pytest.raises(UserError, match=r"did you mean 'vim-s'"):
        resolve_backbone_name("vim-ss")
    with pytest.raises(UserError, match="unknown backbone"):
        create_backbone("resnet50", 10)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="num_classes"):
        create_backbone("vit-tiny-test", 0, img_size=None)
    with pytest.raises(UserError, match="multiple of"):
        create_backbone("vim-tiny-test", 3, img_size=30)
    with pytest.raises(UserError, match="drop_path"):
        create_backbone("vim-tiny-test", 3, img_size=None, drop_path=1.5)


# ----------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("name", ["vit-tiny-test", "vim-tiny-test"])
def test_tiny_forward_backward_and_attributes(name):
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=5, img_size=None, drop_path=0.1)
    assert model.family == backbone_family(name)
    assert model.depth == 4
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 5
    model.train()
    logits = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 5)
    F.cross_entropy(logits, torch.tensor([0, 1, 4])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_vit_is_timm_vision_transformer_with_contract_modules():
    from timm.models.vision_transformer import VisionTransformer

    model = create_backbone("vit-tiny-test", 4, img_size=None)
    assert isinstance(model, VisionTransformer)
    block = model.blocks[0]
    for module in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        assert isinstance(module, nn.Linear)
    assert model.patch_embed.grid_size == (8, 8) and model.embed_dim == 48


def test_default_drop_path_comes_from_the_recipe():
    model = create_backbone("vim-tiny-test", 3, img_size=None)
    assert all(isinstance(layer.drop_path, nn.Identity) for layer in model.layers)  # test config: 0
    model = create_backbone("vim-tiny-test", 3, img_size=None, drop_path=0.3)
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.layers]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)


def test_vim_s_state_dict_equals_official_layout():
    with torch.device("meta"):
        model = create_backbone("vim-s", 1000)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_vim_s_keys()
    assert len(official) == 415
    assert ours == official
    assert model.depth == 24 and model.cls_position == 98
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(25.8e6, rel=0.01)


def test_vim_t_shapes():
    with torch.device("meta"):
        model = create_backbone("vim-t", 1000)
    sd = model.state_dict()
    assert len(sd) == 415
    assert tuple(sd["layers.0.mixer.in_proj.weight"].shape) == (768, 192)
    assert tuple(sd["layers.0.mixer.x_proj.weight"].shape) == (12 + 32, 384)


def test_mixer_projections_are_linears_called_as_modules():
    """Adapters wrap these by name: replacing a module must change what forward computes."""
    torch.manual_seed(0)
    model = create_backbone("vim-tiny-test", 3, img_size=None).eval()
    mixer = model.layers[1].mixer
    assert all(type(getattr(mixer, n)) is nn.Linear for n in MIXER_LINEARS)
    assert isinstance(mixer.conv1d, nn.Conv1d) and isinstance(mixer.conv1d_b, nn.Conv1d)
    assert mixer.conv1d.groups == mixer.d_inner and mixer.conv1d.padding == (mixer.d_conv - 1,)
    x = torch.randn(2, 3, 32, 32)
    calls = []
    hooks = [getattr(mixer, n).register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n in MIXER_LINEARS]
    with torch.no_grad():
        base = model(x)
    for h in hooks:
        h.remove()
    assert sorted(calls) == sorted(MIXER_LINEARS)
    # The dt_proj bias goes through the module call: a hook shifting dt_proj's output
    # (as an adapter on dt_proj would) changes the logits.
    handle = mixer.dt_proj_b.register_forward_hook(lambda m, i, o: o + 1.0)
    with torch.no_grad():
        shifted = model(x)
    handle.remove()
    assert not torch.allclose(base, shifted)


# ------------------------------------------------------ Vim against a slow direct version


def _slow_direction(mixer, x, conv, x_proj, dt_proj, A_log, D):
    """One scan direction written out: x (b, L, E) -> y (b, L, E), no gating."""
    batch, length, _ = x.shape
    w = conv.weight[:, 0, :]
    k = w.shape[1]
    conv_out = []
    for t in range(length):
        acc = conv.bias.expand(batch, -1)
        for j in range(k):
            if t - (k - 1) + j >= 0:
                acc = acc + w[:, j] * x[:, t - (k - 1) + j]
        conv_out.append(acc)
    u = F.silu(torch.stack(conv_out, dim=1))
    proj = u @ x_proj.weight.T
    dt, B, C = proj.split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = F.softplus(dt @ dt_proj.weight.T + dt_proj.bias)
    y = selective_scan_ref(u.transpose(1, 2), delta.transpose(1, 2), -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2), D)
    return y.transpose(1, 2)


def _slow_mixer(mixer, hidden):
    xz = hidden @ mixer.in_proj.weight.T
    x, z = xz.chunk(2, dim=-1)
    y_fwd = _slow_direction(mixer, x, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
    y_bwd = _slow_direction(mixer, x.flip(1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b)
    y = (y_fwd * F.silu(z) + (y_bwd * F.silu(z.flip(1))).flip(1)) / 2
    return y @ mixer.out_proj.weight.T


def _rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight


def _randomise(model):
    """Non-trivial values everywhere (D, biases, norms), so every path matters."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name:
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 0.5)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def test_mixer_matches_slow_per_direction_formulation():
    torch.manual_seed(0)
    model = create_backbone("vim-tiny-test", 3, img_size=None)
    _randomise(model)
    mixer = model.layers[0].mixer
    hidden = torch.randn(2, 13, model.embed_dim)
    torch.testing.assert_close(mixer(hidden), _slow_mixer(mixer, hidden), rtol=1e-4, atol=1e-5)


def test_forward_matches_slow_model_with_middle_cls_token():
    torch.manual_seed(0)
    model = create_backbone("vim-tiny-test", 3, img_size=None).eval()
    _randomise(model)
    images = torch.randn(2, 3, 32, 32)
    patches = F.conv2d(images, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=4)
    patches = patches.flatten(2).transpose(1, 2)  # (b, 64, D)
    assert model.cls_position == 32  # 64 patches -> the cls token sits at index 32
    cls = model.cls_token.expand(2, -1, -1)
    seq = torch.cat([patches[:, :32], cls, patches[:, 32:]], dim=1) + model.pos_embed
    for layer in model.layers:
        seq = seq + _slow_mixer(layer.mixer, _rms(seq, layer.norm.weight))
    features = _rms(seq, model.norm_f.weight)[:, 32]
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), features, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(images), model.head(features), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_forward_runs():
    model = create_backbone("vim-tiny-test", 3, img_size=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_wrong_input_size_is_explained():
    model = create_backbone("vim-tiny-test", 3, img_size=None)
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.randn(1, 3, 64, 64))


# ----------------------------------------------------------------------------- head init


@pytest.mark.parametrize("with_weights", [False, True])
def test_vit_head_is_a_fresh_default_linear_with_or_without_weights(tmp_path, with_weights):
    """The official recipe resets the classifier (a new nn.Linear) after loading; a random-init
    build (the demo) must get the same head, not timm's trunc_normal(0.02) init with a zero bias."""
    from vtab_lily.backbones.vit import build_vit

    weights = None
    if with_weights:
        weights = tmp_path / "vit.pth"
        torch.save(create_backbone("vit-tiny-test", num_classes=3, img_size=None).state_dict(), weights)
    torch.manual_seed(7)
    model = create_backbone("vit-tiny-test", num_classes=6, checkpoint=weights, img_size=None)
    torch.manual_seed(7)
    build_vit(BACKBONES["vit-tiny-test"], 6, 32, 0.0)  # the same draws as the backbone's own init
    expected = nn.Linear(48, 6)
    head = model.get_classifier()
    assert torch.equal(head.weight, expected.weight) and torch.equal(head.bias, expected.bias)
    bound = 48 ** -0.5  # PyTorch's default: uniform +-1/sqrt(fan_in), weight and bias
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    assert head.weight.std() > 0.05 and head.bias.abs().min() > 0  # not timm's std 0.02 / zero bias


def test_vim_head_keeps_the_official_vim_init_with_or_without_weights(tmp_path):
    """The official Vim code keeps the model's own head init (trunc_normal 0.02, zero bias) and
    drops the checkpoint's head: both paths give that distribution."""
    weights = tmp_path / "vim.pth"
    torch.save(create_backbone("vim-tiny-test", num_classes=3, img_size=None).state_dict(), weights)
    heads = [create_backbone("vim-tiny-test", num_classes=500, checkpoint=w, img_size=None).get_classifier()
             for w in (None, weights)]
    for head in heads:
        assert torch.equal(head.bias, torch.zeros_like(head.bias))
        assert 0.015 < float(head.weight.std()) < 0.025
