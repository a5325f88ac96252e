"""Pre-flight: run_all.sh, --batch and the sweep check every checkpoint and data task once,
before any work, name each missing piece with the command that fetches it, and ``--fetch``
fetches them (here from a local server standing in for Google's bucket and the Hub). The
weights' sha256 is recorded in config.json without changing any run's hash."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fetch_server import FetchServer
from vtab_lily import run
from vtab_lily.data.testing import write_task
from vtab_lily.errors import UserError, run_cli
from vtab_lily.rundir import config_hash

REPO = Path(__file__).resolve().parents[1]


def fake_archive(folder: Path, tasks: dict[str, int]) -> bytes:
    """A small VTAB-1K zip in the NOAH layout (``vtab-1k/<task>/...``, JPEG images)."""
    src = folder / "src" / "vtab-1k"
    for name, classes in tasks.items():
        write_task(src, name, classes, test_size=20, size=(8, 8))
    path = folder / "vtab-1k.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(src.rglob("*")):
            zf.write(file, file.relative_to(src.parent))
    return path.read_bytes()


def test_run_all_without_weights_or_data_stops_once_before_any_work(tmp_path):
    proc = subprocess.run([str(REPO / "run_all.sh"), "vit", "lily", "--tasks", "dtd,cifar"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert err.count("missing before any run can start (2)") == 1
    assert "vit-b16-in21k weights backbones/ViT-B_16.npz" in err
    assert "fetch: python -m vtab_lily.fetch weights vit-b16-in21k" in err
    assert "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz into backbones/" in err
    assert "VTAB-1K tasks cifar, dtd in data/vtab-1k" in err and "fetch: python -m vtab_lily.fetch data vtab-1k" in err
    assert "or rerun with --fetch" in err
    assert "===" not in proc.stdout  # no run started, no analysis, no leaderboard
    assert not (tmp_path / "leaderboards").exists() and not (tmp_path / "runs").exists()


def cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A command in this process as its ``python -m`` entry point runs it (``run_cli``: one line
    per error, the exit code): (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_batch_preflight_fetch_gets_weights_and_data_then_reports_the_gaps(tmp_path, monkeypatch, capsys):
    from vtab_lily.fetch.__main__ import main as fetch_main

    server = FetchServer()
    try:
        buf = io.BytesIO()  # an npz with a pre_logits entry, as the published file has
        np.savez(buf, **{"pre_logits/kernel": np.zeros((2, 2), np.float32)})
        weights = buf.getvalue()
        server.add("vit_models/imagenet21k/ViT-B_16.npz", weights)
        server.add("XiN0919/VTAB-1k/vtab-1k.zip", fake_archive(tmp_path / "make", {"dtd": 47}))
        env = {"HF_ENDPOINT": server.url, "VTAB_LILY_STORAGE_ENDPOINT": server.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.chdir(work)
        (work / "b.jsonl").write_text(json.dumps(["--backbone", "vit", "--task", "dtd"]) + "\n")
        args = ["--batch", "b.jsonl", "--preflight"]
        code, _, err = cli(run.main, args, capsys)
        assert code == 2 and "missing before any run can start (2)" in err
        # the fetch through the command a user types; the other steps run the same entry point in-process
        fetched = subprocess.run([sys.executable, "-m", "vtab_lily.run", *args, "--fetch"], cwd=work,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                                 timeout=600)
        assert fetched.returncode == 0, fetched.stderr
        assert (work / "backbones" / "ViT-B_16.npz").read_bytes() == weights
        assert hashlib.sha256(weights).hexdigest() in fetched.stdout
        assert (work / "data" / "vtab-1k" / "dtd" / "manifest.json").is_file()
        assert "JPEG copies (lossy" in fetched.stdout  # the archive's known gap, said
        code, out, _ = cli(run.main, args, capsys)
        assert code == 0 and "ready" in out
        # the whole archive: the tasks it lacks are named (it is there already: nothing is downloaded)
        code, out, err = cli(fetch_main, ["data", "vtab-1k", "--no-progress"], capsys)
        assert code == 0, err
        assert "lacks 18 of the 19 tasks:" in out and "cifar" in out.split("lacks 18")[1]
        assert [m for m, _ in server.files["XiN0919/VTAB-1k/vtab-1k.zip"].requests].count("GET") == 1
        # a task the archive lacks stays missing, named as such
        (work / "b.jsonl").write_text(json.dumps(["--backbone", "vit", "--task", "cifar"]) + "\n")
        code, out, err = cli(run.main, [*args, "--fetch"], capsys)
        assert code == 2
        assert "task cifar is in none of" in out + err
        # a line that cannot run is not "ready" (here: unreadable weights)
        (work / "backbones" / "ViT-B_16.npz").write_bytes(b"not an npz")
        code, _, err = cli(run.main, args, capsys)
        assert code == 2 and "b.jsonl:1: backbone checkpoint backbones/ViT-B_16.npz is unreadable" in err
    finally:
        server.close()


def test_sweep_without_weights_launches_no_trial(tmp_path, monkeypatch):
    from vtab_lily.sweep.__main__ import main as sweep_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"(?s)missing before any run can start \(2\).*ViT-B_16.npz.*"
                                        r"all 19 VTAB-1K tasks in data/vtab-1k.*vtab_lily.sweep ... --fetch"):
        sweep_main(["--config", str(REPO / "vtab_lily/configs/lily-vit-paper.toml"), "--no-progress"])
    assert not (tmp_path / "runs").exists()


def test_single_run_names_the_fetch_command(tmp_path):
    with pytest.raises(UserError, match=r"(?s)ViT-B_16.npz.*python -m vtab_lily.fetch weights vit-b16-in21k.*"
                                        r"VTAB-1K task dtd in .*nothing.*fetch data vtab-1k --root"):
        run.main(["--backbone", "vit", "--task", "dtd", "--out", str(tmp_path / "runs"),
                  "--data-root", str(tmp_path / "nothing")])
    assert not (tmp_path / "runs").exists()


def test_checkpoint_sha256_is_recorded_and_not_hashed(demo_root, tmp_path):
    import torch

    from vtab_lily.backbones import create_backbone

    weights = tmp_path / "tiny.pth"
    torch.save(create_backbone("vit-tiny-test", num_classes=2).state_dict(), weights)
    argv = ["--demo", "--backbone", "vit", "--adapter", "linear", "--task", "colours", "--img-size", "16",
            "--epochs", "1", "--batch-size", "200", "--no-tensorboard", "--data-root", str(demo_root),
            "--out", str(tmp_path / "runs"), "--checkpoint", str(weights)]
    assert run.main(argv) == 0
    (result,) = (tmp_path / "runs").rglob("result.json")
    saved = json.loads(result.read_text())["config"]
    assert saved["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert config_hash(saved) == result.parent.name  # the hash is the same with or without it
    assert config_hash({**saved, "checkpoint_sha256": "other"}) == result.parent.name


@pytest.fixture
def empty_server(monkeypatch):
    """Google's bucket and the Hub, both answering 404: a --fetch that tries is seen failing."""
    server = FetchServer()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("VTAB_LILY_STORAGE_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.close()


def test_fetch_flag_of_the_sweep_and_of_one_run_fetches_before_any_work(empty_server, tmp_path, monkeypatch):
    from vtab_lily.sweep.__main__ import main as sweep_main

    monkeypatch.chdir(tmp_path)
    url = f"{empty_server.url}/vit_models/imagenet21k/ViT-B_16.npz: 404 not found"
    with pytest.raises(UserError, match=url):
        sweep_main(["--backbone", "vit", "--adapter", "lily", "--tasks", "dtd", "--grid", "scale=1,10",
                    "--no-progress", "--fetch"])
    with pytest.raises(UserError, match=url):
        run.main(["--backbone", "vit", "--task", "dtd", "--fetch"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "backbones" / "ViT-B_16.npz").exists()


def test_run_all_fetch_flag_reaches_the_fetch(empty_server, tmp_path):
    proc = subprocess.run([str(REPO / "run_all.sh"), "vit", "lily", "--tasks", "dtd", "--fetch"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 2
    assert f"{empty_server.url}/vit_models/imagenet21k/ViT-B_16.npz: 404 not found" in proc.stderr
    assert "===" not in proc.stdout and not (tmp_path / "leaderboards").exists()
