"""PEFT on-disk format: our exports load in the ``peft`` package with equal logits, and back."""

import json

import pytest
import torch

peft = pytest.importorskip("peft")  # a test extra (pyproject [test]); installed on this machine

from vtab_lily.adapters import apply_adapter, export_peft, load_peft  # noqa: E402
from vtab_lily.errors import UserError  # noqa: E402
from adapter_helpers import randomize_trainable, tiny_vit  # noqa: E402


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))

EXPORTABLE = [
    ("lora", {"rank": 4, "alpha": 6.0, "targets": ("q", "v", "fc1")}),  # q/v slices -> one qkv LoRA
    ("lora", {"rank": 3, "targets": ("qkv", "proj")}),
    ("lily", {"rank": 4, "ne_a": 2, "ne_b": 3, "scale": 0.5, "routing": "batch", "targets": ("qkv", "proj", "fc2")}),
    ("lily", {"rank": 2, "ne_a": 4, "ne_b": 2, "routing": "batch", "targets": ("fc1",)}),
    ("lily", {"rank": 2, "ne_a": 3, "ne_b": 2, "routing": "batch", "targets": ("fc1",)}),  # 4 // 3: stride_A 1
]


@pytest.mark.parametrize("name,config", EXPORTABLE)
def test_export_loads_in_peft_with_equal_logits_and_round_trips(tmp_path, name, config):
    model = apply_adapter(tiny_vit(), name, **config)
    randomize_trainable(model)
    with torch.no_grad():
        ours = model(X)
        export_peft(model, tmp_path)
        peft_model = peft.PeftModel.from_pretrained(tiny_vit(), str(tmp_path))
        assert torch.allclose(peft_model(X), ours, atol=1e-5)
        back = load_peft(tiny_vit(), tmp_path)
        assert torch.equal(back(X), ours)
        # Without our sidecar the PEFT config alone must describe the same function.
        (tmp_path / "vtab_lily.json").unlink()
        assert torch.allclose(load_peft(tiny_vit(), tmp_path)(X), ours, atol=1e-5)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == name.upper() and saved["modules_to_save"] == ["head"]


def test_shared_lily_tensors_are_written_per_layer_and_stay_shared(tmp_path):
    model = apply_adapter(tiny_vit(), "lily", rank=2, ne_a=2, ne_b=2, routing="batch", targets=("proj",))
    randomize_trainable(model)
    export_peft(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["stride_A"], config["num_B"], config["r"]) == (2, 2, 2)
    back = load_peft(tiny_vit(), tmp_path)
    deltas = [blk.attn.proj.deltas["lily_proj"] for blk in back.blocks]
    assert deltas[0].lily_A is deltas[1].lily_A and deltas[1].lily_A is not deltas[2].lily_A
    assert len({id(d.lily_B) for d in deltas}) == 1
    # A file whose "shared" copies disagree cannot be loaded into shared tensors.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    weights["base_model.model.blocks.1.attn.proj.lily_A.weight"] += 1.0
    save_file(weights, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="blocks.1.attn.proj.lily_A.weight differs .* share it"):
        load_peft(tiny_vit(), tmp_path)


def test_adapter_saved_by_peft_loads_into_ours(tmp_path):
    """The reverse direction against PEFT's own writer (LoRA and Lily)."""
    configs = [
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc2"], modules_to_save=["head"]),
        peft.LilyConfig(r=4, stride_A=2, num_B=3, scaling=2.0, target_modules=["attn.proj", "mlp.fc1"],
                        modules_to_save=["head"]),
    ]
    for i, config in enumerate(configs):
        peft_model = peft.get_peft_model(tiny_vit(), config)
        randomize_trainable(peft_model, seed=5)
        folder = tmp_path / str(i)
        peft_model.save_pretrained(str(folder))
        with torch.no_grad():
            expected = peft_model(X)
            assert torch.allclose(load_peft(tiny_vit(), folder)(X), expected, atol=1e-5)


def test_peft_stride_read_as_the_official_grouping_or_else_balanced(tmp_path):
    """stride_A=2 over 4 layers is the default grouping (ne_a=2); stride_A=3 over 5 layers (3, 2)
    only ``balanced`` expresses; stride_A=3 over 4 layers (3, 1) neither."""
    for depth, stride, expected in ((4, 2, {"ne_a": 2, "a_grouping": "stride"}),
                                    (5, 3, {"ne_a": 2, "a_grouping": "balanced"}), (4, 3, None)):
        peft_model = peft.get_peft_model(tiny_vit(depth), peft.LilyConfig(
            r=2, stride_A=stride, num_B=2, target_modules=["mlp.fc1"], modules_to_save=["head"]))
        randomize_trainable(peft_model, seed=5)
        folder = tmp_path / f"{depth}-{stride}"
        peft_model.save_pretrained(str(folder))
        if expected is None:
            with pytest.raises(UserError, match="stride_A=3 over 4 layers"):
                load_peft(tiny_vit(depth), folder)
            continue
        ours = load_peft(tiny_vit(depth), folder)
        assert {k: getattr(ours.adapter_config, k) for k in expected} == expected
        with torch.no_grad():
            assert torch.allclose(ours(X), peft_model(X), atol=1e-5)


@pytest.mark.parametrize("name,config,message", [
    ("lily", {"rank": 2, "ne": 2, "routing": "sample", "targets": ("proj",)}, "routing is 'sample'"),
    ("lily", {"rank": 2, "ne": 2, "routing": "batch", "router": "single", "targets": ("proj",)}, "router is 'single'"),
    ("lily", {"rank": 2, "ne": 2, "routing": "batch", "targets": ("k", "mlp")}, "not whole nn.Linear"),
    ("lily", {"rank": 2, "ne_a": 3, "ne_b": 2, "routing": "batch", "targets": ("proj",), "a_grouping": "balanced"},
     "stride_A"),  # 2, 1, 1
    ("lily", {"rank": 2, "ne_a": 2, "ne_b": 1, "routing": "batch", "targets": ("proj",)}, "ne_b >= 2"),
    ("lily", {"rank": 2, "ne": 2, "routing": "batch", "targets": ("proj", "fc1"),
              "per_target": {"fc1": {"rank": 3}}}, "differ in rank"),
    ("adaptformer", {}, "only LoRA and Lily"),
])
def test_inexpressible_configs_are_refused(tmp_path, name, config, message):
    model = apply_adapter(tiny_vit(), name, **config)
    with pytest.raises(UserError, match=message):
        export_peft(model, tmp_path)


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing"):
        load_peft(tiny_vit(), tmp_path)
    model = apply_adapter(tiny_vit(), "lora", rank=2)
    export_peft(model, tmp_path)
    with pytest.raises(UserError, match="shape"):
        load_peft(tiny_vit(classes=5), tmp_path)  # head size differs
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(UserError, match="adapter_config.json:1: invalid JSON"):
        load_peft(tiny_vit(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(UserError, match="IA3"):
        load_peft(tiny_vit(), tmp_path)
