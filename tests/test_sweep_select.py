"""The sweep driver with a fake backend: selection never reads test accuracy, failures are
reported without stopping the sweep, and finished trials are not started again. (Fast: the
runs are simulated; tests/test_sweep_run.py runs real ones.)"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest

from vtab_lily.fsutil import atomic_write_json
from vtab_lily.sweep import driver as driver_module
from vtab_lily.sweep.driver import SweepDriver, selection_record
from vtab_lily.sweep.execute import Outcome
from vtab_lily.sweep.spec import build_spec

# accuracy by (protocol, scale): on val, scale 1 wins; on test, scale 0.1 would win.
ACCURACY = {("val", "0.1"): 60.0, ("val", "1"): 70.0, ("test", "0.1"): 90.0, ("test", "1"): 50.0}


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


class FakeRuns:
    """Run directories keyed by the trial's options; 'running' a trial writes its result."""

    def __init__(self, root: Path, fail_scale: str | None = None):
        self.root, self.fail_scale, self.started = root, fail_scale, []

    def run_dir(self, argv: list[str]) -> Path:
        label = (_option(argv, "--method-name") or "grid").replace(" ", "_")
        return self.root / _option(argv, "--task") / f"{_option(argv, '--protocol')}-{_option(argv, '--scale')}-s{_option(argv, '--seed')}-{label}"

    def find(self, argv: list[str]) -> Path | None:
        path = self.run_dir(argv)
        return path if path.exists() else None

    def write(self, argv: list[str]) -> None:
        protocol, scale, task = _option(argv, "--protocol"), _option(argv, "--scale"), _option(argv, "--task")
        atomic_write_json(self.run_dir(argv) / "result.json", {
            "schema": 1, "status": "complete", "backbone": "vit", "adapter": "lily", "task": task, "suite": "vtab",
            "protocol": protocol, "seed": int(_option(argv, "--seed")),
            "method": _option(argv, "--method-name") or f"lily s={scale}", "method_hash": "0" * 8, "config_hash": "1" * 8,
            "accuracy": {"final": ACCURACY[protocol, scale], "best": ACCURACY[protocol, scale],
                         "eval_split": "val200" if protocol == "val" else "test"},
            "params": {"total": 1}})


class FakeBackend:
    name = "fake"

    def __init__(self, runs: FakeRuns):
        self.runs = runs

    def submit(self, argv: list[str], log_path: str) -> Future:
        self.runs.started.append(argv)
        future: Future = Future()
        if _option(argv, "--scale") == self.runs.fail_scale and _option(argv, "--task") == "dtd":
            future.set_result(Outcome(1, 0.1, log_path, "boom"))
        else:
            self.runs.write(argv)
            future.set_result(Outcome(0, 0.1, log_path))
        return future

    def wait(self, handles):
        return [(h, h.result()) for h in handles]

    def running(self) -> int:
        return 0

    def close(self) -> None: ...


def make_spec(select: str = "val", tasks: str = "dtd"):
    return build_spec({}, "test", flags={"backbone": "vit", "adapter": "lily", "tasks": tasks, "seeds": "2",
                                         "select": select, "grid": [("scale", ["0.1", "1"])]})


def run(spec, runs: FakeRuns, tmp_path: Path) -> SweepDriver:
    driver = SweepDriver(spec, str(tmp_path / "runs"), tmp_path / "sweep", FakeBackend(runs), runs.find, progress=False)
    driver.run()
    return driver


