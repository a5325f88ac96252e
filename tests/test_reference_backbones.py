"""Published reference rows across backbones: every row names a registered full-size backbone
and carries sane fields; rows meet only runs of their own backbone (a backbone with rows but no
runs gets no table); a run resolved with a row's published setting meets that row unmarked.

(The printed averages against the ones recomputed from each row's cells or group means, which
catches transcription errors, are checked row by row in test_leaderboard_reference.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_leaderboard import VTAB, write_result

from vtab_lily import runspec
from vtab_lily.adapters import ADAPTERS
from vtab_lily.backbones import ALIASES, BACKBONES
from vtab_lily.leaderboard import collect
from vtab_lily.leaderboard.reference import load_reference, reference_backbones, reference_rows
from vtab_lily.leaderboard.table import suite_groups

GROUPS = suite_groups("vtab")
# Published rows of methods this package does not implement (shown for comparison only).
NOT_RUNNABLE = {"noah"}


def test_every_row_names_a_registered_full_size_backbone_and_sane_fields() -> None:
    rows = load_reference()
    assert len({r.id for r in rows}) == len(rows)
    for ref in rows:
        assert ref.backbone in BACKBONES and ref.backbone not in ALIASES, ref.id  # result.json's name
        assert not BACKBONES[ref.backbone].test_only, ref.id
        assert ref.method.strip() and ref.setting.strip() and ref.citation.strip(), ref.id
        assert ref.adapter in ADAPTERS or ref.adapter in NOT_RUNNABLE, ref.id
        assert ref.params_m is None or 0 <= ref.params_m < 1000, ref.id  # millions, without the head
        assert len(ref.average_text.partition(".")[2]) <= 2, ref.id  # as printed
        if ref.per_task is not None:
            assert list(ref.per_task) == VTAB, ref.id  # all 19 tasks, in VTAB order, or none
        if ref.group_means is not None:
            assert list(ref.group_means) == list(GROUPS), ref.id
        numbers = [*(ref.per_task or {}).values(), *(ref.group_means or {}).values(), ref.average]
        assert all(0 <= v <= 100 for v in numbers), ref.id
        if ref.per_task is None and ref.group_means is None:
            assert ref.note, f"{ref.id}: an average-only row says why it has no cells"
        else:
            assert None not in ref.recomputed(GROUPS), ref.id
        for key, value in ref.match.items():  # compared with the run's adapter_config: JSON values
            assert isinstance(key, str) and isinstance(value, (str, int, float, bool, list)), ref.id
    assert set(reference_backbones()) == {r.backbone for r in rows}


def test_rows_meet_only_runs_of_their_own_backbone(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for backbone in ("vit-b16-in21k", "vim-t", "vit-tiny-test"):
        for task in VTAB[:2]:
            write_result(runs, backbone=backbone, task=task)
    tables = {t.backbone: t for t in collect(runs).tables}
    assert set(tables) == {"vit-b16-in21k", "vim-t", "vit-tiny-test"}
    reported = [r for r in tables["vit-b16-in21k"].rows if r.kind == "reported"]
    assert tables["vit-b16-in21k"].has_references
    assert {r.ref_id for r in reported} == {r.id for r in reference_rows("vit-b16-in21k")}
    assert all(r.reference.backbone == "vit-b16-in21k" for r in reported)
    for backbone in ("vim-t", "vit-tiny-test"):  # no published rows: none borrowed from vim-s / vit
        assert not tables[backbone].has_references
        assert all(r.kind == "run" and r.reference is None for r in tables[backbone].rows)
    # backbones with published rows but no runs (vim-s, vit-b16-in1k) get no table at all
    assert {"vim-s", "vit-b16-in1k"} <= set(reference_backbones())


def _run_as_resolved(runs: Path, argv: list[str], method_hash: str) -> None:
    """A result on every VTAB task as the runner records the run ``argv`` resolves to."""
    spec = runspec.resolve(argv)
    for task in VTAB:
        run_dir = write_result(runs, backbone=spec.config["backbone"], adapter=spec.config["adapter"], task=task,
                               method=spec.label, method_hash=method_hash)
        result = json.loads((run_dir / "result.json").read_text())
        result["config"]["adapter_config"] = spec.config_dict()["adapter_config"]
        result["deviations"] = list(spec.deviations)
        result["params"] = dict(spec.params)
        (run_dir / "result.json").write_text(json.dumps(result))


@pytest.mark.parametrize("argv, ref_id, differs", [
    (["--backbone", "vit", "--adapter", "lora", "--normalize"], "in21k-lora", False),  # NOAH's inputs
    (["--backbone", "vit", "--adapter", "lora"], "in21k-lora", True),  # the official inputs: marked
    (["--backbone", "vit", "--adapter", "lily"], "in21k-lily", False),
    (["--backbone", "vim", "--adapter", "lily"], "vim-s-lily-l", False),
])
def test_a_run_resolved_with_a_rows_setting_meets_that_row(tmp_path: Path, argv, ref_id, differs) -> None:
    runs = tmp_path / "runs"
    _run_as_resolved(runs, [*argv, "--task", "dtd"], "e0000001")
    (table,) = collect(runs).tables
    (row,) = [r for r in table.rows if r.kind == "run"]
    assert row.reference is not None and row.reference.id == ref_id
    assert row.reference.backbone == table.backbone
    assert row.setting_differs is differs, (row.deviations, row.reference.deviations)
