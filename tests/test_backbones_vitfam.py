"""The timm ViT family beyond Google's ViT-B: ViT-L/16, DINOv2 B/14 + S/14, CLIP B/16, MAE B/16.

Each family's tiny config (same timm model function, 32 px) builds, takes Lily, LoRA and
AdaptFormer and trains a step; loads state dicts written here in the key layout of the family's
published file (timm's Hub safetensors; the original DINOv2 / OpenAI CLIP / MAE layouts timm
converts; Google's npz arrays for ViT-L); refuses files of another variant, patch size, or with
NaN. Full sizes are counted on the meta device against the published counts. The input
normalisation defaults to each backbone's recipe and shows in labels only when changed.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from test_backbones_checkpoint import _google_npz  # noqa: E402 - tests/ is on the path
from vtab_lily import run
from vtab_lily.adapters import apply_adapter, count_parameters
from vtab_lily.backbones import ALIASES, BACKBONES, NORMS, create_backbone, get_spec, input_stats
from vtab_lily.data.dataset import SplitData
from vtab_lily.errors import UserError
from vtab_lily.fetch import weights_source
from vtab_lily.runconfig import check_args
from vtab_lily.runspec import resolve

NEW = ("vit-l16-in21k", "dinov2-b14", "dinov2-s14", "clip-b16", "mae-b16")
TINY = {"vit-l16-in21k": "vit-tiny-test", "dinov2-b14": "dinov2-tiny-test", "dinov2-s14": "dinov2-tiny-test",
        "clip-b16": "clip-tiny-test", "mae-b16": "mae-tiny-test"}
# The timm model function of each family without its weights tag, and the published file's head:
# timm's CLIP file keeps OpenAI's 768->512 projection as ``head``; DINOv2 and MAE have none.
PUBLISHED_LAYOUT = {"dinov2-tiny-test": ("vit_small_patch14_dinov2", 0),
                    "clip-tiny-test": ("vit_base_patch16_clip_quickgelu_224", 12),
                    "mae-tiny-test": ("vit_base_patch16_224", 0)}
TINY_ARCH = {"patch_size": 4, "embed_dim": 48, "depth": 4, "num_heads": 3}
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=None)
def meta_build(name: str, img_size: int | None = None, pre_logits: bool = False) -> torch.nn.Module:
    with torch.device("meta"):
        return create_backbone(name, 2, img_size=img_size or get_spec(name).img_size, pre_logits=pre_logits)


def full_size_count(name: str) -> int:
    """Parameters without the head of ``name`` at its published resolution, built on meta."""
    model = meta_build(name, get_spec(name).pretrained_size)
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))


@pytest.mark.parametrize("name", NEW)
def test_full_size_count_is_the_published_one(name):
    # Sources in vit_specs.py: timm's model cards ("Params (M)", one decimal) and torchvision's
    # vit_l_16 less its head; tolerance: that rounding (0.05M).
    assert abs(full_size_count(name) / 1e6 - get_spec(name).params_m) <= 0.05, full_size_count(name)


def test_full_size_architectures_are_each_family_own():
    dino, clip, mae = meta_build("dinov2-b14"), meta_build("clip-b16"), meta_build("mae-b16")
    large = meta_build("vit-l16-in21k", pre_logits=True)
    assert dino.patch_embed.grid_size == (16, 16) and dino.pos_embed.shape == (1, 257, 768)  # 224 / 14
    assert isinstance(dino.blocks[0].ls1, timm.layers.LayerScale) and isinstance(mae.blocks[0].ls1, torch.nn.Identity)
    assert type(clip.blocks[0].mlp.act).__name__ == "QuickGELU" and isinstance(clip.norm_pre, torch.nn.LayerNorm)
    assert clip.patch_embed.proj.bias is None and clip.norm.eps == 1e-5
    assert (len(large.blocks), large.embed_dim, large.pre_logits.fc.weight.shape) == (24, 1024, (1024, 1024))
    for name in NEW:  # the declared patch is the model's
        assert meta_build(name).patch_embed.patch_size == (get_spec(name).patch_size,) * 2


def test_aliases_name_full_and_tiny_configs_of_one_family():
    for alias, full in (("vit-l", "vit-l16-in21k"), ("dinov2-b", "dinov2-b14"), ("dinov2-s", "dinov2-s14"),
                        ("clip-b", "clip-b16"), ("mae-b", "mae-b16")):
        assert ALIASES[alias][0] == full and ALIASES[alias][1] == TINY[full]
        tiny = BACKBONES[TINY[full]]
        assert tiny.test_only and tiny.norm == get_spec(full).norm and tiny.recipe_norm == get_spec(full).recipe_norm


def _train_step(model: torch.nn.Module) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    loss = torch.nn.functional.cross_entropy(model.train()(IMAGES), torch.tensor([0, 1]))
    loss.backward()
    torch.optim.AdamW(params, lr=1e-2).step()
    assert all(not torch.equal(b, p) for b, p in zip(before, params) if p.grad is not None and p.grad.any())
    assert sum(not torch.equal(b, p) for b, p in zip(before, params)) > 1  # the adapter moved, not only the head
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    return loss.item()


@pytest.mark.parametrize("adapter", ["lily", "lora", "adaptformer"])
@pytest.mark.parametrize("tiny", ["vit-tiny-test", "dinov2-tiny-test", "clip-tiny-test", "mae-tiny-test"])
def test_tiny_family_takes_the_adapter_and_trains_a_step(tiny, adapter):
    torch.manual_seed(0)
    model = apply_adapter(create_backbone(tiny, 2, img_size=None), adapter)
    counts = count_parameters(model)
    assert counts["adapter"] > 0 and counts["head"] == 48 * 2 + 2
    assert torch.isfinite(torch.tensor(_train_step(model)))


def test_adapters_sit_inside_layerscale_except_adaptformer():
    """On LayerScale blocks (DINOv2) an adapter at a sub-module (here Lily's mlp site) is scaled by
    the block's gamma like the sub-layer's own output; AdaptFormer adds to the residual outside it."""
    torch.manual_seed(0)
    bare = create_backbone("dinov2-tiny-test", 2, img_size=None).eval()
    with torch.no_grad():
        for block in bare.blocks:
            block.ls2.gamma.zero_()  # the MLP branch adds nothing
    changed = {}
    for adapter, options in (("lily", {"targets": ("mlp",)}), ("adaptformer", {})):
        model = apply_adapter(copy.deepcopy(bare), adapter, **options).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad and not name.startswith("head."):
                    p.normal_(0, 0.3)  # up projections start at zero: give them values
            changed[adapter] = not torch.allclose(model.forward_features(IMAGES), bare.forward_features(IMAGES))
    assert changed == {"lily": False, "adaptformer": True}


# ------------------------------------------------------------------------------ checkpoint layouts


def _published(tiny: str, img_size: int, seed: int = 1) -> torch.nn.Module:
    """A model built as the published file's (its timm function, head and resolution), perturbed."""
    name, head = PUBLISHED_LAYOUT[tiny]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=head, img_size=img_size, **TINY_ARCH)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _features(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().forward_head(model.forward_features(IMAGES), pre_logits=True)


@pytest.mark.parametrize("tiny", list(PUBLISHED_LAYOUT))
def test_timm_hub_layout_loads_and_computes_the_same(tmp_path, tiny):
    source = _published(tiny, img_size=32)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_backbone(tiny, 3, checkpoint=path, img_size=None)
    torch.testing.assert_close(_features(model), _features(source), rtol=1e-5, atol=1e-5)
    assert model.get_classifier().out_features == 3  # the file's head (CLIP's projection) is not used


def test_dinov2_position_table_is_resampled_from_the_file_resolution(tmp_path):
    source = _published("dinov2-tiny-test", img_size=40)  # a 10x10 table, as 518 px is 37x37 for the real one
    path = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_backbone("dinov2-tiny-test", 3, checkpoint=path, img_size=None)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 48)
    torch.testing.assert_close(model.pos_embed[:, 0], source.pos_embed[:, 0])  # the class entry is kept
    torch.testing.assert_close(model.blocks[1].ls2.gamma, source.blocks[1].ls2.gamma)


