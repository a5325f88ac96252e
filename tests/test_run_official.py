"""The official setup by default (issue 12) and numbers refused before any work (issue 16):
``--dry-run`` resolves everything on the meta device, lists what differs from the official
setup, and needs no weights or data; bad numbers exit 2 with nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vtab_lily import adapters, run
from vtab_lily.errors import UserError, run_cli
from vtab_lily.official import method_label
from vtab_lily.runconfig import check_args

# The full-size backbones: built on the meta device, so no weights, no data and ~0.2 s.
VIT = ["--task", "dtd", "--dry-run", "--checkpoint", "none"]
HAS_ADAPTER_OFFICIAL = hasattr(adapters, "official_adapter_settings") or hasattr(adapters, "adapter_deviations")


def dry_run(capsys, *argv: str) -> tuple[dict, str]:
    assert run.main(list(argv)) == 0
    out = capsys.readouterr().out
    setup = json.loads(out.split("\nparameters:")[0])
    return setup, out.splitlines()[-1]


def test_dry_run_of_the_defaults_has_no_differences(capsys, tmp_path):
    setup, last = dry_run(capsys, *VIT, "--out", str(tmp_path / "runs"))
    assert last == "differences from the official setup: none"
    config = setup["config"]
    assert (config["lr"], config["wd"], config["warmup"], config["drop_path"], config["epochs"]) == (1e-3, 1e-4, 10, 0.1, 100)
    assert (config["batch_size"], config["drop_last"], config["eval_batch_size"], config["precision"]) == (64, True, 256, "fp32")
    assert (config["normalize"], config["lr_schedule"], config["eval_limit"], config["compile"]) == (False, "official", None, False)
    assert config["pre_logits"] is False  # random init: no npz layer to keep, as the official code would do
    assert setup["deviations"] == [] and setup["method"] == method_label("lily", config["adapter_config"])
    assert setup["params"]["backbone"] > 80_000_000 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, listed", [
    (["--normalize"], ["normalize=imagenet"]),
    (["--precision", "bf16", "--no-drop-last"], ["drop_last=off", "precision=bf16"]),
    (["--lr-schedule", "aligned", "--eval-batch-size", "64", "--eval-limit", "500"],
     ["lr_schedule=aligned", "eval_batch_size=64", "eval_limit=500"]),
    (["--lr", "5e-4", "--epochs", "50", "--compile"], ["epochs=50", "lr=0.0005", "compile=on"]),
])
def test_dry_run_lists_every_difference_and_labels_with_them(capsys, extra, listed):
    setup, last = dry_run(capsys, *VIT, *extra)
    assert setup["deviations"] == listed
    assert last == "differences from the official setup: " + ", ".join(listed)
    assert setup["method"].endswith(" " + " ".join(listed))


@pytest.mark.skipif(not HAS_ADAPTER_OFFICIAL, reason="INTEGRATION: needs adapters.official_adapter_settings")
def test_dry_run_lists_adapter_differences(capsys):
    setup, last = dry_run(capsys, *VIT, "--routing", "sample")
    assert "routing=sample" in setup["deviations"] and "routing=sample" in last
    assert "routing=sample" in setup["method"]


def test_runs_that_differ_in_any_setting_never_share_a_directory_or_row(capsys):
    seen = set()
    for extra in ([], ["--normalize"], ["--precision", "bf16"], ["--no-drop-last"], ["--eval-limit", "100"],
                  ["--lr-schedule", "aligned"], ["--compile"]):
        setup, _ = dry_run(capsys, *VIT, *extra)
        seen.add((setup["config_hash"], setup["method"]))
    assert len({h for h, _ in seen}) == len({m for _, m in seen}) == 7
    plain, _ = dry_run(capsys, *VIT)
    paper, _ = dry_run(capsys, *VIT, "--paper")  # which number is printed: not part of the identity
    assert paper["config_hash"] == plain["config_hash"] and paper["config"]["report"] == "test-selected"


def test_dry_run_never_needs_the_weights(capsys, tmp_path):
    """The default checkpoint path does not exist here: a dry run still resolves the setup on the
    meta device, assuming the published in21k npz (which keeps pre_logits)."""
    setup, last = dry_run(capsys, "--task", "dtd", "--dry-run", "--out", str(tmp_path))
    assert not Path("backbones/ViT-B_16.npz").exists()
    assert setup["config"]["pre_logits"] is True and setup["config"]["pretrained"] == "ViT-B_16.npz"
    assert last == "differences from the official setup: none"
    setup, last = dry_run(capsys, "--task", "dtd", "--dry-run", "--no-pre-logits", "--checkpoint",
                          str(tmp_path / "missing.npz"))
    assert setup["deviations"] == ["pre_logits=off"]
    vim, last = dry_run(capsys, "--backbone", "vim", *VIT[:2], "--dry-run")
    assert vim["config"]["pre_logits"] is False and vim["params"]["adapter"] > 0


def test_vim_lily_s_through_adapter_options(capsys):
    setup, _ = dry_run(capsys, "--backbone", "vim", *VIT, "--rank", "4", "--ne-b", "3",
                       "--adapter-opt", "per_target=dt_proj.rank=4;dt_proj.ne_b=1")
    plan = setup["config"]["adapter_config"]["per_target"]
    assert plan["in_proj"]["rank"] == 4 and plan["in_proj"]["ne_b"] == 3 and plan["dt_proj"]["rank"] == 4
    # per-target settings unlike the global ones are in the label (dt_proj has no router and no dropout)
    assert setup["method"].endswith(" dt_proj:ne_b=1,dropout=0")
    lily_s, last = dry_run(capsys, "--backbone", "vim", *VIT, "--variant", "s")  # the paper's Lily-S preset
    assert lily_s["params"]["adapter"] == 66_060 and lily_s["method"].endswith(" variant=s")
    assert "variant=s" in last and lily_s["config_hash"] != setup["config_hash"]


def test_negative_zero_is_zero_in_the_label_deviations_and_run_folder(capsys):
    """``scale=-0.0`` used to label ``s=-0`` and hash to a run folder of its own."""
    zero, _ = dry_run(capsys, *VIT, "--scale", "0")
    for extra in (["--adapter-opt", "scale=-0.0"], ["--scale=-0.0"]):
        setup, last = dry_run(capsys, *VIT, *extra)
        assert setup["method"] == zero["method"] == "lily r=32 ne=4 s=0 k,v,mlp"
        assert setup["config_hash"] == zero["config_hash"] and last.endswith(": scale=0")
    setup, last = dry_run(capsys, *VIT, "--wd=-0.0", "--adapter", "lora", "--adapter-opt", "per_target=q.alpha=-0.0")
    assert "wd=0" in setup["deviations"] and "-0" not in setup["method"] and "-0" not in last
    # other floats keep their documented spelling (Python's shortest %g): 0.00001 -> 1e-05, 5e-4 -> 0.0005
    assert dry_run(capsys, *VIT, "--scale", "0.00001")[0]["method"] == "lily r=32 ne=4 s=1e-05 k,v,mlp"
    assert method_label("lora", {"rank": 8, "alpha": -0.0}, ["lr=0.0005"]) == "lora r=8 alpha=0 lr=0.0005"


@pytest.mark.parametrize("opt, message", [
    ("rnak=4", "did you mean 'rank'"),
    ("rank=four", "cannot read 'four' as int"),
    ("rank", "expected KEY=VALUE"),
    ("per_target=k.rank=x", "(k): rank must be an integer >= 1, got 'x'"),
    ("scale=2", "given twice"),  # --scale 1 is on the command line too
])
def test_bad_adapter_options_name_the_option(opt, message):
    from vtab_lily.run import identify

    with pytest.raises(UserError, match=re.escape(message)):  # the option's syntax, then its value on the model
        identify(check_args(["--task", "dtd", "--scale", "1", "--adapter-opt", opt, "--checkpoint", "none"]))


@pytest.mark.parametrize("extra, message", [
    (["--adapter-opt", "targets="], "--adapter-opt targets: '' is an empty list"),
    (["--adapter-opt", "targets=,"], "--adapter-opt targets: ',' is an empty list"),
    (["--adapter", "lora", "--adapter-opt", "targets= "], "--adapter-opt targets: ' ' is an empty list"),
    (["--targets", ""], "argument --targets: '' names no target"),
    (["--adapter", "houlsby", "--adapter-opt", "places="], "--adapter-opt places: '' is an empty list"),
    (["--adapter", "lora", "--adapter-opt", "per_target="], "--adapter-opt per_target: '' sets nothing"),
    (["--adapter", "lora", "--adapter-opt", "per_target={}"], "--adapter-opt per_target: '{}' sets nothing"),
])
def test_an_empty_list_option_is_refused_never_the_default(tmp_path, capsys, extra, message):
    """``targets=`` used to fall back to the adapter's default targets (and an empty ``per_target``
    turned LoRA's official variant into ``custom``): an empty list or mapping is refused by name."""
    argv = ["--demo", "--task", "colours", "--out", str(tmp_path / "runs"), "--check", *extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--seed", str(2**32)], "--seed must be in [0, 2**32)"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--wd", "nan"], "--wd must be >= 0"),
    (["--wd=-1e-4"], "--wd must be >= 0"),
    (["--scale", "nan"], "--scale must be a finite number >= 0"),
    (["--scale", "inf"], "--scale must be a finite number >= 0"),
    (["--alpha=-inf"], "--alpha must be a finite number >= 0"),
    (["--dropout", "1.5"], "--dropout must be below 1"),
    (["--drop-path", "nan"], "--drop-path must be >= 0"),
    (["--warmup", "20", "--epochs", "10"], "--warmup 20 is longer than --epochs 10"),
    (["--eval-batch-size", "0"], "--eval-batch-size must be >= 1"),
    (["--eval-limit", "0"], "--eval-limit must be >= 1"),
    (["--img-size", "100000000"], "--img-size must be <= 4,096"),
    (["--epochs", "99999999999999999999"], "--epochs must be <= 100,000"),
    (["--adapter-opt", "rank=9999999999999999999999"], "--rank must be <= 1,000,000"),  # was an int64 crash
    (["--rank", "100000000"], "--rank must be <= 1,000,000"),
    (["--adapter-opt", "per_target=k.rank=99999999999"], "--adapter-opt per_target.k.rank must be <= 1,000,000"),
    (["--backbone", "vim", "--adapter", "additional-scan", "--adapter-opt", "states=-1"],
     "--adapter-opt states must be a finite number >= 0, got -1"),  # no --states flag to name
    (["--adapter", "lora", "--adapter-opt", "per_target=q.alpha=nan"], "--adapter-opt per_target.q.alpha must be a finite"),
    (["--paper", "--protocol", "val"], "--paper"),
    (["--ou", "x"], "unrecognized arguments: --ou"),  # no abbreviations (issue 16.14)
    (["--precision", "fp16"], "invalid choice"),
    (["--method-name", "lily\n| fake | row |"], "no control characters"),
    (["--method-name", "  "], "needs visible text"),
])
def test_bad_numbers_exit_2_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    argv = ["--demo", "--task", "colours", "--data-root", str(tmp_path / "data"), "--out", str(out), *extra]
    with pytest.raises(UserError, match=re.escape(message)):
        check_args(argv)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "data").exists()  # nothing written, no orphan run folder


