"""One run end to end (python -m vtab_lily.run): every file of the run directory, skipping a
finished run, --dry-run, --force, and bad input refused before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from vtab_lily import run
from vtab_lily.errors import UserError, run_cli
from vtab_lily.rundir import config_hash

# A tiny Lily run: 1000 demo images at 16 px, 10 steps per epoch, two epochs.
TINY = ["--demo", "--backbone", "vit", "--adapter", "lily", "--rank", "4", "--task", "colours",
        "--img-size", "16", "--epochs", "2", "--eval-every", "1", "--batch-size", "100"]
RESULT_KEYS = {"schema", "status", "backbone", "adapter", "task", "suite", "protocol", "seed", "method",
               "method_hash", "config", "config_hash", "accuracy", "params", "time", "memory", "device",
               "versions", "git_commit", "finished_at", "deviations", "data", "precision", "predictions", "input"}


def args(demo_root: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, "--data-root", str(demo_root), "--out", str(out), *extra]


def run_dirs(out: Path) -> list[Path]:
    return [p.parent for p in out.rglob("config.json")]


@pytest.fixture(scope="module")
def finished(demo_root, tmp_path_factory):
    """One complete run (with TensorBoard); returns (out, run_dir, stdout)."""
    out = tmp_path_factory.mktemp("runs")
    assert run.main(args(demo_root, out)) == 0
    (run_dir,) = run_dirs(out)
    return out, run_dir


def test_end_to_end_run_writes_every_file(finished):
    out, run_dir = finished
    config = json.loads((run_dir / "config.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result) == RESULT_KEYS
    assert result["status"] == "complete" and result["schema"] == 1
    assert run_dir == out / "vit-tiny-test" / "lily" / "colours" / config_hash(config)
    assert result["config"] == config and result["config_hash"] == run_dir.name
    assert (result["backbone"], result["adapter"], result["task"], result["suite"]) == (
        "vit-tiny-test", "lily", "colours", "demo")
    assert re.fullmatch(r"[0-9a-f]{8}", result["method_hash"]) and result["method"].startswith("lily r=4")
    # TINY's settings differ from the demo recipe; each one is listed and in the label
    assert result["deviations"] == ["rank=4", "epochs=2", "batch_size=100", "img_size=16", "eval_every=1"]
    assert result["method"].endswith(" epochs=2 batch_size=100 img_size=16 eval_every=1")
    assert result["precision"] == "fp32"
    assert set(result["data"]) == {"fingerprint", "encoding", "source"}
    assert result["input"] == {"normalize": "none", "mean": None, "std": None, "img_size": 16, "patch_size": 4,
                               "grid": 4, "pretrained_norm": "inception", "pretrained_size": 32}  # the ViT recipe
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["finished_at"])  # UTC
    assert config["normalize"] is False and config["drop_last"] is True and config["eval_batch_size"] == 256

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and [m["step"] for m in metrics] == [10, 20]
    assert all({"loss", "lr", "images_per_s", "eval_acc"} <= set(m) for m in metrics)
    assert metrics[1]["loss"] < metrics[0]["loss"]  # it learns
    acc = result["accuracy"]
    assert acc["final"] == metrics[-1]["eval_acc"] and 0 <= acc["final"] <= 100
    assert acc["best"] == max(m["eval_acc"] for m in metrics) and acc["best_epoch"] in (1, 2)
    assert acc["eval_split"] == "test" and acc["best_is_test_selected"] is True and acc["reported"] == "final"

    params = result["params"]
    assert params["head"] == 48 * 8 + 8  # embed 48, 8 classes
    assert params["total"] == params["adapter"] + params["head"] and params["adapter"] > 0
    assert params["backbone"] > params["adapter"]
    assert result["time"]["train_s"] > 0 and result["time"]["train_images_per_s"] > 0
    assert result["memory"]["kind"] == "cpu_peak_rss" and result["memory"]["peak_mb"] > 10
    assert result["device"] == "cpu" and result["versions"]["torch"] == torch.__version__
    assert result["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", result["git_commit"])

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["epoch"] == 2 and ckpt["config_hash"] == run_dir.name
    assert ckpt["model"] and all(torch.isfinite(t).all() for t in ckpt["model"].values())

    routers = json.loads((run_dir / "router_weights.json").read_text())
    assert routers["experts"] == 4 and len(routers["sites"]) == 4 * 3  # 4 blocks x k, v, mlp
    for weights in routers["weights"]:
        assert len(weights) == 4 and sum(weights) == pytest.approx(1.0, abs=1e-4)
    history = json.loads((run_dir / "router_history.json").read_text())
    assert history["epochs"] == [1, 2] and history["sites"] == routers["sites"] and history["experts"] == 4
    assert history["weights"][-1] == routers["weights"]  # router_weights.json: the final evaluation
    snapshots = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    assert snapshots == ["epoch_0001.pt", "epoch_0002.pt"]
    last = torch.load(run_dir / "snapshots" / "epoch_0002.pt", weights_only=True)
    assert last.keys() == ckpt["model"].keys() and all(torch.equal(last[k], ckpt["model"][k]) for k in last)

    events = list((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not (run_dir / "failed.json").exists()
    assert not list(run_dir.glob(".*.tmp-*"))


def test_finished_run_is_skipped_and_force_redoes_it(finished, demo_root, capsys):
    out, run_dir = finished
    before = {p.name: p.read_bytes() for p in (run_dir / "result.json", run_dir / "metrics.jsonl")}
    assert run.main(args(demo_root, out)) == 0
    assert "already complete" in capsys.readouterr().out
    assert {p: (run_dir / p).read_bytes() for p in before} == before

    assert run.main(args(demo_root, out, "--force", "--no-tensorboard")) == 0
    again = json.loads((run_dir / "result.json").read_text())
    first = json.loads(before["result.json"])
    assert again["accuracy"] == first["accuracy"]  # same seed, same result (CPU)
    assert again["finished_at"] >= first["finished_at"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2  # not appended to the old lines


def test_dry_run_prints_parameter_counts(demo_root, tmp_path, capsys):
    assert run.main(args(demo_root, tmp_path / "runs", "--dry-run")) == 0
    printed = capsys.readouterr().out
    counts = re.search(r"parameters: adapter ([\d,]+), head ([\d,]+), trainable total ([\d,]+), backbone ([\d,]+)",
                       printed)
    adapter, head, total, backbone = (int(g.replace(",", "")) for g in counts.groups())
    assert head == 48 * 8 + 8 and total == adapter + head and adapter > 0 and backbone > 0
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    plain = json.loads(printed.split("\nparameters:")[0])
    assert run.main(args(demo_root, tmp_path / "runs", "--dry-run", "--method-name", "lily (tuned)")) == 0
    named = json.loads(capsys.readouterr().out.split("\nparameters:")[0])
    assert named["config"]["method_name"] == "lily (tuned)" and named["config_hash"] != plain["config_hash"]
    assert run.main(args(demo_root, tmp_path / "runs", "--dry-run", "--rank", "4", "--threads", "2",
                         "--device", "cpu")) == 0  # explicit defaults and local options: the same run
    assert json.loads(capsys.readouterr().out.split("\nparameters:")[0])["config_hash"] == plain["config_hash"]


@pytest.mark.parametrize("extra, message", [
    (["--task", "colour"], "did you mean 'colours'"),
    (["--task", ""], "--task '' names no task"),
    (["--backbone", "vit-tiny-tset"], "did you mean 'vit-tiny-test'"),
    (["--adapter", "lilly"], "did you mean 'lily'"),
    (["--ne-a", "9"], "exceed the model depth"),
    (["--rank", "0"], "rank must be"),
    (["--scale", "-1"], "scale must be"),
    (["--targets", "k,vv"], "did you mean 'v'"),
    (["--batch-size", "1001"], "larger than the training split"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--checkpoint", "/nonexistent/vit.npz"], "backbones/README.md"),
])
def test_bad_arguments_are_refused_before_any_work(demo_root, tmp_path, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run.main(args(demo_root, tmp_path / "runs", *extra))
    assert not (tmp_path / "runs").exists()


def test_missing_data_and_weights_say_where_and_how(tmp_path):
    base = ["--backbone", "vit-tiny-test", "--task", "dtd", "--out", str(tmp_path / "runs")]
    with pytest.raises(UserError, match=r"(?s)VTAB-1K task dtd in .*nothing.*python -m vtab_lily.fetch data vtab-1k "
                                        r"--root .*nothing.*or by hand: download .*vtab-1k.zip"):
        run.main([*base, "--checkpoint", "none", "--data-root", str(tmp_path / "nothing")])
    with pytest.raises(UserError, match=r"(?s)backbones/ViT-B_16.npz .*python -m vtab_lily.fetch weights "
                                        r"vit-b16-in21k.*or by hand: download https://storage.googleapis.com"):
        run.main(["--backbone", "vit", "--task", "dtd", "--out", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


def test_bad_data_prints_file_and_line_without_traceback(demo_root, tmp_path, capsys):
    root = tmp_path / "demo-copy"
    (root / "colours").mkdir(parents=True)
    for split in ("train800", "val200", "train800val200", "test"):
        (root / "colours" / f"{split}.txt").write_text((demo_root / "colours" / f"{split}.txt").read_text())
    (root / "colours" / "images").symlink_to(demo_root / "colours" / "images")
    lines = (root / "colours" / "train800val200.txt").read_text().splitlines()
    lines[6] = lines[6].split()[0] + " not-a-label"
    (root / "colours" / "train800val200.txt").write_text("\n".join(lines) + "\n")
    argv = args(root, tmp_path / "runs")  # an existing --data-root is used as it is, never regenerated
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"{root / 'colours' / 'train800val200.txt'}:7" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserError):  # --debug: the exception (and its traceback) comes through
        run_cli(run.main, argv + ["--debug"])


def test_method_hash_groups_seeds_and_tasks_and_named_methods():
    from vtab_lily.rundir import config_hash, method_hash

    base = {"backbone": "vit-tiny-test", "adapter": "lily", "protocol": "test", "suite": "demo", "task": "count",
            "seed": 0, "num_classes": 5, "adapter_config": {"scale": 1.0}, "lr": 0.01, "method_name": None,
            "out": "runs"}
    other_seed = dict(base, seed=1, task="cells", num_classes=2, out="elsewhere")
    assert method_hash(base) == method_hash(other_seed)
    assert config_hash(base) != config_hash(other_seed)
    assert method_hash(base) != method_hash(dict(base, adapter_config={"scale": 10.0}))
    # A named method (a sweep's per-task tuned settings) is one leaderboard row.
    named = dict(base, method_name="lily (val-selected: scale x ne)")
    tuned = dict(named, task="cells", adapter_config={"scale": 10.0})
    assert method_hash(named) == method_hash(tuned)
    assert method_hash(named) != method_hash(dict(named, protocol="val"))
    assert method_hash(named) != method_hash(dict(named, method_name="another"))
    for key, value in (("precision", "bf16"), ("normalize", True), ("eval_limit", 100)):  # setup switches split it
        assert method_hash(dict(named, **{key: value})) != method_hash(named)


def test_lily_a_grouping_option_is_in_the_label_only_where_it_changes_the_groups(demo_root, tmp_path, capsys):
    """The official A grouping (a new A every depth // ne_a blocks) is the default and unrecorded,
    so runs recorded before the option keep their hashes; ``balanced`` shows in the label where
    it gives other groups (the tiny ViT's 4 blocks, ne=3: 2,1,1 instead of one A per block)."""
    def dry(*extra):
        assert run.main(args(demo_root, tmp_path / "runs", "--dry-run", *extra)) == 0
        return json.loads(capsys.readouterr().out.split("\nparameters:")[0])

    official, balanced = dry("--ne", "3"), dry("--ne", "3", "--adapter-opt", "a_grouping=balanced")
    assert "a_grouping" not in official["config"]["adapter_config"] and "a_grouping" not in official["method"]
    assert "a_grouping=balanced" in balanced["method"].split() and "a_grouping=balanced" in balanced["deviations"]
    assert balanced["config_hash"] != official["config_hash"]
    same = dry("--ne", "2", "--adapter-opt", "a_grouping=balanced")  # 4 blocks, ne 2: the same groups
    assert same["config_hash"] == dry("--ne", "2")["config_hash"] and "a_grouping" not in same["method"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, args(demo_root, tmp_path / "runs", "--dry-run", "--adapter-opt", "a_grouping=balance"))
    assert exit_info.value.code == 2 and "did you mean 'balanced'" in capsys.readouterr().err


def test_demo_lily_on_vit_uses_the_demo_scale_and_a_given_scale_wins(demo_root, tmp_path, capsys):
    """The demo's Lily (ViT) runs at s=0.1 (at s=1 it collapses to chance on the random tiny
    backbone, docs/demo.md): in the label, not a deviation of the demo; --scale still wins; the
    real benchmark and Vim keep the official s=1."""
    def dry(*argv):
        assert run.main([*argv, "--dry-run", "--out", str(tmp_path / "runs")]) == 0
        return json.loads(capsys.readouterr().out.split("\nparameters:")[0])

    base = ["--backbone", "vit", "--adapter", "lily", "--task"]
    demo = dry("--demo", *base, "orientation", "--data-root", str(demo_root))
    assert demo["config"]["adapter_config"]["scale"] == 0.1 and demo["deviations"] == []
    assert demo["method"] == "lily r=32 ne=4 s=0.1 k,v,mlp"
    explicit = dry("--demo", *base, "orientation", "--data-root", str(demo_root), "--scale", "0.1")
    assert explicit["config_hash"] == demo["config_hash"]  # the same run, typed or not
    given = dry("--demo", *base, "orientation", "--data-root", str(demo_root), "--scale", "1")
    assert given["config"]["adapter_config"]["scale"] == 1.0 and given["method"].startswith("lily r=32 ne=4 s=1 ")
    real = dry(*base, "dtd")
    assert real["config"]["adapter_config"]["scale"] == 1.0 and real["deviations"] == []
    vim = dry("--demo", "--backbone", "vim", "--adapter", "lily", "--task", "orientation", "--data-root", str(demo_root))
    assert vim["config"]["adapter_config"]["scale"] == 1.0