def test_original_dinov2_mae_and_openai_clip_layouts_load(tmp_path):
    dino = _published("dinov2-tiny-test", img_size=32)
    original = {**dino.state_dict(), "mask_token": torch.zeros(1, 48)}  # Meta's dinov2_vitb14_pretrain.pth
    torch.save(original, tmp_path / "dinov2.pth")
    loaded = create_backbone("dinov2-tiny-test", 3, checkpoint=tmp_path / "dinov2.pth", img_size=None)
    torch.testing.assert_close(_features(loaded), _features(dino), rtol=1e-5, atol=1e-5)

    mae = _published("mae-tiny-test", img_size=32)
    torch.save({"model": mae.state_dict()}, tmp_path / "mae_pretrain.pth")  # MAE's release wraps it in 'model'
    loaded = create_backbone("mae-tiny-test", 3, checkpoint=tmp_path / "mae_pretrain.pth", img_size=None)
    torch.testing.assert_close(_features(loaded), _features(mae), rtol=1e-5, atol=1e-5)

    clip = _published("clip-tiny-test", img_size=32)
    torch.save(_openai_visual(clip), tmp_path / "openai.pth")
    loaded = create_backbone("clip-tiny-test", 3, checkpoint=tmp_path / "openai.pth", img_size=None)
    torch.testing.assert_close(_features(loaded), _features(clip), rtol=1e-5, atol=1e-5)