def test_check_validates_without_running(tmp_path, capsys):
    assert run.main(["--demo", "--task", "colours", "--out", str(tmp_path), "--check"]) == 0
    assert capsys.readouterr().out.startswith("ok: lily ")
    with pytest.raises(UserError, match="exceed the model depth"):  # checked on the meta model
        run.main(["--demo", "--task", "colours", "--ne-a", "9", "--check"])
    assert not any(tmp_path.iterdir())


def test_pre_logits_follows_the_checkpoint_read_from_its_index_only(tmp_path, capsys):
    import numpy as np
    import torch

    from vtab_lily.runconfig import checkpoint_has_pre_logits

    with_layer, without = tmp_path / "with.npz", tmp_path / "without.npz"
    np.savez(with_layer, **{"pre_logits/kernel": np.zeros((2, 2)), "pre_logits/bias": np.zeros(2)})
    np.savez(without, **{"head/kernel": np.zeros((2, 2))})
    legacy = tmp_path / "legacy.pth"
    torch.save({"pre_logits.fc.weight": torch.zeros(2, 2)}, legacy, _use_new_zipfile_serialization=False)
    assert [checkpoint_has_pre_logits(p) for p in (with_layer, without, legacy, tmp_path / "absent.npz")] == [
        True, False, True, None]
    setup, last = dry_run(capsys, "--task", "dtd", "--dry-run", "--checkpoint", str(without))
    assert setup["config"]["pre_logits"] is False and last.endswith("none")  # nothing to keep: official too
    setup, last = dry_run(capsys, "--task", "dtd", "--dry-run", "--checkpoint", str(with_layer), "--no-pre-logits")
    assert setup["deviations"] == ["pre_logits=off"] and setup["method"].endswith(" pre_logits=off")
    with pytest.raises(UserError, match="has no pre_logits layer to keep"):
        check_args(["--task", "dtd", "--checkpoint", str(without), "--pre-logits"])


