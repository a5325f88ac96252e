"""Per-example predictions (issue 25 item 1): predictions.npz is written with every complete run,
agrees with result.json and the evaluation list, survives a stop and resume, is absent but
harmless for runs made before it existed, and a damaged or foreign file is a clear error that
never unpickles anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vtab_lily import predictions as predfile
from vtab_lily import run, rundir
from vtab_lily.analyze import __main__ as analyze_cli
from vtab_lily.data import ensure_demo
from vtab_lily.data.lists import read_list
from vtab_lily.errors import UserError
from vtab_lily.leaderboard.__main__ import main as leaderboard_main
from vtab_lily.results import iter_results, read_predictions
from vtab_lily.tasks import get_task

TINY = ["--demo", "--backbone", "vit", "--adapter", "lily", "--rank", "4", "--img-size", "16",
        "--epochs", "2", "--eval-every", "1", "--batch-size", "100"]
STEPS_PER_EPOCH = 10  # 1000 training images / 100


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    # the folder other test files generate the demo in: within one session it is drawn once
    return ensure_demo(tmp_path_factory.getbasetemp() / "vtab-demo")


def argv(demo_root: Path, out: Path, task: str = "colours", *extra: str) -> list[str]:
    return [*TINY, "--task", task, "--data-root", str(demo_root), "--out", str(out), *extra]


def only_run(out: Path) -> Path:
    (run_dir,) = {p.parent for p in out.rglob("config.json")}
    return run_dir


@pytest.fixture(scope="module")
def reference(demo_root, tmp_path_factory) -> Path:
    """One uninterrupted run; tests copy it before editing."""
    out = tmp_path_factory.mktemp("reference")
    assert run.main(argv(demo_root, out)) == 0
    return only_run(out)


def arrays(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / run_dir.relative_to(run_dir.parents[3])
    shutil.copytree(run_dir, target)
    return target


def test_the_file_matches_the_accuracies_and_the_list_order(reference, demo_root):
    result = json.loads((reference / "result.json").read_text())
    pred = read_predictions(reference)
    entry = result["predictions"]
    split_list = read_list(demo_root, get_task("colours", "demo"), "test")
    assert entry == {"file": "predictions.npz", "n": len(split_list), "eval_split": "test",
                     "list_sha256": pred.list_sha256}
    assert pred.labels.tolist() == split_list.labels  # the list file's order
    for values in (pred.labels, pred.final, pred.selected):
        assert values.dtype == np.int16 and values.shape == (300,)
    assert 100.0 * (pred.final == pred.labels).mean() == pytest.approx(result["accuracy"]["final"], abs=1e-9)
    assert 100.0 * (pred.selected == pred.labels).mean() == pytest.approx(result["accuracy"]["best"], abs=1e-9)
    assert pred.note == ""
    assert set(arrays(reference)) == {"labels", "final", "selected", "config_hash", "list_sha256"}


STOPS = {"mid": f"train_step:{STEPS_PER_EPOCH + 3}:INT",  # Ctrl-C in epoch 2, after the first evaluation
         "end": "result_write:1:INT"}  # after the final checkpoint and predictions.npz, before result.json


@pytest.fixture(scope="module")
def stopped(demo_root, tmp_path_factory) -> dict[str, Path]:
    """Runs stopped at each of STOPS (their --out folders); tests copy them before resuming."""
    outs = {}
    for where, fault in STOPS.items():
        outs[where] = out = tmp_path_factory.mktemp(f"stopped-{where}")
        rundir._fault_counts.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VTAB_LILY_FAULT", fault)
            with pytest.raises(KeyboardInterrupt):
                run.main(argv(demo_root, out))
        assert not (only_run(out) / "result.json").exists()
    return outs


def resume(stopped: dict[str, Path], where: str, demo_root: Path, tmp_path: Path, old_checkpoint: bool = False) -> Path:
    out = tmp_path / where
    shutil.copytree(stopped[where], out)
    run_dir = only_run(out)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    if old_checkpoint:  # as written before predictions were kept
        del state["predictions"]
        torch.save(state, run_dir / "checkpoint.pt")
    else:
        assert set(state["predictions"]) == {"last", "best"} and state["predictions"]["last"].dtype == torch.int16
    assert run.main(argv(demo_root, out)) == 0
    return run_dir


@pytest.mark.parametrize("where", STOPS)
def test_a_stopped_run_resumes_to_the_same_predictions(reference, stopped, demo_root, tmp_path, where):
    run_dir = resume(stopped, where, demo_root, tmp_path)
    # TensorBoard: the resumed run went on writing the one run named by its method and seed
    assert [p.name for p in (run_dir / "tb").iterdir()] == [p.name for p in (reference / "tb").iterdir()]
    expected, got = arrays(reference), arrays(run_dir)
    assert got.keys() == expected.keys()
    for name in ("labels", "final", "selected"):
        assert np.array_equal(got[name], expected[name]), name
    read_predictions(run_dir)  # and it checks against the resumed run's result.json


def test_resumed_from_an_older_checkpoint_after_the_last_evaluation_records_none(stopped, demo_root, tmp_path):
    assert (only_run(stopped["end"]) / "predictions.npz").exists()  # the stopped attempt's file
    run_dir = resume(stopped, "end", demo_root, tmp_path, old_checkpoint=True)
    assert not (run_dir / "predictions.npz").exists()  # not this result's: removed
    assert "predictions" not in json.loads((run_dir / "result.json").read_text())
    assert read_predictions(run_dir) is None


def test_resumed_from_an_older_checkpoint_mid_run_says_what_it_lacks(stopped, demo_root, tmp_path):
    run_dir = resume(stopped, "mid", demo_root, tmp_path, old_checkpoint=True)
    result = json.loads((run_dir / "result.json").read_text())
    pred = read_predictions(run_dir)
    assert 100.0 * (pred.final == pred.labels).mean() == pytest.approx(result["accuracy"]["final"], abs=1e-9)
    if result["accuracy"]["best_epoch"] == 1:  # selected before the resume: unknown, and said so
        assert pred.selected is None and "before predictions were kept" in pred.note
        assert "selected_missing" in result["predictions"]
    else:
        assert pred.selected is not None and pred.note == ""


def make_old(run_dir: Path) -> None:
    """A run as recorded before predictions existed: no file, no result.json field."""
    (run_dir / "predictions.npz").unlink()
    result = json.loads((run_dir / "result.json").read_text())
    del result["predictions"]
    (run_dir / "result.json").write_text(json.dumps(result))


def test_a_run_made_before_predictions_loads_everywhere(reference, tmp_path, capsys):
    old = copy_run(reference, tmp_path)
    make_old(old)
    runs = tmp_path / "runs"
    assert read_predictions(old) is None
    assert [r["run_dir"] for r in iter_results(runs)] == [str(old)]
    assert leaderboard_main(["--runs", str(runs), "--out", str(tmp_path / "lb"), "--no-plots"]) == 0
    assert leaderboard_main(["--runs", str(runs), "--task", "colours"]) == 0
    assert str(old) in capsys.readouterr().out
    assert analyze_cli.main([str(runs), "--out", str(tmp_path / "analysis")]) == 0
    assert list((tmp_path / "analysis").rglob("*colours.md"))


def savez(path: Path, **values) -> None:
    with open(path, "wb") as f:
        np.savez(f, **values)


def text(value: str) -> np.ndarray:
    return np.frombuffer(value.encode(), dtype=np.uint8)


def damage(run_dir: Path, how: str, other: Path) -> str:
    """Edit ``run_dir``'s predictions the way ``how`` says; return what the error must mention."""
    path = run_dir / "predictions.npz"
    good = arrays(run_dir)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
        return "not an .npz archive"
    if how == "not-a-zip":
        path.write_text("labels,final\n1,2\n")
        return "not an .npz archive"
    if how == "bad-member":  # the zip is whole, one array's bytes are not
        data = bytearray(path.read_bytes())
        start = data.index(b"\x93NUMPY")
        data[start:start + 10] = b"garbage!!!"
        path.write_bytes(bytes(data))
        return "predictions.npz"
    if how == "pickle":  # an object array: loading it would unpickle
        savez(path, **{**good, "labels": np.array([{"x": 1}] * 300, dtype=object)})
        return "never unpickled"
    if how == "int64":
        savez(path, **{**good, "final": good["final"].astype(np.int64)})
        return "must be int16"
    if how == "short":
        savez(path, **{**good, "final": good["final"][:-1]})
        return "shape (300,)"
    if how == "class-out-of-range":
        final = good["final"].copy()
        final[0] = 99
        savez(path, **{**good, "final": final})
        return "outside 0..7"
    if how == "edited-prediction":
        final = good["final"].copy()
        final[0] = (final[0] + 1) % 8
        savez(path, **{**good, "final": final})
        return "does not belong to this result"
    if how == "extra-array":
        savez(path, **good, notes=np.zeros(3))
        return "unexpected arrays"
    if how == "other-run":
        shutil.copy(other / "predictions.npz", path)
        return "copied from another run folder"
    if how == "other-list":
        savez(path, **{**good, "list_sha256": text("0" * 64)})
        return "another list"
    if how == "fifo":  # opening it would block: refused before any read
        path.unlink()
        os.mkfifo(path)
        return "not a regular file"
    if how == "missing":
        path.unlink()
        return "missing"
    if how == "field-missing":
        result = json.loads((run_dir / "result.json").read_text())
        del result["predictions"]
        (run_dir / "result.json").write_text(json.dumps(result))
        return "records no predictions"
    raise AssertionError(how)


