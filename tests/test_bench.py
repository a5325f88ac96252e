"""Tests of the performance suite (vtab_lily.bench): toy-size smoke run, timers, report, CLI."""

from __future__ import annotations

import os
import re

import pytest
import torch

from vtab_lily.bench import ITEMS, run_suite, sizes_for
from vtab_lily.bench.__main__ import main, parse_only
from vtab_lily.bench.lily_forms import flop_ratio
from vtab_lily.bench.report import Section, Verdict, render, write_report
from vtab_lily.bench.timing import Stats, measure, paired_ratio, peak_memory_during
from vtab_lily.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    lines = []
    path, sections = run_suite("cpu", "toy", out_dir=out, log=lines.append)
    return path, sections, path.read_text(), lines


def test_toy_suite_writes_every_section(toy_report):
    path, sections, text, _ = toy_report
    assert path.name == "bench-cpu.md"
    assert [s.number for s in sections] == sorted(ITEMS)
    for number in ITEMS:
        assert re.search(rf"^## {number}\. ", text, re.M), f"section {number} missing"
    assert "**ERROR**" not in text and all(s.error is None for s in sections)
    for heading in ("## Summary", "- CPU: ", "torch threads: 1", "- GPU: none used", "- Versions: python",
                    "- Load average", "(toy sizes)"):
        assert heading in text


def test_toy_suite_has_a_verdict_and_table_per_item(toy_report):
    _, sections, text, _ = toy_report
    for section in sections:
        assert section.rows, f"item {section.number} has no table"
        assert section.verdicts, f"item {section.number} has no target line"
        for verdict in section.verdicts:
            assert verdict.status in ("MET", "NOT MET", "WITHIN NOISE", "reported (no target)")
            assert f"**{verdict.status}**" in text
    # targets that must be checked (not merely reported)
    judged = [v for s in sections for v in s.verdicts if v.met is not None]
    assert len(judged) >= 6
    assert "mambapy" in text


def test_toy_suite_restores_threads_and_logs_progress(toy_report):
    _, _, _, lines = toy_report
    assert any(line.startswith("== item 6") for line in lines)
    assert torch.get_num_threads() >= 1
    assert os.environ.get("VTAB_LILY_SCAN") is None  # the scan items restore the environment


def test_stats_and_paired_ratio():
    stats = Stats.of([3.0, 1.0, 2.0])
    assert (stats.median, stats.low, stats.high, stats.n) == (2.0, 1.0, 3.0, 3)
    assert stats.spread_pct() == pytest.approx(100.0)
    ratio = paired_ratio([4.0, 6.0], [2.0, 2.0])
    assert (ratio.low, ratio.high) == (2.0, 3.0)
    uneven = paired_ratio([10.0], [1.0, 2.0, 3.0])  # the missing slow rounds use the slow median
    assert uneven.n == 3 and uneven.high == pytest.approx(10.0)
    with pytest.raises(ValueError):
        Stats.of([])


def test_measure_interleaves_and_counts():
    calls = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = measure(candidates, CPU, warmup=1, reps=2, reps_for={"b": 3}, warmup_for={"b": 0})
    assert calls == ["a", "a", "b", "b", "a", "b"]  # warm-up a, then rounds a b | b a | b
    assert len(times["a"]) == 2 and len(times["b"]) == 3
    assert all(t >= 0 for t in times["a"] + times["b"])


def test_peak_memory_sees_a_temporary_allocation():
    def allocate() -> None:
        big = torch.ones(4 * 2**20 // 4)  # 4 MiB of float32, freed on return
        big.add_(1)

    mib, how = peak_memory_during(allocate, CPU)
    assert 3.9 <= mib <= 9.0, (mib, how)
    small, _ = peak_memory_during(lambda: torch.ones(16), CPU)
    assert small < 1.0


def test_flop_ratio_matches_the_paper_estimate():
    # Appendix A.2: about 4x fewer FLOPs at N=1024, r=16, C=768, ne=4.
    assert 4.0 <= flop_ratio(1024, 16, 768, 4) <= 4.6
    assert flop_ratio(1, 16, 768, 4) < 1.0  # a single token: combining costs more than it saves


def test_render_and_atomic_write(tmp_path):
    section = Section(1, "demo item", setting="a setting", headers=["x", "y"], rows=[["1", "2"]],
                      verdicts=[Verdict("y >= 3", "2", False, "why"), Verdict("none", "5/s", None)],
                      notes=["a note"])
    failed = Section(2, "broken item", error="RuntimeError: boom")
    text = render([section, failed], CPU, "quick", "1.00, 1.00, 1.00", "2.00, 1.00, 1.00", 0.0, 12.0)
    assert "| x   | y   |" in text and "**NOT MET**. why" in text and "**reported (no target)**" in text
    assert "**ERROR**: RuntimeError: boom" in text
    assert re.search(r"\| 2 +\| broken item .*NOT MET", text)  # an error counts as a missed target
    path = write_report(text, tmp_path / "out", "cpu")
    assert path == tmp_path / "out" / "bench-cpu.md" and path.read_text() == text
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp files left behind


def test_only_argument():
    assert parse_only(None) is None
    assert parse_only("3,1,3") == [1, 3]
    for bad in ("0", "8", "x", "1,,2"):
        with pytest.raises(UserError, match="--only"):
            parse_only(bad)
    with pytest.raises(UserError, match="--threads"):
        main(["--toy", "--threads", "0", "--only", "1"])


def test_out_under_a_regular_file_is_refused_before_timing(tmp_path, monkeypatch):
    import vtab_lily.bench.__main__ as cli

    monkeypatch.setattr(cli, "run_suite", lambda *a, **k: pytest.fail("the suite ran"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile"):
        main(["--toy", "--only", "1", "--out", str(tmp_path / "afile" / "sub")])


def test_cuda_request_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA device"):
        main(["--device", "cuda", "--only", "1"])


def test_presets_shrink_for_quick_and_toy():
    full, quick, toy = (sizes_for(p, "cpu") for p in ("full", "quick", "toy"))
    assert full.scan_shape == (8, 768, 197, 16) and full.lily_tokens == (197, 1024) and full.step_batch == 8
    assert sizes_for("full", "cuda").step_batch == 64 and sizes_for("full", "cuda").eval_images == 10_000
    assert quick.step_reps < full.step_reps and toy.vit == "vit-tiny-test" and toy.threads == 1
    with pytest.raises(ValueError):
        sizes_for("huge", "cpu")


def test_a_ratio_verdict_is_decided_only_when_every_round_agrees():
    from vtab_lily.bench.report import ratio_verdict
    from vtab_lily.bench.timing import Stats

    # the two runs the issue saw: 1.08x and 1.21x against 1.10, with 2-round spreads around each
    first, second = Stats(1.08, 1.03, 1.13, 2), Stats(1.21, 1.16, 1.26, 2)
    assert ratio_verdict("t", first, 1.10, at_most=True).status == "WITHIN NOISE"
    assert ratio_verdict("t", second, 1.10, at_most=True).status == "NOT MET"
    assert ratio_verdict("t", Stats(1.02, 1.0, 1.05, 5), 1.10, at_most=True).status == "MET"
    straddle = ratio_verdict("t", Stats(1.01, 0.98, 1.03, 2), 1.0, at_most=False, note="n")
    assert straddle.status == "WITHIN NOISE" and straddle.met is True and "both sides of 1" in straddle.note
    assert ratio_verdict("t", Stats(0.9, 0.85, 0.95, 2), 1.0, at_most=False).status == "NOT MET"
