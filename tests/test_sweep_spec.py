"""Sweep specs, planning and selection rules (fast: no runs)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vtab_lily.errors import UserError, run_cli
from vtab_lily.sweep.__main__ import main as sweep_main
from vtab_lily.sweep.__main__ import split_run_args
from vtab_lily.sweep.plan import (FINAL, GRID, choose_point, final_trials, grid_trials, method_label, point_key)
from vtab_lily.sweep.spec import build_spec, load_toml, parse_grid_flag

CONFIGS = Path(__file__).resolve().parents[1] / "vtab_lily" / "configs"


def spec_from_flags(**flags):
    base = {"backbone": "vit", "adapter": "lily", "grid": [("scale", ["0.1", "1"]), ("ne", ["2", "4"])]}
    return build_spec({}, "command line", flags={**base, **flags})


def test_grid_flag_parsing():
    assert parse_grid_flag("scale=0.01,0.1,1,10") == ("scale", ["0.01", "0.1", "1", "10"])
    for bad in ("scale", "=1,2", "scale=", "scale=1,,2"):
        with pytest.raises(UserError, match="--grid"):
            parse_grid_flag(bad)


def test_points_follow_grid_order_first_key_slowest():
    spec = spec_from_flags()
    assert spec.points() == [{"scale": "0.1", "ne": "2"}, {"scale": "0.1", "ne": "4"},
                             {"scale": "1", "ne": "2"}, {"scale": "1", "ne": "4"}]


def test_seeds_and_tasks():
    assert spec_from_flags(seeds="3").seeds == [0, 1, 2]
    assert spec_from_flags(seeds="0,5").seeds == [0, 5]
    assert spec_from_flags(tasks="dtd,cifar100").tasks == ["dtd", "cifar"]  # alias resolved
    assert len(spec_from_flags(tasks="all").tasks) == 19
    with pytest.raises(UserError, match="did you mean 'dtd'"):
        spec_from_flags(tasks="dtdd")
    with pytest.raises(UserError, match="seeds"):
        spec_from_flags(seeds="0")
    with pytest.raises(UserError, match="select_seeds"):
        spec_from_flags(seeds="2", select_seeds=3)


def test_reserved_and_conflicting_options_are_refused():
    with pytest.raises(UserError, match="not a tunable run option"):
        spec_from_flags(grid=[("seed", ["0", "1"])])
    with pytest.raises(UserError, match="also a grid key"):
        spec_from_flags(run_args=["--scale", "3"])
    with pytest.raises(UserError, match="sweep sets --protocol"):
        spec_from_flags(run_args=["--protocol", "test"])
    with pytest.raises(UserError, match="not an option of python -m vtab_lily.run"):
        spec_from_flags(run_args=["--epoch", "3"])
    with pytest.raises(UserError, match="missing --backbone"):
        build_spec({}, "command line", flags={"adapter": "lily", "grid": [("ne", ["2"])]})


def test_toml_file_and_flag_override(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('backbone = "vit"\nadapter = "lily"\ntasks = ["dtd"]\nseeds = 2\n'
                    '[grid]\nscale = [0.1, 10]\nne = [2, 3]\n[run]\nepochs = 5\nnormalize = false\nno-tensorboard = true\n')
    spec = build_spec(load_toml(path), str(path), flags={"grid": [("ne", ["4"])], "run_args": ["--batch-size", "8"]})
    assert spec.grid == {"scale": ["0.1", "10"], "ne": ["4"]}  # the flag replaced ne only
    assert spec.tasks == ["dtd"] and spec.seeds == [0, 1]
    # normalize = false turns it off (not "leave it out": the run's default could be on)
    assert spec.run_args == ["--epochs", "5", "--no-normalize", "--no-tensorboard", "--batch-size", "8"]


def test_toml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('backbone = "vit"\nadapter = \n')
    with pytest.raises(UserError, match=r"bad\.toml.*line 2"):
        load_toml(path)
    path.write_text('backbone = "vit"\nadapter = "lily"\ngrids = 1\n')
    with pytest.raises(UserError, match=r"bad\.toml: unknown sweep setting 'grids' \(did you mean 'grid'\?\)"):
        build_spec(load_toml(path), str(path))
    with pytest.raises(UserError, match="no such file"):
        load_toml(tmp_path / "missing.toml")


def test_a_config_directory_is_called_a_directory(tmp_path, capsys):
    """``--config DIR`` used to say "no such file"."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"--config .*empty: is a directory, not a TOML file \(e\.g\. --config "):
        load_toml(empty)
    with pytest.raises(UserError, match=r"configs: is a directory, not a TOML file; it holds adaptformer-vit-paper"):
        load_toml(CONFIGS)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_main, ["--config", str(CONFIGS)])
    assert exit_info.value.code == 2 and "is a directory" in capsys.readouterr().err


