"""result.json ``memory``: the method's training memory apart from the data kept on the device
(the CUDA memory source is faked: no GPU here), its leaderboard column, shared-GPU times, and
optimizer state placed for the resuming run."""

from __future__ import annotations

import json

import pytest
import torch

from vtab_lily import run, runexec, train as loop, train_setup
from vtab_lily.leaderboard.table import memory_mb
from vtab_lily.memory import MIB, MemoryMeter
from vtab_lily.rundir import SHARED_GPU_ENV, RunDir

DEMO = ["--demo", "--task", "colours", "--epochs", "1", "--eval-every", "1", "--no-tensorboard"]


class FakeCuda:
    """A caching allocator's counters: bytes allocated now, and the peak since the last reset."""

    def __init__(self, allocated: int = 0):
        self.now = self.high = allocated
        self.resets = 0

    def alloc(self, nbytes: int) -> None:
        self.now += nbytes
        self.high = max(self.high, self.now)

    def free(self, nbytes: int) -> None:
        self.now -= nbytes

    def allocated(self) -> int:
        return self.now

    def peak(self) -> int:
        return self.high

    def reset_peak(self) -> None:
        self.high, self.resets = self.now, self.resets + 1


def test_training_peak_excludes_the_resident_data_and_a_transient_copy_while_placing():
    cuda = FakeCuda(allocated=300 * MIB)  # the model, already on the device
    meter = MemoryMeter(torch.device("cuda"), source=cuda)

    def place(nbytes):
        cuda.alloc(2 * nbytes)  # placing makes a transient copy, then keeps one
        cuda.free(nbytes)
        return nbytes

    assert meter.place(place, 800 * MIB, 11_000 * MIB) == [800 * MIB, 11_000 * MIB]
    cuda.alloc(1_500 * MIB)  # activations and optimizer state at their largest
    cuda.free(1_500 * MIB)
    memory = meter.record()
    assert memory["kind"] == "cuda_max_allocated" and memory["data_mb"] == 11_800
    assert memory["train_peak_mb"] == 1_800  # model 300 + training 1,500: no data, no placement copy
    assert memory["peak_mb"] == 300 + 11_800 + 1_500  # the old field keeps its meaning


def test_cpu_records_the_process_peak_as_before():
    memory = MemoryMeter(torch.device("cpu")).record()
    assert memory["kind"] == "cpu_peak_rss" and memory["peak_mb"] > 0 and "train_peak_mb" not in memory


def test_the_runner_records_training_memory_without_the_splits(tmp_path, monkeypatch):
    """Through ``python -m vtab_lily.run``: the splits the runner places count as data, what the
    training loop allocates as training."""
    cuda = FakeCuda(allocated=5 * MIB)
    placed = []

    def fake_on_device(split, device):
        cuda.alloc(split.images.numel())  # uint8: one byte per element
        placed.append(split.images.numel())
        return split

    real_train = loop.train

    def training(*a, **k):
        cuda.alloc(7 * MIB)  # the loop's own allocations
        cuda.free(7 * MIB)
        return real_train(*a, **k)

    class FakeCudaMeter(MemoryMeter):
        def __init__(self, device, source=None):
            super().__init__(torch.device("cuda"), source=cuda)

    monkeypatch.setattr(runexec, "MemoryMeter", FakeCudaMeter)
    monkeypatch.setattr(train_setup, "on_device", fake_on_device)
    monkeypatch.setattr(loop, "train", training)
    assert run.main([*DEMO, "--out", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]) == 0
    result = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())
    memory = result["memory"]
    assert len(placed) == 2 and cuda.resets == 1
    assert memory["data_mb"] == round(sum(placed) / MIB, 1)
    assert memory["train_peak_mb"] == 12.0  # 5 before + 7 in training
    assert memory_mb(result) == (12.0, "train")


def _edited(run_dir, **changes) -> None:
    path = run_dir / "result.json"
    result = json.loads(path.read_text())
    for key, value in changes.items():
        result[key] = value
    path.write_text(json.dumps(result))


def test_leaderboard_column_shows_training_memory_and_names_it(tmp_path):
    from test_leaderboard import shown, write_result

    from vtab_lily.leaderboard import collect
    from vtab_lily.leaderboard.render import table_markdown

    runs = tmp_path / "runs"
    _edited(write_result(runs, task="dtd"), memory={"peak_mb": 12000.0, "kind": "cuda_max_allocated",
                                                   "train_peak_mb": 900.0, "data_mb": 11100.0})
    _edited(write_result(runs, task="svhn"), memory={"peak_mb": 700.0, "kind": "cuda_max_allocated"})
    (table,) = collect(runs, with_reference=False).tables
    (line,) = shown(table).values()
    assert line["Train mem (MB)"] == "900"  # not the 12,000 the data makes
    text = table_markdown(table)
    assert "data kept on the GPU excluded" in text and "data kept on the GPU included (older results)" in text


