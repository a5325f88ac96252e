"""apply_adapter on a tiny timm ViT: LoRA, AdaptFormer, linear, full; freezing, counting, merging."""

import pytest
import timm
import torch

from vtab_lily.adapters import ADAPTERS, apply_adapter, count_parameters, merge_lora, unmerge_lora
from vtab_lily.adapters.wrappers import AdaptedLinear
from vtab_lily.errors import UserError
from adapter_helpers import randomize_trainable, tiny_vit  # noqa: E402

C, DEPTH, CLASSES = 48, 4, 10


def images(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_registry_names():
    assert set(ADAPTERS) == {"lily", "lora", "adaptformer", "linear", "full", "bitfit", "ln-tune", "ssf",
                             "vpt-deep", "vpt-shallow", "dora", "repadapter", "houlsby", "pfeiffer", "convpass", "fact-tt", "fact-tk", "peft", "vim-partial", "affix",
                             "additional-scan"}


@pytest.mark.parametrize("name,config", [
    ("lily", {"rank": 4, "ne": 2}),
    ("lora", {"rank": 4, "targets": ("q", "k", "v", "proj", "fc1", "fc2")}),
    ("adaptformer", {"rank": 4}),
    ("linear", {}),
])
def test_fresh_adapter_equals_backbone_and_only_adapter_and_head_train(name, config):
    x = images()
    reference = tiny_vit()(x)
    model = apply_adapter(tiny_vit(), name, **config)
    out = model(x)
    assert torch.equal(out, reference)
    out.square().sum().backward()
    head = {id(p) for p in model.get_classifier().parameters()}
    adapter_names = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in head]
    assert (len(adapter_names) > 0) == (name != "linear")
    for n, p in model.named_parameters():
        if id(p) in head:
            assert p.requires_grad and p.grad is not None
        else:
            assert p.requires_grad == (n in adapter_names), n
            if not p.requires_grad:
                assert p.grad is None, n
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("patch_embed" in n for n in frozen) and any("base_layer" in n for n in frozen) == (name != "linear")
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["head"] == C * CLASSES + CLASSES
    assert counts["adapter"] + counts["head"] == counts["total"]


