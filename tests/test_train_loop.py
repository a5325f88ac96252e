"""The training loop's recipe options (issue 12) and its device-friendly form (issue 13), on a
tiny model and split: the official schedule, drop_last, eval batches and eval_limit, deferred
non-finite checks, exact resume, bf16 storage, the per-run GPU RNG state, no per-step host reads."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vtab_lily import rundir, train as loop, train_setup as setup
from vtab_lily.data import SplitData
from vtab_lily.errors import UserError
from vtab_lily.rundir import RunDir

SIZE, CLASSES = 4, 4


class Tiny(nn.Module):
    """A frozen "backbone" Linear, trainable blocks with dropout (so the RNG state matters on
    resume) and a head; records the batch sizes of its eval-mode forwards."""

    def __init__(self, routing: str | None = None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Linear(3 * SIZE * SIZE, 16).requires_grad_(False)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Dropout(0.2)) for _ in range(2)])
        self.head = nn.Linear(16, CLASSES)
        self.eval_batches: list[int] = []
        if routing is not None:
            self.adapter_config = SimpleNamespace(routing=routing)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.eval_batches.append(x.shape[0])
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def split(n: int, seed: int) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = (images[:, 0, 0, 0] // 64).long()  # learnable from one pixel
    return SplitData(images, labels, normalize=False)


class Spied(SplitData):
    """A split that records the indices of each training batch."""

    def __init__(self, data: SplitData):
        super().__init__(data.images, data.labels, normalize=False)
        self.seen: list[torch.Tensor] = []

    def batch(self, indices, device=None):
        if not isinstance(indices, slice):
            self.seen.append(torch.as_tensor(indices).clone())
        return super().batch(indices, device)


def recipe(**over) -> dict:
    cfg = {"epochs": 4, "batch_size": 64, "accum_steps": 1, "lr": 1e-2, "wd": 1e-4, "warmup": 1,
           "warmup_lr": 1e-6, "min_lr": 1e-5, "seed": 3, "eval_every": 2, "config_hash": "test"}
    return {**cfg, **over}


def fit(tmp: Path, cfg: dict, model: nn.Module | None = None, train_set=None, eval_set=None, resume: bool = False,
        **kwargs):
    run = RunDir(tmp)
    run.path.mkdir(parents=True, exist_ok=True)
    model = model or Tiny()
    checkpoint = run.load_checkpoint() if resume else None
    outcome = loop.train(model, train_set or split(1000, 0), eval_set or split(300, 1), cfg, run,
                         torch.device("cpu"), checkpoint, **kwargs)
    return outcome, model, run


def metrics(run: RunDir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in run.read_metrics()]


@pytest.fixture(autouse=True)
def no_fault(monkeypatch):
    monkeypatch.delenv("VTAB_LILY_FAULT", raising=False)
    rundir._fault_counts.clear()


def cosine(t: float, warmup: int, total: int, lr: float = 1e-3, start: float = 1e-6, end: float = 1e-5) -> float:
    """timm's CosineLRScheduler written out: linear warmup, then cosine over the whole t (no prefix)."""
    if t < warmup:
        return start + t * (lr - start) / warmup
    return end + 0.5 * (lr - end) * (1 + math.cos(math.pi * t / total))


@pytest.mark.parametrize("schedule", ["official", "aligned"])
def test_lr_per_epoch_follows_the_schedule_one_epoch_behind_when_official(tmp_path, schedule):
    cfg = recipe(epochs=12, warmup=3, lr=1e-3, eval_every=100, lr_schedule=schedule)
    _, _, run = fit(tmp_path, cfg)
    got = [r["lr"] for r in run.read_metrics()]
    shift = 1 if schedule == "official" else 0
    want = [cosine(max(e - shift, 0), 3, 12) for e in range(12)]
    assert got == pytest.approx(want, rel=1e-9)
    if schedule == "official":  # the official code builds the scheduler at warmup_lr and steps after epochs
        assert got[0] == got[1] == pytest.approx(1e-6)
        assert got[4] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 3 / 12)))  # f(3)


