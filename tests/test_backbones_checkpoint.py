"""Loading pretrained weights: official layouts, formats, safety, errors, resizing."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from vtab_lily.backbones import create_backbone
from vtab_lily.backbones.vim import resize_pos_embed
from vtab_lily.errors import UserError

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _features(model, images=IMAGES):
    model.eval()
    with torch.no_grad():
        if model.family == "vit":
            return model.forward_head(model.forward_features(images), pre_logits=True)
        return model.forward_features(images)


def _pretrained(name, num_classes=7, seed=1):
    torch.manual_seed(seed)
    model = create_backbone(name, num_classes, img_size=None)
    with torch.no_grad():  # move away from init so a skipped tensor would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _save_official_vim(model, path, **save_kwargs):
    """Wrapped as the official Vim release: {'model': state_dict, 'args': Namespace, ...}."""
    args = argparse.Namespace(model="vim_small_patch16_224_bimambav2", lr=5e-4, epochs=300)
    torch.save({"model": model.state_dict(), "args": args, "epoch": 299}, path, **save_kwargs)


# ------------------------------------------------------------------------------ Vim


@pytest.mark.parametrize("legacy", [False, True])
def test_official_vim_layout_loads_strictly_and_matches(tmp_path, legacy):
    source = _pretrained("vim-tiny-test")
    path = tmp_path / "vim.pth"
    _save_official_vim(source, path, **({"_use_new_zipfile_serialization": False} if legacy else {}))
    # the file's state dict (head included) loads strictly into our module
    fresh = create_backbone("vim-tiny-test", 7, img_size=None)
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(path, weights_only=True)["model"]
    assert fresh.load_state_dict(state, strict=True).missing_keys == []
    # through the factory: identical features, a fresh head of the requested size
    model = create_backbone("vim-tiny-test", 3, checkpoint=path, img_size=None)
    torch.testing.assert_close(_features(model), _features(source))
    assert model.get_classifier().out_features == 3


def test_vim_head_is_reset_even_when_sizes_match(tmp_path):
    source = _pretrained("vim-tiny-test", num_classes=3)
    path = tmp_path / "vim.pth"
    _save_official_vim(source, path)
    model = create_backbone("vim-tiny-test", 3, checkpoint=path, img_size=None)
    assert not torch.equal(model.head.weight, source.head.weight)
    torch.testing.assert_close(model.head.bias, torch.zeros(3))


def test_vim_safetensors_loads(tmp_path):
    source = _pretrained("vim-tiny-test")
    path = tmp_path / "vim.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_backbone("vim-tiny-test", 3, checkpoint=path, img_size=None)
    torch.testing.assert_close(_features(model), _features(source))


def test_vim_pos_embed_interpolation_keeps_cls_in_the_middle(tmp_path):
    source = _pretrained("vim-tiny-test")
    path = tmp_path / "vim.pth"
    _save_official_vim(source, path)
    model = create_backbone("vim-tiny-test", 3, checkpoint=path, img_size=48)
    old = source.pos_embed.detach()  # (1, 65, D): 8x8 grid, cls at 32
    new = model.pos_embed.detach()  # (1, 145, D): 12x12 grid, cls at 72
    assert new.shape == (1, 145, old.shape[-1]) and model.cls_position == 72
    torch.testing.assert_close(new[:, 72], old[:, 32])
    old_grid = torch.cat([old[:, :32], old[:, 33:]], dim=1)
    expected_grid = resample_abs_pos_embed(old_grid, new_size=[12, 12], old_size=[8, 8], num_prefix_tokens=0)
    torch.testing.assert_close(torch.cat([new[:, :72], new[:, 73:]], dim=1), expected_grid)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3)
    # same grid: unchanged
    assert resize_pos_embed(old, (8, 8)) is old


def test_vim_missing_and_mismatched_keys_are_listed(tmp_path):
    state = _pretrained("vim-tiny-test").state_dict()
    del state["layers.1.mixer.D_b"]
    state["layers.0.mixer.x_proj.weight"] = torch.zeros(5, 64)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(UserError) as err:
        create_backbone("vim-tiny-test", 3, checkpoint=path, img_size=None)
    message = str(err.value)
    assert str(path) in message
    assert "1 missing: layers.1.mixer.D_b" in message
    assert "1 unexpected: extra.weight" in message
    assert "layers.0.mixer.x_proj.weight [5, 64] (model: [" in message


def test_vim_t_checkpoint_into_tiny_config_lists_shapes(tmp_path):
    state = create_backbone("vim-t", 10).state_dict()
    path = tmp_path / "vim_t.pth"
    torch.save({"model": state}, path)
    pattern = r"340 unexpected: layers\.4\..*; 73 with other shapes: cls_token \[1, 1, 192\] \(model: \[1, 1, 32\]\)"
    with pytest.raises(UserError, match=pattern):
        create_backbone("vim-tiny-test", 3, checkpoint=path, img_size=None)


# ------------------------------------------------------------------------------ safety


class _Payload:
    """Unpickling this calls open(marker, 'w'): a file appears if the pickle ever runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("name", ["vim-tiny-test", "vit-tiny-test"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, legacy, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = create_backbone(name, 3, img_size=None).state_dict()
    kwargs = {"_use_new_zipfile_serialization": False} if legacy else {}
    torch.save({"model": state, "args": _Payload(marker)}, path, **kwargs)
    with pytest.raises(UserError, match="refused to unpickle") as err:
        create_backbone(name, 3, checkpoint=path, img_size=None)
    assert str(path) in str(err.value)
    assert not marker.exists()
    # the payload is real: an unrestricted load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=2))
    with pytest.raises(UserError, match="refused to unpickle"):
        create_backbone("vim-tiny-test", 3, checkpoint=path, img_size=None)
    assert not marker.exists()


# ------------------------------------------------------------------------------ bad files


def test_missing_text_and_wrong_family_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_backbone("vim-tiny-test", 3, checkpoint=tmp_path / "nope.pth", img_size=None)
    text = tmp_path / "weights.pth"
    text.write_text("these are not weights\n")
    for name in ("vim-tiny-test", "vit-tiny-test"):
        with pytest.raises(UserError, match=r"weights\.pth: not a checkpoint"):
            create_backbone(name, 3, checkpoint=text, img_size=None)
    vit_path = tmp_path / "vit.pth"
    torch.save(create_backbone("vit-tiny-test", 3, img_size=None).state_dict(), vit_path)
    with pytest.raises(UserError, match=r"vit\.pth: this is a checkpoint for a ViT .* not for vim-tiny-test"):
        create_backbone("vim-tiny-test", 3, checkpoint=vit_path, img_size=None)
    vim_path = tmp_path / "vim.pth"
    _save_official_vim(create_backbone("vim-tiny-test", 3, img_size=None), vim_path)
    with pytest.raises(UserError, match=r"vim\.pth: this is a checkpoint for a Vision Mamba .* not for vit-tiny-test"):
        create_backbone("vit-tiny-test", 3, checkpoint=vim_path, img_size=None)
    npz = tmp_path / "ViT.npz"
    np.savez(npz, **{"embedding/kernel": np.zeros((4, 4, 3, 48), np.float32)})
    with pytest.raises(UserError, match=r"ViT\.npz: a Google \.npz \(ViT\) checkpoint"):
        create_backbone("vim-tiny-test", 3, checkpoint=npz, img_size=None)
    with pytest.raises(UserError, match=r"ViT\.npz: not a Google ViT \.npz for vit-tiny-test: array .* is missing"):
        create_backbone("vit-tiny-test", 3, checkpoint=npz, img_size=None)


# ------------------------------------------------------------------------------ ViT


def _google_npz(model, path, heads):
    """Write a timm ViT in the layout of Google's ViT-B_16.npz (JAX names, HWIO / in-out kernels)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = sd["cls_token"].shape[-1]
    hd = dim // heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
        # Google's in21k file has a pre-logits layer; timm 1.x ignores it (see README)
        "pre_logits/kernel": np.ones((dim, dim), np.float32),
        "pre_logits/bias": np.ones(dim, np.float32),
    }
    for i in range(len(model.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            w[f"{p}MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_w[j * dim : (j + 1) * dim].T.reshape(dim, heads, hd)
            w[f"{p}MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j * dim : (j + 1) * dim].reshape(heads, hd)
        proj = sd[b + "attn.proj.weight"].reshape(dim, heads, hd)
        w[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = proj.transpose(1, 2, 0)
        w[f"{p}MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = sd[b + name + ".weight"], sd[b + name + ".bias"]
        for r in range(2):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_vit_google_npz_loads_through_timm_reader(tmp_path, monkeypatch):
    import timm.models.vision_transformer as tvit

    source = _pretrained("vit-tiny-test")
    path = tmp_path / "ViT-T_4.npz"
    _google_npz(source, path, heads=3)
    calls = []
    original = tvit._load_weights
    monkeypatch.setattr(tvit, "_load_weights", lambda *a, **k: (calls.append(a[1]), original(*a, **k))[1])
    model = create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None)
    assert calls == [str(path)]  # timm's npz reader did the reading
    torch.testing.assert_close(_features(model), _features(source), rtol=1e-5, atol=1e-5)
    assert model.get_classifier().out_features == 3


def test_vit_npz_resizes_position_embedding(tmp_path):
    source = _pretrained("vit-tiny-test")
    path = tmp_path / "vit.npz"
    _google_npz(source, path, heads=3)
    model = create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=48)
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 48)
    torch.testing.assert_close(model.pos_embed[:, 0], source.pos_embed[:, 0].detach())  # cls entry kept
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vit_pth_and_safetensors_load(tmp_path, fmt):
    source = _pretrained("vit-tiny-test")
    path = tmp_path / f"vit.{fmt}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if fmt == "pth":
        torch.save({"model": state, "args": argparse.Namespace(lr=1e-3)}, path)
    else:
        save_file(state, str(path))
    model = create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None)
    torch.testing.assert_close(_features(model), _features(source))
    assert model.get_classifier().out_features == 3
    resized = create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=40)
    assert resized.pos_embed.shape == (1, 1 + 10 * 10, 48)


def test_vit_missing_keys_are_listed(tmp_path):
    state = _pretrained("vit-tiny-test").state_dict()
    del state["blocks.2.mlp.fc1.bias"]
    state["blocks.0.attn.proj.weight"] = torch.zeros(48, 40)
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None)
    assert "1 missing: blocks.2.mlp.fc1.bias" in str(err.value)
    assert "blocks.0.attn.proj.weight [48, 40] (model: [48, 48])" in str(err.value)


def test_timm_never_fetches_weights(tmp_path, monkeypatch):
    """Building and loading go through local files only: timm's downloaders must not run."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("timm tried to fetch pretrained weights")

    for name in ("load_pretrained", "load_custom_pretrained", "download_cached_file", "load_state_dict_from_url",
                 "load_state_dict_from_hf"):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, refuse)
    source = _pretrained("vit-tiny-test")
    path = tmp_path / "vit.npz"
    _google_npz(source, path, heads=3)
    create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None)
    with torch.device("meta"):
        model = create_backbone("vit-b16-in21k", 10)
    assert model.depth == 12 and model.get_classifier().out_features == 10