def test_shipped_configs_load():
    paper = build_spec(load_toml(CONFIGS / "lily-vit-paper.toml"), "paper")
    assert paper.grid == {"scale": ["0.01", "0.1", "1", "10"], "ne": ["2", "3", "4"]}
    assert len(paper.tasks) == 19 and paper.select == "val" and paper.seeds == [0, 1, 2]
    demo = build_spec(load_toml(CONFIGS / "lily-vit-demo.toml"), "demo")
    assert demo.demo and demo.suite == "demo"


def test_sweep_id_is_stable_and_depends_on_the_spec():
    assert spec_from_flags().sweep_id() == spec_from_flags().sweep_id()
    assert spec_from_flags().sweep_id() != spec_from_flags(select="test-best").sweep_id()
    assert spec_from_flags().sweep_id() != spec_from_flags(run_args=["--epochs", "3"]).sweep_id()


def test_stages_per_selection_mode():
    val = spec_from_flags(tasks="dtd", seeds="3")
    grid = grid_trials(val, "dtd")
    assert len(grid) == 4 and {t.protocol for t in grid} == {"val"} and {t.seed for t in grid} == {0}
    assert all(t.stage == GRID and t.method_name is None for t in grid)
    finals = final_trials(val, "dtd", {"scale": "1", "ne": "2"})
    assert [t.seed for t in finals] == [0, 1, 2] and {t.protocol for t in finals} == {"test"}
    assert {t.method_name for t in finals} == {"lily (val-selected: scale={0.1,1} x ne={2,4}; seeds 0,1,2 scored on 0)"}
    assert finals[0].stage == FINAL
    best = spec_from_flags(tasks="dtd", seeds="3", select="test-best")
    assert {t.protocol for t in grid_trials(best, "dtd")} == {"test"}
    assert method_label(best) == "lily (test-best: scale={0.1,1} x ne={2,4}; seeds 0,1,2 scored on 0)"
    none = spec_from_flags(tasks="dtd", seeds="3", select="none")
    assert len(grid_trials(none, "dtd")) == 12 and method_label(none) is None


def test_label_keeps_recipe_options_and_drops_paths():
    spec = spec_from_flags(run_args=["--epochs", "50", "--data-root", "/data/v", "--device=cuda:1", "--rank", "16",
                                     "--threads", "4", "--eval-every", "5"])
    assert method_label(spec) == ("lily (val-selected: scale={0.1,1} x ne={2,4}; seeds 0 scored on 0; "
                                  "--epochs 50 --eval-every 5 --rank 16)")


def test_command_repeats_the_trial_exactly():
    spec = spec_from_flags(tasks="dtd", run_args=["--epochs", "5"])
    trial = final_trials(spec, "dtd", {"scale": "0.1", "ne": "4"})[0]
    words = shlex.split(trial.command(spec, "my runs"))
    assert words[:3] == ["python", "-m", "vtab_lily.run"] and words[3:] == trial.run_argv(spec, "my runs")
    assert words[words.index("--method-name") + 1] == ("lily (val-selected: scale={0.1,1} x ne={2,4}; "
                                                       "seeds 0 scored on 0; --epochs 5)")
    assert words[words.index("--out") + 1] == "my runs"


def test_choose_point_best_mean_then_grid_order():
    points = [{"s": "a"}, {"s": "b"}, {"s": "c"}]
    scores = {point_key(points[0]): [50.0, 52.0], point_key(points[1]): [51.0, 51.0], point_key(points[2]): [40.0, 70.0]}
    assert choose_point(points, scores) == ({"s": "c"}, 55.0)
    tie = {point_key(p): [60.0] for p in points}
    assert choose_point(points, tie)[0] == {"s": "a"}  # ties: first in grid order
    assert choose_point(points[::-1], tie)[0] == {"s": "c"}


def test_split_run_args():
    assert split_run_args(["--grid", "ne=2", "--", "--epochs", "2"]) == (["--grid", "ne=2"], ["--epochs", "2"])
    assert split_run_args(["--grid", "ne=2"]) == (["--grid", "ne=2"], [])


def test_dry_run_prints_the_plan(capsys):
    code = sweep_main(["--backbone", "vit", "--adapter", "lily", "--grid", "scale=0.1,1", "--tasks", "dtd",
                       "--seeds", "2", "--dry-run", "--", "--epochs", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 grid trials + 2 selected runs (select=val)" in out
    assert out.count("python -m vtab_lily.run") == 2 and "--protocol val" in out and "--epochs 3" in out


def test_importing_the_sweep_package_imports_neither_ray_nor_torch():
    code = ("import sys, vtab_lily.sweep, vtab_lily.sweep.spec, vtab_lily.sweep.plan, vtab_lily.sweep.backends;"
            "print(json.dumps(['ray' in sys.modules, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    assert json.loads(out) == [False, False]
