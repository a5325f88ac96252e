"""``--adapter peft``: any HF PEFT tuner injected into our ViT (q, k, v split out of the fused
qkv), counted and trained like our own methods."""

from __future__ import annotations

import json

import pytest
import torch

from vtab_lily.adapters import apply_adapter, count_parameters
from vtab_lily.adapters.peft_tuner import SplitQKV
from vtab_lily.backbones import create_backbone
from vtab_lily.errors import UserError

pytest.importorskip("peft")  # a test extra; the adapter itself says how to install it


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("vit-tiny-test", num_classes=4, img_size=32).eval()


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_split_qkv_is_exact():
    model = tiny()
    fused = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, fused.in_features)
    torch.testing.assert_close(SplitQKV(fused)(x), fused(x))


CONFIGS = {
    "LORA": {"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["q", "v"]},
    "LOHA": {"peft_type": "LOHA", "r": 4, "alpha": 4, "target_modules": ["q", "v"]},
    "LOKR": {"peft_type": "LOKR", "r": 4, "alpha": 4, "target_modules": ["q", "v"]},
    "IA3": {"peft_type": "IA3", "target_modules": ["k", "v", "fc2"], "feedforward_modules": ["fc2"]},
    "VERA": {"peft_type": "VERA", "r": 8, "target_modules": ["q", "v"]},
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_peft_tuners_start_as_the_backbone_count_and_train(kind, tmp_path):
    path = tmp_path / "peft.json"
    path.write_text(json.dumps(CONFIGS[kind]))
    x = images()
    expected = tiny()(x)
    model = apply_adapter(tiny(), "peft", config=str(path))
    assert model.adapter_config.settings == CONFIGS[kind] and model.adapter_config.config is None
    model.eval()
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)  # every tuner starts as the backbone
    counts = count_parameters(model)
    added = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head"))
    assert counts["adapter"] == added > 0
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert any(not n.startswith("head") for n in grads)
    assert all(p.requires_grad for n, p in model.named_parameters() if n in grads)


def test_lora_through_peft_counts_like_ours(tmp_path):
    path = tmp_path / "lora.json"
    path.write_text(json.dumps(CONFIGS["LORA"]))
    model = apply_adapter(tiny(), "peft", config=str(path))
    width = model.blocks[0].attn.qkv.in_features
    assert count_parameters(model)["adapter"] == len(model.blocks) * 2 * (2 * 4 * width)


def test_bad_peft_configs(tmp_path):
    with pytest.raises(UserError, match="--peft-config FILE.json"):
        apply_adapter(tiny(), "peft")
    with pytest.raises(UserError, match="cannot read"):
        apply_adapter(tiny(), "peft", config=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        apply_adapter(tiny(), "peft", config=str(bad))
    bad.write_text(json.dumps({"r": 4}))
    with pytest.raises(UserError, match="peft_type"):
        apply_adapter(tiny(), "peft", config=str(bad))
    bad.write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["nothing_here"]}))
    with pytest.raises(UserError, match="LORA"):
        apply_adapter(tiny(), "peft", config=str(bad))


