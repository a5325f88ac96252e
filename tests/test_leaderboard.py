"""Leaderboard tables from hand-written result directories: numbers, partial marks, seeds,
--metric best, reference rows, files (md, csv, valid PNGs) and CLI errors."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from vtab_lily.errors import UserError, run_cli
from vtab_lily.leaderboard import collect
from vtab_lily.leaderboard.__main__ import main
from vtab_lily.leaderboard.reference import load_reference
from vtab_lily.leaderboard.records import tables_csv
from vtab_lily.leaderboard.render import markdown_sections, table_markdown
from vtab_lily.leaderboard.table import build_tables, suite_groups
from vtab_lily.leaderboard.text import round_half_up
from vtab_lily.tasks import GROUPS, Task, register_suite, suite, task_names

VTAB = task_names("vtab")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_result(runs: Path, *, backbone="vit-b16-in21k", adapter="lora", task="dtd", seed=0, final=70.0,
                 best=None, method="lora r=8", method_hash="aaaa1111", suite_name="vtab", protocol="test",
                 params=300_000, train_s=10.0, peak_mb=1000.0, config_hash=None) -> Path:
    """A result directory laid out and filled as ARCHITECTURE.md says run.py writes it."""
    identity = f"{backbone}/{method_hash}/{task}/{seed}/{suite_name}/{protocol}"
    config_hash = config_hash or hashlib.sha256(identity.encode()).hexdigest()[:8]
    run_dir = runs / backbone / adapter / task / config_hash
    run_dir.mkdir(parents=True)
    config = {"backbone": backbone, "adapter": adapter, "task": task, "seed": seed, "suite": suite_name, "protocol": protocol}
    (run_dir / "config.json").write_text(json.dumps(config))
    result = {
        "schema": 1, "status": "complete", "backbone": backbone, "adapter": adapter, "task": task,
        "suite": suite_name, "protocol": protocol, "seed": seed, "method": method, "method_hash": method_hash,
        "config": config, "config_hash": config_hash,
        "accuracy": {"final": final, "best": final + 1.0 if best is None else best, "best_epoch": 7,
                     "eval_split": "test", "best_is_test_selected": True},
        "params": {"adapter": params - 36_000, "head": 36_000, "total": params, "backbone": 85_798_656},
        "time": {"train_s": train_s, "eval_s": 1.0, "train_images_per_s": 100.0},
        "memory": {"peak_mb": peak_mb, "kind": "cpu_peak_rss"},
        "device": "cpu", "versions": {"python": "3.11"}, "git_commit": None, "finished_at": "2026-11-28T12:00:00",
    }
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def lora_final(task_index: int, seed: int) -> float:
    return 50.0 + task_index + 0.5 * seed


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """LoRA: all 19 tasks x 3 seeds; Lily: 4 tasks, 1 seed; plus a failed, a truncated and a
    half-written run that must all be ignored."""
    runs = tmp_path / "runs"
    for i, task in enumerate(VTAB):
        for seed in range(3):
            write_result(runs, task=task, seed=seed, final=lora_final(i, seed), train_s=10.0, peak_mb=1000.0 + seed)
    for task, acc in [("cifar", 80.0), ("dtd", 60.0), ("eurosat", 90.0), ("kitti", 40.0)]:
        write_result(runs, adapter="lily", task=task, method="lily r=32 ne=4", method_hash="bbbb2222",
                     final=acc, best=acc + 5.0, params=120_000, train_s=20.0, peak_mb=900.0)
    failed = runs / "vit-b16-in21k" / "lily" / "svhn" / "deadbeef"
    failed.mkdir(parents=True)
    (failed / "config.json").write_text(json.dumps({"task": "svhn", "seed": 0, "adapter": "lily", "backbone": "vit-b16-in21k"}))
    (failed / "failed.json").write_text(json.dumps({"reason": "loss became NaN", "epoch": 3}))
    # A fourth LoRA seed on dtd whose result.json was cut short: it must not count.
    truncated = write_result(runs, task="dtd", seed=3, final=0.0)
    text = (truncated / "result.json").read_text()
    (truncated / "result.json").write_text(text[: len(text) // 2])
    # A killed writer: only the temporary file exists.
    killed = runs / "vit-b16-in21k" / "lora" / "sun397" / "feedf00d"
    killed.mkdir(parents=True)
    (killed / "config.json").write_text(json.dumps({"task": "sun397", "seed": 9}))
    (killed / ".result.json.tmp-x1y2").write_text(json.dumps({"schema": 1, "status": "complete"}))
    return runs


def rows_by_method(table):
    return {row.method: row for row in table.rows}


def shown(table) -> dict[str, dict[str, str]]:
    """Every markdown cell of every row, by the row's (escaped) label and the column's header,
    over all of the table's sections (main, per-task, details)."""
    cells: dict[str, dict[str, str]] = {}
    for section in markdown_sections(table):
        for line in section.body:
            cells.setdefault(line[0], {}).update(zip(section.headers[1:], line[1:]))
    return cells


