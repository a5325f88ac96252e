"""The results store: only complete, valid result.json files are results; everything else is
skipped with a warning that names the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtab_lily.errors import UserError
from vtab_lily.results import (
    accuracy,
    data_of,
    deviations_of,
    finished_utc,
    params_without_head,
    precision_of,
    row_key,
    find_run_dirs,
    group_results,
    iter_results,
    load_result,
    read_router_weights,
    run_status,
    scan_runs,
    validate_result,
)


def result_dict(task: str = "dtd", seed: int = 0, final: float = 70.0, **overrides) -> dict:
    """A result.json body following the schema in ARCHITECTURE.md."""
    result = {
        "schema": 1, "status": "complete", "backbone": "vit-b16-in21k", "adapter": "lora", "task": task,
        "suite": "vtab", "protocol": "test", "seed": seed, "method": "lora r=8", "method_hash": "1a2b3c4d",
        "config": {"task": task, "seed": seed}, "config_hash": f"cfg{seed}",
        "accuracy": {"final": final, "best": final + 2, "best_epoch": 9, "eval_split": "test", "best_is_test_selected": True},
        "params": {"adapter": 1000, "head": 100, "total": 1100, "backbone": 5000},
        "time": {"train_s": 12.5, "eval_s": 1.0, "train_images_per_s": 80.0},
        "memory": {"peak_mb": 512.0, "kind": "cpu_peak_rss"},
        "device": "cpu", "versions": {}, "git_commit": None, "finished_at": "2026-11-28T12:00:00",
    }
    result.update(overrides)
    return result


def make_run(runs: Path, name: str, result: dict | None = None, failed: dict | None = None, raw: str | None = None) -> Path:
    run_dir = runs / "vit-b16-in21k" / "lora" / "dtd" / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"task": "dtd", "seed": 0}))
    if result is not None:
        (run_dir / "result.json").write_text(json.dumps(result))
    if raw is not None:
        (run_dir / "result.json").write_text(raw)
    if failed is not None:
        (run_dir / "failed.json").write_text(json.dumps(failed))
    return run_dir


def test_reads_complete_results_and_skips_everything_else(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    good = make_run(runs, "good", result_dict(final=71.25))
    (good / "tb").mkdir()  # TensorBoard folder: never a run of its own
    (good / "tb" / "config.json").write_text("{}")
    failed = make_run(runs, "failed", failed={"reason": "CUDA out of memory", "epoch": 2})
    truncated = make_run(runs, "truncated", raw=json.dumps(result_dict())[:57])
    running = make_run(runs, "running")
    (running / ".result.json.tmp-abc123").write_text(json.dumps(result_dict()))  # killed writer
    both = make_run(runs, "both", result=result_dict(), failed={"reason": "x", "epoch": 1})
    not_complete = make_run(runs, "status", result_dict(status="running"))
    warnings: list[str] = []
    results = iter_results(runs, warnings)
    assert [r["accuracy"]["final"] for r in results] == [71.25]
    assert results[0]["run_dir"] == str(good)
    assert len(warnings) == 5
    text = "\n".join(warnings)
    for run_dir in (failed, truncated, running, both, not_complete):
        assert str(run_dir) in text
    assert "CUDA out of memory" in text and "not valid JSON" in text and "'running'" in text
    states = {s.run_dir.name: s.state for s in scan_runs(runs)}
    assert states == {"good": "complete", "failed": "failed", "truncated": "malformed", "running": "incomplete",
                      "both": "malformed", "status": "malformed"}
    assert iter_results(runs) == results  # warnings are optional


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": 2}, "schema"),
        ({"seed": True}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"accuracy": {"best": 3.0}}, "accuracy.'final'"),
        ({"accuracy": {"final": float("nan")}}, "final"),
        ({"accuracy": {"final": 50.0, "best": "high"}}, "accuracy.best"),
        ({"params": {"adapter": 3}}, "params.'total'"),
        ({"memory": {"peak_mb": "lots"}}, "memory.peak_mb"),
        ({"method_hash": None}, "method_hash"),
        ({"memory": [1]}, "'memory' must be an object"),
        ({"time": "fast"}, "'time' must be an object"),
        ({"time": {"train_s": -1.0}}, "time.train_s"),
        ({"params": {"total": 10**400}}, "params.total"),
        ({"params": {"total": 5, "head": -1}}, "params.head"),
        ({"seed": 2**40}, "seed"),
        ({"accuracy": {"final": 101.0}}, r"accuracy.final must be a percentage"),
        ({"accuracy": {"final": 50.0, "best_epoch": "last"}}, "best_epoch"),
        ({"accuracy": {"final": 50.0, "reported": "max"}}, "accuracy.reported"),
        ({"task": "../dtd\n"}, "one-line"),
        ({"config_hash": ""}, "config_hash"),
        ({"method": "x" * 5000}, "at most 1000 characters"),
        ({"method": " \n"}, "non-empty label"),
        ({"deviations": "routing=sample"}, "deviations"),
        ({"deviations": [""]}, "deviations"),
        ({"data": "png"}, "'data' must be an object"),
        ({"data": {"fingerprint": 12}}, "data.fingerprint"),
        ({"precision": 16}, "precision"),
        ({"finished_at": 1700000000}, "finished_at"),
        ({"config": [1]}, "'config' must be an object"),
    ],
)
def test_schema_violations_are_user_errors(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate_result(result_dict(**change), "runs/x/result.json")


def test_validate_rejects_non_objects_and_missing_fields() -> None:
    with pytest.raises(UserError, match="JSON object"):
        validate_result([1, 2], "r.json")
    broken = result_dict()
    del broken["task"]
    with pytest.raises(UserError, match="r.json: missing field 'task'"):
        validate_result(broken, "r.json")
    assert validate_result(result_dict(accuracy={"final": 60, "best": None}), "r.json")["accuracy"]["final"] == 60


def test_load_result_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text('{\n  "schema": 1,\n  "status": ???\n}\n')
    with pytest.raises(UserError, match=rf"{path}:3: not valid JSON"):
        load_result(path)


def test_missing_or_wrong_runs_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        iter_results(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        find_run_dirs(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert iter_results(tmp_path / "empty") == []


def test_accuracy_metric_and_grouping() -> None:
    a, b = result_dict(seed=0, final=60.0), result_dict(seed=1, final=70.0, accuracy={"final": 70.0, "best": None})
    assert accuracy(a) == 60.0 and accuracy(a, "best") == 62.0
    assert accuracy(b, "best") is None
    with pytest.raises(UserError, match="did you mean 'best'"):
        accuracy(a, "bets")
    groups = group_results([a, b, result_dict(task="svhn")], "method_hash", "task")
    assert {k: len(v) for k, v in groups.items()} == {("1a2b3c4d", "dtd"): 2, ("1a2b3c4d", "svhn"): 1}


def test_router_weights(tmp_path: Path) -> None:
    assert read_router_weights(tmp_path) is None
    path = tmp_path / "router_weights.json"
    path.write_text(json.dumps({"sites": ["a", "b"], "experts": 2, "weights": [[0.5, 0.5], [0.9, 0.1]]}))
    assert read_router_weights(tmp_path)["weights"][1] == [0.9, 0.1]
    # Vim Lily: dt_proj sites have one expert, fewer than the in_proj sites
    path.write_text(json.dumps({"sites": ["a", "b"], "experts": 2, "weights": [[0.5, 0.5], [1.0]]}))
    assert read_router_weights(tmp_path)["weights"] == [[0.5, 0.5], [1.0]]
    path.write_text(json.dumps({"sites": ["a", "b"], "experts": 2, "weights": [[0.5, 0.5], [0.9, 0.1, 0.0]]}))
    with pytest.raises(UserError, match=r"weights\[1\] must be 1 to 2 numbers"):
        read_router_weights(tmp_path)
    path.write_text(json.dumps({"sites": ["a"], "experts": 2, "weights": [[]]}))
    with pytest.raises(UserError, match=r"weights\[0\]"):
        read_router_weights(tmp_path)
    path.write_text(json.dumps({"sites": ["a"], "experts": 10**9, "weights": [[1.0]]}))
    with pytest.raises(UserError, match="beyond any Lily model"):
        read_router_weights(tmp_path)  # would ask the heat map for a 10**9-column figure
    path.write_text(json.dumps({"sites": ["a"], "experts": 3, "weights": [[1.0]]}))
    with pytest.raises(UserError, match="widest site has 1"):
        read_router_weights(tmp_path)
    path.write_text('{"sites": ["a"')
    with pytest.raises(UserError, match="truncated"):
        read_router_weights(tmp_path)


def test_run_status_of_a_config_only_dir(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "runs", "fresh")
    status = run_status(run_dir)
    assert status.state == "incomplete" and status.config == {"task": "dtd", "seed": 0} and status.result is None


def test_round2_fields_read_defensively() -> None:
    old = result_dict()  # written before deviations, data, precision existed
    assert deviations_of(old) is None and precision_of(old) is None
    assert data_of(old) == {"fingerprint": None, "encoding": None, "source": None}
    new = result_dict(deviations=["routing=sample", "normalize=imagenet"], precision="bf16",
                      data={"fingerprint": "ab12cd34ef56ab78", "encoding": "png", "source": "tfds"})
    assert deviations_of(new) == ("normalize=imagenet", "routing=sample")  # order does not split rows
    assert deviations_of(result_dict(deviations=[])) == ()
    assert precision_of(result_dict(config={"precision": "bf16"})) == "bf16"  # from the config when not top-level
    assert data_of(new)["fingerprint"] == "ab12cd34ef56ab78"
    assert row_key(old) != row_key(new) != row_key(result_dict(deviations=["routing=sample", "normalize=imagenet"]))
    assert params_without_head(old) == 1000 and params_without_head(result_dict(params={"total": 50})) is None
    assert params_without_head(result_dict(params={"total": 700, "adapter": 0, "head": 100})) == 600  # full fine-tuning


@pytest.mark.parametrize("text, iso", [
    ("2026-12-01T10:00:00+05:00", "2026-12-01T05:00:00+00:00"),
    ("2026-12-01T10:00:00+0500", "2026-12-01T05:00:00+00:00"),
    ("2026-12-01T10:00:00Z", "2026-12-01T10:00:00+00:00"),
    ("2026-12-01T10:00:00", "2026-12-01T10:00:00+00:00"),  # old local-time text: taken as UTC
    ("yesterday", "0001-01-01T00:00:00+00:00"),
    ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+00:00"),
])
def test_finished_at_is_compared_in_utc(text: str, iso: str) -> None:
    assert finished_utc(result_dict(finished_at=text)).isoformat() == iso


def test_unreadable_bytes_are_malformed_not_crashes(tmp_path: Path) -> None:
    for name, data in {"utf8": b'{"a": "\xff"}', "digits": b"[" + b"7" * 6000 + b"]", "nested": b"[" * 50_000}.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "result.json").write_bytes(data)
        status = run_status(run_dir)
        assert status.state == "malformed" and str(run_dir / "result.json") in status.detail, name
