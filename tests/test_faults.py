"""Fault injection (issue 7): SIGKILL at many points, Ctrl-C, parallel runs, NaN/inf loss,
exploding gradients, CUDA OOM, and failing disk writes.

Crash tests run real processes that are really killed: children forked from a forkserver that
has already imported torch and vtab_lily (a fresh interpreter per kill would cost seconds).
Each child runs ``python -m vtab_lily.run``'s code path (``run_cli(main)``) with its own
environment and log file; kills come from the ``VTAB_LILY_FAULT`` hooks (exact points) or from
this process after a random delay.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
from pathlib import Path

import pytest
import torch

from vtab_lily import rundir, run

TINY = ["--demo", "--backbone", "vit", "--adapter", "lily", "--rank", "4", "--task", "colours",
        "--img-size", "16", "--epochs", "3", "--eval-every", "1", "--batch-size", "100", "--no-tensorboard"]
STEPS = 30  # 3 epochs x 10 steps


# --- child processes -----------------------------------------------------------------------
def _child(argv: list[str], env: dict[str, str], log: str, kill_in_cache_write: bool) -> None:
    """Body of a child process: the CLI with its own env and log file."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    if kill_in_cache_write:  # die inside the data cache's atomic write (temp file written, not renamed)
        from vtab_lily.data import cache

        real = cache.atomic_write

        def dying(path, write, mode="wb"):
            def write_then_die(f):
                write(f)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            return real(path, write_then_die, mode)

        cache.atomic_write = dying
    from vtab_lily.errors import run_cli

    run_cli(run.main, argv)


_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "timm", "vtab_lily.run", "vtab_lily.train", "vtab_lily.backbones",
                                     "vtab_lily.adapters", "vtab_lily.data", __name__])
    return _CTX


def start(argv: list[str], log: Path, fault: str | None = None, kill_in_cache_write: bool = False):
    env = {"VTAB_LILY_FAULT": fault or ""}
    proc = _context().Process(target=_child, args=(argv, env, str(log), kill_in_cache_write))
    proc.start()
    return proc


def run_child(argv: list[str], log: Path, fault: str | None = None, kill_after: float | None = None,
              kill_in_cache_write: bool = False) -> int:
    """Run one child to its end (or SIGKILL it after ``kill_after`` s); its exit code (-9: killed)."""
    proc = start(argv, log, fault, kill_in_cache_write)
    proc.join(kill_after)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    return proc.exitcode


def comparable_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def check_consistent(run_dir: Path) -> None:
    """What a rerun reads after any crash: parseable JSON, a loadable checkpoint, no result yet."""
    if (run_dir / "config.json").exists():
        json.loads((run_dir / "config.json").read_text())
    if (run_dir / "checkpoint.pt").exists():
        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert ckpt["progress"]["epoch"] <= 3
    if (run_dir / "result.json").exists():
        assert json.loads((run_dir / "result.json").read_text())["status"] == "complete"


@pytest.fixture(scope="module")
def reference(demo_root, tmp_path_factory):
    """An uninterrupted run in a child process: (run_dir, result)."""
    out = tmp_path_factory.mktemp("reference")
    assert run_child([*TINY, "--data-root", str(demo_root), "--out", str(out)], out / "log") == 0
    (run_dir,) = [p.parent for p in out.rglob("result.json")]
    return run_dir, json.loads((run_dir / "result.json").read_text())


def private_data(demo_root: Path, folder: Path) -> Path:
    """The demo tasks without their decoded cache (so a child builds, and may die in, the cache)."""
    folder.mkdir()
    for task in demo_root.iterdir():
        if task.is_dir() and task.name != ".cache":
            (folder / task.name).symlink_to(task)
    return folder


def finish_and_compare(argv: list[str], out: Path, log: Path, ref_dir: Path, ref_result: dict) -> None:
    assert run_child(argv, log) == 0, log.read_text()[-2000:]
    (run_dir,) = [p.parent for p in out.rglob("result.json")]
    result = json.loads((run_dir / "result.json").read_text())
    assert run_dir.name == ref_dir.name
    assert result["accuracy"] == ref_result["accuracy"]
    assert comparable_metrics(run_dir) == comparable_metrics(ref_dir)
    assert not list(run_dir.glob(".*.tmp-*"))  # stale temp files of killed writers are cleaned up


