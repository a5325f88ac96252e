"""Swin-B (family "swin"): the tiny config builds and trains with LoRA and AdaptFormer through the
runner's build, state dicts in timm's and Microsoft's key layouts load, the adapters Swin refuses
say so by name, and Swin-B's size on the meta device is the published 88M."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vtab_lily import backbones, run
from vtab_lily.adapters import ADAPTERS, apply_adapter, count_parameters, export_peft, load_peft
from vtab_lily.adapters.adaptformer import SwinBlockAdapter
from vtab_lily.adapters.support import REFUSED
from vtab_lily.adapters.targets import block_paths, resolve_sites
from vtab_lily.backbones import create_backbone
from vtab_lily.data import ensure_demo
from vtab_lily.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
WIDTHS = [16, 16, 32, 32, 64, 64, 128, 128]  # the tiny config's blocks: 4 stages of 2, width doubling


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "vtab-demo"
    ensure_demo(root)  # idempotent and lock-protected: shared by the test modules
    return root


def tiny(classes: int = 5, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone("swin-tiny-test", classes, img_size=kwargs.pop("img_size", None), **kwargs).eval()


def perturbed(seed: int = 1) -> torch.nn.Module:
    """A tiny Swin moved away from its init, so that a tensor left unloaded would show."""
    model = tiny(seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def features(model: torch.nn.Module, images: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(images), pre_logits=True)


def test_tiny_swin_has_the_family_contract():
    model = tiny()
    assert model.family == "swin" and backbones.backbone_family("swin-b") == "swin"
    assert model.depth == 8 and len(block_paths(model)) == 8
    assert block_paths(model)[:3] == ["layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0"]
    assert model.get_classifier().out_features == 5 and model.get_classifier().in_features == 128
    assert model(X).shape == (2, 5)
    assert backbones.resolve_backbone_name("swin-b") == "swin-b-in22k"
    assert backbones.resolve_backbone_name("swin-b", demo=True) == "swin-tiny-test"


def test_lora_sites_follow_the_stage_widths_and_train_only_adapter_and_head():
    reference = tiny()(X)
    model = apply_adapter(tiny(), "lora", variant="custom", targets="q,v,fc1")
    assert torch.equal(model(X), reference)  # B starts at zero
    sites = resolve_sites(model, ("q",))
    assert [s.in_features for s in sites] == WIDTHS and [s.out_features for s in sites] == WIDTHS
    assert [s.out_slice for s in sites][-1] == (0, 128)  # q: the first third of the fused qkv rows
    model(X).sum().backward()
    head = {id(p) for p in model.get_classifier().parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (".lora_" in name or id(p) in head), name
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    # the default is NOAH's LoRA, as on ViT: fused qkv, r=8 (alpha 8) at every block's own width
    noah = apply_adapter(tiny(), "lora")
    assert noah.adapter_config.variant == "noah" and noah.adapter_config.targets == ("qkv",)
    assert count_parameters(noah)["adapter"] == sum(8 * w + 3 * w * 8 for w in WIDTHS)


@pytest.mark.parametrize("placement", ["official", "paper"])
def test_adaptformer_sits_beside_each_swin_mlp_at_its_width(placement):
    reference = tiny()(X)
    model = apply_adapter(tiny(), "adaptformer", placement=placement)
    assert torch.equal(model(X), reference)  # up starts at zero
    downs = [m for n, m in model.named_modules() if n.endswith("delta.down")]
    assert [d.in_features for d in downs] == WIDTHS
    if placement == "official":
        assert all(isinstance(model.get_submodule(p), SwinBlockAdapter) for p in block_paths(model))


def test_official_adaptformer_reads_the_stream_after_attention_outside_drop_path():
    """The wrapper equals timm's block plus the bottleneck of the state between the block's two steps."""
    model = apply_adapter(tiny(), "adaptformer")
    wrapper = model.get_submodule("layers.1.blocks.1")  # a shifted-window block
    with torch.no_grad():
        for p in wrapper.delta.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 8, 8, 32)
    block = wrapper.base_layer
    between = x + block._attn(block.norm1(x))
    expected = block(x) + wrapper.delta(between)
    torch.testing.assert_close(wrapper(x), expected)


def test_a_training_step_through_the_runners_build(demo_root):
    argv = ["--demo", "--backbone", "swin-b", "--adapter", "lora", "--task", "colours", "--img-size", "16",
            "--data-root", str(demo_root), "--checkpoint", "none"]
    config, *_ = run.identify(run.check_args(argv))
    assert config["backbone"] == "swin-tiny-test"
    model = run.build_model(config, None).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]) % config["num_classes"]
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, trainable))


def test_lora_on_swin_round_trips_through_peft_files(tmp_path):
    model = apply_adapter(tiny(), "lora", variant="custom", targets="q,v,fc1")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.1)
    export_peft(model, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["attn.qkv", "mlp.fc1"]  # names inside a block, any stage
    (tmp_path / "lora" / "vtab_lily.json").unlink()  # read PEFT's own config, not our sidecar
    with torch.no_grad():
        torch.testing.assert_close(load_peft(tiny(), tmp_path / "lora")(X), model(X))


def test_a_peft_config_on_swin_splits_the_fused_qkv_in_every_stage(tmp_path):
    pytest.importorskip("peft")  # a test extra, as in test_peft_tuners.py
    config = tmp_path / "peft.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["q", "v"]}))
    model = apply_adapter(tiny(), "peft", config=str(config))
    assert torch.equal(model(X), tiny()(X))
    assert count_parameters(model)["adapter"] == sum(2 * (2 * 4 * w) for w in WIDTHS)


# ------------------------------------------------------------------------------ checkpoints


def test_a_state_dict_in_timms_layout_loads(tmp_path):
    source = perturbed()
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_backbone("swin-tiny-test", 3, checkpoint=path, img_size=None).eval()
    torch.testing.assert_close(features(model), features(source))
    assert model.get_classifier().out_features == 3  # the file's head is never used


def test_microsofts_original_layout_loads_too(tmp_path):
    """Merging at the end of a stage, ``head.*``, and the index/mask buffers the original files carry."""
    source = perturbed()
    state = {}
    for key, value in source.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        state[key.replace("head.fc.", "head.")] = value
    for name, buffer in source.named_buffers():
        state[name] = buffer
    assert "layers.0.downsample.reduction.weight" in state and any(k.endswith("attn_mask") for k in state)
    path = tmp_path / "swin_original.pth"
    torch.save({"model": state}, path)
    model = create_backbone("swin-tiny-test", 3, checkpoint=path, img_size=None).eval()
    torch.testing.assert_close(features(model), features(source))


def test_another_image_size_resamples_the_bias_tables(tmp_path):
    path = tmp_path / "swin.pth"
    torch.save(perturbed().state_dict(), path)
    model = create_backbone("swin-tiny-test", 3, checkpoint=path, img_size=16)  # patch grid 8: smaller windows
    table = model.get_submodule("layers.2.blocks.0.attn").relative_position_bias_table
    assert table.shape[0] == 3 * 3  # window 2 at the third stage's 2x2 grid, (2w-1)^2 entries
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)


def test_wrong_files_are_refused_naming_them(tmp_path):
    vit = tmp_path / "vit.pth"
    torch.save(create_backbone("vit-tiny-test", 3, img_size=None).state_dict(), vit)
    with pytest.raises(UserError, match=r"vit\.pth: this is a checkpoint for a ViT .* not for swin-tiny-test"):
        create_backbone("swin-tiny-test", 3, checkpoint=vit, img_size=None)
    swin = tmp_path / "swin.pth"
    torch.save(tiny().state_dict(), swin)
    for other in ("vit-tiny-test", "vim-tiny-test"):
        with pytest.raises(UserError, match=rf"swin\.pth: this is a checkpoint for a Swin .* not for {other}"):
            create_backbone(other, 3, checkpoint=swin, img_size=None)
    heads = tmp_path / "heads.pth"  # other head counts: the bias tables' shapes listed, nothing half-loaded
    state = {k: (v.repeat(1, 2) if k.endswith("relative_position_bias_table") else v)
             for k, v in tiny().state_dict().items()}
    torch.save(state, heads)
    with pytest.raises(UserError, match=r"heads\.pth: checkpoint does not fit swin-tiny-test: 8 with other shapes: "
                                        r"layers\.0\.blocks\.0\.attn\.relative_position_bias_table \[49, 2\] \(model: \[49, 1\]\)"):
        create_backbone("swin-tiny-test", 3, checkpoint=heads, img_size=None)
    deep = tmp_path / "deep.pth"  # a block more in the third stage (as Swin-S/B's 18 against Swin-T's 6)
    state = {**tiny().state_dict(), **{k.replace("blocks.1.", "blocks.2."): v for k, v in tiny().state_dict().items()
                                       if k.startswith("layers.2.blocks.1.")}}
    torch.save(state, deep)
    with pytest.raises(UserError, match=r"deep\.pth: checkpoint does not fit swin-tiny-test: the file has 1 more "
                                        r"blocks \(layers\.2\.blocks\.2\); swin-tiny-test has 8 blocks in stages of \[2, 2, 2, 2\]"):
        create_backbone("swin-tiny-test", 3, checkpoint=deep, img_size=None)
    patch = tmp_path / "patch.pth"  # patch 4, not 2: another variant, never resampled into this one
    state = tiny().state_dict()
    state["patch_embed.proj.weight"] = torch.zeros(16, 3, 4, 4)
    torch.save(state, patch)
    with pytest.raises(UserError, match=r"patch\.pth: patch size \(4, 4\) in the file, swin-tiny-test has \(2, 2\)"):
        create_backbone("swin-tiny-test", 3, checkpoint=patch, img_size=None)
    npz = tmp_path / "vit.npz"
    import numpy as np

    np.savez(npz, **{"Transformer/encoder_norm/scale": np.ones(4, np.float32)})
    with pytest.raises(UserError, match=r"vit\.npz: a Google \.npz \(ViT\) checkpoint; swin-tiny-test needs"):
        create_backbone("swin-tiny-test", 3, checkpoint=npz, img_size=None)


def test_bad_sizes_and_options_are_refused():
    with pytest.raises(UserError, match=r"img_size 33 must be a positive multiple of swin-tiny-test's patch size 2"):
        create_backbone("swin-tiny-test", 3, img_size=33)
    with pytest.raises(UserError, match=r"img_size 222 must be a positive multiple of swin-b-in22k's patch size 4"):
        with torch.device("meta"):
            create_backbone("swin-b", 3, img_size=222)
    with pytest.raises(UserError, match=r"pre_logits=True: swin-tiny-test \(swin\) has no pre-logits layer"):
        create_backbone("swin-tiny-test", 3, img_size=None, pre_logits=True)


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("adapter", sorted(REFUSED["swin"]))
def test_refused_adapters_name_the_backbone_and_the_adapter(adapter):
    with pytest.raises(UserError, match=rf"adapter '{adapter}' does not run on backbone swin-tiny-test \(Swin\): "
                                        r".+\. Adapters that run on Swin: lora, adaptformer, linear, full"):
        apply_adapter(tiny(), adapter)


@pytest.mark.parametrize("adapter", sorted(set(ADAPTERS) - set(REFUSED["swin"]) - {"peft"}))
def test_every_other_adapter_runs_on_swin(adapter):
    model = apply_adapter(tiny(), adapter)
    model.train()
    model(X).sum().backward()
    assert count_parameters(model)["total"] > count_parameters(model)["head"] or adapter == "linear"


def test_odd_targets_are_refused_with_the_swin_choices():
    with pytest.raises(UserError, match=r"unknown lora target for a swin backbone 'in_proj'.*choose from: fc1, fc2, k, proj, q, qkv, v"):
        apply_adapter(tiny(), "lora", targets="in_proj")
    with pytest.raises(UserError, match=r"lora: target 'qkv' overlaps \['q'\]"):
        apply_adapter(tiny(), "lora", variant="custom", targets="qkv,q")
    with pytest.raises(UserError, match=r"unknown lora target for a swin backbone 'mlp'"):
        apply_adapter(tiny(), "lora", variant="custom", targets="mlp")  # a parallel site, not a Linear


def test_the_docs_table_lists_what_swin_refuses():
    text = (REPO / "docs" / "backbones.md").read_text()
    section = text.split("## Swin-B", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| (runs|refused)", section, flags=re.M))
    assert set(rows) == set(ADAPTERS)
    assert {a for a, state in rows.items() if state == "refused"} == set(REFUSED["swin"])


# ------------------------------------------------------------------------------ size and the command line


def test_swin_b_has_the_published_size_on_the_meta_device():
    """The Swin paper's 88M (Table 1) counts the 1000-class ImageNet head: within its rounding (0.5M)."""
    spec = backbones.get_spec("swin-b")
    with torch.device("meta"):
        model = create_backbone("swin-b", spec.params_classes)
    total = sum(p.numel() for p in model.parameters())
    assert spec.params_classes == 1000 and abs(total / 1e6 - spec.params_m) < 0.5, total
    assert model.depth == 24 and [s.blocks[0].attn.qkv.in_features for s in model.layers] == [128, 256, 512, 1024]