def _openai_visual(model: torch.nn.Module) -> dict:
    """A timm CLIP tower in OpenAI's ``visual.*`` names (as OpenCLIP's state dicts hold them)."""
    sd = model.state_dict()
    out = {"visual.conv1.weight": sd["patch_embed.proj.weight"], "visual.class_embedding": sd["cls_token"][0, 0],
           "visual.positional_embedding": sd["pos_embed"][0], "visual.proj": sd["head.weight"].T.contiguous(),
           "visual.ln_pre.weight": sd["norm_pre.weight"], "visual.ln_pre.bias": sd["norm_pre.bias"],
           "visual.ln_post.weight": sd["norm.weight"], "visual.ln_post.bias": sd["norm.bias"]}
    for i in range(len(model.blocks)):
        b, o = f"blocks.{i}.", f"visual.transformer.resblocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv", "attn.in_proj"),
                             ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            sep = "_" if theirs == "attn.in_proj" else "."
            out[o + theirs + sep + "weight"] = sd[b + ours + ".weight"]
            out[o + theirs + sep + "bias"] = sd[b + ours + ".bias"]
    return out


def test_vit_l_npz_in_google_names_keeps_its_pre_logits(tmp_path):
    torch.manual_seed(1)
    source = create_backbone("vit-tiny-test", 7, img_size=None)  # ViT-L's tiny stand-in: same code path
    path = tmp_path / "ViT-L_16.npz"
    _google_npz(source, path, heads=3)  # Google's array names, with pre_logits/kernel and /bias
    spec = get_spec("vit-l16-in21k")
    assert spec.pre_logits and spec.checkpoint_file == "ViT-L_16.npz"
    model = create_backbone("vit-tiny-test", 3, checkpoint=path, img_size=None, pre_logits=True)
    assert model.pre_logits_kept and torch.equal(model.pre_logits.fc.weight, torch.ones(48, 48))
    torch.testing.assert_close(model.forward_features(IMAGES), source.eval().forward_features(IMAGES))
    setup = resolve(["--backbone", "vit-l", "--task", "dtd", "--out", str(tmp_path / "runs")])
    assert setup["pre_logits"] is True and setup["normalize"] is False and setup.deviations == ()  # as ViT-B's recipe


# ------------------------------------------------------------------------------ refusals


