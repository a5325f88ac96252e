"""TensorBoard names each run by its method label and seed (issue 25 item 5), while the run
folder keeps its layout (``tb/`` inside the config-hash folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from vtab_lily import run
from vtab_lily.data import ensure_demo
from vtab_lily.rundir import RunDir, tensorboard_name


@pytest.mark.parametrize("label, seed, expected", [
    ("lily r=32 ne=4 s=1 k,v,mlp", 0, "lily_r=32_ne=4_s=1_k,v,mlp_seed0"),
    ("lora r=8 bf16 lr=0.001", 3, "lora_r=8_bf16_lr=0.001_seed3"),
    ("../../etc/passwd", 1, "etc_passwd_seed1"),  # never a path out of tb/
    ("ünïcode / slashes\\here", 0, "n_code_slashes_here_seed0"),
    ("...", 0, "run_seed0"),
])
def test_names_are_one_safe_folder(label, seed, expected):
    assert tensorboard_name(label, seed) == expected


def test_long_labels_are_cut_but_stay_apart():
    a, b = "x" * 300 + " a", "x" * 300 + " b"
    assert tensorboard_name(a, 0) != tensorboard_name(b, 0)
    assert len(tensorboard_name(a, 0)) <= 130


def test_a_run_started_before_names_keeps_its_events_in_tb(tmp_path):
    old = RunDir(tmp_path / "old")
    (old / "tb").mkdir(parents=True)
    (old / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    assert old.tensorboard_dir("lily r=4", 0) == old / "tb"
    assert RunDir(tmp_path / "new").tensorboard_dir("lily r=4", 0) == tmp_path / "new" / "tb" / "lily_r=4_seed0"


def test_tensorboard_lists_the_run_by_its_label(tmp_path_factory):
    root = ensure_demo(tmp_path_factory.getbasetemp() / "vtab-demo")
    out = tmp_path_factory.mktemp("runs")
    argv = ["--demo", "--backbone", "vit", "--adapter", "lora", "--rank", "2", "--task", "cells", "--img-size", "16",
            "--epochs", "1", "--batch-size", "100", "--seed", "7", "--data-root", str(root), "--out", str(out)]
    assert run.main(argv) == 0
    (result,) = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    runs = EventMultiplexer().AddRunsFromDirectory(str(out)).Reload().Runs()
    (name,) = runs
    assert name.endswith(f"/tb/{tensorboard_name(result['method'], 7)}") and "_seed7" in name
    assert name.startswith(f"{result['backbone']}/lora/cells/{result['config_hash']}/")
    assert "eval/accuracy" in runs[name]["scalars"]