def test_dry_run_of_the_full_size_backbone_shows_its_setup(dry_run_json):
    printed = dry_run_json("--backbone", "swin-b", "--adapter", "lora", "--task", "dtd")
    config = printed["config"]
    assert (config["backbone"], config["img_size"], config["lr"], config["drop_path"]) == ("swin-b-in22k", 224, 1e-3, 0.1)
    assert config["pretrained"] == backbones.get_spec("swin-b").checkpoint_file
    assert printed["params"]["backbone"] == 86_743_224 and printed["deviations"] == []


def test_the_users_command_trains_swin(demo_root, tmp_path):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "vtab_lily.run", "--backbone", "swin-b", "--adapter", "adaptformer", "--demo",
               "--task", "colours", "--epochs", "1", "--img-size", "16", "--batch-size", "100", "--no-tensorboard",
               "--data-root", str(demo_root), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    (result_file,) = out.rglob("result.json")
    result = json.loads(result_file.read_text())
    assert (result["backbone"], result["adapter"], result["status"]) == ("swin-tiny-test", "adaptformer", "complete")


def test_the_command_refuses_lily_on_swin_before_any_work(demo_root, tmp_path, capsys):
    argv = ["--backbone", "swin-b", "--demo", "--task", "colours", "--data-root", str(demo_root),
            "--out", str(tmp_path / "runs")]  # lily is the default adapter
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "adapter 'lily' does not run on backbone swin-tiny-test (Swin)" in err
    assert not (tmp_path / "runs").exists()