def test_sigkill_at_named_points_resumes_to_the_same_result(reference, demo_root, tmp_path):
    data = private_data(demo_root, tmp_path / "data")
    out = tmp_path / "runs"
    argv = [*TINY, "--data-root", str(data), "--out", str(out)]
    kill, ctrl_c = -signal.SIGKILL, 130
    # (hook, expected exit); 10 steps per epoch, a checkpoint after each epoch. In order:
    faults = [
        ("cache", kill),  # inside the decoded-image cache's write (temp file written, not renamed)
        ("train_step:3", kill),  # mid-epoch 1, nothing saved yet
        ("checkpoint_write:1", kill),  # inside the first checkpoint write
        ("train_step:14", kill),  # epoch 1 saved, killed in epoch 2
        ("train_step:4:INT", ctrl_c),  # Ctrl-C at global step 14: finish the step, save mid-epoch
        ("checkpoint_write:2", kill),  # epoch 2 saved, killed writing epoch 3's
        ("train_step:1", kill),
        ("train_step:2:INT", ctrl_c),  # Ctrl-C at global step 22
        ("train_step:8", kill),  # after the last step, before the final evaluation
        ("result_write:1", kill),  # inside the result write: trained and saved, no result
    ]
    for fault, expected in faults:
        in_cache = fault == "cache"
        code = run_child(argv, tmp_path / "log", None if in_cache else fault, kill_in_cache_write=in_cache)
        assert code == expected, (fault, code, (tmp_path / "log").read_text()[-2000:])
        assert not list(out.rglob("result.json"))
        for run_dir in {p.parent for p in out.rglob("config.json")}:
            check_consistent(run_dir)
    assert list((data / ".cache").rglob("*.npy"))  # rebuilt after the kill inside its write
    ref_dir, ref_result = reference
    finish_and_compare(argv, out, tmp_path / "log", ref_dir, ref_result)


def test_sigkill_at_random_moments_resumes_to_the_same_result(reference, demo_root, tmp_path):
    data = private_data(demo_root, tmp_path / "data")
    out = tmp_path / "runs"
    argv = [*TINY, "--data-root", str(data), "--out", str(out)]
    rng = random.Random(1234)
    codes = []
    for _ in range(5):  # a whole run takes a child about 1.5 s here
        codes.append(run_child(argv, tmp_path / "log", kill_after=rng.uniform(0.1, 1.2)))
        for run_dir in {p.parent for p in out.rglob("config.json")}:
            check_consistent(run_dir)
    assert set(codes) <= {0, -signal.SIGKILL} and codes.count(-signal.SIGKILL) >= 2, codes
    ref_dir, ref_result = reference
    finish_and_compare(argv, out, tmp_path / "log", ref_dir, ref_result)


def test_parallel_runs_never_run_one_config_twice(reference, demo_root, tmp_path):
    _, ref_result = reference
    out = tmp_path / "runs"
    argv = [*TINY, "--data-root", str(demo_root), "--out", str(out)]
    procs = [start(argv, tmp_path / f"log{i}") for i in range(2)]
    for proc in procs:
        proc.join()
    assert sorted(p.exitcode for p in procs) in ([0, 0], [0, 75])
    logs = "".join((tmp_path / f"log{i}").read_text() for i in range(2))
    assert logs.count("(new)") == 1  # exactly one process trained it
    assert logs.count("running elsewhere") + logs.count("already complete") == 1
    (run_dir,) = [p.parent for p in out.rglob("result.json")]
    assert json.loads((run_dir / "result.json").read_text())["accuracy"] == ref_result["accuracy"]
    assert len(comparable_metrics(run_dir)) == 3


