"""Real sweeps on the demo suite (tiny ViT, 1 epoch, one task, a 2-point grid), with the local
backend and with a local Ray instance on CPU; a sweep killed half-way; failing trials."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vtab_lily.results import iter_results
from vtab_lily.sweep.api import run_sweep
from vtab_lily.sweep.spec import build_spec
from vtab_lily.tasks import task_names

REPO = Path(__file__).resolve().parents[1]
TASK = task_names("demo")[0]
LABEL = "lily (val-selected: scale={0.1,10}; seeds 0 scored on 0; --epochs 1)"
WALL: dict[str, float] = {}  # backend -> seconds, printed at the end (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Every run single-threaded, as Ray runs its num_cpus=1 tasks: the two backends then
    # compute bit-identical runs, and two parallel trials do not fight over 2 cores.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    for backend, seconds in WALL.items():
        print(f"\ndemo sweep wall time ({backend}): {seconds:.1f} s")


@pytest.fixture(scope="module")
def scrambled_root(demo_root, tmp_path_factory):
    """A copy of the demo suite whose test labels of TASK are shuffled."""
    root = tmp_path_factory.mktemp("scrambled") / "vtab-demo"
    shutil.copytree(demo_root, root, ignore=shutil.ignore_patterns(".cache"))
    lines = (root / TASK / "test.txt").read_text().splitlines()
    labels = [line.rsplit(" ", 1)[1] for line in lines]
    np.random.default_rng(0).shuffle(labels)
    text = "".join(f"{line.rsplit(' ', 1)[0]} {label}\n" for line, label in zip(lines, labels))
    (root / TASK / "test.txt").write_text(text)
    assert text != "\n".join(lines) + "\n"
    # the copy's manifest describes the unscrambled lists: a run would refuse the data (it differs
    # from its manifest); without one the runs train on it and record no fingerprint
    (root / TASK / "manifest.json").unlink()
    return root


def demo_spec(data_root: Path, select: str = "val", scales: tuple[str, ...] = ("0.1", "10"), extra: tuple = ()):
    return build_spec({}, "test", flags={
        "backbone": "vit", "adapter": "lily", "tasks": TASK, "seeds": "1", "select": select, "demo": True,
        "grid": [("scale", list(scales))],
        "run_args": ["--epochs", "1", "--data-root", str(data_root), "--no-tensorboard", *extra]})


def finished_runs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("result.json") if "sweeps" not in p.parts)


@pytest.fixture(scope="module")
def local_sweep(demo_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("local")
    start = time.monotonic()
    outcome = run_sweep(demo_spec(demo_root), out=str(base / "runs"), backend="local",
                        leaderboards=base / "leaderboards", progress=False)
    WALL["local"] = time.monotonic() - start
    return base, outcome


def test_local_sweep_selects_on_val_then_retrains_on_test(local_sweep):
    base, outcome = local_sweep
    assert outcome.ok, outcome.summary()
    assert sorted(outcome.state.status.values()) == ["done"] * 3
    results = iter_results(base / "runs")
    assert len(results) == 3 == len(finished_runs(base / "runs"))
    val = {r["config"]["adapter_options"]["scale"]: r["accuracy"]["final"] for r in results if r["protocol"] == "val"}
    assert set(val) == {0.1, 10.0}

    selection = json.loads(outcome.selection_path.read_text())
    entry = selection["tasks"][TASK]
    best = max(val.values())
    first_best = next(s for s in ("0.1", "10") if val[float(s)] == best)  # ties: grid order
    assert entry["chosen"] == {"scale": first_best} and entry["chosen_score"] == best
    assert selection["method"] == LABEL and selection["select"] == "val"

    (final,) = [r for r in results if r["protocol"] == "test"]
    assert final["method"] == LABEL and final["accuracy"]["eval_split"] == "test"
    assert final["config"]["adapter_options"]["scale"] == float(first_best)
    assert entry["test"] == {"0": final["accuracy"]["final"]}
    words = shlex.split(entry["commands"][0])
    assert words[words.index("--scale") + 1] == first_best and words[words.index("--protocol") + 1] == "test"

    page = outcome.markdown_path.read_text()
    assert outcome.markdown_path.parent == base / "leaderboards" / "sweeps"
    assert LABEL in page and "python -m vtab_lily.run" in page and "val200" in page
    events = list(outcome.tensorboard_path.rglob("events.out.tfevents.*"))
    assert len({e.parent for e in events}) >= 3  # one hparams run per finished trial


def test_leaderboard_row_carries_the_selection_label(local_sweep):
    base, _ = local_sweep
    out = subprocess.run([sys.executable, "-m", "vtab_lily.leaderboard", "--runs", str(base / "runs"), "--format", "md",
                          "--no-reference"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "val-selected: scale={0.1,10}" in out.stdout


def test_ray_backend_gives_the_same_selection_without_seeing_test_labels(local_sweep, scrambled_root, tmp_path):
    """With the test labels shuffled the val selection is identical: it never reads them."""
    _, local = local_sweep
    start = time.monotonic()
    outcome = run_sweep(demo_spec(scrambled_root), out=str(tmp_path / "runs"), backend="ray", num_cpus=2,
                        leaderboards=tmp_path / "leaderboards", progress=False)
    WALL["ray"] = time.monotonic() - start
    assert outcome.ok, outcome.summary()
    assert sorted(outcome.state.status.values()) == ["done"] * 3
    ours = json.loads(outcome.selection_path.read_text())["tasks"][TASK]
    theirs = json.loads(local.selection_path.read_text())["tasks"][TASK]
    assert ours["grid"] == theirs["grid"]  # bit-identical val scores
    assert ours["chosen"] == theirs["chosen"]
    (final,) = [r for r in iter_results(tmp_path / "runs") if r["protocol"] == "test"]
    assert final["config"]["data_root"] == str(scrambled_root) and final["method"] == LABEL


def sweep_command(demo_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vtab_lily.sweep", "--backbone", "vit", "--adapter", "lily", "--demo",
            "--tasks", TASK, "--grid", "scale=0.1,1", "--select", "none", "--out", str(out),
            "--leaderboards", str(out / "lb"), "--no-progress", "--", "--epochs", "1", "--data-root", str(demo_root),
            "--no-tensorboard", *extra]


def test_killed_sweep_resumes_without_rerunning_and_reports_failures(demo_root, tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen(sweep_command(demo_root, out), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        while not finished_runs(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the trial it is running, like a lost job
        proc.wait()
    before = {p: p.stat().st_mtime_ns for p in finished_runs(out)}
    assert len(before) == 1, "the sweep should have been killed half-way"
    # The local backend runs trials in grid order: the finished one is scale=0.1.
    (first,) = before
    assert json.loads(first.read_text())["config"]["adapter_options"]["scale"] == 0.1

    # Restarted while runs crash (a NaN loss injected into every run): the finished trial is
    # not started, the other fails, the sweep says so and exits 1.
    broken = subprocess.run(sweep_command(demo_root, out), cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "VTAB_LILY_FAULT": "nan_loss:1"})
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "0 run now, 1 already finished, 1 failed" in broken.stdout
    assert "FAILED trials (1)" in broken.stdout and "scale=1-" in broken.stdout

    again = subprocess.run(sweep_command(demo_root, out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 run now, 1 already finished, 0 failed" in again.stdout
    assert len(finished_runs(out)) == 2
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())  # never rerun
    logs = [log for log in (out / "sweeps").rglob("*.log") if "batches" not in log.parts]  # batch processes log apart
    assert len(logs) == 2  # one per trial
    (first_log,) = [log for log in logs if "scale=0.1-" in log.name]
    assert first_log.read_text().count("\n$ ") == 1  # started once, by the killed sweep


def test_threads_change_neither_the_label_nor_the_runs(local_sweep, demo_root):
    base, first = local_sweep
    spec = demo_spec(demo_root, extra=("--threads", "2"))
    assert spec.sweep_id() == first.state.spec.sweep_id()
    before = {p: p.stat().st_mtime_ns for p in finished_runs(base / "runs")}
    outcome = run_sweep(spec, out=str(base / "runs"), backend="local", leaderboards=base / "leaderboards",
                        progress=False)
    assert outcome.ok and set(outcome.state.status.values()) == {"skipped"}  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in finished_runs(base / "runs")} == before


# A stand-in for the runner's `--batch FILE` (contract: JSON lines of run arguments, run in
# order in one process, exit code the worst seen); it also records each process it starts.
FAKE_BATCH = """
import json, os, sys
from vtab_lily import run
from vtab_lily.errors import UserError
path = sys.argv[sys.argv.index("--batch") + 1]
with open(os.environ["FAKE_BATCH_PROCESSES"], "a") as f:
    f.write(path + "\\n")