def test_numbers_both_averages_and_seed_aggregation(runs: Path) -> None:
    report = collect(runs)
    assert len(report.results) == 19 * 3 + 4
    (table,) = report.tables
    assert table.tasks == VTAB and list(table.groups) == list(GROUPS)
    lora = rows_by_method(table)["lora r=8"]
    # dtd (index 2): seeds 0,1,2 -> 52.0, 52.5, 53.0; the truncated seed-3 run is ignored.
    cell = lora.cells["dtd"]
    assert cell.n == 3 and cell.mean == pytest.approx(52.5) and cell.std == pytest.approx(0.5)
    assert lora.seeds == [0, 1, 2]
    # Both averages by hand from the per-task seed means.
    means = {task: sum(lora_final(i, s) for s in range(3)) / 3 for i, task in enumerate(VTAB)}
    natural = sum(means[t] for t in VTAB[:7]) / 7
    specialized = sum(means[t] for t in VTAB[7:11]) / 4
    structured = sum(means[t] for t in VTAB[11:]) / 8
    assert lora.group_means == pytest.approx({"Natural": natural, "Specialized": specialized, "Structured": structured})
    assert lora.avg_groups == pytest.approx((natural + specialized + structured) / 3)
    assert lora.avg_tasks == pytest.approx(sum(means.values()) / 19)
    assert lora.avg_groups != pytest.approx(lora.avg_tasks)  # the two averages really differ here
    assert not lora.avg_groups_partial and not lora.avg_tasks_partial
    assert lora.params_m == pytest.approx(0.264) and lora.head_m == pytest.approx(0.036)  # without the head, head beside
    assert lora.train_time_s == pytest.approx(19 * 3 * 10.0)
    assert lora.peak_memory_mb == pytest.approx(1002.0)
    md = table_markdown(table)
    cells = shown(table)["lora r=8"]
    half = round_half_up(lora.cells["dtd"].interval.half_width)
    assert cells["DTD"] == f"52.5 ±{half} (sd 0.5)"  # the interval's half-width, then the seeds' std, named
    assert cells["Avg (group means)"].startswith(f"{round_half_up(lora.avg_groups)} ±")
    assert cells["Avg (all tasks)"].startswith(f"{round_half_up(lora.avg_tasks)} ±")
    assert "Avg (group means)" in md and "Avg (all tasks)" in md


def test_partial_row_is_marked_never_silently_averaged(runs: Path) -> None:
    (table,) = collect(runs).tables
    lily = rows_by_method(table)["lily r=32 ne=4"]
    assert lily.tasks_done == 4 and lily.avg_groups_partial and lily.avg_tasks_partial
    assert lily.avg_tasks == pytest.approx((80 + 60 + 90 + 40) / 4)
    assert lily.avg_groups == pytest.approx(((80 + 60) / 2 + 90 + 40) / 3)
    assert "svhn" not in lily.cells  # the failed run is not a result
    md = table_markdown(table)
    cells = shown(table)["lily r=32 ne=4"]
    assert cells["SVHN"] == "-"
    assert cells["Avg (group means)"].startswith(f"{round_half_up(lily.avg_groups)}* ±")
    assert cells["Avg (all tasks)"].startswith(f"{round_half_up(lily.avg_tasks)}* ±")
    assert cells["Vs best"] == "not tested"  # a partial row's average covers other tasks
    assert "partial" in md
    # Complete rows come before partial ones, whatever their averages.
    run_rows = [r for r in table.rows if r.kind == "run"]
    assert [r.method for r in run_rows] == ["lora r=8", "lily r=32 ne=4"]
    records = list(csv.DictReader(io.StringIO(tables_csv([table]))))
    lily_record = next(r for r in records if r["method"] == "lily r=32 ne=4")
    assert lily_record["avg_tasks_partial"] == "True" and lily_record["svhn"] == ""
    assert float(lily_record["avg_tasks"]) == pytest.approx(67.5)


