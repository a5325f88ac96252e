"""Adapters on our Vision Mamba (the tiny test config at 16 px: 16 patches + class token)."""

import pytest
import torch

from vtab_lily.adapters import apply_adapter, count_parameters, export_peft, load_peft, set_lily_naive
from vtab_lily.backbones import create_backbone
from vtab_lily.errors import UserError
import adapter_helpers as helpers  # noqa: E402

CLASSES = 5


def tiny_vim() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("vim-tiny-test", CLASSES, img_size=16).eval()


def randomize_trainable(model, seed=1):
    helpers.randomize_trainable(model, seed, std=0.2)


X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
ALL_VIM_TARGETS = ("in_proj", "x_proj", "dt_proj", "out_proj")


def test_fresh_adapters_equal_the_backbone():
    with torch.no_grad():
        reference = tiny_vim()(X)
        for name, config in [("lily", {"targets": ALL_VIM_TARGETS}), ("lora", {"targets": ALL_VIM_TARGETS}),
                             ("adaptformer", {})]:
            assert torch.equal(apply_adapter(tiny_vim(), name, **config)(X), reference), name


def test_only_adapter_and_head_get_gradients():
    model = apply_adapter(tiny_vim(), "lily", targets=ALL_VIM_TARGETS)
    model(X[:2]).sum().backward()
    head = {id(p) for p in model.get_classifier().parameters()}
    for name, p in model.named_parameters():
        expected = ".lily_" in name or id(p) in head
        assert p.requires_grad == expected, name
        if not expected:
            assert p.grad is None, name
    assert all(p.grad is not None for n, p in model.named_parameters() if "lily_B" in n)


def test_vim_defaults_follow_the_official_setup():
    model = apply_adapter(tiny_vim(), "lily")
    cfg = model.adapter_config
    assert cfg.targets == ("in_proj", "dt_proj") and cfg.router == "single" and cfg.routing == "token"
    assert cfg.variant == "l" and cfg.dropout == 0.1
    depth = model.depth
    assert cfg.per_target["in_proj"] == {"rank": 8, "ne_a": depth, "ne_b": 5, "dropout": 0.1}
    assert cfg.per_target["dt_proj"] == {"rank": 4, "ne_a": depth, "ne_b": 1, "dropout": 0.0}
    mixers = [layer.mixer for layer in model.layers]
    in_proj = [m.in_proj.deltas["lily_in_proj"] for m in mixers]
    assert len({id(d.lily_A) for d in in_proj}) == depth  # no A sharing
    assert len({id(d.lily_B) for d in in_proj}) == 1
    assert len({id(d.lily_router) for d in in_proj}) == 1  # one router bound to B
    forward = [m.dt_proj.deltas["lily_dt_proj"] for m in mixers]
    backward = [m.dt_proj_b.deltas["lily_dt_proj_b"] for m in mixers]
    assert forward[0].lily_B is not backward[0].lily_B  # scan directions are separate kinds
    assert all(d.lily_router is None for d in forward + backward)  # a single expert needs no router


def test_official_vim_s_count():
    with torch.device("meta"):
        model = create_backbone("vim-s", 1000)
    apply_adapter(model, "lily")
    # in_proj: A 24*384*8, B 5*8*1536, router 8*5; dt_proj (2 directions): A 24*24*4, B 4*768.
    expected = 24 * 384 * 8 + 5 * 8 * 1536 + 8 * 5 + 2 * (24 * 24 * 4 + 4 * 768)
    assert count_parameters(model)["adapter"] == expected == 145_960


def test_counts_match_closed_form_on_tiny_vim():
    model = tiny_vim()
    mixer = model.layers[0].mixer
    d, e = mixer.in_proj.in_features, mixer.out_proj.in_features
    xo, dt = mixer.x_proj.out_features, mixer.dt_proj.in_features
    depth, r = model.depth, 2
    apply_adapter(model, "lily", rank=r, ne_a=2, ne_b=3, router="per_site", targets=ALL_VIM_TARGETS,
                  variant="custom")
    kinds = [(d, 2 * e, 1), (e, xo, 2), (dt, e, 2), (e, d, 1)]  # (in, out, directions)
    expected = sum(n * (2 * c_in * r + 3 * r * c_out + depth * r * 3) for c_in, c_out, n in kinds)
    assert count_parameters(model)["adapter"] == expected
    lora = apply_adapter(tiny_vim(), "lora", rank=r, targets=ALL_VIM_TARGETS)
    assert count_parameters(lora)["adapter"] == depth * sum(n * r * (c_in + c_out) for c_in, c_out, n in kinds)
    adaptformer = apply_adapter(tiny_vim(), "adaptformer", rank=r)
    assert count_parameters(adaptformer)["adapter"] == depth * (2 * d * r + r + d)


