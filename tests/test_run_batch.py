"""Many runs in one process (``--batch FILE``, issue 13.5) and skipping a finished run without
building the model or loading weights (issue 16.17); backbone weights loaded once per process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vtab_lily import backbones, build, run

TINY = ["--demo", "--backbone", "vit", "--adapter", "lily", "--rank", "4", "--img-size", "16", "--epochs", "1",
        "--batch-size", "100", "--no-tensorboard"]


@pytest.fixture
def spy(monkeypatch):
    """Records each create_backbone call: (checkpoint given, built on the meta device)."""
    calls = []
    real = backbones.create_backbone

    def create(*args, **kwargs):
        calls.append((kwargs.get("checkpoint") is not None, torch.empty(0).device.type == "meta"))
        return real(*args, **kwargs)

    monkeypatch.setattr(backbones, "create_backbone", create)
    return calls


def write_batch(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_batch_runs_in_one_process_continues_past_bad_lines_and_skips_finished_runs(
        demo_root, tmp_path, spy, capsys, monkeypatch):
    out = tmp_path / "runs"
    common = [*TINY, "--data-root", str(demo_root), "--out", str(out)]
    batch = write_batch(tmp_path / "batch.jsonl", [
        [*common, "--task", "colours"],
        "# a comment, then a line that is not a list of arguments",
        '{"task": "cells"}',
        [*common, "--task", "count"],
        [*common, "--task", "cels"],  # a typo: reported, the others go on
    ])
    report = tmp_path / "report.tsv"
    monkeypatch.setenv("VTAB_LILY_BATCH_REPORT", str(report))
    assert run.main(["--batch", str(batch)]) == 2  # the largest code seen: bad input
    captured = capsys.readouterr()
    assert "batch.jsonl:3: bad line: not a JSON list of strings" in captured.err
    assert "did you mean 'cells'" in captured.err
    assert "=== batch: 2 done or skipped, 0 running elsewhere, 2 failed" in captured.out
    assert sorted(p.parts[-3] for p in (p.relative_to(out) for p in out.rglob("result.json"))) == ["colours", "count"]
    codes = [line.split("\t")[0] for line in report.read_text().splitlines()]
    assert codes == ["0", "2", "0", "2"]
    assert sum(not meta for _, meta in spy) == 2  # one real model per run that trained

    spy.clear()
    write_batch(batch, [[*common, "--task", "colours"], [*common, "--task", "count"]])
    assert run.main(["--batch", str(batch)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped (complete)") == 2
    assert spy and all(meta for _, meta in spy)  # skipping built nothing real and loaded no weights


def test_skipping_a_finished_run_loads_no_weights(demo_root, tmp_path, spy, monkeypatch, capsys):
    out = tmp_path / "runs"
    weights = tmp_path / "tiny.pth"
    torch.save(backbones.create_backbone("vit-tiny-test", num_classes=3, img_size=16).state_dict(), weights)
    spy.clear()
    argv = [*TINY, "--data-root", str(demo_root), "--out", str(out), "--task", "colours", "--checkpoint", str(weights)]
    assert run.main(argv) == 0
    assert [c for c, meta in spy if not meta] == [True]  # the real build loaded the file
    spy.clear()
    monkeypatch.setattr(run, "build_model", lambda *a: pytest.fail("a finished run must not build the model"))
    monkeypatch.setattr(run, "load_data", lambda *a: pytest.fail("a finished run must not load data"))
    assert run.main(argv) == 0
    assert "already complete" in capsys.readouterr().out
    assert all(meta and not loaded for loaded, meta in spy)


def test_backbone_weights_are_loaded_once_and_give_the_same_model(tmp_path, spy):
    weights = tmp_path / "tiny.pth"
    torch.save(backbones.create_backbone("vit-tiny-test", num_classes=3, img_size=16).state_dict(), weights)
    spy.clear()
    config = run.check_args([*TINY, "--task", "colours", "--checkpoint", str(weights)])
    config, *_ = run.identify(config)
    build._WEIGHTS.clear()
    spy.clear()
    first = run.build_model(config, weights).state_dict()
    second = run.build_model(config, weights).state_dict()  # from the cache
    assert [loaded for loaded, _ in spy] == [True, False]  # the file was read once
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    frozen = torch.load(weights, weights_only=True)
    assert torch.equal(second["patch_embed.proj.weight"], frozen["patch_embed.proj.weight"])
    cells = dict(config, num_classes=2, task="cells")  # another task: a fresh head of its own size
    assert run.build_model(cells, weights).get_classifier().out_features == 2 and len(spy) == 3


def test_cached_weights_with_pre_logits_give_the_same_head(tmp_path):
    """With the frozen pre_logits layer kept, the cached build (layer structure, then the cached
    tensors) must draw the head at the same point of the random stream as the build from the file."""
    state = backbones.create_backbone("vit-tiny-test", num_classes=3, img_size=16).state_dict()
    state["pre_logits.fc.weight"], state["pre_logits.fc.bias"] = torch.randn(48, 48), torch.randn(48)
    weights = tmp_path / "tiny.pth"
    torch.save(state, weights)
    config = run.check_args([*TINY, "--task", "colours", "--checkpoint", str(weights), "--pre-logits"])
    config, *_ = run.identify(config)
    build._WEIGHTS.clear()
    first = run.build_model(config, weights)
    second = run.build_model(config, weights)  # from the cache
    assert first.pre_logits_kept and second.pre_logits_kept
    one, two = first.state_dict(), second.state_dict()
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_router_history_covers_each_evaluation_only_and_survives_a_resume(tmp_path):
    """before_eval resets the routers' window, so each history entry (and router_weights.json,
    the last one) averages the evaluation's forward passes only, not the training epoch's."""
    from vtab_lily.adapters import apply_adapter, lily_router_weights, reset_router_weights
    from vtab_lily.rundir import RunDir
    from vtab_lily.runexec import EvalRecorder

    torch.manual_seed(0)
    model = apply_adapter(backbones.create_backbone("vit-tiny-test", num_classes=3, img_size=16), "lily", rank=4).eval()
    config = {"adapter": "lily", "epochs": 2}
    run_dir = RunDir(tmp_path / "run")
    recorder = EvalRecorder(model, run_dir, None, config, start_epoch=0)
    train_images, eval_images = torch.randn(8, 3, 16, 16) * 5, torch.randn(4, 3, 16, 16)
    reset_router_weights(model)
    model(eval_images)
    eval_only = lily_router_weights(model)
    for epoch in (1, 2):
        model(train_images)  # a training epoch
        recorder.before_eval()
        model(eval_images)  # the evaluation
        recorder.on_eval(epoch, 50.0)
    history = run_dir.read_router_history()
    assert history["epochs"] == [1, 2] and history["sites"] == list(eval_only)
    expected = [w for ws in eval_only.values() for w in ws]
    for weights in history["weights"]:
        assert [w for ws in weights for w in ws] == pytest.approx(expected, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    resumed = EvalRecorder(model, run_dir, None, config, start_epoch=1)
    assert resumed.history["epochs"] == [1]  # evaluations after the checkpoint are redone


def test_ctrl_c_stops_the_whole_batch_with_130(demo_root, tmp_path, monkeypatch, capsys):
    from vtab_lily import rundir

    common = [*TINY, "--data-root", str(demo_root), "--out", str(tmp_path / "runs")]
    batch = write_batch(tmp_path / "b.jsonl", [[*common, "--task", "colours"], [*common, "--task", "count"]])
    rundir._fault_counts.clear()
    monkeypatch.setenv("VTAB_LILY_FAULT", "train_step:3:INT")
    assert run.main(["--batch", str(batch)]) == 130
    err = capsys.readouterr().err
    assert "interrupted during vit lily colours" in err and "count" not in err  # the second run never started
    assert not list((tmp_path / "runs").rglob("result.json"))


def test_result_provenance_reads_the_data_manifest_and_the_vim_kernel_paths(monkeypatch):
    from vtab_lily.data import readcheck
    from vtab_lily.runexec import data_provenance, kernels_for

    cpu = torch.device("cpu")
    assert kernels_for({"backbone": "vit-tiny-test"}, cpu) is None
    monkeypatch.setattr(backbones, "scan_paths", lambda device: {"scan": "triton", "conv": "pytorch"}, raising=False)
    assert kernels_for({"backbone": "vim-tiny-test"}, cpu) == {"scan": "triton", "conv": "pytorch"}
    config = {"data_root": "somewhere", "task": "dtd"}
    manifest = {"schema": 1, "task": "dtd", "source": "tfds", "encoding": "png", "fingerprint": "0123456789abcdef",
                "splits": {}}
    monkeypatch.setattr(readcheck, "read_manifest", lambda root, task: manifest if task == "dtd" else None)
    assert data_provenance(config) == {"fingerprint": "0123456789abcdef", "encoding": "png", "source": "tfds"}
    assert data_provenance(dict(config, task="kitti")) == {"fingerprint": None, "encoding": None, "source": None}


def test_a_help_or_argparse_exit_on_one_line_fails_that_line_and_the_batch_goes_on(demo_root, tmp_path, capsys):
    """Issue 22.12: ``["-h"]`` printed the help and ended the whole batch with exit 0; an option
    argparse rejects ended it too (SystemExit). Each is now that line's failure."""
    common = [*TINY, "--data-root", str(demo_root), "--out", str(tmp_path / "runs")]
    batch = write_batch(tmp_path / "batch.jsonl", [
        ["-h"],
        [*common, "--task", "colours", "--help", "--dry-run"],
        [*common, "--task", "colours", "-hx"],
        [*common, "--task", "colours", "--no-such-option"],
        [*common, "--task", "colours", "--dry-run"],
    ])
    assert run.main(["--batch", str(batch)]) == 2
    captured = capsys.readouterr()
    assert "batch.jsonl:1: bad line: -h asks for the help" in captured.err
    assert "batch.jsonl:2: bad line: --help asks for the help" in captured.err
    assert "batch.jsonl:3: error: argument -h/--help: ignored explicit argument 'x'" in captured.err
    assert "batch.jsonl:4: error: unrecognized arguments: --no-such-option" in captured.err
    assert "--- [5/5] vit lily colours: dry run" in captured.out
    assert "=== batch: 1 done or skipped, 0 running elsewhere, 4 failed" in captured.out


