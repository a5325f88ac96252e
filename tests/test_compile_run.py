"""``--compile`` through the command a user types: ViT and Vim in one ``--batch`` process (the
second model compiles too), Dynamo's counts recorded in result.json, the mode in the label, the
same losses as the uncompiled run, and the default mode hashed as before modes existed. Dynamo
runs with its ``eager`` backend (``VTAB_LILY_COMPILE_BACKEND``): no C compiler needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtab_lily import run
from vtab_lily.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--demo", "--adapter", "lily", "--rank", "4", "--task", "colours", "--img-size", "16",
        "--eval-every", "1", "--batch-size", "100", "--no-tensorboard"]


def argv(demo_root: Path, out: Path, backbone: str, epochs: int, *extra: str) -> list[str]:
    return [*TINY, "--backbone", backbone, "--epochs", str(epochs), "--data-root", str(demo_root),
            "--out", str(out), *extra]


def results(out: Path) -> dict[str, tuple[dict, list[dict]]]:
    """backbone -> (result.json, metrics.jsonl lines) of each run under ``out``."""
    found = {}
    for path in out.rglob("result.json"):
        result = json.loads(path.read_text())
        metrics = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        found[result["backbone"]] = (result, metrics)
    return found


def test_compile_runs_vit_and_vim_through_the_runner_in_one_process(demo_root, tmp_path):
    out = tmp_path / "runs"
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps(argv(demo_root, out, "vit", 2, "--compile", "reduce-overhead")) + "\n"
                     + json.dumps(argv(demo_root, out, "vim", 1, "--compile")) + "\n")
    env = {**os.environ, "VTAB_LILY_COMPILE_BACKEND": "eager", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "vtab_lily.run", "--batch", str(batch)], capture_output=True,
                          text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("compile: 2 frames, 2 graphs, 0 graph breaks, 0 recompile-limit hits") == 2
    found = results(out)
    assert set(found) == {"vit-tiny-test", "vim-tiny-test"}
    for backbone, (result, _) in found.items():
        counts = result["compile"]  # training and evaluation, one graph each, nothing left out
        assert (counts["frames"], counts["graphs"], counts["graph_breaks"], counts["recompile_limit_hits"],
                counts["gave_up"]) == (2, 2, 0, 0, 0), (backbone, counts)
    vit, vim = found["vit-tiny-test"][0], found["vim-tiny-test"][0]
    assert vit["config"]["compile"] == "reduce-overhead" and "compile=reduce-overhead" in vit["method"]
    assert vim["config"]["compile"] is True and "compile=on" in vim["method"]
    assert vit["time"]["eval_batch_size"] == 256  # the official batch: Lily routes per batch on ViT

    # The same run uncompiled: the same losses and accuracies (on a CPU the mode falls back to
    # torch.compile's default; eager kernels, so equal up to float reassociation).
    plain = tmp_path / "plain"
    assert run.main(argv(demo_root, plain, "vit", 2)) == 0
    (result, metrics), = results(plain).values()
    compiled_metrics = found["vit-tiny-test"][1]
    assert "compile" not in result and result["method_hash"] != vit["method_hash"]
    assert [round(m["loss"], 4) for m in metrics] == [round(m["loss"], 4) for m in compiled_metrics]
    assert [m["eval_acc"] for m in metrics] == [m["eval_acc"] for m in compiled_metrics]


def test_compile_default_is_plain_compile_and_bad_modes_are_refused(demo_root, tmp_path):
    out = tmp_path / "runs"
    plain = run.run_dir_for(argv(demo_root, out, "vit", 2, "--compile"))
    named = run.run_dir_for(argv(demo_root, out, "vit", 2, "--compile", "default"))
    other = run.run_dir_for(argv(demo_root, out, "vit", 2, "--compile", "max-autotune"))
    off = run.run_dir_for(argv(demo_root, out, "vit", 2))
    assert plain == named and len({plain, other, off}) == 3
    with pytest.raises(UserError, match="unknown compile mode 'fastest'"):
        run.main(argv(demo_root, out, "vit", 2, "--compile", "fastest"))
