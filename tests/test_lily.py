"""Lily on a tiny timm ViT: exactness of Eq. 3, routing semantics, sharing, validation."""

import itertools

import pytest
import timm
import torch

from vtab_lily.adapters import (
    apply_adapter,
    adapter_deviations,
    balanced_groups,
    count_parameters,
    lily_router_weights,
    recorded_config,
    reset_router_weights,
    set_lily_naive,
)
from vtab_lily.adapters.lily import LilyDelta, a_groups
from vtab_lily.errors import UserError
from adapter_helpers import randomize_trainable, tiny_vit  # noqa: E402

ALL_VIT_TARGETS = ("q", "k", "v", "proj", "fc1", "fc2", "mlp")


def images(n: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def lily_vit(**config) -> torch.nn.Module:
    model = apply_adapter(tiny_vit(), "lily", **{"rank": 4, "ne": 2, **config})
    randomize_trainable(model)
    return model


def outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads


@pytest.mark.parametrize("routing,router",
                         itertools.product(["token", "sample", "eq2", "batch"], ["per_site", "single", "none"]))
def test_efficient_equals_naive_mixture(routing, router):
    model = lily_vit(targets=ALL_VIT_TARGETS, routing=routing, router=router, ne_b=3).double()
    x = images().double()
    fast_out, fast_grads = outputs_and_grads(model, x)
    set_lily_naive(model, True)
    slow_out, slow_grads = outputs_and_grads(model, x)
    assert torch.allclose(fast_out, slow_out, rtol=1e-10, atol=1e-10)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        assert torch.allclose(fast_grads[name], slow_grads[name], rtol=1e-9, atol=1e-10), name
    # Every target kind contributes: the update is not zero.
    set_lily_naive(model, False)
    plain = tiny_vit().double()
    assert not torch.allclose(plain(x), fast_out)


def test_mlp_target_combines_with_the_linears_inside_the_mlp():
    model = lily_vit(targets=("mlp", "fc1", "fc2"))
    assert "lily_fc1" in model.blocks[0].mlp.base_layer.fc1.deltas
    x = images()
    fast = model(x)
    set_lily_naive(model)
    assert torch.allclose(fast, model(x), atol=1e-5)


@pytest.mark.parametrize("target", ALL_VIT_TARGETS)
def test_each_target_alone_matches_naive_and_changes_output(target):
    model = lily_vit(targets=(target,)).double()
    x = images().double()
    fast = model(x)
    set_lily_naive(model)
    assert torch.allclose(fast, model(x), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(fast, tiny_vit().double()(x))


def test_efficient_form_never_builds_per_token_combined_b():
    """Per-example routing: the combined matrix is (batch, r, C_out), whatever the token count."""
    model = lily_vit(targets=("fc1",), routing="sample")
    delta = model.blocks[0].mlp.fc1.deltas["lily_fc1"]
    seen = []
    original_bmm = torch.bmm

    def spy(a, b):
        seen.append(tuple(b.shape))
        return original_bmm(a, b)

    torch.bmm = spy
    try:
        delta(torch.randn(2, 50, 48))
    finally:
        torch.bmm = original_bmm
    assert seen == [(2, 4, 192)]


def test_token_routing_is_one_matmul_against_the_stacked_experts(monkeypatch):
    """Per token: (tokens, ne_b*r) x (ne_b*r, C_out) once; no per-expert loop, no per-token B."""
    model = lily_vit(targets=("fc1",), routing="token", ne_b=3)
    delta = model.blocks[0].mlp.fc1.deltas["lily_fc1"]
    seen = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return original(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    delta(torch.randn(2, 50, 48))
    assert seen == [((100, 12), (12, 192))]


def test_zero_init_equals_backbone_and_only_adapter_and_head_get_grads():
    x = images()
    reference = tiny_vit()(x)
    model = apply_adapter(tiny_vit(), "lily", rank=4, ne=2, targets=ALL_VIT_TARGETS)
    out = model(x)
    assert torch.equal(out, reference)
    out.sum().backward()
    for name, p in model.named_parameters():
        is_adapter = ".lily_" in name
        is_head = name.startswith("head.")
        assert p.requires_grad == (is_adapter or is_head), name
        if not p.requires_grad:
            assert p.grad is None, name
    # With B = 0, A and routers get no gradient yet but B does.
    b_grads = [p.grad for n, p in model.named_parameters() if n.endswith("lily_B.weight")]
    assert b_grads and all(g is not None and g.abs().sum() > 0 for g in b_grads)


@pytest.mark.parametrize("routing", ["sample", "eq2"])
def test_per_example_routing_is_independent_of_the_batch(routing):
    model = lily_vit(routing=routing)
    x = images(6)
    with torch.no_grad():
        full = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
        order = torch.tensor([3, 0, 5, 1, 4, 2])
        shuffled = model(x[order])
    assert torch.allclose(full, alone, atol=1e-5)
    assert torch.allclose(full[order], shuffled, atol=1e-5)


def test_batch_routing_depends_on_the_batch():
    model = lily_vit(routing="batch")
    x = images(6)
    with torch.no_grad():
        full = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
    assert (full - alone).abs().max() > 1e-3


def test_eq2_uses_token_summed_logits():
    delta = lily_vit(routing="eq2", targets=("k",)).blocks[0].attn.qkv.deltas["lily_k"]
    hidden = torch.randn(2, 7, 4)
    logits = delta.lily_router(hidden)
    expected = torch.softmax(logits.sum(1), dim=-1)
    assert torch.allclose(delta.expert_weights(hidden), expected)
    sample = torch.softmax(logits, dim=-1).mean(1)
    assert not torch.allclose(expected, sample)


def test_router_none_averages_experts_uniformly():
    model = lily_vit(router="none", ne_b=4, targets=("v",))
    delta = model.blocks[1].attn.qkv.deltas["lily_v"]
    assert delta.lily_router is None
    x = torch.randn(2, 5, 48)
    expected = (x @ delta.lily_A.weight.T) @ delta.lily_B.weight.mean(0) * delta.scale
    assert torch.allclose(delta(x), expected, atol=1e-6)


def test_scale_multiplies_the_update():
    x = torch.randn(2, 5, 48)
    one = lily_vit(scale=1.0, targets=("proj",)).blocks[0].attn.proj.deltas["lily_proj"]
    ten = lily_vit(scale=10.0, targets=("proj",)).blocks[0].attn.proj.deltas["lily_proj"]
    assert torch.allclose(ten(x), 10 * one(x), rtol=1e-5, atol=1e-6)


def test_a_and_b_are_shared_tensor_objects():
    model = apply_adapter(tiny_vit(depth=12), "lily", rank=4, ne_a=4, ne_b=3, targets=("k", "v", "mlp"))
    k = [blk.attn.qkv.deltas["lily_k"] for blk in model.blocks]
    v = [blk.attn.qkv.deltas["lily_v"] for blk in model.blocks]
    mlp = [blk.mlp.delta for blk in model.blocks]
    for deltas in (k, v, mlp):
        assert len({id(d.lily_A.weight) for d in deltas}) == 4
        assert len({id(d.lily_B.weight) for d in deltas}) == 1
        assert len({id(d.lily_router.weight) for d in deltas}) == 12  # per-site routers
        groups = [[i for i in range(12) if deltas[i].lily_A is deltas[g * 3].lily_A] for g in range(4)]
        assert groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert k[0].lily_A is not v[0].lily_A and k[0].lily_B is not v[0].lily_B
    assert mlp[0].lily_A.weight.shape == (8, 48)  # mlp uses rank 2r


def test_single_router_is_one_module_per_kind():
    model = apply_adapter(tiny_vit(), "lily", rank=4, ne=2, router="single", targets=("k", "v"))
    routers = {id(b.attn.qkv.deltas["lily_k"].lily_router) for b in model.blocks}
    assert len(routers) == 1
    deltas = model.blocks[0].attn.qkv.deltas
    assert deltas["lily_v"].lily_router is not deltas["lily_k"].lily_router


def _official_groups(depth, ne):
    """The official ViT loop, generalised from its 12 blocks: a new A wherever the block index
    is a multiple of depth // ne."""
    groups, stride = [], depth // ne
    for idx in range(depth):
        if idx % stride == 0:
            groups.append([])
        groups[-1].append(idx)
    return groups


@pytest.mark.parametrize("depth", [4, 7, 12, 24])
def test_default_a_groups_follow_the_official_stride_rule(depth):
    for ne in range(1, depth + 1):
        assert a_groups(depth, ne) == _official_groups(depth, ne)
        if depth % ne == 0:  # where both rules agree: the runs recorded before keep their meaning
            assert a_groups(depth, ne) == balanced_groups(depth, ne) == a_groups(depth, ne, "balanced")
    assert [len(g) for g in a_groups(12, 5)] == [2] * 6  # not 5 groups: the official code's 12 // 5
    assert a_groups(12, 7) == [[i] for i in range(12)]
    assert a_groups(7, 2) == [[0, 1, 2], [3, 4, 5], [6]]


def _a_group_sizes(model):
    a = [blk.mlp.fc1.deltas["lily_fc1"].lily_A for blk in model.blocks]
    return [sum(1 for m in a if m is first) for first in dict.fromkeys(a)]


def test_a_grouping_option_keeps_the_balanced_groups_and_is_recorded_only_when_it_differs():
    stride = apply_adapter(tiny_vit(depth=12), "lily", rank=2, ne=5, targets=("fc1",))
    balanced = apply_adapter(tiny_vit(depth=12), "lily", rank=2, ne=5, targets=("fc1",), a_grouping="balanced")
    assert _a_group_sizes(stride) == [2] * 6 and _a_group_sizes(balanced) == [3, 3, 2, 2, 2]
    assert count_parameters(stride)["adapter"] - count_parameters(balanced)["adapter"] == 48 * 2
    assert "a_grouping" not in recorded_config(stride.adapter_config)
    assert recorded_config(balanced.adapter_config)["a_grouping"] == "balanced"
    assert adapter_deviations("vit", "lily", recorded_config(balanced.adapter_config)) == [
        "rank=2", "ne_a=5", "ne_b=5", "targets=fc1", "a_grouping=balanced"]
    same = apply_adapter(tiny_vit(depth=12), "lily", rank=2, ne=4, targets=("fc1",), a_grouping="balanced")
    assert same.adapter_config.a_grouping == "stride"  # the same groups: one run, one label
    with pytest.raises(UserError, match="did you mean 'balanced'"):
        apply_adapter(tiny_vit(), "lily", a_grouping="balance")


def test_balanced_group_boundaries():
    assert [len(g) for g in balanced_groups(24, 5)] == [5, 5, 5, 5, 4]
    assert balanced_groups(12, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert [len(g) for g in balanced_groups(12, 5)] == [3, 3, 2, 2, 2]
    assert balanced_groups(3, 3) == [[0], [1], [2]]
    assert sum(balanced_groups(24, 7), []) == list(range(24))


def test_groups_of_24_layers_with_ne_a_5():
    model = apply_adapter(tiny_vit(depth=24), "lily", rank=2, ne_a=5, ne_b=2, targets=("fc1",))
    assert _a_group_sizes(model) == [4] * 6  # 24 // 5 blocks per A
    model = apply_adapter(tiny_vit(depth=24), "lily", rank=2, ne_a=5, ne_b=2, targets=("fc1",), a_grouping="balanced")
    assert _a_group_sizes(model) == [5, 5, 5, 5, 4]


@pytest.mark.parametrize("config,message", [
    ({"ne_a": 5}, "exceed the model depth 4"),
    ({"ne_a": 0}, "ne_a must be an integer >= 1"),
    ({"ne_b": 0}, "ne_b must be an integer >= 1"),
    ({"rank": 0}, "rank must be an integer >= 1"),
    ({"scale": -1.0}, "scale must be a number >= 0"),
    ({"targets": ("kk",)}, "did you mean 'k'"),
    ({"targets": ("in_proj",)}, "unknown lily target for a vit backbone 'in_proj'"),
    ({"targets": ("qkv", "k")}, "overlaps"),
    ({"router": "persite"}, "did you mean 'per_site'"),
    ({"routing": "tokens"}, "did you mean 'token'"),
    ({"dropout": 1.0}, "dropout must be a number in"),
    ({"dropout": float("nan")}, "dropout must be a number in"),
    ({"scale": float("inf")}, "scale must be a number >= 0"),
    ({"variant": "s"}, "variant 's' is for Vim"),
    ({"per_target": {"k": 4}}, "must be a dict"),
    ({"per_target": {"k": {"rnk": 2}}}, "did you mean 'rank'"),
    ({"rnak": 3}, "did you mean 'rank'"),
])
def test_bad_configs_fail_clearly(config, message):
    with pytest.raises(UserError, match=message):
        apply_adapter(tiny_vit(), "lily", **config)


def test_router_weights_are_recorded_and_reset():
    model = lily_vit(targets=("k", "mlp"), ne_b=3, routing="sample")
    assert lily_router_weights(model) == {}
    x = images(4)
    with torch.no_grad():
        model(x[:2])
        model(x[2:])
    weights = lily_router_weights(model)
    assert list(weights)[:2] == ["blocks.0.k", "blocks.0.mlp"] and len(weights) == 8
    # The record is the mean of the per-example weights over all examples seen.
    delta = model.blocks[0].attn.qkv.deltas["lily_k"]
    captured = []
    hook = delta.register_forward_hook(lambda m, inp, out: captured.append(m.expert_weights(
        m.lily_A(inp[0]))))
    reset_router_weights(model)
    with torch.no_grad():
        model(x)
    hook.remove()
    assert torch.allclose(torch.tensor(lily_router_weights(model)["blocks.0.k"]), captured[0].mean(0), atol=1e-6)
    for w in weights.values():
        assert len(w) == 3 and abs(sum(w) - 1) < 1e-5
    reset_router_weights(model)
    assert lily_router_weights(model) == {}


def test_parameter_counts_match_closed_form():
    depth, c, r = 4, 48, 4
    model = apply_adapter(tiny_vit(depth), "lily", rank=r, ne_a=3, ne_b=2, targets=("q", "fc1", "fc2", "mlp"),
                          a_grouping="balanced")  # 3 A per kind (the default's 4 // 3 gives 4)
    a = 3 * (c * r) + 3 * (c * r) + 3 * (4 * c * r) + 3 * (c * 2 * r)
    b = 2 * (r * c) + 2 * (r * 4 * c) + 2 * (r * c) + 2 * (2 * r * c)
    routers = depth * (r * 2) * 3 + depth * (2 * r * 2)
    counts = count_parameters(model)
    assert counts["adapter"] == a + b + routers
    assert counts["head"] == c * 10 + 10
    assert counts["total"] == counts["adapter"] + counts["head"]
    single = apply_adapter(tiny_vit(depth), "lily", rank=r, ne_a=2, ne_b=2, router="single", targets=("q",))
    assert count_parameters(single)["adapter"] == 2 * c * r + 2 * r * c + r * 2
    none = apply_adapter(tiny_vit(depth), "lily", rank=r, ne_a=2, ne_b=2, router="none", targets=("q",))
    assert count_parameters(none)["adapter"] == 2 * c * r + 2 * r * c


def test_official_vit_b16_count_is_792576():
    with torch.device("meta"):  # shapes only: builds in milliseconds
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    apply_adapter(model, "lily", rank=32, ne=4, targets=("k", "v", "mlp"))
    counts = count_parameters(model)
    assert counts["adapter"] == 792_576
    a = sum(p.numel() for n, p in model.named_parameters() if ".lily_A." in n)
    b = sum(p.numel() for n, p in model.named_parameters() if ".lily_B." in n)
    assert (a, b) == (393_216, 393_216)
    assert counts["backbone"] == 85_798_656
    # The defaults are the official setup.
    with torch.device("meta"):
        default = timm.create_model("vit_base_patch16_224", pretrained=False)
    apply_adapter(default, "lily")
    assert count_parameters(default)["adapter"] == 792_576


def test_bf16_autocast_runs():
    model = lily_vit()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(2))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_two_dimensional_inputs_are_single_token_examples():
    delta = lily_vit(targets=("proj",)).blocks[0].attn.proj.deltas["lily_proj"]
    assert isinstance(delta, LilyDelta)
    x = torch.randn(5, 48)
    assert torch.allclose(delta(x), delta(x[:, None, :])[:, 0], atol=1e-6)


def test_trainable_state_reloads_into_a_fresh_model_with_sharing_intact():
    """What a resume does: save named trainable parameters, load them into a freshly adapted model."""
    model = lily_vit(ne_a=2)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fresh = apply_adapter(tiny_vit(), "lily", rank=4, ne_a=2, ne_b=2)
    # Parameter names are deterministic, so the trainable names match one to one. (state_dict()
    # also lists shared tensors under every sharing site's key: strict=False reports those
    # aliases as "missing" although they are loaded through the first name.)
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == list(state)
    _, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected
    x = images()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    k0, k1 = (fresh.blocks[i].attn.qkv.deltas["lily_k"] for i in (0, 1))
    assert k0.lily_A is k1.lily_A and k0.lily_B is k1.lily_B
