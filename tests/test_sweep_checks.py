"""Hostile input to the sweep (issue 16): labels that must not collide, TOML types, exact option
names, duplicate and non-finite grid values, malformed result files. Fast: no training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vtab_lily.errors import UserError
from vtab_lily.sweep.__main__ import build_parser
from vtab_lily.sweep.__main__ import main as sweep_main
from vtab_lily.sweep.driver import SweepDriver
from vtab_lily.sweep.locate import RunLocator
from vtab_lily.sweep.plan import grid_trials, method_label
from vtab_lily.sweep.spec import build_spec, load_toml

from test_sweep_select import FakeBackend, FakeRuns, _option  # noqa: E402 - shared fakes

REPO = Path(__file__).resolve().parents[1]


def spec_of(grid=(("scale", ["0.1", "1"]),), **flags):
    base = {"backbone": "vit", "adapter": "lily", "tasks": "dtd", "grid": list(grid)}
    return build_spec({}, "command line", flags={**base, **flags})


# -- 16.3: labels and sweep ids -------------------------------------------------------------

def test_labels_differ_whenever_the_numbers_can_differ():
    base = spec_of(seeds="3")
    variants = {
        "grid values": spec_of(grid=[("scale", ["0.1", "10"])], seeds="3"),
        "grid keys": spec_of(grid=[("scale", ["0.1", "1"]), ("ne", ["2"])], seeds="3"),
        "seeds": spec_of(seeds="0,1,5"),
        "seed count": spec_of(seeds="2"),
        "select_seeds": spec_of(seeds="3", select_seeds=2),
        "select rule": spec_of(seeds="3", select="test-best"),
        "fixed option": spec_of(seeds="3", run_args=["--epochs", "50"]),
        "eval cadence (changes the best)": spec_of(seeds="3", run_args=["--eval-every", "5"]),
        "weights": spec_of(seeds="3", run_args=["--checkpoint", "none"]),
    }
    labels = {name: method_label(s) for name, s in variants.items()}
    for name, label in labels.items():
        assert label != method_label(base), name
        assert variants[name].sweep_id() != base.sweep_id(), name
    assert len(set(labels.values())) == len(labels)


def test_machine_settings_and_spelling_do_not_change_label_or_id():
    base = spec_of(seeds="2", run_args=["--epochs", "5", "--rank", "16"])
    same = [
        spec_of(seeds="2", run_args=["--rank=16", "--epochs", "5", "--threads", "7", "--device", "cpu"]),
        spec_of(seeds="2", run_args=["--epochs", "05", "--rank", "16", "--no-tensorboard", "--debug"]),
        spec_of(grid=[("scale", ["0.10", "1.0"])], seeds="2", run_args=["--epochs", "5", "--rank", "16"]),
    ]
    for spec in same:
        assert method_label(spec) == method_label(base)
        assert spec.sweep_id() == base.sweep_id()
    assert "threads" not in method_label(same[0]) and "cpu" not in method_label(same[0])
    # data paths stay out of the label (the method), but other data is another sweep folder
    data = spec_of(seeds="2", run_args=["--epochs", "5", "--rank", "16", "--data-root", "/d"])
    assert method_label(data) == method_label(base) and data.sweep_id() != base.sweep_id()
    spec_of(run_args=["--data-root", "inf", "--device", "nan"])  # paths and names are free text
    with pytest.raises(UserError, match="lr = 'nan' is not a finite number"):
        spec_of(run_args=["--lr", "nan"])


def test_label_is_safe_for_tables_and_unambiguous():
    spec = spec_of(grid=[("routing", ["a|b", "sample"])])
    label = method_label(spec)
    assert "|" not in label and "\n" not in label and label.rsplit(" #", 1)[1].isalnum()
    other = spec_of(grid=[("routing", ["a_b", "sample"])])
    assert method_label(other) != label
    commas = spec_of(grid=[("targets", ["k,v", "q"])])
    assert method_label(commas) != method_label(spec_of(grid=[("targets", ["k", "v,q"])]))


# -- 16.10: TOML types ---------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("seeds = 3.5", "seeds must be a count or a list of integers, got float 3.5"),
    ("seeds = [0, 1.5]", "seeds must be a count or a list of integers"),
    ("seeds = [-1]", "seeds must be a count or a list of integers 0.."),
    ("seeds = 0", "seed count must be between 1"),
    ("seeds = 100000000", "seed count must be between 1 and 1000"),
    ("tasks = 5", "tasks must be 'all', a string or a list of strings, got int 5"),
    ("tasks = [5]", "tasks: expected 'all'"),
    ('demo = "false"', "demo must be true or false (unquoted), got str 'false'"),
    ('paper = "yes"', "paper must be true or false"),
    ('select_seeds = "1"', "select_seeds must be an integer"),
    ("select = 1", "select must be a string"),
    ("grid = 5", "grid must be a table"),
    ("[grid]\nscale = [[0.1]]", "grid.scale: expected a number, a string or true/false"),
    ("[grid]\nscale = []", "grid.scale has no values"),
    ("[grid]\nsclae = [1]", "grid key 'sclae' is neither a run option nor an option of adapter 'lily' "
                             "(did you mean 'scale'?)"),
    ("[run]\nepochs = true", "run.epochs: expected a value"),
    ("[run]\nnormalize = 1", "run.normalize: expected true or false"),
    ("[run]\nepochs = [1, 2]", "run.epochs: expected a number"),
    ("[run]\nseed = 1", "the sweep sets --seed itself; use the sweep's --seeds"),
    ("[run]\nepoch = 1", "did you mean 'epochs'"),
    ("seed = 1", "unknown sweep setting 'seed' (did you mean 'seeds'?)"),
])
def test_toml_types_are_checked_with_the_key_named(tmp_path, line, message):
    path = tmp_path / "s.toml"
    head = 'backbone = "vit"\nadapter = "lily"\n' + ("" if line.startswith("tasks") else 'tasks = "dtd"\n')
    grid = "" if "[grid]" in line or line.startswith("grid") else "\n[grid]\nscale = [0.1, 1]\n"
    path.write_text(head + line + "\n" + grid)
    with pytest.raises(UserError) as err:
        build_spec(load_toml(path), str(path))
    assert str(path) in str(err.value) and message in str(err.value)


def test_boolean_settings_and_switches_mean_what_they_say(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('backbone = "vit"\nadapter = "lily"\ndemo = false\ntasks = "dtd"\n'
                    "[grid]\nnormalize = [true, false]\n[run]\nno-tensorboard = true\n")
    spec = build_spec(load_toml(path), str(path))
    assert not spec.demo
    argvs = [t.run_argv(spec, "runs") for t in grid_trials(spec, "dtd")]
    assert "--normalize" in argvs[0] and "--no-normalize" in argvs[1]


# -- 16.14: exact names, reserved options --------------------------------------------------

def test_sweep_parser_takes_no_abbreviations(capsys):
    assert build_parser().allow_abbrev is False
    with pytest.raises(SystemExit) as err:
        sweep_main(["--adapt", "lily", "--grid", "scale=1", "--dry-run"])
    assert err.value.code == 2 and "unrecognized arguments: --adapt" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--", "--ou", "/elsewhere"], "'ou' is not an option of python -m vtab_lily.run (did you mean 'out'?) "
                                   "(the sweep sets --out itself: use the sweep's --out)"),
    (["--", "--out", "/elsewhere"], "the sweep sets --out itself"),
    (["--", "--seed=3"], "the sweep sets --seed itself; use the sweep's --seeds"),
    (["--", "--method-name", "x"], "the sweep sets --method-name itself"),
    (["--", "--epoch", "3"], "did you mean 'epochs'"),
    (["--", "-e", "3"], "unexpected argument '-e'"),
    (["--", "--epochs"], "--epochs needs a value"),
    (["--grid", "see=1,2"], "(did you mean 'seed'?) (the sweep sets --seed itself: use the sweep's --seeds)"),
    (["--grid", "seed=1,2"], "the sweep sets --seed itself"),
    (["--grid", "threads=1,2"], "does not change the numbers"),
    (["--grid", "protocol=val,test"], "not a tunable run option"),
    (["--grid", "epochs=1,2", "--", "--epochs", "3"], "also a grid key"),
    (["--grid", "epochs=1", "--grid", "epochs=2"], "--grid epochs=... is given twice"),
])
def test_reserved_options_cannot_be_reached_by_abbreviation(argv, message):
    base = ["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--dry-run"]
    own = [] if "--grid" in argv else ["--grid", "scale=0.1,1"]
    with pytest.raises(UserError) as err:
        sweep_main(base + own + argv)
    assert message in str(err.value)


# -- 16.19 and 16.8: duplicate and bad grid values -----------------------------------------

def test_equal_grid_values_run_once_and_the_sweep_says_so(capsys):
    code = sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--grid", "scale=1,1.0,01",
                       "--grid", "ne=2,2", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0 and "1 grid points x 1 tasks; 1 grid trials" in captured.out
    assert "grid.scale: '1.0' is the same value as '1'; running it once" in captured.err
    assert "grid.ne: '2' is the same value as '2'" in captured.err


def test_negative_zero_is_zero_in_the_grid_and_its_label(capsys):
    code = sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--grid", "scale=-0.0,0,0.00001",
                       "--dry-run", "--", "--wd=-0.0"])
    captured = capsys.readouterr()
    assert code == 0 and "2 grid points x 1 tasks" in captured.out
    assert "grid.scale: '0' is the same value as '-0.0'; running it once" in captured.err
    assert "labelled 'lily (val-selected: scale={0,1e-05}; seeds 0 scored on 0; --wd 0)'" in captured.out


@pytest.mark.parametrize("grid, named", [
    ("scale=0.1,nan", "scale = 'nan' is not a finite number"),
    ("scale=inf", "scale = 'inf' is not a finite number"),
    ("lr=0.001,-1", "grid lr=-1: --lr must be a finite number > 0"),
    ("epochs=0,1", "grid epochs=0: --epochs must be >= 1"),
    ("drop_path=0.1,1.5", "grid drop_path=1.5: --drop-path must be below 1"),
    ("ne=2,two", "ne = 'two' is not a valid value"),
])
def test_dry_run_applies_the_runs_number_checks_to_every_grid_value(grid, named):
    with pytest.raises(UserError) as err:
        sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--grid", grid, "--dry-run"])
    assert named in str(err.value)


def test_adapter_option_grid_values_are_read_as_the_runner_reads_them(capsys):
    """A grid key without a run flag (--adapter-opt): 'paper' in any case is one value, and a
    value the runner refuses (length=5.0 on an int) fails the sweep now, not every trial later."""
    code = sweep_main(["--backbone", "vit", "--adapter", "vpt-deep", "--tasks", "dtd",
                       "--grid", "length=paper,PAPER,5,05", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0 and "2 grid points x 1 tasks" in captured.out
    assert "grid.length: 'PAPER' is the same value as 'paper'; running it once" in captured.err
    assert "grid.length: '05' is the same value as '5'; running it once" in captured.err
    for bad, named in (("5.0", "length = '5.0': --adapter-opt length: cannot read '5.0' as int"),
                       ("1e3", "cannot read '1e3' as int"), ("papr", "cannot read 'papr' as int.*; or paper")):
        with pytest.raises(UserError, match=named):
            sweep_main(["--backbone", "vit", "--adapter", "vpt-deep", "--tasks", "dtd",
                        "--grid", f"length=5,{bad}", "--dry-run"])


def test_paper_in_a_grid_over_a_flag_option(capsys):
    """scale and rank are run flags: 'paper' goes through them where the adapter has a table."""
    code = sweep_main(["--backbone", "vit", "--adapter", "fact-tt", "--tasks", "dtd",
                       "--grid", "scale=paper,1,1.0", "--grid", "rank=paper,8", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0 and "4 grid points x 1 tasks" in captured.out
    assert "--scale paper --rank paper" in captured.out
    with pytest.raises(UserError, match="adapter 'lily' has no published per-task scale"):
        sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--grid", "scale=paper,1", "--dry-run"])


@pytest.mark.parametrize("flags, named", [
    (["--trials-per-gpu", "0"], "--trials-per-gpu must be between 1 and 64"),
    (["--num-cpus", "-1", "--backend", "ray"], "--num-cpus must be at least 1"),
])
def test_dry_run_checks_the_sweeps_own_numbers_too(flags, named):
    with pytest.raises(UserError, match=named):
        sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--grid", "scale=1", "--dry-run",
                    *flags])


def test_bad_grid_value_exits_2_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vtab_lily.sweep", "--backbone", "vit", "--adapter", "lily",
                          "--demo", "--tasks", "colours", "--grid", "lr=0.01,-1", "--out", str(tmp_path / "runs"),
                          "--", "--epochs", "1"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "grid lr=-1" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


# -- 16.7: malformed result files ------------------------------------------------------------

BAD_RESULTS = {
    "invalid utf-8": b'{"schema": 1, "status": "complete", "method": "\xff\xfe"}',
    "memory as a list": None,  # filled from a valid result below
    "time as text": None,
    "huge integer": None,
    "deeply nested": b"[" * 100000 + b"]" * 100000,
}


def _bad_result(kind: str, valid: dict) -> bytes:
    if BAD_RESULTS[kind] is not None:
        return BAD_RESULTS[kind]
    if kind == "memory as a list":
        return json.dumps({**valid, "memory": [1]}).encode()
    if kind == "time as text":
        return json.dumps({**valid, "time": "fast"}).encode()
    return json.dumps(valid).replace('"total": 1', '"total": ' + "9" * 5000).encode()


@pytest.mark.parametrize("kind", list(BAD_RESULTS))
def test_a_malformed_result_is_skipped_with_a_warning_naming_it(tmp_path, capsys, kind):
    runs = FakeRuns(tmp_path / "runs")
    spec = build_spec({}, "test", flags={"backbone": "vit", "adapter": "lily", "tasks": "dtd", "seeds": "1",
                                         "select": "none", "grid": [("scale", ["0.1", "1"])]})
    argv = grid_trials(spec, "dtd")[0].run_argv(spec, "runs")
    runs.write(argv)
    path = runs.run_dir(argv) / "result.json"
    path.write_bytes(_bad_result(kind, json.loads(path.read_text())))

    backend = FakeBackend(runs)
    original = backend.submit
    def rerun(a, log):  # the runner would redo it; here the fake replaces the bad file
        if a == argv:
            path.unlink()
        return original(a, log)

    backend.submit = rerun
    state = SweepDriver(spec, "runs", tmp_path / "sweep", backend, runs.find, progress=False).run()
    assert state.ok() and sorted(state.status.values()) == ["done", "done"]
    assert [_option(a, "--scale") for a in runs.started] == ["0.1", "1"]  # the malformed one ran again
    err = capsys.readouterr().err
    assert f"warning: skipped {path.parent}" in err and str(path) in err


def test_locator_skips_unreadable_configs_and_ignores_report_and_unresolved_values(tmp_path):
    locator = RunLocator()
    config = {"backbone": "b", "adapter": "a", "task": "t", "out": str(tmp_path), "seed": 0, "pre_logits": None,
              "report": "test-selected", "threads": 3}
    locator.config = lambda argv: config  # type: ignore[method-assign]
    folder = tmp_path / "b" / "a" / "t"
    for name, text in (("bad-utf8", b"\xff\xfe{"), ("nested", b"[" * 100000), ("list", b"[1]")):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_bytes(text)
    assert locator.find([]) is None
    good = folder / "good"
    good.mkdir()
    (good / "config.json").write_text(json.dumps({**config, "pre_logits": True, "report": "final", "threads": 1}))
    assert locator.find([]) == good
    other = folder / "other-seed"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "seed": 1}))
    assert locator.find([]) == good


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"--out: cannot create .*a-file/runs/sweeps"):
        sweep_main(["--backbone", "vit", "--adapter", "lily", "--demo", "--tasks", "colours", "--grid", "scale=1",
                    "--out", str(blocker / "runs"), "--no-progress", "--", "--epochs", "1"])
    spec = spec_of()
    assert "/" not in build_spec({}, "x", flags={"backbone": "../../vit", "adapter": "lily", "tasks": "dtd",
                                                  "grid": [("scale", ["1"])]}).sweep_id()
    assert spec.sweep_id().startswith("vit-lily-val-")


@pytest.mark.parametrize("tasks", ["", ",", " "])
def test_an_empty_task_list_is_refused_never_every_task(tasks):
    with pytest.raises(UserError, match="tasks: no tasks given"):
        sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", tasks, "--grid", "scale=1", "--dry-run"])
