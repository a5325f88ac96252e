"""Compute precision: the default per backbone family and device, its label and row, torch's flags.

There is no GPU here: a CUDA device with a given compute capability is faked by patching
``torch.cuda``; what the runner records and prints is what a real one would get."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vtab_lily import precision, results, run
from vtab_lily.official import official_precision
from vtab_lily.rundir import method_hash

DEMO = ["--demo", "--task", "colours"]
# The config hashes of these CPU runs before precision became device-dependent: they must not move.
# Hashes from main before the precision work. The demo's Lily now defaults to s=0.1 (docs/demo.md),
# so the Lily case pins s=1, the setting those hashes were made with.
# The ViT demo now starts from pre-trained weights (a new identity), so the ViT cases pin the
# random backbone those hashes were made with (--checkpoint none).
CPU_HASHES = {("--demo", "--task", "colours", "--scale", "1", "--checkpoint", "none"): "5598a605",
              ("--demo", "--task", "colours", "--adapter", "lora", "--checkpoint", "none"): "454f698c",
              ("--backbone", "vim", "--demo", "--task", "colours", "--adapter", "lora"): "62ef00d3"}


def fake_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)


def dry_run(capsys, tmp_path, *argv: str) -> tuple[dict, list[str]]:
    assert run.main([*argv, "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    return json.loads(out.split("\nparameters:")[0]), out.splitlines()


def test_official_precision_per_family_and_device():
    assert official_precision("vit", True) == "tf32"  # torch 1.10's CUDA default on Ampere+
    assert official_precision("vim", True) == "tf32-conv"  # torch 2.1 without autocast
    assert official_precision("vit", False) == official_precision("vim", False) == "fp32"


@pytest.mark.parametrize("argv", list(CPU_HASHES), ids=lambda a: " ".join(a))
def test_cpu_default_is_fp32_and_run_hashes_are_unchanged(capsys, tmp_path, argv):
    setup, lines = dry_run(capsys, tmp_path, *argv)
    assert setup["config"]["precision"] == "fp32" and "precision" not in setup["method"]
    assert setup["config_hash"] == CPU_HASHES[argv]


def test_dry_run_without_cuda_says_the_cuda_default(capsys, tmp_path):
    _, lines = dry_run(capsys, tmp_path, *DEMO)
    line = next(x for x in lines if x.startswith("precision:"))
    assert line.startswith("precision: fp32 (") and "the default is tf32" in line
    _, lines = dry_run(capsys, tmp_path, *DEMO, "--backbone", "vim")
    assert "the default is tf32-conv" in next(x for x in lines if x.startswith("precision:"))


@pytest.mark.parametrize("backbone, capability, expected", [
    ("vit", (9, 0), "tf32"), ("vit", (8, 0), "tf32"), ("vim", (9, 0), "tf32-conv"), ("vit", (7, 5), "fp32")])
def test_cuda_default_follows_family_and_capability(capsys, tmp_path, monkeypatch, backbone, capability, expected):
    fake_gpu(monkeypatch, capability)
    setup, lines = dry_run(capsys, tmp_path, *DEMO, "--backbone", backbone)
    assert setup["config"]["precision"] == expected
    assert not [d for d in setup["deviations"] if d.startswith("precision=")]  # the official one
    assert ("precision=" in setup["method"]) == (expected != "fp32")
    assert any(x == f"precision: {expected}" or x.startswith(f"precision: {expected} (") for x in lines)


def test_strict_fp32_on_a_tf32_gpu_is_a_labelled_deviation_in_its_own_row(capsys, tmp_path, monkeypatch):
    fake_gpu(monkeypatch, (9, 0))
    default, _ = dry_run(capsys, tmp_path, *DEMO)
    strict, _ = dry_run(capsys, tmp_path, *DEMO, "--precision", "fp32")
    bf16, _ = dry_run(capsys, tmp_path, *DEMO, "--precision", "bf16")
    assert strict["deviations"] == ["precision=fp32"] and strict["method"].endswith("precision=fp32")
    assert bf16["deviations"] == ["precision=bf16"]
    assert len({default["config_hash"], strict["config_hash"], bf16["config_hash"]}) == 3

    def as_result(setup: dict) -> dict:
        config = setup["config"]
        return {"method_hash": method_hash(config), "deviations": setup["deviations"], "precision": config["precision"]}

    keys = {results.row_key(as_result(s)) for s in (default, strict, bf16)}
    assert len(keys) == 3  # never one leaderboard row


def test_tf32_on_a_device_without_it_is_refused_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vtab_lily.run", *DEMO, "--precision", "tf32", "--device", "cpu",
                           "--out", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--precision tf32 needs a CUDA GPU with TF32" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_precision_is_a_user_error(capsys, tmp_path):
    with pytest.raises(Exception) as err:
        run.main([*DEMO, "--precision", "fp16", "--dry-run"])
    assert "--precision" in str(err.value) and "tf32-conv" in str(err.value)


@pytest.mark.parametrize("name, flags", [("fp32", (False, False)), ("tf32", (True, True)),
                                         ("tf32-conv", (False, True)), ("bf16", (False, False))])
def test_use_precision_sets_the_flags_and_restores_them(name, flags):
    before = precision.current_flags()
    try:
        precision._set_flags(True, False)  # whatever a previous run or the user left
        with precision.use_precision(name):
            assert precision.current_flags() == flags
        assert precision.current_flags() == (True, False)
        with pytest.raises(RuntimeError), precision.use_precision(name):
            raise RuntimeError("a run fails")
        assert precision.current_flags() == (True, False)
    finally:
        precision._set_flags(*before)


def test_a_run_trains_under_its_precision_flags_and_leaves_them_as_they_were(tmp_path, monkeypatch):
    """Through the runner: the flags are set for the training loop only (a --batch process's
    next run starts from the process's own settings, not this run's)."""
    from vtab_lily import train as loop

    seen = []
    real = loop.train

    def spy(*a, **k):
        seen.append(precision.current_flags())
        return real(*a, **k)

    monkeypatch.setattr(loop, "train", spy)
    before = precision.current_flags()
    try:
        precision._set_flags(True, True)
        argv = [*DEMO, "--epochs", "1", "--eval-every", "1", "--out", str(tmp_path / "runs"),
                "--data-root", str(tmp_path / "data"), "--no-tensorboard"]
        assert run.main(argv) == 0
        assert seen == [(False, False)]  # fp32 on the CPU: full fp32
        assert precision.current_flags() == (True, True)
    finally:
        precision._set_flags(*before)
    result = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())
    assert result["precision"] == result["config"]["precision"] == "fp32"