def _hub_file(tmp_path: Path, tiny: str, **changes) -> Path:
    state = {k: v.contiguous() for k, v in _published(tiny, img_size=32).state_dict().items()}
    state.update(changes)
    path = tmp_path / f"{tiny}.safetensors"
    save_file(state, str(path))
    return path


def test_a_file_of_another_variant_or_patch_is_refused(tmp_path):
    dino = _hub_file(tmp_path, "dinov2-tiny-test")
    with pytest.raises(UserError, match=r"dinov2-tiny-test\.safetensors: this checkpoint has LayerScale .* but "
                                        r"clip-tiny-test has a pre-block norm_pre"):
        create_backbone("clip-tiny-test", 3, checkpoint=dino, img_size=None)
    with pytest.raises(UserError, match="but mae-tiny-test has neither LayerScale nor norm_pre"):
        create_backbone("mae-tiny-test", 3, checkpoint=dino, img_size=None)
    npz = tmp_path / "ViT.npz"
    _google_npz(create_backbone("vit-tiny-test", 3, img_size=None), npz, heads=3)
    with pytest.raises(UserError, match=r"ViT\.npz: a Google ViT \.npz has neither .* but dinov2-tiny-test has "
                                        "LayerScale"):
        create_backbone("dinov2-tiny-test", 3, checkpoint=npz, img_size=None)
    torch.manual_seed(0)  # a patch-8 file is not resampled into a patch-4 model
    other = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32,
                              **{**TINY_ARCH, "patch_size": 8})
    save_file(other.state_dict(), str(tmp_path / "p8.safetensors"))
    with pytest.raises(UserError, match=r"p8\.safetensors: patch size \(8, 8\) in the file, mae-tiny-test has \(4, 4\)"):
        create_backbone("mae-tiny-test", 3, checkpoint=tmp_path / "p8.safetensors", img_size=None)


def test_nan_and_truncated_checkpoints_are_refused(tmp_path):
    bad = torch.zeros(1, 1, 48)
    bad[0, 0, 3] = float("nan")
    path = _hub_file(tmp_path, "mae-tiny-test", cls_token=bad)
    with pytest.raises(UserError, match=r"mae-tiny-test\.safetensors: cls_token holds non-finite values"):
        create_backbone("mae-tiny-test", 3, checkpoint=path, img_size=None)
    good = _hub_file(tmp_path, "clip-tiny-test")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.safetensors"):
        create_backbone("clip-tiny-test", 3, checkpoint=cut, img_size=None)


def test_img_size_off_the_patch_grid_and_unknown_normalisation_are_refused():
    with pytest.raises(UserError, match="--img-size 100 is not a multiple of dinov2-b14's patch size 14 "
                                        r"\(e.g. 98 or 112\)"):
        check_args(["--backbone", "dinov2-b", "--task", "dtd", "--img-size", "100"])
    with pytest.raises(UserError, match="multiple of dinov2-b14's patch size 14"):
        create_backbone("dinov2-b14", 2, img_size=100)
    with pytest.raises(UserError, match="--normalize 'imagenett': unknown normalisation .*did you mean 'imagenet'"):
        check_args(["--backbone", "clip-b", "--task", "dtd", "--normalize", "imagenett"])


# ------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("argv, recorded, deviations", [
    (["--backbone", "dinov2-b"], True, []),  # DINOv2: ImageNet's mean/std by default
    (["--backbone", "dinov2-s", "--no-normalize"], False, ["normalize=none"]),
    (["--backbone", "clip-b"], "clip", []),
    (["--backbone", "clip-b", "--normalize"], True, ["normalize=imagenet"]),  # --normalize alone: imagenet
    (["--backbone", "mae-b", "--normalize", "imagenet"], True, []),
    (["--backbone", "vit", "--normalize", "clip"], "clip", ["normalize=clip"]),
    (["--backbone", "vit", "--normalize", "none"], False, []),  # Google's ViT: none, as the official code
    (["--backbone", "vim", "--normalize", "inception"], "inception", ["normalize=inception"]),
])
def test_normalisation_defaults_to_the_backbone_recipe_and_labels_changes(tmp_path, argv, recorded, deviations):
    spec = resolve([*argv, "--task", "dtd", "--out", str(tmp_path)])
    assert spec["normalize"] == recorded and type(spec["normalize"]) is type(recorded)
    assert [d for d in spec.deviations if d.startswith("normalize")] == deviations
    assert all(d in spec.label for d in deviations) and ("normalize" in spec.label) == bool(deviations)