def test_efficient_equals_naive_on_vim():
    model = apply_adapter(tiny_vim(), "lily", rank=2, ne_b=3, targets=ALL_VIM_TARGETS, variant="custom",
                          dropout=0.0).double()
    randomize_trainable(model)
    x = X[:2].double()
    fast = model(x)
    fast.square().sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    set_lily_naive(model)
    slow = model(x)
    slow.square().sum().backward()
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-10)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, fast_grads[n], rtol=1e-8, atol=1e-10), n
    assert not torch.allclose(fast, tiny_vim().double()(x))


def test_sample_routing_on_vim_is_independent_of_the_batch():
    model = apply_adapter(tiny_vim(), "lily", rank=2, ne=2, targets=("in_proj", "x_proj"), routing="sample")
    randomize_trainable(model)
    with torch.no_grad():
        together = model(X)
        alone = torch.cat([model(X[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_adaptformer_wraps_the_mixer():
    model = apply_adapter(tiny_vim(), "adaptformer", rank=3, dropout=0.0, placement="paper")
    randomize_trainable(model)
    wrapper = model.layers[1].mixer
    h = torch.randn(2, 6, wrapper.delta.down.in_features)
    expected = wrapper.base_layer(h) + 0.1 * wrapper.delta.up(torch.relu(wrapper.delta.down(h)))
    assert torch.allclose(wrapper(h), expected, atol=1e-6)


def test_vit_targets_are_rejected_on_vim():
    with pytest.raises(UserError, match="unknown lily target for a vim backbone 'k'"):
        apply_adapter(tiny_vim(), "lily", targets=("k",))
    with pytest.raises(UserError, match="did you mean 'in_proj'"):
        apply_adapter(tiny_vim(), "lora", targets=("inproj",))
    with pytest.raises(UserError, match="exceed the model depth"):
        apply_adapter(tiny_vim(), "lily", ne_a=99)


def test_lora_on_vim_round_trips_through_peft(tmp_path):
    peft = pytest.importorskip("peft")
    model = apply_adapter(tiny_vim(), "lora", rank=2, targets=("in_proj", "dt_proj"))
    randomize_trainable(model)
    with torch.no_grad():
        ours = model(X)
        export_peft(model, tmp_path)
        assert torch.allclose(peft.PeftModel.from_pretrained(tiny_vim(), str(tmp_path))(X), ours, atol=1e-5)
        assert torch.equal(load_peft(tiny_vim(), tmp_path)(X), ours)


def test_per_target_settings_reach_lily_s_and_l_from_flat_options():
    """The command line's flat form ``per_target=dt_proj.rank=8;in_proj.ne_b=6`` (strings)."""
    cfg = apply_adapter(tiny_vim(), "lily", variant="s", per_target={"dt_proj.rank": "8", "in_proj.ne_b": "6"},
                        ).adapter_config
    assert cfg.per_target["in_proj"] == {"rank": 4, "ne_a": cfg.ne_a, "ne_b": 6, "dropout": 0.1}
    assert cfg.per_target["dt_proj"] == {"rank": 8, "ne_a": cfg.ne_a, "ne_b": 1, "dropout": 0.0}
    with pytest.raises(UserError, match="rank must be an integer >= 1, got 'four'"):
        apply_adapter(tiny_vim(), "lily", per_target={"dt_proj.rank": "four"})
    with pytest.raises(UserError, match="not among the targets"):
        apply_adapter(tiny_vim(), "lily", per_target={"x_proj": {"rank": 2}})
    with pytest.raises(UserError, match="unknown lily variant for a vim backbone 'm'"):
        apply_adapter(tiny_vim(), "lily", variant="m")
    with pytest.raises(UserError, match="dropout must be a number in"):
        apply_adapter(tiny_vim(), "lily", per_target={"in_proj": {"dropout": -0.1}})


# ---------------------------------------------------------------- Additional-scan (MambaPEFT)


def loaded_tiny_vim() -> torch.nn.Module:
    """The tiny Vim with "pretrained" A_log columns that all differ (as loaded weights would)."""
    model = tiny_vim()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "A_b_log")):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 0.5)
    return model


def test_additional_scan_shapes_init_and_count():
    with torch.device("meta"):
        vim_s = create_backbone("vim-s", 1000)
    assert count_parameters(apply_adapter(vim_s, "additional-scan"))["adapter"] == 24 * 2 * (768 * 6 + 12 * 768)
    model = apply_adapter(loaded_tiny_vim(), "additional-scan", states=3)
    assert model.adapter_config.states == 3
    for layer in model.layers:
        mixer, extra = layer.mixer, layer.mixer.extra_states
        e = mixer.d_inner
        assert extra.A_log.shape == extra.A_b_log.shape == (e, 3)
        assert extra.x_proj.weight.shape == extra.x_proj_b.weight.shape == (2 * 3, e)
        # every new column a copy of the pretrained column 0 of its direction, taken at injection
        assert torch.equal(extra.A_log, mixer.A_log[:, :1].expand(-1, 3))
        assert torch.equal(extra.A_b_log, mixer.A_b_log[:, :1].expand(-1, 3))
        assert extra.A_log.data_ptr() != mixer.A_log.data_ptr()
        bound = e ** -0.5  # nn.Linear's default (Kaiming-uniform, a=sqrt(5)) init, not zero
        assert 0 < extra.x_proj.weight.abs().max() <= bound and extra.x_proj.weight.std() > bound / 4
    plain = tiny_vim()
    assert not any("extra_states" in k for k in plain.state_dict())  # the checkpoint layout is unchanged
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        f"layers.{i}.mixer.extra_states.{n}" for i in range(model.depth)
        for n in ("A_log", "A_b_log", "x_proj.weight", "x_proj_b.weight")}