def test_metric_best_switches_accuracy_and_title(runs: Path) -> None:
    (final_table,) = collect(runs, "final").tables
    (best_table,) = collect(runs, "best").tables
    assert rows_by_method(best_table)["lily r=32 ne=4"].cells["cifar"].mean == pytest.approx(85.0)
    assert rows_by_method(final_table)["lily r=32 ne=4"].cells["cifar"].mean == pytest.approx(80.0)
    assert rows_by_method(best_table)["lora r=8"].avg_tasks == pytest.approx(rows_by_method(final_table)["lora r=8"].avg_tasks + 1)
    assert "test-selected" in best_table.title and "final-epoch" in final_table.title
    with pytest.raises(UserError, match="metric"):
        collect(runs, "median")


def test_in21k_reference_rows_are_attached_and_marked(runs: Path) -> None:
    (table,) = collect(runs).tables
    reported = [r for r in table.rows if r.kind == "reported"]
    by_name = {r.method: r for r in reported}
    assert {"Full fine-tuning (reported)", "Linear probing (reported)", "LoRA (NOAH: fused qkv, r=8) (reported)",
            "AdaptFormer (reported)", "NOAH (reported)", "Lily (reported)", "VPT-deep (reported)", "BitFit (reported)",
            "SSF (reported)", "Convpass (reported)", "FacT-TT (r<=16) (reported)", "FacT-TK (r<=32) (reported)",
            "Adapter (Houlsby-style, r=8) (reported)", "RepAdapter (reported)"} == set(by_name)
    assert by_name["Lily (reported)"].reported_average == 77.3
    assert by_name["LoRA (NOAH: fused qkv, r=8) (reported)"].params_m == 0.29
    assert by_name["Full fine-tuning (reported)"].reported_average == 68.9
    assert table.rows[-len(reported):] == reported  # after the runs
    md = table_markdown(table)
    assert "not run here" in md and "Reported avg" in md
    lily = shown(table)["Lily (reported)"]
    assert lily["Avg (group means)"] == "77.3 (printed)" and lily["Vs best"] == "not tested"
    # No reference rows without the flag, and none on a non-VTAB suite or the val protocol.
    assert all(r.kind == "run" for t in build_tables(collect(runs).results, with_reference=False) for r in t.rows)


def test_table5_reference_rows_match_their_printed_averages() -> None:
    rows = load_reference()
    table5 = [r for r in rows if r.source == "lily-table5"]
    assert {r.backbone for r in table5} == {"vim-s", "vit-b16-in1k"}
    assert {r.method for r in table5 if r.backbone == "vim-s"} == {"Full fine-tuning", "Linear probing", "LoRA", "Lily-S", "Lily-L"}
    assert {r.method for r in table5 if r.backbone == "vit-b16-in1k"} == {"Full fine-tuning", "Linear probing", "AdaptFormer", "LoRA"}
    for ref in table5:
        assert list(ref.per_task) == VTAB, ref.method
        groups = [[ref.per_task[t] for t in VTAB[a:b]] for a, b in ((0, 7), (7, 11), (11, 19))]
        computed = statistics.fmean(statistics.fmean(g) for g in groups)
        if ref.average_mismatch(suite_groups("vtab")):  # LP-ViT: the paper's average disagrees with its own cells
            assert abs(computed - ref.average) > 1
        else:
            assert computed == pytest.approx(ref.average, abs=0.051), ref.method
    lily_l = next(r for r in table5 if r.method == "Lily-L")
    assert lily_l.params_m == 0.196 and lily_l.per_task["dsprites_loc"] == 82.9