def test_shared_gpu_runs_stay_out_of_the_solo_time_column(tmp_path):
    from test_leaderboard import shown, write_result

    from vtab_lily.leaderboard import collect

    runs = tmp_path / "runs"
    write_result(runs, task="dtd", train_s=100.0)
    _edited(write_result(runs, task="svhn"), time={"train_s": 400.0, "trials_per_gpu": 4})
    (table,) = collect(runs, with_reference=False).tables
    (line,) = shown(table).values()
    assert line["Train time (alone)"] == "100.0 s (+1 shared)"


def test_the_sweep_tells_runs_on_a_shared_gpu_and_the_result_records_it(monkeypatch):
    from vtab_lily.sweep.backends import shared_gpu_env

    assert shared_gpu_env(1) == {} and shared_gpu_env(3) == {SHARED_GPU_ENV: "3"}
    outcome = loop.TrainOutcome(1.0, 1.0, 1, [], 1.0, 1.0, 1.0, 1)
    config = {"backbone": "vit-tiny-test", "normalize": False, "img_size": 32, "adapter": "lily", "task": "t",
              "suite": "demo", "protocol": "test", "seed": 0,
              "method_name": "m", "adapter_config": {}, "eval_split": "test", "report": "final", "precision": "fp32"}
    from types import MappingProxyType

    from vtab_lily.rundir import RunDir
    from vtab_lily.runspec import RunSpec

    spec = RunSpec(config=MappingProxyType(config), deviations=(), label="m", method_hash="0" * 8,
                   config_hash="1" * 8, run_dir=RunDir("unused"), params=MappingProxyType({}))
    args = (spec, outcome)
    monkeypatch.setenv(SHARED_GPU_ENV, "3")
    gpu = runexec.build_result(*args, torch.device("cuda"), None, {}, {"peak_mb": 1.0, "kind": "cuda_max_allocated"})
    assert gpu["time"]["trials_per_gpu"] == 3
    cpu = runexec.build_result(*args, torch.device("cpu"), None, {}, {"peak_mb": 1.0, "kind": "cpu_peak_rss"})
    assert "trials_per_gpu" not in cpu["time"]  # CPU workers get their own share of the cores
    monkeypatch.setenv(SHARED_GPU_ENV, "lots")
    assert "trials_per_gpu" not in runexec.build_result(*args, torch.device("cuda"), None, {}, {})["time"]


# --- resume: optimizer state where this run's update wants it -------------------------------------
def test_resumed_optimizer_state_is_placed_for_this_runs_update(tmp_path, monkeypatch):
    """A checkpoint written elsewhere (here: ``step`` counters saved as float64, as another
    machine's optimizer may keep them) resumes with float32 ``step`` where the update expects it."""
    from test_train_loop import fit, recipe

    cfg = recipe(epochs=2, eval_every=1)
    fit(tmp_path, dict(cfg, epochs=1))
    run_dir = RunDir(tmp_path)
    checkpoint = run_dir.load_checkpoint()
    for state in checkpoint["optimizer"]["state"].values():
        state["step"] = state["step"].to(torch.float64)
    seen = []
    real = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.extend((p.device, s["step"].device, s["step"].dtype, s["exp_avg"].device)
                    for p, s in self.state.items())
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    loop.train(*_resume_args(tmp_path, cfg), checkpoint)
    assert seen and all(step_dtype == torch.float32 for _, _, step_dtype, _ in seen)
    assert all(step_dev.type == "cpu" and avg == dev for dev, step_dev, _, avg in seen)


def test_fused_updates_get_their_step_counters_beside_the_parameters():
    p = torch.nn.Parameter(torch.zeros(3))
    plain = torch.optim.AdamW([p])
    p.grad = torch.ones(3)
    plain.step()
    fused = torch.optim.AdamW([p], fused=True)
    state = plain.state_dict()
    state["state"][0]["step"] = state["state"][0]["step"].to(torch.float64)
    fused.load_state_dict(state)  # follows the saved (non-fused) group: step left as saved
    for group in fused.param_groups:
        group["fused"] = True
    loop.optimizer_state_to_params(fused)
    step = fused.state[p]["step"]
    assert step.dtype == torch.float32 and step.device == p.device
    fused.step()


def _resume_args(tmp_path, cfg):
    from test_train_loop import Tiny, split

    return (Tiny(), split(1000, 0), split(300, 1), cfg, RunDir(tmp_path), torch.device("cpu"))


@pytest.fixture(autouse=True)
def _no_shared_env(monkeypatch):
    monkeypatch.delenv(SHARED_GPU_ENV, raising=False)