worst = 0
for line in open(path):
    try:
        code = run.main(json.loads(line)) or 0
    except UserError as err:
        print("error:", err)
        code = 2
    print("batch status", code, flush=True)
    worst = max(worst, code)
sys.exit(worst)
"""


def test_batch_workers_run_real_trials_and_result_json_decides(demo_root, tmp_path, monkeypatch):
    from vtab_lily.sweep import backends

    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "fake_batch_runner.py").write_text(FAKE_BATCH)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "mod"), os.environ.get("PYTHONPATH", "")]))
    processes = tmp_path / "processes.txt"
    monkeypatch.setenv("FAKE_BATCH_PROCESSES", str(processes))
    real = backends.run_batch_process
    monkeypatch.setattr(backends, "run_batch_process", lambda trials, log, env=None, root=None, module="", on_done=None:
                        real(trials, log, env, root, module="fake_batch_runner", on_done=on_done))
    out = tmp_path / "runs"
    spec = demo_spec(demo_root, select="none")
    monkeypatch.setenv("VTAB_LILY_FAULT", "nan_loss:1")  # the first run of each process fails
    broken = run_sweep(spec, out=str(out), backend="local", leaderboards=tmp_path / "lb", progress=False, batch=True)
    status = {t.params["scale"]: s for t, s in broken.state.status.items()}
    assert status == {"0.1": "failed", "10": "done"}  # one process, exit 1; its second run finished
    assert len(processes.read_text().splitlines()) == 1
    (failed,) = broken.state.failed
    assert "exit 1" in broken.state.failures[failed] and "batches" in broken.state.failures[failed]

    monkeypatch.delenv("VTAB_LILY_FAULT")
    again = run_sweep(spec, out=str(out), backend="local", leaderboards=tmp_path / "lb", progress=False, batch=True)
    assert again.ok and sorted(again.state.status.values()) == ["done", "skipped"]
    assert len(processes.read_text().splitlines()) == 2 and len(finished_runs(out)) == 2
    trial_log = next((out / "sweeps").rglob("grid-*scale=0.1-*.log"))
    assert trial_log.read_text().count("\n$ ") == 2 and "batches" in trial_log.read_text()
