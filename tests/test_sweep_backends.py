"""Filling a GPU (issue 13): several trials per GPU, CPU threads split between workers, batches
of trials in one runner process, fractional GPUs on Ray; and --paper's exported number (issue 12).
Fast: trial processes and Ray are faked; tests/test_sweep_run.py runs real batches."""

from __future__ import annotations

import sys
import threading
import os
import time
import types

import pytest

from vtab_lily.sweep import backends
from vtab_lily.sweep.driver import SweepDriver, selection_record
from vtab_lily.sweep.execute import Outcome
from vtab_lily.sweep.plan import final_trials
from vtab_lily.sweep.report import selection_markdown
from vtab_lily.sweep.spec import build_spec

from test_sweep_select import FakeBackend, FakeRuns, make_spec  # noqa: E402 - shared fakes


def run_all(local: backends.LocalBackend, argvs: list[list[str]], tmp_path) -> list[Outcome]:
    handles = [local.submit(argv, str(tmp_path / f"{i}.log")) for i, argv in enumerate(argvs)]
    local.flush()
    finished: dict = {}
    while len(finished) < len(handles):
        finished.update(local.wait([h for h in handles if h not in finished]))
    local.close()
    return [finished[h] for h in handles]


def test_trials_per_gpu_share_a_gpu_and_split_the_cores(monkeypatch, tmp_path):
    seen: list[tuple[str, list[str]]] = []
    together = threading.Barrier(4, timeout=10)  # fails unless 4 trials run at once on 2 GPUs

    def fake_process(argv, log_path, env=None, package_root=None, module="vtab_lily.run"):
        seen.append((env["CUDA_VISIBLE_DEVICES"], argv))
        assert env["VTAB_LILY_TRIALS_PER_GPU"] == "2"  # recorded in result.json: contended times
        together.wait()
        return Outcome(0, 0.0, log_path)

    monkeypatch.setattr(backends, "run_trial_process", fake_process)
    monkeypatch.setattr(backends, "cpu_cores", lambda: 16)
    local = backends.LocalBackend(gpus=["3", "5"], trials_per_gpu=2)
    assert local.workers == 4 and local.threads == 4
    run_all(local, [["--seed", str(i)] for i in range(3)] + [["--seed", "3", "--threads", "1"]], tmp_path)
    assert sorted(gpu for gpu, _ in seen) == ["3", "3", "5", "5"]
    threads = sorted(argv[argv.index("--threads") + 1] for _, argv in seen)
    assert threads == ["1", "4", "4", "4"]  # given --threads wins
    assert all(argv.count("--threads") == 1 for _, argv in seen)


def test_one_worker_keeps_the_runs_own_thread_default(monkeypatch, tmp_path):
    seen: list[list[str]] = []
    monkeypatch.setattr(backends, "run_trial_process",
                        lambda argv, log, env=None, root=None, module="": seen.append(argv) or Outcome(0, 0.0, log))
    run_all(backends.LocalBackend(gpus=[]), [["--seed", "0"]], tmp_path)
    assert seen == [["--seed", "0"]]


def test_cpu_only_machine_runs_trials_per_gpu_at_once(monkeypatch, tmp_path):
    together = threading.Barrier(3, timeout=10)
    envs = []

    def fake_process(argv, log_path, env=None, package_root=None, module="vtab_lily.run"):
        envs.append(env)
        together.wait()
        return Outcome(0, 0.0, log_path)

    monkeypatch.setattr(backends, "run_trial_process", fake_process)
    local = backends.LocalBackend(gpus=[], trials_per_gpu=3)
    run_all(local, [["--seed", str(i)] for i in range(3)], tmp_path)
    assert envs == [{}, {}, {}]


def test_batch_mode_runs_one_process_per_worker(monkeypatch, tmp_path):
    batches: list[tuple[str, list[list[str]]]] = []

    def fake_batch(trials, batch_log, env=None, package_root=None, module="vtab_lily.run", on_done=None):
        batches.append((env["CUDA_VISIBLE_DEVICES"], [argv for argv, _ in trials]))
        time.sleep(0.05)
        return 1 if any("--fail" in argv for argv, _ in trials) else 0

    monkeypatch.setattr(backends, "run_batch_process", fake_batch)
    monkeypatch.setattr(backends, "cpu_cores", lambda: 2)
    local = backends.LocalBackend(gpus=["0", "1"], batch=True)
    outcomes = run_all(local, [["--seed", str(i)] for i in range(7)] + [["--fail"]], tmp_path)
    assert len(batches) == 2 and sorted(len(argvs) for _, argvs in batches) == [4, 4]  # an even share each
    assert sorted(gpu for gpu, _ in batches) == ["0", "1"]
    assert all(argv[-2:] == ["--threads", "1"] for _, argvs in batches for argv in argvs)
    codes = sorted(o.returncode for o in outcomes)
    assert codes == [0] * 4 + [1] * 4  # the batch's worst code, for each of its trials
    assert all("batches" in o.log for o in outcomes)


def test_the_local_backend_batches_unless_told_one_process_per_trial():
    local = backends.make_backend("local")
    assert local.batch is True
    local.close()
    local = backends.make_backend("local", batch=False)
    assert local.batch is False
    local.close()
    with pytest.raises(Exception, match="--trials-per-gpu must be between 1 and 64"):
        backends.make_backend("local", trials_per_gpu=0)