# --- numerical faults, OOM and disk errors (in process) ---------------------------------------
def two_epochs(demo_root: Path, out: Path, *extra: str) -> list[str]:
    argv = [*TINY, "--data-root", str(demo_root), "--out", str(out), *extra]
    argv[argv.index("--epochs") + 1] = "2"
    return argv


@pytest.fixture
def fault(monkeypatch):
    def set_fault(spec: str) -> None:
        rundir._fault_counts.clear()
        monkeypatch.setenv("VTAB_LILY_FAULT", spec)

    return set_fault


def only_run_dir(out: Path) -> Path:
    (run_dir,) = {p.parent for p in out.rglob("config.json")}
    return run_dir


def test_nan_loss_is_recorded_as_failed_and_a_rerun_resumes(demo_root, tmp_path, fault, monkeypatch, capsys):
    fault("nan_loss:15")  # epoch 2, step 5
    assert run.main(two_epochs(demo_root, tmp_path)) == run.EXIT_FAILED
    run_dir = only_run_dir(tmp_path)
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["epoch"] == 2 and "loss is nan" in failed["reason"]
    assert not (run_dir / "result.json").exists()
    assert "run failed at epoch 2" in capsys.readouterr().err
    # the rerun continues from the checkpoint of epoch 1 (saved before the failure)
    monkeypatch.delenv("VTAB_LILY_FAULT")
    assert run.main(two_epochs(demo_root, tmp_path)) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert (run_dir / "result.json").exists() and not (run_dir / "failed.json").exists()


def test_huge_lr_diverges_and_is_recorded(demo_root, tmp_path):
    assert run.main(two_epochs(demo_root, tmp_path, "--lr", "1e30", "--warmup", "0")) == run.EXIT_FAILED
    run_dir = only_run_dir(tmp_path)
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["epoch"] in (1, 2) and ("loss is" in failed["reason"] or "gradient norm" in failed["reason"])
    assert not (run_dir / "result.json").exists()


def test_exploding_gradients_are_recorded(demo_root, tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def inf_on_third_step(params, max_norm, *a, **k):
        calls.append(1)
        norm = real(params, max_norm, *a, **k)
        return norm * float("inf") if len(calls) == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", inf_on_third_step)
    assert run.main(two_epochs(demo_root, tmp_path)) == run.EXIT_FAILED
    failed = json.loads((only_run_dir(tmp_path) / "failed.json").read_text())
    assert failed["epoch"] == 1 and "gradient norm is inf" in failed["reason"] and "step 3" in failed["reason"]


def test_cuda_oom_says_which_batch_size_and_how_to_continue(demo_root, tmp_path, monkeypatch):
    from vtab_lily import train

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train.F, "cross_entropy", oom)
    assert run.main(two_epochs(demo_root, tmp_path)) == run.EXIT_FAILED
    failed = json.loads((only_run_dir(tmp_path) / "failed.json").read_text())
    assert "out of memory at batch size 100" in failed["reason"]
    assert "--batch-size 50 --accum-steps 2" in failed["reason"] and "effective batch of 100" in failed["reason"]


def test_accum_steps_keep_the_effective_batch(demo_root, tmp_path):
    """--batch-size 50 --accum-steps 2 takes the same optimizer steps as --batch-size 100
    (linear probe: no batch-dependent layers), so the OOM advice keeps the recipe."""
    def linear(out: Path, *extra: str) -> list[str]:
        argv = two_epochs(demo_root, out, "--adapter", "linear", "--epochs", "1", *extra)
        del argv[argv.index("--rank"):argv.index("--rank") + 2]
        return argv

    assert run.main(linear(tmp_path / "a")) == 0
    assert run.main(linear(tmp_path / "b", "--batch-size", "50", "--accum-steps", "2")) == 0
    (a,), (b,) = (list((tmp_path / x).rglob("metrics.jsonl")) for x in "ab")
    la, lb = (json.loads(p.read_text().splitlines()[-1]) for p in (a, b))
    assert la["step"] == lb["step"] == 10
    assert la["loss"] == pytest.approx(lb["loss"], rel=1e-4)
    assert la["eval_acc"] == pytest.approx(lb["eval_acc"], abs=0.34)  # at most one test image flips