def test_split_data_standardises_with_the_named_mean_std():
    images = torch.tensor([[[[0]], [[128]], [[255]]]], dtype=torch.uint8)
    data = SplitData(images, torch.tensor([0]), normalize=input_stats("clip"))
    (mean, std) = NORMS["clip"]
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip((0, 128, 255), mean, std)])
    torch.testing.assert_close(data[0][0].flatten(), expected)
    assert input_stats(False) is False and input_stats(True) == NORMS["imagenet"]
    with pytest.raises(ValueError, match="3 finite values"):
        SplitData(images, torch.tensor([0]), normalize=((0.5, 0.5), (0.5, 0.5)))


def test_dry_run_shows_input_normalisation_size_and_patch(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "vtab_lily.run", "--backbone", "dinov2-b", "--task", "dtd",
                           "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("input to dinov2-b14:"))
    assert "normalisation imagenet (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225)" in line
    assert "224 px (weights pre-trained at 518), patch 14 (16x16 tokens)" in line
    setup = json.loads(done.stdout.split("\nparameters:")[0])
    assert setup["config"]["normalize"] is True and setup["deviations"] == []
    assert setup["params"]["backbone"] == full_size_count("dinov2-b14") - (1370 - 257) * 768  # 224 px table


def test_list_backbones_and_fetch_sources(capsys):
    assert run.main(["--list-backbones"]) == 0
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if x.startswith("clip-b16 "))
    for cell in ("clip-b", "vit", "224", "16", "clip", "85.8M", "vit_base_patch16_clip_224.openai.safetensors"):
        assert cell in row.split("  ") or cell in row
    assert "dinov2-b14: python -m vtab_lily.fetch weights dinov2-b14  (from https://huggingface.co/timm/" \
           "vit_base_patch14_dinov2.lvd142m/resolve/main/model.safetensors)" in out
    source = weights_source("mae-b")
    assert (source.repo_id, source.remote_file, source.file) == ("timm/vit_base_patch16_224.mae", "model.safetensors",
                                                                  "vit_base_patch16_224.mae.safetensors")
    assert weights_source("vit-l").url == "https://storage.googleapis.com/vit_models/imagenet21k/ViT-L_16.npz"


def test_sweep_reads_normalize_as_a_switch_or_a_name(tmp_path):
    from vtab_lily.sweep.plan import grid_trials
    from vtab_lily.sweep.spec import build_spec, load_toml

    path = tmp_path / "s.toml"
    path.write_text('backbone = "dinov2-b"\nadapter = "lily"\ntasks = "dtd"\n'
                    '[grid]\nnormalize = [true, false, "clip"]\n[run]\nepochs = 2\n')
    spec = build_spec(load_toml(path), str(path))
    argvs = [t.run_argv(spec, "runs") for t in grid_trials(spec, "dtd")]
    assert [a[a.index(flag):][:2] for a, flag in zip(argvs, ("--normalize", "--no-normalize", "--normalize"))] == [
        ["--normalize", "--epochs"], ["--no-normalize", "--epochs"], ["--normalize", "clip"]]
    path.write_text('backbone = "clip-b"\nadapter = "lily"\ntasks = "dtd"\n[grid]\nscale = [1]\n[run]\nnormalize = "inception"\n')
    assert build_spec(load_toml(path), str(path)).run_args == ["--normalize", "inception"]
    path.write_text('backbone = "clip-b"\nadapter = "lily"\ntasks = "dtd"\n[grid]\nscale = [1]\n[run]\nnormalize = 1\n')
    with pytest.raises(UserError, match="run.normalize: expected true or false, or a name"):
        build_spec(load_toml(path), str(path))