def test_ray_packs_trials_per_gpu_with_fractional_gpus(monkeypatch):
    asked = {}
    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: True
    fake.cluster_resources = lambda: {"GPU": 2.0, "CPU": 8.0}

    def remote(**resources):
        asked.update(resources)
        return lambda fn: fn

    fake.remote = remote
    monkeypatch.setitem(sys.modules, "ray", fake)
    backends.make_backend("ray", trials_per_gpu=4)
    assert asked == {"max_retries": 0, "num_gpus": 0.25}


# -- --paper ---------------------------------------------------------------------------------

def test_paper_passes_the_flag_to_the_test_runs_and_exports_test_selected(tmp_path):
    spec = build_spec({}, "t", flags={"backbone": "vit", "adapter": "lily", "tasks": "dtd", "seeds": "2",
                                      "paper": True, "grid": [("scale", ["0.1", "1"])]})
    assert spec.paper and spec.sweep_id() == make_spec("val").sweep_id()  # the same runs, the same sweep
    final = final_trials(spec, "dtd", spec.points()[0])[0]
    assert final.protocol == "test" and "--paper" in final.run_argv(spec, "runs")
    plain = make_spec("val")
    assert "--paper" not in final_trials(plain, "dtd", plain.points()[0])[0].run_argv(plain, "runs")

    runs = FakeRuns(tmp_path / "runs")
    original = runs.write

    def write(argv):  # the fake's best accuracy is its final + 5
        original(argv)
        import json

        path = runs.run_dir(argv) / "result.json"
        result = json.loads(path.read_text())
        result["accuracy"]["best"] = result["accuracy"]["final"] + 5
        path.write_text(json.dumps(result))

    runs.write = write
    state = SweepDriver(spec, "runs", tmp_path / "sweep", FakeBackend(runs), runs.find, progress=False).run()
    record = selection_record(state)
    entry = record["tasks"]["dtd"]
    assert record["paper"] and "best test accuracy" in record["test_selected_metric"]
    assert entry["test"] == {"0": 50.0, "1": 50.0} and entry["test_selected"] == {"0": 55.0, "1": 55.0}
    page = selection_markdown(state)
    assert "test acc (final)" in page and "test acc (test-selected)" in page and "55.00" in page
    started = [argv for argv in runs.started if "test" == argv[argv.index("--protocol") + 1]]
    assert started and all("--paper" in argv for argv in started)


def test_a_paper_sweep_selecting_on_val_passes_paper_to_its_test_runs_only(capsys):
    """``--paper`` with the default ``--select val`` used to be refused by the runner's own check
    (``--paper ... needs --protocol test``), because the val grid trials got it too."""
    from vtab_lily.sweep.__main__ import main as sweep_main

    assert sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--grid", "scale=1,10",
                       "--paper", "--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python -m vtab_lily.run")]
    assert any("--protocol val" in line for line in commands)
    assert all(("--paper" in line) == ("--protocol test" in line) for line in commands)


def test_a_batch_reports_each_trial_as_it_ends_not_at_the_batch_end(tmp_path, monkeypatch):
    """Issue 22.16: the sweep's bar sat at 0 until a whole batch process ended; each line's end is
    now read from the batch's report file while the process runs."""
    fake = tmp_path / "fakebatch.py"
    fake.write_text(
        "import os, sys, time\n"
        "lines = open(sys.argv[2]).read().splitlines()\n"
        "for i, line in enumerate(lines):\n"
        "    with open(os.environ['VTAB_LILY_BATCH_REPORT'], 'a') as f:\n"
        "        f.write(f\"{1 if 'fail' in line else 0}\\tline {i}\\tdone\\n\")\n"
        "    time.sleep(3 if i == 0 else 0)\n"
        "sys.exit(1)\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    local = backends.LocalBackend(gpus=[], trials_per_gpu=1, batch=True, module="fakebatch")
    try:
        futures = [local.submit(argv, str(tmp_path / "logs" / f"{i}.log")) for i, argv in enumerate([["ok"], ["fail"]])]
        local.flush()
        start = time.monotonic()
        (first, outcome), *_ = local.wait(futures)
        assert time.monotonic() - start < 2.5 and first is futures[0] and outcome.returncode == 0
        assert local.running() == 1  # the second is still running
        assert futures[1].result(timeout=30).returncode == 1  # its own code, not only the batch's
    finally:
        local.close()
    assert local.running() == 0


def test_the_progress_eta_comes_from_trials_that_ran_and_none_before_one_has():
    """Issue 22.16: an ETA of 2:13:59 for a sweep that ended 3 minutes later; skipped trials took
    no time, and tqdm's estimate counted them as work."""
    from vtab_lily.sweep.driver import Progress

    now = [100.0]
    progress = Progress(10, enabled=False)
    progress.clock, progress.start = (lambda: now[0]), 100.0
    progress.update(running=1, skipped=5)
    assert progress.eta(5) == "?"
    now[0] = 160.0
    progress.update(running=1, finished=1)  # 1 ran in 60 s; 4 left
    assert progress.done + progress.skipped == 6 and progress.eta(4) == "0:04:00"
    progress.close()