DAMAGE = ["truncated", "not-a-zip", "bad-member", "pickle", "int64", "short", "class-out-of-range", "edited-prediction",
          "extra-array", "other-run", "other-list", "fifo", "missing", "field-missing"]


@pytest.fixture(scope="module")
def other_task(demo_root, tmp_path_factory) -> Path:
    """A run of another demo task (its test split has as many images as colours')."""
    out = tmp_path_factory.mktemp("other")
    assert run.main(argv(demo_root, out, "orientation")) == 0
    return only_run(out)


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_or_foreign_file_is_an_error_naming_it(reference, other_task, tmp_path, how, monkeypatch):
    run_dir = copy_run(reference, tmp_path)
    expected = damage(run_dir, how, other_task)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr("pickle.loads", no_unpickling)
    monkeypatch.setattr("pickle.load", no_unpickling)
    with pytest.raises(UserError) as err:
        read_predictions(run_dir)
    assert str(run_dir / "predictions.npz") in str(err.value) and expected in str(err.value)
    assert len(iter_results(tmp_path / "runs")) == 1  # the result itself still loads


def test_a_malformed_predictions_record_makes_the_result_malformed(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    result["predictions"]["n"] = -3
    (run_dir / "result.json").write_text(json.dumps(result))
    warnings: list[str] = []
    assert iter_results(tmp_path / "runs", warnings) == []
    assert "predictions.n" in warnings[0]


def test_encode_refuses_what_int16_cannot_hold():
    with pytest.raises(ValueError):
        predfile.encode(np.array([0, 40000]), np.array([0, 1]), None, "0" * 8, "0" * 64)


def test_the_command_with_eval_limit_records_every_example(demo_root, tmp_path):
    """Through the user's command: intermediate evaluations on 50 images, the final one on all 300."""
    cmd = [sys.executable, "-m", "vtab_lily.run", *argv(demo_root, tmp_path, "colours", "--eval-limit", "50")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = only_run(tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    pred = read_predictions(run_dir)
    assert result["predictions"]["n"] == pred.n == 300
    if result["accuracy"]["best_epoch"] == 1:  # chosen on 50 images: no classes for all 300
        assert pred.selected is None and "first 50 of 300" in pred.note
    else:
        assert np.array_equal(pred.selected, pred.final)