def test_val_selection_never_reads_a_test_result(tmp_path, monkeypatch):
    spec = make_spec("val")
    runs = FakeRuns(tmp_path / "runs")
    # Test-protocol runs of every grid point already exist (say, from an earlier test-best sweep).
    for scale in ("0.1", "1"):
        runs.write(["--task", "dtd", "--protocol", "test", "--scale", scale, "--seed", "0"])
    reads: list[tuple[str, bool]] = []
    real_status = driver_module.run_status

    def watched_status(run_dir):
        status = real_status(run_dir)
        if status.result is not None:
            chosen = driver_ref[0].state.selections["dtd"].chosen
            if status.result["protocol"] == "test" and chosen is None:
                pytest.fail(f"selection read a test result before choosing: {run_dir}")
            reads.append((status.result["protocol"], chosen is not None))
        return status

    driver_ref = []
    monkeypatch.setattr(driver_module, "run_status", watched_status)
    driver = SweepDriver(spec, str(tmp_path / "runs"), tmp_path / "sweep", FakeBackend(runs), runs.find, progress=False)
    driver_ref.append(driver)
    state = driver.run()

    selection = state.selections["dtd"]
    assert selection.chosen == {"scale": "1"} and selection.chosen_score == 70.0  # best on val, worst on test
    assert ("test", True) in reads and all(chosen for protocol, chosen in reads if protocol == "test")
    assert state.ok()
    record = selection_record(state)["tasks"]["dtd"]
    assert record["test"] == {"0": 50.0, "1": 50.0}
    assert len(record["commands"]) == 2 and "--method-name 'lily (val-selected: scale={0.1,1}; seeds 0,1 scored on 0)'" in record["commands"][0]


def test_test_best_chooses_on_test_and_says_so(tmp_path):
    state = run(make_spec("test-best"), FakeRuns(tmp_path / "runs"), tmp_path).state
    assert state.selections["dtd"].chosen == {"scale": "0.1"}
    record = selection_record(state)
    assert record["method"] == "lily (test-best: scale={0.1,1}; seeds 0,1 scored on 0)" and record["scored_on"].startswith("test")


def test_a_failed_grid_trial_blocks_only_its_task_and_is_reported(tmp_path):
    runs = FakeRuns(tmp_path / "runs", fail_scale="0.1")
    state = run(make_spec("val", tasks="dtd,eurosat"), runs, tmp_path).state
    assert not state.ok()
    assert [t.task for t in state.failed] == ["dtd"]
    assert state.selections["dtd"].chosen is None and "1 of 2 grid trials failed" in state.selections["dtd"].error
    assert state.selections["eurosat"].chosen == {"scale": "1"}  # the other task went on to its final runs
    assert sum(1 for argv in runs.started if _option(argv, "--task") == "eurosat") == 4
    assert "boom" in selection_record(state)["failed"][state.failed[0].name]


def test_finished_trials_are_not_started_again(tmp_path):
    runs = FakeRuns(tmp_path / "runs")
    spec = make_spec("val")
    run(spec, runs, tmp_path)
    assert len(runs.started) == 4  # 2 grid points + 2 seeds of the chosen one
    runs.started.clear()
    state = run(spec, runs, tmp_path).state
    assert runs.started == [] and set(state.status.values()) == {"skipped"} and state.ok()


def test_local_backend_runs_one_trial_per_gpu_with_its_own_device(monkeypatch, tmp_path):
    import threading
    import time

    from vtab_lily.sweep import backends

    seen: list[str] = []
    both_running = threading.Barrier(2, timeout=10)  # fails unless two trials run at once

    def fake_process(argv, log_path, env=None, package_root=None, module="vtab_lily.run"):
        seen.append(env["CUDA_VISIBLE_DEVICES"])
        both_running.wait()
        time.sleep(0.05)
        return Outcome(0, 0.05, log_path)

    monkeypatch.setattr(backends, "run_trial_process", fake_process)
    local = backends.LocalBackend(gpus=["3", "5"])
    handles = [local.submit(["--seed", str(i)], str(tmp_path / f"{i}.log")) for i in range(4)]
    finished = []
    while len(finished) < 4:
        finished += local.wait([h for h in handles if h not in {f for f, _ in finished}])
    local.close()
    assert sorted(seen) == ["3", "3", "5", "5"] and local.workers == 2


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    import torch

    from vtab_lily.sweep.backends import visible_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert visible_gpus() == ["4", "6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert visible_gpus() == []


def test_ray_backend_without_ray_says_how_to_install(monkeypatch):
    import sys

    from vtab_lily.errors import UserError
    from vtab_lily.sweep.backends import make_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(UserError, match=r"vtab-lily\[sweep\]"):
        make_backend("ray")
    with pytest.raises(UserError, match="--address is only for --backend ray"):
        make_backend("local", address="auto")