def test_full_trains_everything():
    model = apply_adapter(tiny_vit(), "full")
    assert all(p.requires_grad for p in model.parameters())
    counts = count_parameters(model)
    # papers print full fine-tuning's trainable backbone (85.8M on ViT-B/16) as its parameters
    assert counts["adapter"] == counts["total"] - counts["head"] == counts["backbone"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_adapters_change_outputs_once_trained():
    x = images()
    reference = tiny_vit()(x)
    for name, config in [("lora", {}), ("adaptformer", {"dropout": 0.0})]:
        model = apply_adapter(tiny_vit(), name, **config)
        randomize_trainable(model)
        assert not torch.allclose(model(x), reference), name


def test_lora_math_on_a_slice():
    model = apply_adapter(tiny_vit(), "lora", rank=2, alpha=6.0, targets=("v",))
    randomize_trainable(model)
    qkv = model.blocks[1].attn.qkv
    x = torch.randn(2, 5, C)
    delta = qkv.deltas["lora_v"]
    expected = qkv.base_layer(x)
    expected[..., 2 * C:] += 3.0 * (x @ delta.lora_A.weight.T @ delta.lora_B.weight.T)
    assert torch.allclose(qkv(x), expected, atol=1e-5)


def test_lora_counts_match_closed_form():
    r = 4
    model = apply_adapter(tiny_vit(), "lora", rank=r, targets=("q", "v", "fc1"))
    per_layer = 2 * r * (C + C) + r * (C + 4 * C)
    assert count_parameters(model)["adapter"] == DEPTH * per_layer


def test_paper_setting_counts_on_vit_b16():
    def vit_b():
        with torch.device("meta"):
            return timm.create_model("vit_base_patch16_224", pretrained=False)

    assert count_parameters(apply_adapter(vit_b(), "lora", rank=8, targets=("q", "v")))["adapter"] == 294_912
    assert count_parameters(apply_adapter(vit_b(), "adaptformer", rank=8))["adapter"] == 156_768
    assert count_parameters(apply_adapter(vit_b(), "linear"))["adapter"] == 0


def test_adaptformer_counts_and_math():
    r = 4
    model = apply_adapter(tiny_vit(), "adaptformer", rank=r, scale=0.5, dropout=0.0, placement="paper")
    assert count_parameters(model)["adapter"] == DEPTH * (2 * C * r + r + C)
    randomize_trainable(model)
    mlp = model.blocks[2].mlp
    x = torch.randn(2, 5, C)
    bottleneck = mlp.delta
    expected = mlp.base_layer(x) + 0.5 * bottleneck.up(torch.relu(bottleneck.down(x)))
    assert torch.allclose(mlp(x), expected, atol=1e-6)


def test_lora_merge_and_unmerge_are_exact():
    model = apply_adapter(tiny_vit(), "lora", rank=4, targets=("q", "v", "proj", "fc2"))
    randomize_trainable(model)
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    x = images()
    with torch.no_grad():
        unmerged = model(x)
        assert merge_lora(model) == 3 * DEPTH
        merged = model(x)
        assert any(not torch.equal(p, originals[n]) for n, p in model.named_parameters() if n in originals)
        assert unmerge_lora(model) == 3 * DEPTH
        again = model(x)
    assert torch.allclose(unmerged, merged, atol=1e-5)
    assert torch.equal(unmerged, again)
    for n, p in model.named_parameters():
        if n in originals:
            assert torch.equal(p, originals[n]), n


def test_merge_refuses_lily():
    model = apply_adapter(tiny_vit(), "lily", rank=2, ne=2, targets=("proj",))
    layer = model.blocks[0].attn.proj
    assert isinstance(layer, AdaptedLinear)
    with pytest.raises(TypeError, match="cannot be merged"):
        layer.merge()


def test_lora_dropout_only_in_training():
    model = apply_adapter(tiny_vit(), "lora", rank=4, dropout=0.5)
    randomize_trainable(model)
    x = images()
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    assert not torch.allclose(a, model(x))


@pytest.mark.parametrize("name,config,message", [
    ("lilly", {}, "did you mean 'lily'"),
    ("lora", {"rnk": 4}, "did you mean 'rank'"),
    ("lora", {"rank": 0}, "rank must be an integer >= 1"),
    ("lora", {"targets": ("mlp",)}, "unknown lora target"),
    ("lora", {"dropout": 1.5}, "dropout must be in"),
    ("adaptformer", {"scale": -1.0}, "scale must be >= 0"),
    ("linear", {"rank": 3}, "has no option 'rank'"),
    # an empty list is refused, never read as "unset" (the default targets / places)
    ("lora", {"targets": ()}, "lora: targets must name at least one"),
    ("lily", {"targets": ""}, "lily: targets must name at least one"),
    ("dora", {"targets": ()}, "dora: targets must name at least one"),
    ("houlsby", {"places": ()}, "places must name attn and/or mlp, got none"),
    ("pfeiffer", {"places": ()}, "places must name attn and/or mlp, got none"),
])
def test_bad_adapter_arguments(name, config, message):
    with pytest.raises(UserError, match=message):
        apply_adapter(tiny_vit(), name, **config)


def test_adapting_twice_is_refused():
    model = apply_adapter(tiny_vit(), "lora")
    with pytest.raises(UserError, match="already has adapter"):
        apply_adapter(model, "lily")


def test_targets_as_comma_string_and_resolved_config_recorded():
    model = apply_adapter(tiny_vit(), "lora", targets="q, v", rank=2)
    assert model.adapter_name == "lora"
    assert model.adapter_config.targets == ("q", "v") and model.adapter_config.alpha == 2.0


def test_adapters_follow_backbone_dtype():
    model = tiny_vit().double()
    apply_adapter(model, "lily", rank=2, ne=2)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(images().double()).dtype == torch.float64


def test_unknown_model_is_refused():
    with pytest.raises(UserError, match="cannot adapt a Linear"):
        apply_adapter(torch.nn.Linear(3, 3), "lora")
