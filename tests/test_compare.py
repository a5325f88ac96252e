"""``python -m vtab_lily.leaderboard compare A B`` on run folders written here in the real layout
(result.json + predictions.npz): the table, the forest plot, old runs without predictions, method
names (label, hash prefix, run folder; ambiguous and unknown ones), test lists that differ."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_leaderboard import PNG_SIGNATURE, write_result

from vtab_lily import predictions
from vtab_lily.errors import UserError
from vtab_lily.leaderboard.compare import main, run_comparison
from vtab_lily.leaderboard.forest import forest_plot
from vtab_lily.tasks import suite

DEMO = list(suite("demo"))  # four tasks of 300 test images: small, and in the real registry
N = 300
LIST_SHA = hashlib.sha256(b"demo test list").hexdigest()


def write_run(runs: Path, correct: np.ndarray | None, *, task: str, seed: int = 0, method: str = "lora r=8",
              method_hash: str = "aaaa1111", adapter: str = "lora", backbone: str = "vit-tiny",
              list_sha256: str = LIST_SHA, final: float | None = None) -> Path:
    """A complete demo-suite run; ``correct`` (n booleans) becomes its predictions.npz, None writes an
    old run (no predictions, accuracy ``final``)."""
    acc = final if correct is None else 100.0 * int(correct.sum()) / len(correct)
    run_dir = write_result(runs, backbone=backbone, adapter=adapter, task=task, seed=seed, final=acc, best=acc,
                           method=method, method_hash=method_hash, suite_name="demo")
    if correct is None:
        return run_dir
    labels = np.arange(len(correct)) % 2
    predicted = np.where(correct, labels, 1 - labels)
    result = json.loads((run_dir / "result.json").read_text())
    result["predictions"] = predictions.record(len(correct), "test", list_sha256)
    (run_dir / "predictions.npz").write_bytes(predictions.encode(labels, predicted, predicted, result["config_hash"], list_sha256))
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def correctness(rng: np.random.Generator, p: float, shared: np.ndarray | None = None, agree: float = 0.0) -> np.ndarray:
    """n booleans with accuracy about ``p``; with ``shared``, a fraction ``agree`` of the images copy it."""
    own = rng.random(N) < p
    if shared is None:
        return own
    return np.where(rng.random(N) < agree, shared, own)


@pytest.fixture()
def demo_runs(tmp_path: Path) -> Path:
    """lily (3 seeds) clearly above lora (3 seeds) on every demo task, with predictions; plus an
    old lora-like method without predictions on one task."""
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for task in DEMO:
        base = rng.random(N) < 0.6
        for seed in range(3):
            lora = correctness(rng, 0.6, base, agree=0.8)
            lily = lora | (rng.random(N) < 0.6)  # lily gets right what lora does, and more
            write_run(runs, lora, task=task, seed=seed)
            write_run(runs, lily, task=task, seed=seed, method="lily r=4 ne=2", method_hash="bbbb2222", adapter="lily")
    write_run(runs, None, task=DEMO[0], method="old lora", method_hash="cccc3333", final=61.0)
    return runs


def test_cli_prints_the_table_and_writes_the_forest_plot(demo_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "forest.png"
    proc = subprocess.run([sys.executable, "-m", "vtab_lily.leaderboard", "compare", "lily r=4 ne=2", "aaaa",
                           "--runs", str(demo_runs), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("A: lily r=4 ne=2 [bbbb2222") and lines[1].startswith("B: lora r=8 [aaaa1111")
    rows = [line for line in lines if line.startswith("| ") and line.split("|")[1].strip() in DEMO]
    assert len(rows) == 4 and all("| better" in row for row in rows), proc.stdout
    assert "A is better on 4, worse on 0" in proc.stdout
    assert "Avg (group means): A " in proc.stdout and "Avg (all tasks): A " in proc.stdout
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(out) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_old_run_without_predictions_is_not_paired_and_not_silently(demo_runs: Path, capsys) -> None:
    assert main(["old lora", "aaaa1111", "--runs", str(demo_runs)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith(f"| {DEMO[0]} "))
    assert "not paired: no predictions (A)" in row
    assert "not paired: 1." in text
    assert "left out (one side only): A only -; B only " + ", ".join(DEMO[1:]) in text
    comparison, _, _ = run_comparison(demo_runs, "old lora", "aaaa1111")
    (only,) = comparison.tasks
    assert only.paired is None and only.verdict == "not paired" and np.isnan(only.p_holm)
    assert comparison.avg_tasks.unpaired == 1 and comparison.avg_tasks.lo < comparison.avg_tasks.diff < comparison.avg_tasks.hi


def test_a_method_against_itself_is_zero_with_p_one(demo_runs: Path, tmp_path: Path) -> None:
    comparison, a, b = run_comparison(demo_runs, "bbbb", "lily r=4 ne=2")
    assert a is b
    for row in comparison.tasks:
        assert (row.paired.diff, row.paired.p, row.p_holm, row.verdict) == (0.0, 1.0, 1.0, "indistinguishable")
        assert row.paired.lo <= 0 <= row.paired.hi
    assert comparison.avg_tasks.diff == 0 and comparison.avg_tasks.lo <= 0 <= comparison.avg_tasks.hi
    assert forest_plot(comparison, tmp_path / "self.png") == len(DEMO) + 2


def test_run_folder_names_its_method_and_metric_best_pairs_selected(demo_runs: Path) -> None:
    folder = next((demo_runs / "vit-tiny" / "lily" / DEMO[1]).iterdir())
    comparison, a, _ = run_comparison(demo_runs, str(folder), "aaaa1111", metric="best")
    assert a.method_hash == "bbbb2222" and all(r.verdict == "better" for r in comparison.tasks)


def test_different_test_lists_refuse_to_pair(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    rng = np.random.default_rng(1)
    write_run(runs, rng.random(N) < 0.5, task=DEMO[0])
    write_run(runs, rng.random(N) < 0.9, task=DEMO[0], method="lily", method_hash="bbbb2222", adapter="lily",
              list_sha256=hashlib.sha256(b"another list").hexdigest())
    comparison, _, _ = run_comparison(runs, "lily", "lora r=8")
    (row,) = comparison.tasks
    assert row.paired is None and "different test lists" in row.note


@pytest.mark.parametrize("spec, message", [
    ("nope", "no method 'nope'"),
    ("aa", "no method 'aa'"),  # too short a hash prefix to count as one
    ("lora r=9", "did you mean 'lora r=8'"),
])
def test_unknown_names_list_the_candidates(demo_runs: Path, spec: str, message: str) -> None:
    with pytest.raises(UserError, match="methods: ") as err:
        run_comparison(demo_runs, spec, "aaaa1111")
    assert message in str(err.value) and "lora r=8 [aaaa1111 vit-tiny]" in str(err.value)


def test_ambiguous_names_list_the_matches_and_backbone_narrows(demo_runs: Path) -> None:
    write_run(demo_runs, np.ones(N, bool), task=DEMO[0], backbone="vim-tiny", method_hash="aaaa9999")
    with pytest.raises(UserError, match="names 2 methods: lora r=8 \\[aaaa1111 vit-tiny\\]; lora r=8 \\[aaaa9999 vim-tiny\\]"):
        run_comparison(demo_runs, "lily r=4 ne=2", "lora r=8")
    with pytest.raises(UserError, match="names 2 methods"):
        run_comparison(demo_runs, "lily r=4 ne=2", "aaaa")
    comparison, _, b = run_comparison(demo_runs, "lily r=4 ne=2", "lora r=8", backbone="vit-tiny")
    assert b.method_hash == "aaaa1111" and len(comparison.tasks) == 4


def test_bad_arguments_are_one_line_errors(demo_runs: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="--out .*png"):
        main(["bbbb", "aaaa", "--runs", str(demo_runs), "--out", str(tmp_path / "plot.txt")])
    with pytest.raises(UserError, match="unknown --metric 'both'"):
        main(["bbbb", "aaaa", "--runs", str(demo_runs), "--metric", "both"])
    with pytest.raises(UserError, match="no complete results"):
        main(["bbbb", "aaaa", "--runs", str(demo_runs), "--backbone", "nothing"])
    with pytest.raises(SystemExit):
        main(["bbbb", "aaaa", "--level", "nan"])
    assert "must be in [0.5, 1)" in capsys.readouterr().err
    with pytest.raises(UserError, match="empty method name"):
        main([" ", "aaaa", "--runs", str(demo_runs)])
    with pytest.raises(UserError, match="a folder without result.json"):
        main([str(demo_runs), "aaaa", "--runs", str(demo_runs)])


def test_hand_edited_results_and_seeds_only_one_side_has(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    rng = np.random.default_rng(3)
    for seed in range(3):
        write_run(runs, rng.random(N) < 0.7, task=DEMO[0], seed=seed, method="lily", method_hash="bbbb2222", adapter="lily")
    write_run(runs, rng.random(N) < 0.5, task=DEMO[0], method="lora\nr=8 $x$ |", method_hash="aaaa1111")
    edited = write_run(runs, rng.random(N) < 0.7, task=DEMO[0], seed=9, method="lily", method_hash="bbbb2222", adapter="lily")
    text = (edited / "result.json").read_text()
    (edited / "result.json").write_text(text.replace('"final": ', '"final": NaN, "was": ', 1))
    assert main(["lily", "aaaa", "--runs", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert f"skipped: {edited / 'result.json'}" in err and "accuracy.'final'" in err  # never silently
    assert "B: lora r=8 $x$ | [aaaa1111 vit-tiny]" in out  # one line
    assert "paired on seed 0 only (A has 3, B 1)" in out


def test_an_adapter_name_stands_for_its_one_method(demo_runs: Path) -> None:
    comparison, a, _ = run_comparison(demo_runs, "lily", "aaaa1111")
    assert a.method_hash == "bbbb2222" and len(comparison.tasks) == 4
    with pytest.raises(UserError, match="'lora' names 2 methods: lora r=8 \\[aaaa1111 vit-tiny\\]; old lora \\[cccc3333"):
        run_comparison(demo_runs, "lily", "lora")


def test_same_label_and_hash_apart_by_precision_and_result_json_as_a_name(demo_runs: Path) -> None:
    run = write_run(demo_runs, np.ones(N, bool), task=DEMO[0], seed=5)
    result = json.loads((run / "result.json").read_text())
    result["precision"] = "bf16"
    (run / "result.json").write_text(json.dumps(result))
    with pytest.raises(UserError, match=r"names 2 methods: lora r=8 \[aaaa1111 vit-tiny bf16 \?\]; "
                                        r"lora r=8 \[aaaa1111 vit-tiny precision \? \?\]"):
        run_comparison(demo_runs, "lily", "aaaa1111")
    comparison, _, b = run_comparison(demo_runs, "lily", str(run / "result.json"))
    assert b.tag and [r.task for r in comparison.tasks] == [DEMO[0]]


def test_old_runs_count_on_the_protocols_evaluation_split() -> None:
    from vtab_lily.leaderboard.counts import split_size  # compare and the leaderboard both count with it

    old = {"task": "dtd", "suite": "vtab", "protocol": "val", "config": {}}
    assert split_size(old, "final") == 200  # val200, not dtd's 1,880 test images
    assert split_size({**old, "protocol": "test"}, "final") == 1880
    assert split_size({**old, "protocol": "test", "config": {"eval_limit": 500}}, "best") == 500
    assert split_size({**old, "predictions": {"n": 77}}, "final") == 77
