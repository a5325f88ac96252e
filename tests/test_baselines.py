"""The added baselines (BitFit, LN-tune, SSF, VPT, DoRA): published parameter counts on
ViT-B/16, what each computes at initialisation, gradients, and merging where defined."""

from __future__ import annotations

import pytest
import torch

from vtab_lily.adapters import apply_adapter, count_parameters, merge_lora
from vtab_lily.adapters.bottleneck import ConvBypass
from vtab_lily.adapters.dora import DoraDelta
from vtab_lily.adapters.repadapter import PreAdapted, merge_repadapter
from vtab_lily.adapters.ssf import merge_ssf
from vtab_lily.adapters.vpt import PromptedBlock
from vtab_lily.backbones import create_backbone
from vtab_lily.errors import UserError


def vit_b16_meta() -> torch.nn.Module:
    with torch.device("meta"):
        return create_backbone("vit-b16-in21k", num_classes=100)


# (method, options, adapter parameters without head, published millions as printed or None)
PUBLISHED = [
    ("bitfit", {}, 102_912, 0.10),  # 12 x 8,448 block biases + patch embedding + final norm
    ("ln-tune", {}, 38_400, None),
    ("ssf", {}, 205_824, (0.20, 0.24)),  # sources print 0.20 to 0.24
    ("vpt-deep", {"length": 50}, 460_800, None),
    ("vpt-shallow", {"length": 50}, 38_400, None),
    ("dora", {"rank": 8, "targets": ("q", "v")}, 313_344, None),  # LoRA's 294,912 + 24 x 768 magnitudes
    ("repadapter", {}, 239_808, None),
    ("houlsby", {}, 313_536, None),
    ("pfeiffer", {}, 156_768, 0.16),  # the "Adapter" row of NOAH's table
    ("convpass", {}, 327_552, 0.33),
    ("fact-tt", {"rank": 8}, 21_504, None),  # 2 x 768 x 8 + 144 x 8^2; published 0.037M is a per-task mean
    ("fact-tt", {"rank": 16}, 61_440, None),
    ("fact-tk", {"rank": 32}, 86_528, None),  # 2 x 768 x 32 + 32^3 + 144 x 32; published 0.069M per-task mean
]


@pytest.mark.parametrize("name, options, expected, published", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameters_on_vit_b16(name, options, expected, published):
    params = count_parameters(apply_adapter(vit_b16_meta(), name, **options))
    assert params["adapter"] == expected
    assert params["head"] == 768 * 100 + 100 and params["total"] == expected + params["head"]
    if isinstance(published, float):
        assert round(expected / 1e6, 2) == published
    elif published:
        assert published[0] <= round(expected / 1e6, 2) <= published[1]


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone("vit-tiny-test", num_classes=5, img_size=32).eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["bitfit", "ln-tune", "dora", "repadapter", "houlsby", "pfeiffer", "convpass",
                                  "fact-tt", "fact-tk"])