def test_drop_last_gives_15_steps_and_every_image_is_used_across_epochs(tmp_path):
    data = Spied(split(1000, 0))
    fit(tmp_path, recipe(epochs=5, eval_every=5), train_set=data)
    assert len(data.seen) == 75 and all(len(i) == 64 for i in data.seen)
    epochs = [torch.cat(data.seen[e * 15:(e + 1) * 15]) for e in range(5)]
    assert all(e.unique().numel() == 960 for e in epochs)  # a permutation, the last 40 dropped
    dropped = [set(range(1000)) - set(e.tolist()) for e in epochs]
    assert len({frozenset(d) for d in dropped}) == 5  # a fresh permutation each epoch
    assert torch.cat(epochs).unique().numel() == 1000


def test_without_drop_last_the_last_step_is_partial(tmp_path):
    data = Spied(split(1000, 0))
    _, _, run = fit(tmp_path, recipe(epochs=2, drop_last=False), train_set=data)
    assert [len(i) for i in data.seen[:16]] == [64] * 15 + [40]
    assert [r["step"] for r in run.read_metrics()] == [16, 32]


def test_eval_batch_256_is_kept_under_batch_routing(tmp_path):
    cuda = torch.device("cuda")
    auto = setup.LoopOptions(eval_batch_auto=True)
    assert setup.eval_batch_size(auto, Tiny(routing="batch"), cuda) == 256
    assert setup.eval_batch_size(auto, Tiny(routing="sample"), cuda) == setup.AUTO_EVAL_BATCH
    assert setup.eval_batch_size(setup.LoopOptions(eval_batch_size=96), Tiny(routing="sample"), cuda) == 96
    model = Tiny(routing="batch")
    outcome, _, _ = fit(tmp_path, recipe(epochs=2, eval_batch_auto=True), model, eval_set=split(600, 1))
    assert model.eval_batches == [256, 256, 88] and outcome.eval_batch_size == 256


def test_eval_limit_bounds_intermediate_evaluations_and_the_last_is_full(tmp_path):
    model = Tiny()
    outcome, _, run = fit(tmp_path, recipe(epochs=3, eval_every=1, eval_limit=100), model, eval_set=split(600, 1))
    assert model.eval_batches == [100, 100, 256, 256, 88]
    assert [r["eval_images"] for r in run.read_metrics()] == [100, 100, 600]
    assert len(outcome.evals) == 3


def test_nan_loss_mid_epoch_fails_with_its_epoch_and_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("VTAB_LILY_FAULT", "nan_loss:20")  # epoch 2, step 5
    cfg = recipe(eval_every=1)
    with pytest.raises(loop.RunFailed) as err:
        fit(tmp_path, cfg)
    assert err.value.epoch == 2 and "loss is nan at epoch 2 step 5" in err.value.reason
    assert RunDir(tmp_path).load_checkpoint()["progress"]["epoch"] == 1
    monkeypatch.delenv("VTAB_LILY_FAULT")
    outcome, _, run = fit(tmp_path, cfg, resume=True)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4] and outcome.steps == 60
    assert all(math.isfinite(r["loss"]) for r in run.read_metrics())


def test_infinite_gradient_norm_names_its_step(tmp_path, monkeypatch):
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def inf_on_18th(params, max_norm, *a, **k):
        calls.append(1)
        norm = real(params, max_norm, *a, **k)
        return norm * float("inf") if len(calls) == 18 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", inf_on_18th)
    with pytest.raises(loop.RunFailed, match="gradient norm is inf at epoch 2 step 3"):
        fit(tmp_path, recipe())
    assert len(calls) == 30  # found at the end of epoch 2, not before


OPTIONS = [
    {"lr_schedule": "official"},
    {"lr_schedule": "aligned", "drop_last": False},
    {"precision": "bf16", "eval_limit": 50},
    {"batch_size": 32, "accum_steps": 2, "eval_batch_size": 100},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("stop_at", [7, 15])  # mid-epoch 1; the last step of epoch 1 (after its evaluation)
def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path, monkeypatch, options, stop_at):
    cfg = recipe(epochs=3, eval_every=1, **options)
    ref, ref_model, ref_run = fit(tmp_path / "ref", cfg)
    monkeypatch.setenv("VTAB_LILY_FAULT", f"train_step:{stop_at}:INT")  # Ctrl-C: finish the step, save, stop
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut", cfg)
    monkeypatch.delenv("VTAB_LILY_FAULT")
    checkpoint = RunDir(tmp_path / "cut").load_checkpoint()
    assert {"scheduler", "optimizer", "rng"} <= set(checkpoint)
    assert checkpoint["progress"]["global_step"] == stop_at
    torch.manual_seed(12345)  # whatever ran in between: the checkpoint's RNG state is what counts
    got, model, run = fit(tmp_path / "cut", cfg, resume=True)
    assert got.evals == ref.evals and got.steps == ref.steps
    assert metrics(run) == metrics(ref_run)
    for key, value in loop.trainable_state(ref_model).items():
        assert torch.equal(loop.trainable_state(model)[key], value), key