def test_vim_table_gets_table5_rows(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_result(runs, backbone="vim-s", adapter="lily", task="cifar", method="lily vim", method_hash="cccc3333")
    (table,) = collect(runs).tables
    lily_l = rows_by_method(table)["Lily-L (reported)"]
    assert lily_l.cells["cifar"].mean == 57.8 and lily_l.avg_groups == pytest.approx(72.339, abs=0.01)
    assert "57.8" in table_markdown(table)


def test_val_protocol_and_other_suites_are_separate_tables(tmp_path: Path) -> None:
    register_suite("unit", {"red": Task("red", "Colours", 2, 10), "blue": Task("blue", "Colours", 2, 10), "square": Task("square", "Shapes", 3, 10)})
    runs = tmp_path / "runs"
    write_result(runs, task="dtd", protocol="val", final=61.0)
    write_result(runs, task="red", suite_name="unit", final=40.0, method_hash="dddd4444")
    write_result(runs, task="square", suite_name="unit", final=60.0, method_hash="dddd4444")
    write_result(runs, task="blue", suite_name="unit", final=50.0, method_hash="dddd4444", seed=0)
    tables = {(t.suite, t.protocol): t for t in collect(runs).tables}
    assert set(tables) == {("unit", "test"), ("vtab", "val")}
    unit = tables[("unit", "test")]
    assert unit.groups == {"Colours": ["red", "blue"], "Shapes": ["square"]}
    (row,) = unit.rows  # no reference rows outside VTAB
    assert row.avg_groups == pytest.approx((45 + 60) / 2) and row.avg_tasks == pytest.approx(50)
    assert all(r.kind == "run" for r in tables[("vtab", "val")].rows)
    assert tables[("vtab", "val")].slug == "vit-b16-in21k.vtab-val"


def test_demo_suite_groups_come_from_its_registry(tmp_path: Path) -> None:
    demo = suite("demo")
    runs = tmp_path / "runs"
    for name in demo:
        write_result(runs, backbone="vit-tiny", task=name, suite_name="demo", final=55.0)
    (table,) = collect(runs).tables
    assert table.tasks == list(demo)
    assert not table.rows[0].avg_groups_partial and table.rows[0].avg_tasks == pytest.approx(55.0)


def test_same_label_different_hyperparameters_stay_apart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_result(runs, task="dtd", method_hash="eeee0001", final=10.0)
    write_result(runs, task="dtd", method_hash="eeee0002", final=20.0)
    (table,) = collect(runs).tables
    assert sorted(r.method for r in table.rows if r.kind == "run") == ["lora r=8 [eeee0001]", "lora r=8 [eeee0002]"]


def _assert_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_cli_writes_markdown_csv_and_valid_pngs(runs: Path, tmp_path: Path, capsys) -> None:
    lily_dir = next((runs / "vit-b16-in21k" / "lily" / "cifar").iterdir())
    sites = [f"blocks.{i}.{m}" for i in range(12) for m in ("attn.qkv", "mlp.fc1")]
    weights = [[(i + e) % 4 / 4 + 0.1 for e in range(4)] for i in range(len(sites))]
    (lily_dir / "router_weights.json").write_text(json.dumps({"sites": sites, "experts": 4, "weights": weights}))
    out = tmp_path / "leaderboards"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "failed: loss became NaN" in err and "not valid JSON" in err
    md = (out / "vit-b16-in21k.md").read_text()
    assert md.startswith("# Leaderboard: vit-b16-in21k") and "lora r=8" in md and "(reported)" in md
    records = list(csv.DictReader(io.StringIO((out / "vit-b16-in21k.csv").read_text())))
    lora = next(r for r in records if r["method"] == "lora r=8")
    assert float(lora["dtd"]) == pytest.approx(52.5) and float(lora["dtd_seed_std"]) == pytest.approx(0.5)
    assert lora["dtd_n_seeds"] == "3" and lora["n_seeds"] == "3" and lora["seed_ids"] == "0 1 2"
    width, height = _assert_png(out / "vit-b16-in21k.png")
    assert width > 400 and height > 300
    heatmaps = list((out / "router").rglob("*.png"))
    assert heatmaps == [out / "router" / "vit-b16-in21k" / "cifar" / f"{lily_dir.name}.png"]
    _assert_png(heatmaps[0])
    assert "router/vit-b16-in21k/cifar" in md
    index = (out / "index.md").read_text()
    assert "vit-b16-in21k.md" in index and "loss became NaN" in index
    assert not list(out.rglob(".*tmp-*"))  # atomic writes leave no temporaries
    # --metric best writes separately named files, not over the final-epoch ones.
    assert main(["--runs", str(runs), "--out", str(out), "--metric", "best", "--no-plots"]) == 0
    assert "test-selected" in (out / "vit-b16-in21k.best.md").read_text()
    assert "final-epoch" in (out / "vit-b16-in21k.md").read_text()


def test_cli_stdout_formats(runs: Path, capsys) -> None:
    assert main(["--runs", str(runs), "--format", "json"]) == 0
    (table,) = json.loads(capsys.readouterr().out)
    lily = next(r for r in table["rows"] if r["method"] == "lily r=32 ne=4")
    assert lily["avg_group_means_partial"] is True and lily["tasks_done"] == 4
    assert main(["--runs", str(runs), "--format", "md", "--metric", "best"]) == 0
    assert "test-selected" in capsys.readouterr().out
    assert main(["--runs", str(runs), "--format", "csv", "--no-reference"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["kind"] for r in records} == {"run"}


def test_cli_task_view_lists_every_run(runs: Path, capsys) -> None:
    assert main(["--runs", str(runs), "--task", "dtd", "--format", "csv"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    complete = [r for r in records if r["status"] == "complete"]
    assert sorted(r["seed"] for r in complete if r["method"] == "lora r=8") == ["0", "1", "2"]
    assert {r["final"] for r in complete if r["method"] == "lily r=32 ne=4"} == {"60.00"}
    assert any(r["status"].startswith("malformed") for r in records)  # the truncated seed 3
    assert all(Path(r["run dir"]).is_dir() for r in records)
    assert main(["--runs", str(runs), "--task", "svhn"]) == 0
    assert "failed: loss became NaN" in capsys.readouterr().out
    with pytest.raises(UserError, match="did you mean 'dtd'"):
        main(["--runs", str(runs), "--task", "dtdd"])


def test_cli_bad_input(tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="no such directory"):
        main(["--runs", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="metric"):
        main(["--runs", str(tmp_path / "empty"), "--metric", "top5"])
    with pytest.raises(UserError, match="format"):
        main(["--runs", str(tmp_path / "empty"), "--format", "xlsx"])
    # run_cli turns the error into one line and exit status 2.
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--runs", str(tmp_path / "nope")])
    assert exit_info.value.code == 2 and "error: --runs" in capsys.readouterr().err
    # An empty runs directory is a clear message, not a crash, and writes nothing.
    out = tmp_path / "out"
    assert main(["--runs", str(tmp_path / "empty"), "--out", str(out)]) == 0
    assert "no complete results" in capsys.readouterr().err and not out.exists()


def test_backbone_filter_bad_router_file_and_bad_out(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    lily_dir = write_result(runs, adapter="lily", task="dtd", method="lily", method_hash="ffff0001")
    (lily_dir / "router_weights.json").write_text('{"sites": ["a"], "experts": 2, "weights": [[1.0, 0.0, 0.0]]}')
    write_result(runs, backbone="vim-s", task="dtd", method_hash="ffff0002")
    out = tmp_path / "out"
    assert main(["--runs", str(runs), "--out", str(out), "--backbone", "vim-s"]) == 0
    assert (out / "vim-s.md").exists() and not (out / "vit-b16-in21k.md").exists()
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "router heat map skipped" in capsys.readouterr().err and not (out / "router").exists()
    with pytest.raises(UserError, match="no complete results for this backbone"):
        main(["--runs", str(runs), "--backbone", "vit-l16"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory|is a regular file"):
        main(["--runs", str(runs), "--out", str(tmp_path / "file")])


def test_unknown_tasks_suites_and_duplicate_seeds_are_flagged(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_result(runs, task="dtd", final=60.0)
    write_result(runs, task="mnist", final=99.0)  # not a VTAB task
    write_result(runs, task="dtd", final=70.0, config_hash="dup00001")  # same method, task and seed again
    write_result(runs, task="thing", suite_name="nosuch", final=10.0)
    report = collect(runs)
    (vtab,) = report.tables  # the unknown suite's result makes no table
    assert "mnist" not in vtab.tasks and list(vtab.groups) == list(GROUPS)  # never averaged or ranked
    (row,) = [r for r in vtab.rows if r.kind == "run"]
    assert row.cells["dtd"].n == 1 and row.cells["dtd"].mean == 70.0  # one result per seed counts: the latest
    assert "mnist" not in row.cells and row.tasks_done == 1
    text = "\n".join(report.warnings)
    assert "task 'mnist' is not in suite 'vtab'" in text and "'nosuch' is not registered" in text and "several results" in text
    assert "mnist/" in text and "result.json" in text  # the warning names the file


def test_every_adapter_gets_its_own_colour_in_the_plot() -> None:
    from vtab_lily.adapters import ADAPTERS
    from vtab_lily.leaderboard.plots import adapter_colours

    names = sorted(ADAPTERS)
    assert len(names) > 10  # more than tab10 holds
    assert len(set(adapter_colours(names).values())) == len(names)
    assert len(set(adapter_colours(names[:3]).values())) == 3