def test_disk_full_keeps_the_last_checkpoint_and_records_no_result(demo_root, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    saves = []

    def enospc_on_second_checkpoint(obj, f, *a, **k):
        saves.append("progress" in obj)  # checkpoints only, not the snapshots
        if saves.count(True) == 2 and saves[-1]:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", enospc_on_second_checkpoint)
    assert run.main(two_epochs(demo_root, tmp_path)) == run.EXIT_FAILED
    run_dir = only_run_dir(tmp_path)
    assert "No space left on device" in capsys.readouterr().err
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 1  # intact
    assert not (run_dir / "result.json").exists() and not list(run_dir.glob(".*.tmp-*"))
    assert "No space left" in json.loads((run_dir / "failed.json").read_text())["reason"]

    # the result write fails too: still no result, the final checkpoint stays
    monkeypatch.setattr(torch, "save", real_save)

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.RunDir, "write_result", enospc)
    assert run.main(two_epochs(demo_root, tmp_path)) == run.EXIT_FAILED
    assert not (run_dir / "result.json").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 2
    # with space again, the rerun only writes the result (nothing left to train)
    monkeypatch.undo()
    assert run.main(two_epochs(demo_root, tmp_path)) == 0
    assert "resuming after epoch 2" in capsys.readouterr().out
    assert json.loads((run_dir / "result.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("damage", ["truncated", "foreign object"])
def test_unreadable_checkpoint_is_set_aside_never_unpickled(demo_root, tmp_path, fault, monkeypatch, capsys, damage):
    fault("nan_loss:15")  # leaves a run with the checkpoint of epoch 1 and failed.json
    assert run.main(two_epochs(demo_root, tmp_path)) == run.EXIT_FAILED
    monkeypatch.delenv("VTAB_LILY_FAULT")
    ckpt = only_run_dir(tmp_path) / "checkpoint.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:  # an object weights_only=True must refuse to unpickle
        import argparse

        torch.save({"progress": argparse.Namespace(epoch=1)}, ckpt)
    assert run.main(two_epochs(demo_root, tmp_path)) == 0
    captured = capsys.readouterr()
    assert "checkpoint.pt is unreadable" in captured.err and "(new)" in captured.out
    assert (ckpt.parent / "checkpoint.pt.unreadable").exists()
    assert json.loads((ckpt.parent / "result.json").read_text())["status"] == "complete"


# --- issue 16: Ctrl-C mid-epoch, unusable output folders, file permissions -------------------
def test_ctrl_c_mid_epoch_says_where_the_rerun_resumes(demo_root, tmp_path, fault, monkeypatch, capsys):
    fault("train_step:3:INT")  # epoch 1, after its third step: finish the step, save, stop
    with pytest.raises(KeyboardInterrupt):
        run.main(two_epochs(demo_root, tmp_path))
    monkeypatch.delenv("VTAB_LILY_FAULT")
    old = os.umask(0o022)
    try:
        assert run.main(two_epochs(demo_root, tmp_path)) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr().out
    assert "resuming in epoch 1 at step 4" in out and "after epoch 0" not in out
    run_dir = only_run_dir(tmp_path)
    for name in ("result.json", "checkpoint.pt", "config.json", "snapshots/epoch_0002.pt"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644, name  # umask 022, not mkstemp's 0600


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    from vtab_lily.fsutil import atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("where", ["--out", "--data-root"])
def test_output_folder_under_a_regular_file_is_one_line_exit_2(demo_root, tmp_path, capsys, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = [*TINY, "--out", str(tmp_path / "runs"), "--data-root", str(demo_root)]
    argv[argv.index(where) + 1] = str(blocker / "sub")
    with pytest.raises(SystemExit) as exit_info:
        from vtab_lily.errors import run_cli

        run_cli(run.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {where} {blocker / 'sub'} cannot be created: {blocker} is a regular file\n"
    assert not (tmp_path / "runs").exists()