def test_bf16_stores_frozen_weights_in_bf16_and_keeps_trainables_and_logits_fp32(tmp_path):
    model = Tiny()
    outcome, _, run = fit(tmp_path, recipe(epochs=2, precision="bf16"), model)
    assert model.stem.weight.dtype == model.stem.bias.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    state = run.load_checkpoint()["optimizer"]["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.rand(5, 3, SIZE, SIZE)).dtype == torch.float32  # the head runs outside autocast
    assert 0 <= outcome.final_acc <= 100 and all(math.isfinite(r["loss"]) for r in run.read_metrics())


def test_bf16_storage_changes_no_number_under_autocast():
    """Autocast rounds fp32 Linear/Conv2d weights to bf16 at every matmul: storing them so is exact."""
    from vtab_lily.adapters import apply_adapter
    from vtab_lily.backbones import create_backbone

    torch.manual_seed(0)
    model = apply_adapter(create_backbone("vit-tiny-test", num_classes=5, img_size=16), "lily").eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
        setup.store_frozen_in_bf16(model)
        after = model(x)
    assert torch.equal(before, after)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert any(p.dtype == torch.bfloat16 for p in frozen) and any(p.dtype == torch.float32 for p in frozen)


def test_fp32_runs_without_autocast(tmp_path, monkeypatch):
    entered = []
    real = torch.autocast.__init__

    def spy(self, device_type, *a, enabled=True, **k):
        entered.append(enabled)
        real(self, device_type, *a, enabled=enabled, **k)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    fit(tmp_path, recipe(epochs=1))
    assert entered and not any(entered)


def test_only_the_runs_own_gpu_rng_state_is_saved_and_restored(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("get_rng_state_all/set_rng_state_all touch every visible GPU")

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.ones(3))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device)))
    gpu1 = torch.device("cuda", 1)
    state = setup.device_rng_state(gpu1)
    setup.set_device_rng_state(state, gpu1)
    setup.set_device_rng_state([torch.zeros(3), torch.ones(3)], gpu1)  # an older checkpoint's list
    assert calls == [("get", gpu1), ("set", gpu1), ("set", gpu1)]
    assert setup.device_rng_state(torch.device("cpu")) is None


def test_no_host_reads_per_training_step(tmp_path, monkeypatch):
    """Reads of tensor values from the loop's own code (.item(), .tolist(), float(), bool()) do not
    grow with the number of steps: on a GPU each would wait for the device."""
    counts = {"n": 0}
    ours = {os.path.abspath(loop.__file__), os.path.abspath(sys.modules[SplitData.__module__].__file__)}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, **k):
            if os.path.abspath(sys._getframe(1).f_code.co_filename) in ours:
                counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    seen = []
    for batch in (200, 40):  # 5 and 25 steps per epoch
        counts["n"] = 0
        fit(tmp_path / str(batch), recipe(epochs=2, batch_size=batch))
        seen.append(counts["n"])
    assert seen[0] == seen[1] and seen[0] > 0


@pytest.mark.parametrize("key,value", [("lr_schedule", "cosine"), ("precision", "fp16"), ("eval_batch_size", 0),
                                       ("eval_limit", -5), ("eval_limit", 2.5), ("drop_last", "no"),
                                       ("epochs", 0), ("eval_every", 0), ("warmup", -1), ("lr", float("nan")),
                                       ("wd", -1.0), ("batch_size", 1.5)])
def test_bad_options_are_user_errors_naming_the_key(tmp_path, key, value):
    with pytest.raises(UserError, match=key):
        fit(tmp_path, recipe(**{key: value}))


def test_drop_last_with_fewer_images_than_a_step_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no full step of 64"):
        fit(tmp_path, recipe(), train_set=split(50, 0))


def test_slices_and_index_batches_agree():
    data = split(20, 0)
    a, la = data.batch(slice(3, 9))
    b, lb = data.batch(torch.arange(3, 9))
    assert torch.equal(a, b) and torch.equal(la, lb) and a.dtype == torch.float32
    assert torch.equal(data.to("cpu").batch([1, 2])[0], data.batch([1, 2])[0])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
