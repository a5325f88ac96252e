"""Leaderboard and result reader against hostile input (issue 16): rounding, markdown escaping,
UTC ordering, malformed result.json, paths from file contents, unknown tasks, ragged router
weights, argparse abbreviations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_leaderboard import VTAB, _assert_png, shown, write_result

from vtab_lily.leaderboard import collect
from vtab_lily.leaderboard.__main__ import main
from vtab_lily.leaderboard.render import table_markdown
from vtab_lily.leaderboard.text import md_escape, round_half_up
from vtab_lily.results import iter_results, run_status


def edit_result(run_dir: Path, **changes) -> None:
    path = run_dir / "result.json"
    result = json.loads(path.read_text())
    result.update(changes)
    path.write_text(json.dumps(result))


@pytest.mark.parametrize("value, text", [(71.25, "71.3"), (70.15, "70.2"), (69.45, "69.5"), (1.45, "1.5"), (0.25, "0.3"),
                                         (0.0449, "0.0"), (99.95, "100.0")])
def test_rounding_is_half_up_on_the_decimal_value(value: float, text: str) -> None:
    assert round_half_up(value) == text


def test_binary_formatting_got_some_of_these_wrong() -> None:
    assert [f"{v:.1f}" for v in (71.25, 1.45, 0.25)] == ["71.2", "1.4", "0.2"]  # why the rule exists


def test_every_table_cell_uses_the_rounding_rule(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_result(runs, task="cifar", final=71.25, train_s=70.15, peak_mb=69.5)
    write_result(runs, task="dtd", final=70.15)
    write_result(runs, task="dtd", seed=1, final=70.15)
    (table,) = collect(runs, with_reference=False).tables
    (line,) = shown(table).values()
    assert line["Cifar100"].startswith("71.3 ±") and line["DTD"].startswith("70.2 ±") and line["DTD"].endswith(" (sd 0.0, n=2)")
    assert line["Natural (mean)"].startswith("70.7* ±")  # (71.25 + 70.15) / 2 = 70.7
    assert line["Train time (alone)"] == "90.2 s" and line["Train mem (MB)"] == "1000"


def assert_one_row_per_table(md: str) -> None:
    """Every markdown table of ``md`` (main, per task, details) has its header, its rule and one
    row, all with the same number of columns: no text from a result added a row or a column."""
    blocks, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    assert len(blocks) == 5  # main, Natural, Specialized, Structured, details

    def columns(line: str) -> int:
        return len(line.replace("\\|", "").split("|"))

    for block in blocks:
        assert len(block) == 3 and columns(block[2]) == columns(block[0])


def test_pipes_newlines_and_backticks_in_a_label_cannot_break_the_table(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_result(runs, task="dtd", method="evil | x\n| fake | row |\r\n`code", method_hash="e0000001")
    (table,) = collect(runs, with_reference=False).tables
    md = table_markdown(table)
    assert_one_row_per_table(md)
    main_row = [line for line in md.splitlines() if line.startswith("|")][2]
    assert "evil \\| x \\| fake \\| row \\| \\`code" in main_row
    # a fingerprint or encoding from a result file is escaped too
    edit_result(next((runs / "vit-b16-in21k" / "lora" / "dtd").iterdir()), data={"fingerprint": "ab|cd\nx", "encoding": "p|ng"})
    (table,) = collect(runs, with_reference=False).tables
    assert_one_row_per_table(table_markdown(table))
    assert md_escape("a<b>") == "a&lt;b&gt;"


def test_latest_duplicate_is_chosen_in_utc(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # As text "10:00+05:00" sorts after "06:00Z", but it is 05:00 UTC: the 06:00Z run is the latest.
    a = write_result(runs, task="dtd", final=10.0, config_hash="c0000001")
    edit_result(a, finished_at="2026-12-01T10:00:00+05:00")
    b = write_result(runs, task="dtd", final=20.0, config_hash="c0000002")
    edit_result(b, finished_at="2026-12-01T06:00:00Z")
    c = write_result(runs, task="dtd", final=30.0, config_hash="c0000003")
    edit_result(c, finished_at="2026-12-01T05:30:00")  # old local-time text: taken as UTC
    d = write_result(runs, task="dtd", final=40.0, config_hash="c0000004")
    edit_result(d, finished_at="not a date")  # unparseable: oldest
    e = write_result(runs, task="dtd", final=50.0, config_hash="c0000005")
    edit_result(e, finished_at="0001-01-01T00:00:00+01:00")  # out of range in UTC: oldest, no crash
    report = collect(runs, with_reference=False)
    (row,) = report.tables[0].rows
    assert row.cells["dtd"].mean == 20.0 and row.cells["dtd"].n == 1
    assert sum("several results" in w for w in report.warnings) == 4


BAD_RESULTS = {
    "memory_list": {"memory": [1]},
    "time_text": {"time": "fast"},
    "huge_params": {"params": {"total": 10**400}},
    "seed_text": {"seed": "0"},
    "seed_negative": {"seed": -1},
    "accuracy_150": {"accuracy": {"final": 150.0}},
    "missing_task": {"task": None},
    "deviations_text": {"deviations": "routing=sample"},
    "data_list": {"data": ["png"]},
    "fingerprint_number": {"data": {"fingerprint": 7}},
    "task_newline": {"task": "dtd\nsvhn"},
    "config_list": {"config": [1]},
}


def test_malformed_results_are_skipped_with_one_warning_naming_the_file(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    good = write_result(runs, task="cifar", final=55.0)
    bad_dirs = {}
    for i, (name, change) in enumerate(BAD_RESULTS.items()):
        bad_dirs[name] = write_result(runs, task="dtd", final=50.0, config_hash=f"bad{i:05d}")
        if change.get("task", "") is None:
            result = json.loads((bad_dirs[name] / "result.json").read_text())
            del result["task"]
            (bad_dirs[name] / "result.json").write_text(json.dumps(result))
        else:
            edit_result(bad_dirs[name], **change)
    raw = {"utf8": b'{"schema": 1, "method": "\xff\xfe"}', "huge_int": b'{"schema": 1, "seed": ' + b"9" * 5000 + b"}",
           "not_object": b"[1, 2, 3]", "deep": b"[" * 100_000 + b"]" * 100_000, "empty": b""}
    for name, data in raw.items():
        bad_dirs[name] = run_dir = runs / "vit-b16-in21k" / "lora" / "dtd" / f"raw-{name}"
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_bytes(data)
    report = collect(runs, with_reference=False)
    assert [r["run_dir"] for r in report.results] == [str(good)]
    for name, run_dir in bad_dirs.items():
        hits = [w for w in report.warnings if str(run_dir) in w]
        assert len(hits) == 1 and "malformed" in hits[0], name
    # the sweep reads through the same reader: a status, never an exception
    assert all(run_status(d).state == "malformed" for d in bad_dirs.values())
    assert len(iter_results(runs)) == 1
    out = tmp_path / "out"
    assert main(["--runs", str(runs), "--out", str(out), "--no-plots"]) == 0
    assert "result.json" in capsys.readouterr().err and (out / "vit-b16-in21k.md").exists()


def test_out_under_a_regular_file_is_one_line_user_error(tmp_path: Path) -> None:
    from vtab_lily.errors import UserError

    runs = tmp_path / "runs"
    write_result(runs, task="cifar", final=55.0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile"):
        main(["--runs", str(runs), "--out", str(tmp_path / "afile" / "sub"), "--no-plots"])


def test_paths_built_from_file_contents_stay_inside_out(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    lily = write_result(runs, adapter="lily", task="dtd", method="lily", method_hash="f0000001", config_hash="../../../esc1")
    (lily / "router_weights.json").write_text(json.dumps({"sites": ["a"], "experts": 2, "weights": [[0.5, 0.5]]}))
    evil = write_result(runs, backbone="vit-b16-in21k", adapter="lily", task="cifar", method="lily", method_hash="f0000001",
                        config_hash="okhash01")
    edit_result(evil, backbone="../../../esc2", config_hash="../../esc3")
    (evil / "router_weights.json").write_text(json.dumps({"sites": ["a"], "experts": 2, "weights": [[0.5, 0.5]]}))
    odd_task = write_result(runs, adapter="lily", task="svhn", method="lily", method_hash="f0000001", config_hash="okhash02")
    edit_result(odd_task, task="../../../../esc4")
    (odd_task / "router_weights.json").write_text(json.dumps({"sites": ["a"], "experts": 2, "weights": [[0.5, 0.5]]}))
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert after == before  # nothing written outside --out
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert not any("esc" in part and part.startswith(".") for p in written for part in p.parts)
    assert len(list((out / "router").rglob("*.png"))) == 2  # the unknown task's run is not tabulated


def test_a_task_outside_the_registry_is_never_ranked(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i, task in enumerate(VTAB):
        write_result(runs, task=task, final=60.0 + i, method="complete", method_hash="c0000001")
    write_result(runs, task="mnist", final=98.5, method="one odd task", method_hash="c0000002")
    for task in ("cifar", "dtd", "mnist"):
        write_result(runs, task=task, final=99.0, method="mixed", method_hash="c0000003")
    report = collect(runs, with_reference=False)
    (table,) = report.tables
    assert [r.method for r in table.rows] == ["complete", "mixed"]  # complete first; 'one odd task' absent
    assert "mnist" not in table.rows[1].cells and table.rows[1].avg_groups_partial
    assert "mnist" not in table.tasks
    assert sum("task 'mnist' is not in suite 'vtab'" in w for w in report.warnings) == 2


def test_vim_lily_router_heat_map_with_one_expert_dt_proj_sites(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    run_dir = write_result(runs, backbone="vim-s", adapter="lily", task="dtd", method="lily vim", method_hash="d0000001")
    sites, weights = [], []
    for layer in range(24):
        sites += [f"layers.{layer}.mixer.in_proj", f"layers.{layer}.mixer.dt_proj"]
        weights += [[0.1, 0.2, 0.3, 0.2, 0.2], [1.0]]
    (run_dir / "router_weights.json").write_text(json.dumps({"sites": sites, "experts": 5, "weights": weights}))
    out = tmp_path / "out"
    assert main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "router heat map skipped" not in capsys.readouterr().err
    png = out / "router" / "vim-s" / "dtd" / f"{run_dir.name}.png"
    _assert_png(png)
    assert f"router/vim-s/dtd/{run_dir.name}.png" in (out / "vim-s.md").read_text()


def test_no_abbreviated_options(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(tmp_path), "--format", "md"])
    assert exit_info.value.code == 2


FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-2+3+cmd|' /C calc'!A0", "@SUM(1)", "\tlead", "\rlead"]


@pytest.mark.parametrize("method", FORMULAS)
def test_a_label_starting_like_a_formula_is_text_in_every_csv(tmp_path: Path, capsys, method: str) -> None:
    """Issue 22.15: a method name starting with = (or + - @ tab CR) landed as is in the CSV,
    which a spreadsheet runs as a formula. OWASP: a leading single quote makes it text."""
    import csv
    import io

    runs = tmp_path / "runs"
    write_result(runs, task="dtd", method=method, method_hash="f0000001")
    out = tmp_path / "boards"
    assert main(["--runs", str(runs), "--out", str(out), "--no-plots", "--no-reference"]) == 0
    for text in [(out / "vit-b16-in21k.csv").read_text()]:
        (record,) = list(csv.DictReader(io.StringIO(text)))
        assert record["method"] == "'" + method.replace("\r", "\n")  # a lone CR would end the row
        assert record["dtd"] == "70.0"  # numbers stay numbers
    capsys.readouterr()
    assert main(["--runs", str(runs), "--task", "dtd", "--format", "csv"]) == 0
    (record,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert record["method"] == "'" + method.replace("\r", "\n") and record["final"] == "70.00"


def test_csv_cell_keeps_numbers_and_the_missing_mark() -> None:
    from vtab_lily.leaderboard.text import csv_cell

    assert csv_cell("-0.5") == "-0.5" and csv_cell("-") == "-" and csv_cell(-3.0) == -3.0 and csv_cell(None) is None
    assert csv_cell("lora r=8") == "lora r=8" and csv_cell("-inf+1") == "'-inf+1"


def test_a_newline_in_memory_kind_or_deviations_cannot_add_a_row_or_note(tmp_path: Path) -> None:
    """Issue 22.15: a result's ``memory.kind`` went unescaped into the notes, so a newline made
    a fake table row; every string field that reaches the markdown is one escaped line."""
    runs = tmp_path / "runs"
    run_dir = write_result(runs, task="dtd")
    fake = "cpu\n| fake | row | 1 |\n\n| x | y |\n|---|---|"
    edit_result(run_dir, memory={"peak_mb": 5.0, "kind": fake}, deviations=["lr=1\n| dev | row |"])
    (table,) = collect(runs, with_reference=False).tables
    md = table_markdown(table)
    assert "fake" in md and "dev" in md
    assert_one_row_per_table(md)  # no fake rows anywhere
    assert all(line.startswith(("#", "- ")) or not line for line in md.splitlines() if not line.startswith("|"))


def test_a_backbone_named_like_the_folders_own_files_or_like_another_gets_its_own_file(tmp_path: Path) -> None:
    """A backbone comes from result.json: one called ``index`` or ``README`` must not overwrite the
    index or the folder's README, and two whose safe forms coincide must not share a file."""
    from vtab_lily.leaderboard import write_leaderboards

    runs = tmp_path / "runs"
    for i, name in enumerate(("index", "README", "a|b", "a_b")):
        edit_result(write_result(runs, task="dtd", method=f"m{i}", method_hash=f"f000000{i}"), backbone=name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("hand-written")
    write_leaderboards(collect(runs), out, plots=False)
    assert (out / "README.md").read_text() == "hand-written"
    assert sorted(p.name for p in out.glob("*.md")) == ["README.md", "a_b-2.md", "a_b.md", "backbone-README.md",
                                                        "backbone-index.md", "index.md"]
    index = (out / "index.md").read_text()
    assert index.startswith("# Leaderboards") and "[backbone-index.md](backbone-index.md)" in index
    first, second = (out / "a_b.md").read_text(), (out / "a_b-2.md").read_text()
    assert ("| m2 " in first) != ("| m2 " in second) and ("| m3 " in first) != ("| m3 " in second)
