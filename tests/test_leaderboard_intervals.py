"""Intervals and the best-row mark in the leaderboard: per-task 95% intervals from each run's
predictions (or from accuracy x test size for older runs), both averages with intervals, the
CSV's columns, the "indistinguishable from the best" mark (paired and unpaired), the main
table's width, grouping by backbone, and the user's command."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from test_leaderboard import shown, write_result

from vtab_lily import predictions
from vtab_lily.leaderboard import collect, write_leaderboards
from vtab_lily.leaderboard.records import tables_csv
from vtab_lily.leaderboard.render import main_rows, table_markdown
from vtab_lily.leaderboard.text import round_half_up
from vtab_lily.tasks import DEMO_TASKS, DEMO_TEST_SIZE

LIST_SHA = "ab" * 32  # the demo test list's hash as the tests' runs record it
DEMO = list(DEMO_TASKS)


def keep_predictions(run_dir: Path, hits: np.ndarray, list_sha: str = LIST_SHA) -> None:
    """Give a written run the predictions.npz a run of this version keeps: per example the true
    class and a predicted one that is right exactly where ``hits`` is; accuracies to match."""
    path = run_dir / "result.json"
    result = json.loads(path.read_text())
    n = len(hits)
    labels = np.arange(n) % 2
    final = np.where(hits, labels, 1 - labels)
    (run_dir / predictions.FILE).write_bytes(predictions.encode(labels, final, final, result["config_hash"], list_sha))
    result["predictions"] = predictions.record(n, "test", list_sha)
    result["accuracy"]["final"] = result["accuracy"]["best"] = 100.0 * int(hits.sum()) / n
    path.write_text(json.dumps(result))


def demo_row(runs: Path, name: str, hits: dict[str, np.ndarray], kept: bool = True, seed: int = 0, **kw) -> None:
    """One method on the four demo tasks, scored as ``hits`` says (with or without predictions)."""
    for task in DEMO:
        run_dir = write_result(runs, backbone="vit-tiny-test", suite_name="demo", task=task, seed=seed, method=name,
                               method_hash=name.encode().hex()[:8].ljust(8, "0"), adapter=name.split()[0],
                               final=100.0 * int(hits[task].sum()) / len(hits[task]), **kw)
        if kept:
            keep_predictions(run_dir, hits[task])


def base_hits(accuracy: float = 0.8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {task: rng.random(DEMO_TEST_SIZE) < accuracy for task in DEMO}


def flipped(hits: dict[str, np.ndarray], wrong: int, right: int = 0) -> dict[str, np.ndarray]:
    """The same answers with ``wrong`` correct ones made wrong and ``right`` wrong ones made right, per task."""
    out = {}
    for task, h in hits.items():
        h = h.copy()
        h[np.flatnonzero(h)[:wrong]] = False
        h[np.flatnonzero(~h)[-right:] if right else []] = True
        out[task] = h
    return out


def demo_table(runs: Path, metric: str = "final"):
    (table,) = collect(runs, metric).tables
    return table


def test_cells_and_averages_carry_95_percent_intervals_and_the_csv_has_them_in_full(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    hits = base_hits()
    demo_row(runs, "lily kept", hits)
    demo_row(runs, "lora old", flipped(hits, 3), kept=False)
    table = demo_table(runs)
    lily = next(r for r in table.rows if r.method == "lily kept")
    k = int(hits["colours"].sum())
    wilson = sps.binomtest(k, DEMO_TEST_SIZE).proportion_ci(0.95, method="wilson")  # the known answer
    cell = lily.cells["colours"]
    assert cell.interval.lo == pytest.approx(100 * wilson.low) and cell.interval.hi == pytest.approx(100 * wilson.high)
    assert cell.interval.n_examples == DEMO_TEST_SIZE and cell.runs.matrix is not None
    cells = shown(table)["lily kept"]
    assert cells["colours"] == f"{round_half_up(cell.mean)} ±{round_half_up(cell.interval.half_width)}"
    avg = lily.avg.by_groups_interval
    assert avg.lo < lily.avg_groups < avg.hi and avg.half_width < cell.interval.half_width  # four tasks: narrower
    assert cells["Avg (group means)"] == f"{round_half_up(lily.avg_groups)} ±{round_half_up(avg.half_width)}"
    records = {r["method"]: r for r in csv.DictReader(io.StringIO(tables_csv([table])))}
    kept, old = records["lily kept"], records["lora old"]
    assert float(kept["colours_lo"]) == pytest.approx(100 * wilson.low) and float(kept["colours_hi"]) == pytest.approx(100 * wilson.high)
    assert kept["colours_n_examples"] == str(DEMO_TEST_SIZE) and kept["colours_interval"] == "test examples"
    assert kept["colours_predictions"] == "True" and old["colours_predictions"] == "False"
    assert kept["colours_n_seeds"] == "1" and kept["colours_seed_std"] == "" and kept["n_seeds"] == "1" and kept["seed_ids"] == "0"
    for name in ("avg_group_means", "avg_tasks", "Natural"):
        assert float(kept[f"{name}_lo"]) < float(kept[name]) < float(kept[f"{name}_hi"])
    assert kept["vs_best"] == "best" and kept["interval_level"] == "0.95" and kept["predictions_tasks"] == "4"


def test_several_seeds_widen_the_interval_and_the_seeds_std_is_named_apart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    hits = base_hits()
    for seed, wrong in enumerate((0, 30, 60)):  # seeds that disagree a lot
        demo_row(runs, "lora seeds", flipped(hits, wrong), seed=seed)
    demo_row(runs, "lily one", hits)
    table = demo_table(runs)
    rows = {r.method: r for r in table.rows}
    spread, single = rows["lora seeds"].cells["colours"], rows["lily one"].cells["colours"]
    assert spread.interval.kind == "test examples and seeds" and spread.interval.n_seeds == 3
    assert spread.interval.half_width > single.interval.half_width  # the seeds' spread counts
    text = shown(table)["lora seeds"]["colours"]
    assert text == (f"{round_half_up(spread.mean)} ±{round_half_up(spread.interval.half_width)} "
                    f"(sd {round_half_up(spread.std)})")
    assert shown(table)["lora seeds"]["Seeds"] == "3"


def test_an_old_run_without_predictions_still_appears_and_the_table_says_so(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    demo_row(runs, "lora old", base_hits(), kept=False)  # a result.json as runs wrote it before predictions
    table = demo_table(runs)
    (row,) = table.rows
    assert row.cells["count"].interval is not None and row.cells["count"].runs.matrix is None  # counts from accuracy
    assert row.cells["count"].interval.n_examples == DEMO_TEST_SIZE
    cells = shown(table)["lora old"]
    assert " ±" in cells["count"] and " ±" in cells["Avg (all tasks)"] and cells["Predictions"] == "none"
    md = table_markdown(table)
    assert "Rows without predictions on every task (runs made before they were kept): lora old (none)" in md


def _marks(table) -> dict[str, str]:
    return {label: c["Vs best"] for label, c in shown(table).items()}


def test_rows_indistinguishable_from_the_best_are_marked_and_clearly_worse_ones_are_not(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    hits = base_hits()
    demo_row(runs, "lily best", hits)
    demo_row(runs, "lora same", flipped(hits, 2, 1))  # differs on 3 images a task: within noise
    demo_row(runs, "full worse", flipped(hits, 45))  # 15 points lower everywhere
    marks = _marks(demo_table(runs))
    assert marks == {"lily best": "best", "lora same": "≈ best", "full worse": "below"}


def test_pairing_tells_apart_what_unpaired_intervals_cannot(tmp_path: Path) -> None:
    """The same 3-point gap on the same images: significant when paired (every discordant image
    favours the best), within noise when the row kept no predictions (its mark says unpaired)."""
    hits = base_hits()
    for kept, expected in ((True, "below"), (False, "≈ best (unpaired)")):
        runs = tmp_path / f"runs-{kept}"
        demo_row(runs, "lily best", hits)
        demo_row(runs, "lora close", flipped(hits, 9), kept=kept)
        table = demo_table(runs)
        assert _marks(table)["lora close"] == expected
        record = next(r for r in csv.DictReader(io.StringIO(tables_csv([table]))) if r["method"] == "lora close")
        assert record["vs_best_paired"] == str(kept) and float(record["vs_best_lead_lo"]) < float(record["vs_best_lead_hi"])


def test_the_main_table_is_narrow_and_everything_else_is_below_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for task in ("cifar", "dtd"):
        write_result(runs, task=task)
    (table,) = collect(runs).tables
    headers, _ = main_rows(table)
    assert headers == ["Method", "Setup", "Seeds", "Avg (group means)", "Avg (all tasks)", "Vs best", "Params (M, no head)"]
    (both,) = collect(runs, "both").tables
    assert len(main_rows(both)[0]) == 9  # plus the two test-selected averages
    md = table_markdown(table)
    for heading in ("### Per task: Natural", "### Per task: Specialized", "### Per task: Structured", "### Details"):
        assert heading in md
    widest = max(len(line.split(" | ")) for line in md.splitlines() if line.startswith("|"))
    assert widest <= 10  # Structured: the method, 8 tasks and the group mean; none has the 17+ of one wide table
    # the CSV keeps every column of every section
    record = next(csv.DictReader(io.StringIO(tables_csv([table]))))
    for column in ("cifar", "cifar_lo", "Natural", "avg_tasks_hi", "vs_best", "params_head_m", "train_time_s", "data_digest"):
        assert column in record


def test_leaderboard_files_are_grouped_by_backbone_with_their_reference_rows(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_result(runs, backbone="vit-b16-in21k", task="dtd")
    write_result(runs, backbone="vim-s", adapter="lily", method="lily vim", method_hash="f0000001", task="dtd")
    out = tmp_path / "out"
    write_leaderboards(collect(runs), out, plots=False)
    index = (out / "index.md").read_text()
    vit, vim = (out / "vit-b16-in21k.md").read_text(), (out / "vim-s.md").read_text()
    assert index.index("## vim-s") < index.index("## vit-b16-in21k")  # one section each
    assert "Google's original ImageNet-21k release" in index and "(family vit, 224 px input)" in index
    assert "(family vim, 224 px input)" in index and "[vim-s.md](vim-s.md)" in index
    assert vit.startswith("# Leaderboard: vit-b16-in21k\n\nViT-B/16, Google's original")
    assert "NOAH (reported)" in vit and "NOAH (reported)" not in vim  # reference rows stay with their backbone
    assert "Lily-S (reported)" in vim and "Lily-S (reported)" not in vit
    assert "lily vim" in vim and "lily vim" not in vit


def test_the_users_command_writes_intervals_marks_and_a_forest_plot(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    hits = base_hits()
    demo_row(runs, "lily best", hits)
    demo_row(runs, "lora same", flipped(hits, 2, 1))
    demo_row(runs, "full old", flipped(hits, 45), kept=False)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "vtab_lily.leaderboard", "--runs", str(runs), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    md = (out / "vit-tiny-test.md").read_text()
    assert "| lily best" in md and "| best " in md and "| ≈ best " in md and "below (unpaired)" in md
    assert "not a hyperparameter-search interval" in md and "full old (none)" in md
    forest = out / "vit-tiny-test.demo-test.forest-1.png"
    assert forest.read_bytes().startswith(b"\x89PNG") and f"]({forest.name})" in md
    assert "Forest plots: each row minus the baseline lily best" in md and "- lora same minus lily best" in md
    assert not (out / "vit-tiny-test.demo-test.forest-2.png").exists()  # full old kept no predictions