def test_exactly_the_backbone_at_initialisation(name):
    x = images()
    expected = tiny()(x)
    model = apply_adapter(tiny(), name).eval()
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_ssf_is_the_backbone_only_with_identity_scale_shift():
    x = images()
    expected = tiny()(x)
    torch.testing.assert_close(apply_adapter(tiny(), "ssf", init_std=0.0).eval()(x), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(apply_adapter(tiny(), "ssf").eval()(x), expected, atol=1e-4)  # N(1, .02) init


def test_vpt_deep_replaces_prompts_in_every_block_and_shallow_inserts_once():
    model = apply_adapter(tiny(), "vpt-deep", length=3, dropout=0.0).eval()
    seen = []
    blocks = [m for m in model.modules() if isinstance(m, PromptedBlock)]
    assert len(blocks) == len(model.blocks)
    for wrapped in blocks:
        wrapped.block.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    x = images(2)
    model(x)
    patches = (32 // model.patch_embed.patch_size[0]) ** 2
    for wrapped, tokens in zip(blocks, seen):
        assert tokens.shape[1] == 1 + 3 + patches  # cls, prompts, patches: the length never grows
        torch.testing.assert_close(tokens[:, 1:4], wrapped.prompts.tokens.expand(2, -1, -1))
    shallow = apply_adapter(tiny(), "vpt-shallow", length=3)
    assert sum(isinstance(m, PromptedBlock) for m in shallow.modules()) == 1
    assert not torch.allclose(model(x), tiny()(x), atol=1e-5)  # prompts change attention
    with pytest.raises(UserError, match="length"):
        apply_adapter(tiny(), "vpt-deep", length=0)


@pytest.mark.parametrize("name", ["bitfit", "ln-tune", "ssf", "vpt-deep", "vpt-shallow", "dora", "repadapter",
                                  "houlsby", "pfeiffer", "convpass", "fact-tt", "fact-tk"])
def test_only_the_methods_tensors_and_the_head_learn(name):
    model = apply_adapter(tiny(), name).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(not n.startswith("head") for n in trainable)
    torch.nn.functional.cross_entropy(model(images(4)), torch.tensor([0, 1, 2, 3])).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    if name == "bitfit":
        assert all(n.endswith("bias") or n.startswith("head") for n in trainable)
    if name == "ln-tune":
        assert all("norm" in n or n.startswith("head") for n in trainable)


def _randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and not n.startswith("head"):
                p.add_(0.05 * torch.randn_like(p))


def test_dora_merge_agrees_and_magnitude_rescales_rows():
    model = apply_adapter(tiny(), "dora").eval()
    _randomise(model)
    x = images()
    before = model(x)
    assert merge_lora(model) > 0
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    delta = next(m for m in model.modules() if isinstance(m, DoraDelta))
    weight, _ = delta._frozen()
    assert delta.delta_weight().shape == weight.shape


@pytest.mark.parametrize("name", ["fact-tt", "fact-tk"])
def test_fact_update_is_the_factorised_tensor_and_merges(name):
    model = apply_adapter(tiny(), name, dropout=0.0).eval()
    _randomise(model)
    delta = model.blocks[1].mlp.fc2.deltas["fact_fc2"]
    f = delta.factors
    # dW of fc2 = [V C_j U for its four input chunks] side by side, slot numbers 12*1 + 8..11
    expected = torch.cat([f.v.weight @ f.core_of(12 + 8 + c) @ f.u.weight for c in range(4)], dim=1)
    torch.testing.assert_close(delta.delta_weight(), expected * delta.scale)
    x = torch.randn(5, 4 * f.u.in_features)
    torch.testing.assert_close(delta(x), x @ delta.delta_weight().T, rtol=1e-5, atol=1e-6)
    before = model(images())
    assert merge_lora(model) > 0
    torch.testing.assert_close(model(images()), before, rtol=1e-5, atol=1e-5)


def test_repadapter_merge_agrees_and_removes_the_adapters():
    model = apply_adapter(tiny(), "repadapter").eval()
    _randomise(model)
    x = images()
    before = model(x)
    assert merge_repadapter(model) == 2 * len(model.blocks)
    assert not any(isinstance(m, PreAdapted) for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_convpass_sees_the_patch_grid():
    model = apply_adapter(tiny(), "convpass", dropout=0.0).eval()
    _randomise(model)
    bypass = next(m for m in model.modules() if isinstance(m, ConvBypass))
    tokens = torch.randn(2, 1 + 16, bypass.down.in_features)
    shifted = tokens.clone()
    shifted[:, 1:] = tokens[:, 1:].reshape(2, 4, 4, -1).roll(1, dims=2).reshape(2, 16, -1)  # move the grid
    out, out_shifted = bypass(tokens), bypass(shifted)
    # a 3x3 convolution is shift-equivariant away from the borders: interior columns move with the grid
    grid, grid_shifted = out[:, 1:].reshape(2, 4, 4, -1), out_shifted[:, 1:].reshape(2, 4, 4, -1)
    torch.testing.assert_close(grid_shifted[:, 1:3, 2], grid[:, 1:3, 1], rtol=1e-4, atol=1e-5)


def test_ssf_merge_agrees():
    model = apply_adapter(tiny(), "ssf").eval()
    x = images()
    before = model(x)
    assert merge_ssf(model) == 2 + 6 * len(model.blocks)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_vit_only_methods_refuse_vim():
    for name in ("ssf", "vpt-deep", "repadapter", "houlsby", "convpass", "fact-tt"):
        with pytest.raises(UserError, match="ViT"):
            apply_adapter(create_backbone("vim-tiny-test", num_classes=3), name)


def test_vim_partial_tunes_the_ssm_tensors():
    with torch.device("meta"):
        vim_s = create_backbone("vim-s", num_classes=100)
    counts = count_parameters(apply_adapter(vim_s, "vim-partial"))
    layers, inner = 24, 768
    per_layer = 2 * (inner * 16 + inner + inner * 4 + inner + inner)  # A_log, D, conv w+b, dt bias; both directions
    assert counts["adapter"] == layers * per_layer + 384  # + the patch embedding's bias
    model = apply_adapter(create_backbone("vim-tiny-test", num_classes=3), "vim-partial", parts=("A_log", "D"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")}
    assert trainable and all(n.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b") for n in trainable)
    for parts, leaves in ((("dt_bias",), ("dt_proj.bias", "dt_proj_b.bias")),
                          (("conv1d_weight",), ("conv1d.weight", "conv1d_b.weight"))):
        model = apply_adapter(create_backbone("vim-tiny-test", num_classes=3), "vim-partial", parts=parts)
        trainable = {n.split(".", 3)[-1] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == set(leaves) | {"weight", "bias"}, parts  # + the head's
    with pytest.raises(UserError, match="vim-partial part"):
        apply_adapter(create_backbone("vim-tiny-test", num_classes=3), "vim-partial", parts=("x",))
    with pytest.raises(UserError, match="named twice"):
        apply_adapter(create_backbone("vim-tiny-test", num_classes=3), "vim-partial", parts="D,D")
    with pytest.raises(UserError, match="Mamba"):
        apply_adapter(tiny(), "vim-partial")


def _two_sequence_affix(mixer, hidden):
    """MambaPEFT's Affix-tuning written out: each direction scans its own tokens then the (forward or
    flipped) in_proj output, in its own sequence; its first ``length`` outputs are dropped."""
    from vtab_lily.backbones.scan import causal_conv1d, selective_scan_ref

    tokens = mixer.in_proj.tokens
    xz = mixer.in_proj.base_layer(hidden)
    n, b = tokens.forward_tokens.shape[0], hidden.shape[0]
    ys = []
    for own, seq, conv, x_proj, dt_proj, A_log, D in (
            (tokens.forward_tokens, xz, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D),
            (tokens.backward_tokens, xz.flip(1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log,
             mixer.D_b)):
        x, z = torch.cat([own.expand(b, -1, -1), seq], dim=1).transpose(1, 2).chunk(2, dim=1)
        u = causal_conv1d(x, conv.weight, conv.bias, activation="silu")
        delta, B, C = mixer._ssm_inputs(u, x_proj, dt_proj)
        ys.append(selective_scan_ref(u, delta, -torch.exp(A_log), B, C, D, z=z)[..., n:])
    y = (ys[0] + ys[1].flip(-1)) / 2
    return mixer.out_proj.base_layer(y.transpose(1, 2))


def test_affix_tokens_start_each_scan_direction_in_the_xz_space():
    with torch.device("meta"):
        vim_s = create_backbone("vim-s", num_classes=100)
    assert count_parameters(apply_adapter(vim_s, "affix"))["adapter"] == 24 * 2 * 3 * 1536 == 221_184
    torch.manual_seed(0)
    base = create_backbone("vim-tiny-test", num_classes=3, img_size=32).eval()
    torch.manual_seed(0)
    model = apply_adapter(create_backbone("vim-tiny-test", num_classes=3, img_size=32), "affix", length=2).eval()
    assert model.adapter_config.init_std == 1.0
    mixer = model.layers[1].mixer
    tokens, inner = mixer.in_proj.tokens, mixer.d_inner
    assert tokens.forward_tokens.shape == tokens.backward_tokens.shape == (2, 2 * inner)
    assert 0.7 < torch.cat([tokens.forward_tokens, tokens.backward_tokens]).std() < 1.3  # N(0, 1)
    # placement: the in_proj output carries the forward tokens first, the backward ones reversed last
    seen = []
    mixer.in_proj.register_forward_hook(lambda mod, inp, out: seen.append(out))
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    length = model.patch_embed.num_patches + 1
    assert seen[0].shape == (2, 2 + length + 2, 2 * inner)
    torch.testing.assert_close(seen[0][:, :2], tokens.forward_tokens.expand(2, -1, -1))
    torch.testing.assert_close(seen[0][:, -2:], tokens.backward_tokens.flip(0).expand(2, -1, -1))
    assert out.shape == base(x).shape and not torch.allclose(out, base(x), atol=1e-5)
    # the one shared sequence computes exactly MambaPEFT's two sequences
    hidden = torch.randn(2, 7, mixer.d_model)
    with torch.no_grad():
        torch.testing.assert_close(mixer(hidden), _two_sequence_affix(mixer, hidden), rtol=1e-5, atol=1e-6)
    # gradients: the x halves learn; the z halves gate only dropped positions (zero, as MambaPEFT's)
    model(x).square().sum().backward()
    for layer in model.layers:
        for grad in (layer.mixer.in_proj.tokens.forward_tokens.grad, layer.mixer.in_proj.tokens.backward_tokens.grad):
            assert grad[:, :inner].abs().min() > 0 and torch.equal(grad[:, inner:], torch.zeros_like(grad[:, inner:]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".tokens." in n or n.startswith("head.") for n in trainable)
    with pytest.raises(UserError, match="Mamba"):
        apply_adapter(tiny(), "affix")
    with pytest.raises(UserError, match="init_std must be a finite number > 0"):
        apply_adapter(create_backbone("vim-tiny-test", num_classes=3), "affix", init_std=0)


def test_affix_projection_makes_every_layers_tokens_from_one_mlp():
    """MambaPEFT's Affix-tuning with its projection (prefix_projection=True): Embedding(length, W) ->
    Linear(W, W) -> tanh -> Linear(W, depth * 2 * W), W = 2 d_inner; layer l's forward tokens are
    columns [2 l W, 2 l W + W) of its output, its backward ones the next W."""
    from vtab_lily.adapters import recorded_config
    from vtab_lily.official import adapter_deviations, method_label

    with torch.device("meta"):
        vim_s = create_backbone("vim-s", num_classes=100)
    width = 1536
    assert count_parameters(apply_adapter(vim_s, "affix", projection=True))["adapter"] == \
        3 * width + (width * width + width) + (width * 24 * 2 * width + 24 * 2 * width) == 115_685_376
    torch.manual_seed(0)
    model = apply_adapter(create_backbone("vim-tiny-test", num_classes=3, img_size=32), "affix", length=2,
                          projection=True)
    projection, depth, inner = model.affix_projection, len(model.layers), model.layers[0].mixer.d_inner
    width = 2 * inner
    assert projection.embedding.weight.shape == (2, width)
    assert [tuple(m.weight.shape) for m in projection.mlp if isinstance(m, torch.nn.Linear)] == \
        [(width, width), (depth * 2 * width, width)]
    assert isinstance(projection.mlp[1], torch.nn.Tanh)
    # the tokens each layer's in_proj output carries are its slice of the MLP's output
    seen, calls = {}, []
    hooks = [layer.mixer.in_proj.register_forward_hook(lambda mod, inp, out, index=index: seen.update({index: out}))
             for index, layer in enumerate(model.layers)]
    projection.mlp.register_forward_hook(lambda mod, inp, out: calls.append(out))
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    for hook in hooks:
        hook.remove()
    assert len(calls) == 1 and projection._cache is None  # once per model forward, then released
    with torch.no_grad():
        out = projection.mlp(projection.embedding.weight)
    for index in range(depth):
        own = out[:, 2 * width * index:2 * width * (index + 1)]
        torch.testing.assert_close(seen[index][:, :2], own[:, :width].expand(2, -1, -1))
        torch.testing.assert_close(seen[index][:, -2:], own[:, width:].flip(0).expand(2, -1, -1))
    # only the projection and the head train; gradients reach the embedding and both Linears
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"affix_projection.embedding.weight", "affix_projection.mlp.0.weight",
                         "affix_projection.mlp.0.bias", "affix_projection.mlp.2.weight",
                         "affix_projection.mlp.2.bias", "head.weight", "head.bias"}
    for name in trainable:
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    # the output rows that become z halves gate dropped positions only: zero gradient, as w/o projection
    rows = projection.mlp[2].weight.grad.view(depth, 2, 2, inner, width)  # layer, direction, x|z, ...
    assert torch.equal(rows[:, :, 1], torch.zeros_like(rows[:, :, 1])) and rows[:, :, 0].abs().sum() > 0
    # a mixer called on its own computes the tokens afresh: still MambaPEFT's two sequences
    mixer = model.layers[1].mixer
    hidden = torch.randn(2, 7, mixer.d_model)
    with torch.no_grad():
        torch.testing.assert_close(mixer(hidden), _two_sequence_affix(mixer, hidden), rtol=1e-5, atol=1e-6)
    # recorded only when on: runs without it keep their config (hash) and label
    assert "projection" not in recorded_config(apply_adapter(create_backbone("vim-tiny-test", 3), "affix").adapter_config)
    config = recorded_config(model.adapter_config)
    assert config["projection"] is True
    assert method_label("affix", config, adapter_deviations("vim", "affix", config)) == \
        "affix length=2 init_std=1 projection=on"
    with pytest.raises(UserError, match="projection must be true or false"):
        apply_adapter(create_backbone("vim-tiny-test", num_classes=3), "affix", projection="yes")