def test_additional_scan_is_the_backbone_only_with_the_new_c_rows_zeroed():
    base = loaded_tiny_vim()
    model = apply_adapter(loaded_tiny_vim(), "additional-scan", states=4)
    with torch.no_grad():
        reference = base(X)
        assert not torch.allclose(model(X), reference, atol=1e-4)  # random B and C: not the backbone
        for layer in model.layers:
            for proj in (layer.mixer.extra_states.x_proj, layer.mixer.extra_states.x_proj_b):
                proj.weight[4:].zero_()  # C rows: the new states no longer reach y
        assert torch.equal(model(X), reference)


def test_additional_scan_adds_only_the_new_states_term():
    """mixer output - frozen mixer output = out_proj of the new states' own scan (no D), gated and
    averaged like the mixer's: the 16 (here 8) pretrained states are untouched."""
    from torch.nn import functional as F

    from vtab_lily.backbones.scan import causal_conv1d, selective_scan_ref

    model = apply_adapter(loaded_tiny_vim(), "additional-scan", states=3)
    mixer = model.layers[1].mixer
    extra = mixer.extra_states
    hidden = torch.randn(2, 9, mixer.d_model, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for proj in (extra.x_proj, extra.x_proj_b):
            proj.weight.mul_(10)  # a term well above fp32 rounding of the output
        with_new = mixer(hidden)
        mixer.extra_states = None
        frozen = mixer(hidden)
        mixer.extra_states = extra
        x, z = mixer.in_proj(hidden).chunk(2, dim=-1)
        x = x.transpose(1, 2)
        ys = []
        for flip, conv, x_proj, dt_proj, proj, A_log in (
                (False, mixer.conv1d, mixer.x_proj, mixer.dt_proj, extra.x_proj, extra.A_log),
                (True, mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, extra.x_proj_b, extra.A_b_log)):
            u = causal_conv1d(x.flip(-1) if flip else x, conv.weight, conv.bias, activation="silu")
            delta = mixer._ssm_inputs(u, x_proj, dt_proj)[0]
            B, C = (proj.weight @ u).split(3, dim=1)  # rows [:n] are B, [n:] are C
            y = selective_scan_ref(u, delta, -torch.exp(A_log), B, C)
            ys.append(y.flip(-1) if flip else y)
        term = (ys[0] + ys[1]) / 2 * F.silu(z.transpose(1, 2))
        expected = mixer.out_proj(term.transpose(1, 2))
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(with_new - frozen, expected, rtol=1e-4, atol=1e-6)


def test_additional_scan_trains_only_its_tensors_and_the_head():
    model = apply_adapter(loaded_tiny_vim(), "additional-scan")
    model(X[:2]).square().sum().backward()
    head = {id(p) for p in model.get_classifier().parameters()}
    for name, p in model.named_parameters():
        new = ".extra_states." in name
        assert p.requires_grad == (new or id(p) in head), name
        if new:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif id(p) not in head:
            assert p.grad is None, name
    with pytest.raises(UserError, match="no ViT form"):
        apply_adapter(helpers.tiny_vit(), "additional-scan")
    with pytest.raises(UserError, match="states must be an integer >= 1"):
        apply_adapter(tiny_vim(), "additional-scan", states=0)


@pytest.mark.parametrize("target, rows", [
    ("in_proj_x", {"in_proj": (0, 64)}), ("in_proj_z", {"in_proj": (64, 128)}),
    ("x_proj_dt", {"x_proj": (0, 2), "x_proj_b": (0, 2)}), ("x_proj_B", {"x_proj": (2, 10), "x_proj_b": (2, 10)}),
    ("x_proj_C", {"x_proj": (10, 18), "x_proj_b": (10, 18)}),
])
def test_partial_lora_changes_only_its_row_block(target, rows):
    """MambaPEFT's LoRA_p: a low-rank update on one row block of in_proj (x = [:d_inner], z =
    [d_inner:]) or of each direction's x_proj (dt [:dt_rank], B, C). Tiny Vim: d_inner 64,
    d_state 8, dt_rank 2."""
    from vtab_lily.adapters import merge_lora, unmerge_lora
    from vtab_lily.official import adapter_deviations, method_label
    import dataclasses

    base = tiny_vim()
    model = apply_adapter(tiny_vim(), "lora", targets=target, rank=2, alpha=0.2, dropout=0.1,
                          dropout_position="after_a")
    depth = len(model.layers)
    count = sum(depth * 2 * (32 + stop - start) if name == "in_proj" else depth * 2 * (64 + stop - start)
                for name, (start, stop) in rows.items())
    assert count_parameters(model)["adapter"] == count
    assert torch.equal(model(X), base(X))  # B starts at zero
    randomize_trainable(model)
    # feed every layer the same input: compare each adapted Linear's output with the frozen one's
    for layer in model.layers:
        for name, (start, stop) in rows.items():
            adapted = layer.mixer.get_submodule(name)
            inp = torch.randn(5, adapted.in_features)
            with torch.no_grad():
                delta = adapted(inp) - adapted.base_layer(inp)
            assert delta[:, start:stop].abs().min() > 0, (target, name)
            outside = torch.cat([delta[:, :start], delta[:, stop:]], dim=1)
            assert torch.equal(outside, torch.zeros_like(outside)), (target, name)
    # merging folds the update into that block only, exactly, and unmerging restores the bits
    with torch.no_grad():
        ours = model(X)
        frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
        assert merge_lora(model) == depth * len(rows)
        torch.testing.assert_close(model(X), ours, rtol=1e-5, atol=1e-5)
        for layer_index, layer in enumerate(model.layers):
            for name, (start, stop) in rows.items():
                key = f"layers.{layer_index}.mixer.{name}.base_layer.weight"
                merged = layer.mixer.get_submodule(name).base_layer.weight
                assert torch.equal(torch.cat([merged[:start], merged[stop:]]),
                                   torch.cat([frozen[key][:start], frozen[key][stop:]]))
                assert not torch.equal(merged[start:stop], frozen[key][start:stop])
        unmerge_lora(model)
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    config = dataclasses.asdict(model.adapter_config)
    assert method_label("lora", config, adapter_deviations("vim", "lora", config)) == \
        f"lora r=2 alpha=0.2 {target} dropout=0.1 dropout_position=after_a"


def test_partial_lora_targets_refuse_their_whole_layer_and_round_trip_through_peft(tmp_path):
    with pytest.raises(UserError, match="target 'in_proj' overlaps \\['in_proj_x'\\]"):
        apply_adapter(tiny_vim(), "lora", targets="in_proj,in_proj_x")
    with pytest.raises(UserError, match="target 'x_proj' overlaps \\['x_proj_B', 'x_proj_C'\\]"):
        apply_adapter(tiny_vim(), "lora", targets="x_proj_C,x_proj,x_proj_B")
    both = apply_adapter(tiny_vim(), "lora", rank=2, targets="in_proj_x,in_proj_z,x_proj_dt")  # disjoint blocks
    randomize_trainable(both)
    peft = pytest.importorskip("peft")
    with torch.no_grad():
        ours = both(X)
        export_peft(both, tmp_path)
        assert torch.allclose(peft.PeftModel.from_pretrained(tiny_vim(), str(tmp_path))(X), ours, atol=1e-5)
        assert torch.equal(load_peft(tiny_vim(), tmp_path)(X), ours)