def test_adapter_differences_come_from_the_adapters_official_settings(monkeypatch):
    """The contract's ``official_adapter_settings(family, adapter)``: every resolved setting that
    differs is listed (nested ones by path); the label shows those the core label lacks."""
    from vtab_lily.official import adapter_deviations

    monkeypatch.delattr(adapters, "adapter_deviations", raising=False)
    official = {"rank": 32, "routing": "batch", "targets": ("k", "v", "mlp"), "per_target": {"k": {"rank": 32}}}
    monkeypatch.setattr(adapters, "official_adapter_settings", lambda family, adapter: official, raising=False)
    ours = {"rank": 16, "routing": "sample", "targets": ["k", "v", "mlp"], "scale": 1.0,
            "per_target": {"k": {"rank": 16}}}
    devs = adapter_deviations("vit", "lily", ours)
    assert devs == ["rank=16", "routing=sample", "per_target.k.rank=16"]
    assert method_label("lily", ours, devs) == "lily r=16 k,v,mlp s=1 routing=sample"


def test_a_default_warmup_longer_than_the_run_is_said(capsys):
    check_args(["--task", "dtd", "--epochs", "3", "--checkpoint", "none"])
    assert "default warmup of 10 epochs is longer than --epochs 3" in capsys.readouterr().err
    with pytest.raises(UserError, match="--warmup 5 is longer than --epochs 3"):
        check_args(["--task", "dtd", "--epochs", "3", "--warmup", "5", "--checkpoint", "none"])