def test_any_system_exit_inside_a_line_is_that_lines_failure(tmp_path, capsys):
    from vtab_lily.runbatch import run_batch

    def execute(argv):
        if argv == ["exit0"]:
            raise SystemExit(0)  # e.g. an argparse action that prints and exits
        if argv == ["exit3"]:
            raise SystemExit(3)
        return 0, "finished"

    batch = write_batch(tmp_path / "b.jsonl", [["exit0"], ["exit3"], ["ok"]])
    assert run_batch(batch, execute) == 3
    captured = capsys.readouterr()
    assert "b.jsonl:1: bad arguments (the parser exited with 0)" in captured.err
    assert "b.jsonl:2: bad arguments (the parser exited with 3)" in captured.err
    assert "=== batch: 1 done or skipped, 0 running elsewhere, 2 failed" in captured.out


def test_a_line_nested_past_the_json_parsers_depth_is_a_bad_line(tmp_path, capsys):
    from vtab_lily.runbatch import run_batch

    batch = write_batch(tmp_path / "b.jsonl", ["[" * 100_000, ["ok"]])
    assert run_batch(batch, lambda argv: (0, "finished")) == 2
    captured = capsys.readouterr()
    assert "b.jsonl:1: bad line: not JSON" in captured.err and "--- [2/2]" in captured.out


def test_the_batch_module_does_not_import_the_runner():
    """run.py <-> runbatch.py was an import cycle: the runner hands ``execute`` in."""
    import ast
    import inspect

    from vtab_lily import runbatch

    tree = ast.parse(inspect.getsource(runbatch))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "run" not in imported and "vtab_lily.run" not in imported