def test_the_runner_takes_a_peft_config_and_labels_it_by_its_contents(tmp_path, capsys):
    """``--adapter peft --adapter-opt config=FILE`` through the runner: no official setup to
    compare with (it was refused), and two different configs never share a label."""
    from vtab_lily import run

    labels = []
    for kind in ("LOHA", "LOKR"):
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps(CONFIGS[kind]))
        assert run.main(["--demo", "--task", "colours", "--adapter", "peft", "--adapter-opt", f"config={path}",
                         "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
        out = capsys.readouterr().out
        setup = json.loads(out.split("\nparameters:")[0])
        assert setup["deviations"] == []  # the recipe's only: the adapter has no official setup to differ from
        assert out.strip().splitlines()[-1] == ("peft has no official setup (its settings are the config file's); "
                                                "differences from the official recipe: none")
        labels.append(setup["method"])
    assert labels[0].startswith("peft peft_type=LOHA r=4") and labels[1].startswith("peft peft_type=LOKR")


@pytest.mark.parametrize("settings, message", [
    ({"r": "4"}, r'r must be an integer, got "4"'),
    ({"r": 4.5}, "r must be an integer, got 4.5"),
    ({"r": True}, "r must be an integer, got true"),
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"r": 100_000_000}, "r must be <= 1,000,000 \\(the bound --rank has\\)"),
    ({"r": 4, "rank_pattern": {"q": 10**8}}, "rank_pattern.q must be <= 1,000,000"),
    ({"r": 4, "lora_alpha": "8"}, 'lora_alpha must be a number, got "8"'),
    ({"r": 4, "lora_dropout": 1e400}, "not valid JSON \\(Infinity is not a JSON number"),
    ({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}, "PROMPT_TUNING is prompt learning"),
    ({"peft_type": "ADAPTION_PROMPT"}, "ADAPTION_PROMPT adds prompts to a LLaMA attention layer"),
    ({"peft_type": "NOPE"}, "unknown peft_type 'NOPE'; --adapter peft takes .*LORA"),
])
def test_peft_config_values_are_checked_like_the_cli_options(tmp_path, settings, message):
    """Issue 22.10 / 22.16: these gave TypeError/AttributeError tracebacks (r "4", 4.5, true;
    PROMPT_TUNING), or were taken (r=1e8 past the bound --rank has)."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"peft_type": "LORA", "target_modules": ["q", "v"], **settings}))
    with pytest.raises(UserError, match=message):
        apply_adapter(tiny(), "peft", config=str(path))


def test_peft_settings_given_as_a_dict_are_checked_too():
    """The settings come back from a run's config.json when a run is rebuilt (analyze)."""
    with pytest.raises(UserError, match="lora_dropout must be a finite number, got inf"):
        apply_adapter(tiny(), "peft", settings={"peft_type": "LORA", "r": 2, "lora_dropout": float("inf"),
                                               "target_modules": ["q"]})


def test_peft_config_scalings_may_be_floats_and_seeds_large(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 0.5, "target_modules": ["q"]}))
    apply_adapter(tiny(), "peft", config=str(path))
    path.write_text(json.dumps({"peft_type": "VERA", "r": 2, "target_modules": ["fc1"], "projection_prng_key": 10**9}))
    apply_adapter(tiny(), "peft", config=str(path))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_nan_in_a_peft_config_is_refused_before_any_run_folder(tmp_path, capsys, constant):
    """Issue 22.10: ``"lora_alpha": NaN`` passed --dry-run, made a run folder whose config.json
    held a bare NaN (not JSON), then failed at step 1."""
    from vtab_lily import run

    path = tmp_path / "c.json"
    path.write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": %s, "target_modules": ["q"]}' % constant)
    out = tmp_path / "runs"
    for extra in (["--dry-run"], []):
        with pytest.raises(UserError, match=f"not valid JSON \\({constant} is not a JSON number"):
            run.main(["--demo", "--task", "colours", "--adapter", "peft", "--peft-config", str(path),
                      "--out", str(out), *extra])
    assert not out.exists()


def test_a_deeply_nested_peft_config_is_one_line_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    with pytest.raises(UserError, match="not valid JSON"):
        apply_adapter(tiny(), "peft", config=str(path))


def test_no_json_file_is_ever_written_with_nan(tmp_path):
    """The writer's backstop: json.dumps would write a bare NaN; it refuses and names the key."""
    from vtab_lily.fsutil import atomic_write_json

    with pytest.raises(UserError, match=r"config.json: refusing to write adapter_config.settings.lora_alpha = nan"):
        atomic_write_json(tmp_path / "config.json", {"adapter_config": {"settings": {"lora_alpha": float("nan")}}})
    with pytest.raises(UserError, match=r"refusing to write weights.1 = inf"):
        atomic_write_json(tmp_path / "w.json", {"weights": [1.0, float("inf")]})
    assert not list(tmp_path.iterdir())