def test_a_per_target_setting_is_labelled_once():
    from vtab_lily.official import method_label
    from vtab_lily.run import identify

    def label(*argv: str) -> tuple[str, list[str]]:
        config, _, _, devs = identify(check_args(["--task", "dtd", *argv, "--checkpoint", "none"]), must_exist=False)
        return method_label(config["adapter"], config["adapter_config"], devs), devs

    assert label("--adapter", "lora", "--adapter-opt", "variant=custom", "--adapter-opt", "targets=q,v",
                 "--adapter-opt", "per_target=q.alpha=4")[0] == "lora r=8 alpha=8 q,v q:alpha=4 variant=custom"
    # one that the core label does not show (it equals the top level) stays as its deviation
    text, devs = label("--backbone", "vim", "--adapter", "lily", "--adapter-opt", "per_target=dt_proj.rank=8")
    assert text.endswith(" dt_proj.rank=8") and devs == ["dt_proj.rank=8"]


def test_the_demo_settings_per_method_apply_and_a_given_option_wins(capsys, tmp_path):
    """Issue 22.17: the demo sets some methods' own settings (``official.DEMO_ADAPTER``) so that
    each learns every demo task. An adapter setting shows in the label; a recipe setting is the
    demo's reference for that method, as ``DEMO``'s are, so neither is a deviation; an option the
    user gives wins and names another run; the real benchmark keeps the official values."""
    from vtab_lily.official import DEMO, DEMO_ADAPTER, RECIPE_KEYS

    def dry(*argv):
        return dry_run(capsys, *argv, "--dry-run", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"))

    assert {adapter for family, adapter in DEMO_ADAPTER if family == "vit"} >= {"lily", "full"}
    for (family, adapter), settings in DEMO_ADAPTER.items():
        demo, last = dry("--demo", "--backbone", family, "--adapter", adapter, "--task", "orientation")
        config = demo["config"]
        assert demo["deviations"] == [] and last == "differences from the official setup: none"
        for key, value in settings.items():
            if key in RECIPE_KEYS:
                assert config[key] == value != DEMO[key], (adapter, key)
            else:
                assert config["adapter_config"][key] == value, (adapter, key)
                short = {"scale": "s", "rank": "r"}.get(key, key)
                assert f" {short}={value:g}" in demo["method"] + " ", (adapter, key, demo["method"])
        real, _ = dry("--backbone", family, "--adapter", adapter, "--task", "dtd", "--checkpoint", "none")
        assert real["deviations"] == [] and (real["config"]["lr"], real["config"]["epochs"]) == (1e-3, 100)
    full, _ = dry("--demo", "--adapter", "full", "--task", "orientation")
    assert (full["config"]["lr"], full["config"]["epochs"], full["method"]) == (1e-3, 30, "full")
    given, last = dry("--demo", "--adapter", "full", "--task", "orientation", "--lr", "1e-2", "--epochs", "10")
    assert given["deviations"] == ["epochs=10", "lr=0.01"] and given["method"] == "full epochs=10 lr=0.01"
    assert given["config_hash"] != full["config_hash"]
    lora, _ = dry("--demo", "--adapter", "lora", "--task", "orientation")  # no demo settings: DEMO's alone
    assert (lora["config"]["lr"], lora["config"]["epochs"]) == (DEMO["lr"], DEMO["epochs"])


@pytest.mark.parametrize("flag", [["--placement", "paper"], ["--adapter-opt", "placement=paper"]])
def test_a_text_option_may_be_the_word_paper(capsys, tmp_path, flag):
    """``paper`` used to be read as "the published per-task value" for every field, so AdaptFormer's
    documented ``placement=paper`` was refused; a text field takes the word as its value."""
    setup, _ = dry_run(capsys, "--demo", "--adapter", "adaptformer", "--task", "orientation", *flag,
                       "--dry-run", "--out", str(tmp_path / "runs"))
    assert setup["config"]["adapter_config"]["placement"] == "paper"
    assert setup["method"] == "adaptformer r=8 s=0.1 placement=paper"
