"""What makes a row (method hash + deviations + precision + data), the data fingerprint column
and --data-fingerprint, the demo suite's table, and --metric both (final beside test-selected)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from test_leaderboard import VTAB, shown, write_result

from vtab_lily.errors import UserError
from vtab_lily.leaderboard import collect
from vtab_lily.leaderboard.__main__ import main
from vtab_lily.leaderboard.records import tables_csv
from vtab_lily.leaderboard.render import markdown_rows, table_markdown
from vtab_lily.leaderboard.text import round_half_up
from vtab_lily.tasks import suite

FP_A = "aaaa111122223333"
FP_B = "bbbb444455556666"
FP_C = "cccc777788889999"


def result(runs: Path, *, data=None, deviations=None, precision=None, finished=None, **kw) -> Path:
    run_dir = write_result(runs, **kw)
    path = run_dir / "result.json"
    body = json.loads(path.read_text())
    for key, value in (("data", data), ("deviations", deviations), ("precision", precision), ("finished_at", finished)):
        if value is not None:
            body[key] = value
    path.write_text(json.dumps(body))
    return run_dir


def runs_rows(runs: Path, **kw):
    (table,) = collect(runs, with_reference=False, **kw).tables
    return table, [r for r in table.rows if r.kind == "run"]


def test_one_method_hash_with_different_deviations_precision_or_data_never_shares_a_row(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # A named method (the sweep's label) hashes only its name: older run.py versions gave these one hash.
    result(runs, task="dtd", final=10.0, config_hash="h0000001")
    result(runs, task="dtd", final=20.0, config_hash="h0000002", deviations=["routing=sample"])
    result(runs, task="dtd", final=30.0, config_hash="h0000003", deviations=[])
    result(runs, task="dtd", final=40.0, config_hash="h0000004", deviations=[], precision="bf16")
    result(runs, task="dtd", final=50.0, config_hash="h0000005", deviations=[], data={"fingerprint": FP_B})
    result(runs, task="dtd", final=60.0, config_hash="h0000006", deviations=[], data={"fingerprint": FP_A}, seed=1)
    result(runs, task="dtd", final=70.0, config_hash="h0000007", deviations=[], data={"fingerprint": FP_A}, seed=2)
    table, rows = runs_rows(runs)
    # 10 (unrecorded), 20 (routing=sample), 40 (bf16), 30 (no fingerprint) vs 50 (FP_B) vs 60/70 (FP_A): never averaged together
    assert len(rows) == 6 and sorted(r.cells["dtd"].mean for r in rows) == [10.0, 20.0, 30.0, 40.0, 50.0, 65.0]
    labels = [r.method for r in rows]
    assert len(set(labels)) == len(labels)  # each row tagged apart
    md = table_markdown(table)
    assert "routing=sample" in md and "bf16" in md and "data 2" in md
    # older results without any of the new keys still form one row per method hash
    old = tmp_path / "old"
    result(old, task="dtd", final=10.0)
    result(old, task="svhn", final=20.0)
    assert len(runs_rows(old)[1]) == 1


def test_fingerprint_column_marks_and_selection(tmp_path: Path, capsys, monkeypatch) -> None:
    runs = tmp_path / "runs"
    png = {"encoding": "png", "source": "tfds"}
    for method_hash in ("m0000001", "m0000002", "m0000003"):
        result(runs, task="dtd", method=f"lora {method_hash}", method_hash=method_hash, data={"fingerprint": FP_A, **png})
    result(runs, task="svhn", method="lora m0000003", method_hash="m0000003", data={"fingerprint": FP_C, **png})
    result(runs, task="dtd", method="lora jpeg", method_hash="m0000004",
           data={"fingerprint": FP_B, "encoding": "jpeg", "source": "archive"})
    result(runs, task="dtd", method="lora old", method_hash="m0000005")
    table, rows = runs_rows(runs)
    cells = shown(table)
    data = {label: c["Data"] for label, c in cells.items()}
    dtd = {label: c["DTD"] for label, c in cells.items()}
    interval = " ±" + round_half_up(rows[0].cells["dtd"].interval.half_width)  # 70% of dtd's 1,880 images
    assert data["lora m0000001"] == f"png {FP_A[:8]}" and dtd["lora m0000001"] == "70.0" + interval
    assert data["lora jpeg"] == f"jpeg {FP_B[:8]}†" and dtd["lora jpeg"] == f"70.0{interval}†"  # not the data most rows use
    assert data["lora old"] == "?" and dtd["lora old"] == "70.0" + interval  # unknown: never marked as different
    # two tasks on one data copy: a digest of the pair, not 'mixed'
    assert len(data["lora m0000003"].split()[1]) == 8 and data["lora m0000003"] != data["lora m0000001"]
    # --data-fingerprint keeps the cells built on that data
    _, chosen = runs_rows(runs, data_fingerprints=[FP_B[:6]])
    assert [r.method for r in chosen] == ["lora jpeg"]
    _, chosen = runs_rows(runs, data_fingerprints=[FP_A[:4]])
    assert sorted(r.method for r in chosen) == ["lora m0000001", "lora m0000002", "lora m0000003"]
    assert "svhn" not in next(r for r in chosen if r.method == "lora m0000003").cells  # built on other data
    digest = next(r for r in rows if r.method == "lora m0000003").data.digest
    _, chosen = runs_rows(runs, data_fingerprints=[digest])
    assert [r.method for r in chosen] == ["lora m0000003"]
    # CLI: prefixes, a prepared data folder (its manifests), and bad values
    root = tmp_path / "data"
    (root / "dtd").mkdir(parents=True)
    (root / "dtd" / "manifest.json").write_text(json.dumps({"schema": 1, "task": "dtd", "fingerprint": FP_B}))
    assert main(["--runs", str(runs), "--format", "csv", "--no-reference", "--data-fingerprint", str(root)]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in records] == ["lora jpeg"] and records[0]["dtd_data"] == FP_B
    assert records[0]["data_encoding"] == "jpeg"
    for bad in ("xyz!", "ab", ""):
        with pytest.raises(UserError, match="--data-fingerprint"):
            main(["--runs", str(runs), "--format", "md", "--data-fingerprint", bad])
    monkeypatch.chdir(root)  # '' is not the current folder, even where that folder is a data root
    with pytest.raises(UserError, match="--data-fingerprint '': empty"):
        main(["--runs", str(runs), "--format", "md", "--data-fingerprint", ""])
    with pytest.raises(UserError, match="manifest"):
        main(["--runs", str(runs), "--format", "md", "--data-fingerprint", str(tmp_path / "runs")])


def test_demo_table_shows_label_setup_and_says_there_are_no_published_rows(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in suite("demo"):
        result(runs, backbone="vit-tiny", task=name, suite_name="demo", method="lily r=4 ne=2 routing=sample",
               deviations=["routing=sample"], data={"fingerprint": FP_A, "encoding": "png", "source": "demo"})
    out = tmp_path / "out"
    assert main(["--runs", str(runs), "--out", str(out), "--no-plots"]) == 0
    (md_file,) = out.glob("vit-tiny*.md")
    md = md_file.read_text()
    assert "| lily r=4 ne=2 routing=sample" in md and "| routing=sample " in md
    assert "No published rows for the demo suite" in md


def test_metric_both_puts_test_selected_beside_final(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    for i, task in enumerate(VTAB):
        result(runs, task=task, final=60.0 + i, best=62.0 + i)
    (table,) = collect(runs, "both").tables
    cells = shown(table)
    run_line = cells[table.rows[0].method]
    assert re.fullmatch(r"60\.0 ±\d\.\d / 62\.0 ±\d\.\d", run_line["Cifar100"])  # both with their intervals
    assert run_line["Avg (all tasks)"].startswith("69.0 ±")
    assert run_line["Avg (all tasks), test-selected"].startswith("71.0 ±")
    lora_ref = next(c for label, c in cells.items() if label.startswith("LoRA (NOAH"))
    assert lora_ref["Cifar100"] == "- / 67.1"  # published numbers are test-selected, without counts
    assert "final-epoch" in table.title and "test-selected" in table.title
    records = list(csv.DictReader(io.StringIO(tables_csv([table]))))
    assert float(records[0]["cifar_test_selected"]) == 62.0 and float(records[0]["avg_tasks_test_selected"]) == 71.0
    # runs made with --paper say so; a final-epoch table points at the other metrics
    body = json.loads((next(runs.rglob("result.json"))).read_text())
    body["accuracy"]["reported"] = "test-selected"
    next(runs.rglob("result.json")).write_text(json.dumps(body))
    (final_table,) = collect(runs).tables
    assert "1 of these runs were made with `--paper`" in table_markdown(final_table)
    out = tmp_path / "out"
    assert main(["--runs", str(runs), "--out", str(out), "--metric", "both", "--no-plots"]) == 0
    assert (out / "vit-b16-in21k.both.md").exists() and (out / "vit-b16-in21k.both.csv").exists()
    assert not (out / "vit-b16-in21k.md").exists()


def test_a_peft_row_never_reads_official(tmp_path: Path, capsys) -> None:
    """PEFT has no official setup: its deviations list only the recipe's, and an empty list is
    shown as ``peft config`` (in the table, its tags and the task view), not ``official``."""
    runs = tmp_path / "runs"
    result(runs, adapter="peft", method="peft peft_type=LORA r=4", method_hash="p0000001", deviations=[])
    result(runs, adapter="peft", method="peft peft_type=LORA r=4", method_hash="p0000001", deviations=["epochs=1"],
           config_hash="p0000002")
    result(runs, adapter="lora", method="lora r=8", method_hash="l0000001", deviations=[])
    table, rows = runs_rows(runs)
    headers, body = markdown_rows(table)
    setup = {line[0]: line[headers.index("Setup")] for line in body}
    assert setup["lora r=8"] == "official"
    assert sorted(v for k, v in setup.items() if k.startswith("peft")) == ["peft config", "peft config, epochs=1"]
    # the two peft rows share a label and a method hash: their tags say how they were made, never "official"
    assert sorted(k for k in setup if k.startswith("peft")) == ["peft peft_type=LORA r=4 [p0000001 peft config,epochs=1]",
                                                                "peft peft_type=LORA r=4 [p0000001 peft config]"]
    assert main(["--runs", str(runs), "--task", "dtd", "--format", "csv"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["setup"] for r in records if r["adapter"] == "peft") == ["peft config", "peft config, epochs=1"]


def test_the_leaderboards_adapters_without_an_official_setup_are_the_adapters_own() -> None:
    from vtab_lily.adapters.official import NO_OFFICIAL_SETUP as adapters_side
    from vtab_lily.leaderboard.text import NO_OFFICIAL_SETUP as leaderboard_side
    from vtab_lily.methods import NO_OFFICIAL_SETUP  # one torch-free set, below all of them

    assert NO_OFFICIAL_SETUP is adapters_side is leaderboard_side and NO_OFFICIAL_SETUP == {"peft"}
