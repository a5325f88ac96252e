"""Settings the methods' authors chose per task (VPT-deep length, FacT rank/scale, RepAdapter scale):
the tables, the published counts they give, and how runs of them are named and recorded."""

from __future__ import annotations

import statistics

import pytest
import torch

from vtab_lily.adapters import apply_adapter, count_parameters
from vtab_lily.adapters.fact import FACT_TK_SETTINGS, FACT_TT_SETTINGS
from vtab_lily.adapters.repadapter import REPADAPTER_SCALES, RepAdapter
from vtab_lily.adapters.vpt import VPT_DEEP_LENGTHS
from vtab_lily.backbones import create_backbone
from vtab_lily.errors import UserError
from vtab_lily.rundir import method_hash
from vtab_lily.runconfig import check_args
from vtab_lily.tasks import GROUPS, VTAB_TASKS

TABLES = {"vpt-deep": VPT_DEEP_LENGTHS, "fact-tt": FACT_TT_SETTINGS, "fact-tk": FACT_TK_SETTINGS,
          "repadapter": REPADAPTER_SCALES}


def paper_model(adapter: str, task: str | None, **options):
    with torch.device("meta"):
        model = create_backbone("vit-b16-in21k", num_classes=VTAB_TASKS[task].num_classes if task else 10)
        return apply_adapter(model, adapter, task=task, **options)


def mean_of_group_means(values: dict[str, float]) -> float:
    groups = {g: [v for t, v in values.items() if VTAB_TASKS[t].group == g] for g in GROUPS}
    return statistics.fmean(statistics.fmean(v) for v in groups.values())


@pytest.mark.parametrize("name", TABLES)
def test_each_table_covers_exactly_the_19_vtab_tasks(name):
    assert set(TABLES[name].values) == set(VTAB_TASKS)


@pytest.mark.parametrize("task, total", [("dmlab", 926_214), ("sun397", 351_373), ("eurosat", 929_290)])
def test_vpt_deep_at_its_paper_lengths_has_the_official_demo_counts(task, total):
    """VPT's demo.ipynb ("the hyperparameters are the same from our paper") prints these
    trainable counts, head included, for ViT-B/16 in21k."""
    assert count_parameters(paper_model("vpt-deep", task))["total"] == total


def test_vpt_deep_paper_lengths_average_is_not_the_published_053m():
    """Documented, not hidden: the reprinted lengths give 0.62M (mean of group means), not 0.53M."""
    counts = {t: count_parameters(paper_model("vpt-deep", t))["adapter"] for t in VTAB_TASKS}
    assert all(counts[t] == VPT_DEEP_LENGTHS.values[t]["length"] * 768 * 12 for t in VTAB_TASKS)
    assert round(mean_of_group_means(counts) / 1e6, 2) == 0.62
    assert round(statistics.fmean(counts.values()) / 1e6, 2) == 0.68


@pytest.mark.parametrize("name, published, exact", [("fact-tt", 0.037, 36_649), ("fact-tk", 0.069, 69_333)])
def test_fact_at_its_per_task_settings_gives_the_published_count(name, published, exact):
    """FacT's Table 1 averages params as it averages accuracy: the mean of the group means."""
    counts = {t: count_parameters(paper_model(name, t))["adapter"] for t in VTAB_TASKS}
    assert round(mean_of_group_means(counts)) == exact
    assert round(mean_of_group_means(counts) / 1e6, 3) == published


@pytest.mark.parametrize("name", ["fact-tt", "fact-tk"])
def test_fact_uses_the_task_rank_and_scale(name):
    model = paper_model(name, "dtd")
    delta = model.blocks[0].attn.proj.deltas["fact_o"]
    expected = TABLES[name].values["dtd"]
    assert delta.factors.u.weight.shape[0] == expected["rank"] and delta.scale == expected["scale"]
    assert model.adapter_config.rank == "paper" and model.adapter_task_settings["rank"] == expected["rank"]


def test_repadapter_published_022m_counts_weights_only_and_scale_follows_the_task():
    model = paper_model("repadapter", "svhn")
    modules = [m for m in model.modules() if isinstance(m, RepAdapter)]
    assert len(modules) == 24 and {m.scale for m in modules} == {10.0}
    weights = sum(p.numel() for m in modules for n, p in m.named_parameters() if "bias" not in n)
    assert weights == 221_184 and round(weights / 1e6, 2) == 0.22
    assert count_parameters(model)["adapter"] == 239_808


def test_a_task_outside_vtab_uses_the_fallback_and_says_so():
    model = paper_model("fact-tt", None)
    assert model.adapter_task_settings == {"rank": 8, "scale": 1.0,
                                           "from": "fallback: no task given"}
    assert paper_model("lora", None).adapter_task_settings == {}
    assert paper_model("fact-tt", None, rank=4, scale=2.0).adapter_task_settings == {}


def identified(*argv: str) -> tuple[dict, list[str]]:
    from vtab_lily.run import identify

    config, _, _, devs = identify(check_args([*argv, "--checkpoint", "none"]), must_exist=False)
    return config, devs


def test_paper_settings_are_one_official_method_across_tasks_and_recorded_per_run():
    a, devs_a = identified("--task", "dtd", "--adapter", "vpt-deep")
    b, devs_b = identified("--task", "svhn", "--adapter", "vpt-deep")
    assert devs_a == devs_b == [] and method_hash(a) == method_hash(b)
    assert a["adapter_task_settings"]["length"] == 10 and b["adapter_task_settings"]["length"] == 50


def test_a_fixed_value_is_one_deviation_on_every_task_even_where_the_paper_agrees():
    fixed_dtd, devs_dtd = identified("--task", "dtd", "--adapter", "vpt-deep", "--adapter-opt", "length=50")
    fixed_svhn, devs_svhn = identified("--task", "svhn", "--adapter", "vpt-deep", "--adapter-opt", "length=50")
    paper_svhn, _ = identified("--task", "svhn", "--adapter", "vpt-deep")
    assert devs_dtd == devs_svhn == ["length=50"]
    assert method_hash(fixed_dtd) == method_hash(fixed_svhn) != method_hash(paper_svhn)
    assert "adapter_task_settings" not in fixed_svhn


@pytest.mark.parametrize("opt, message", [
    ("rank=papr", r"--adapter-opt rank: cannot read 'papr' as int .*; or paper \(the published per-task value\)"),
    ("rank=1.5", r"--adapter-opt rank: cannot read '1.5' as int"),
    ("rank=0", "rank must be an integer >= 1"),
    ("scale=-1", "must be a finite number >= 0"),
])
def test_bad_per_task_options_name_the_option(opt, message):
    with pytest.raises(UserError, match=message):
        identified("--task", "dtd", "--adapter", "fact-tt", "--adapter-opt", opt)


def test_vpt_shallow_has_no_paper_table_and_says_so():
    with pytest.raises(UserError, match="adapter 'vpt-shallow' has no published per-task length"):
        identified("--task", "dtd", "--adapter", "vpt-shallow", "--adapter-opt", "length=paper")
    with pytest.raises(UserError, match="vpt-shallow: no published per-task prompt lengths"):
        paper_model("vpt-shallow", "dtd", length="paper")  # the Python API says so too


@pytest.mark.parametrize("opt", ["length=1e3", "length=50.0", "length=nan"])
def test_a_number_of_the_wrong_kind_is_named_as_such_not_as_not_a_number(opt):
    """``int | str`` options: a float-looking value is not an int, said as such (never 'must be a
    number or paper', which reads as if 1e3 were no number)."""
    with pytest.raises(UserError, match=rf"--adapter-opt length: cannot read '{opt[7:]}' as int"):
        identified("--task", "dtd", "--adapter", "vpt-deep", "--adapter-opt", opt)


@pytest.mark.parametrize("argv", [
    ("--scale", "paper"), ("--rank", "paper", "--scale", "paper"), ("--scale", "PAPER"),
    ("--adapter-opt", "rank=Paper"), ("--adapter-opt", "scale= paper"),
])
def test_paper_is_accepted_by_the_flags_and_in_any_case(argv):
    """``--scale paper`` (the flag, as a sweep grid over scale passes it) and ``PAPER`` are the default."""
    default, devs_default = identified("--task", "dtd", "--adapter", "fact-tt")
    given, devs = identified("--task", "dtd", "--adapter", "fact-tt", *argv)
    assert devs == devs_default == [] and given["adapter_config"] == default["adapter_config"]
    assert given["adapter_task_settings"] == default["adapter_task_settings"]


@pytest.mark.parametrize("adapter, argv, where", [
    ("lily", ("--adapter-opt", "rank=paper"), "--adapter-opt rank=paper"),
    ("lily", ("--scale", "paper"), "--scale paper"),
    ("lora", ("--rank", "PAPER"), "--rank paper"),
    ("repadapter", ("--adapter-opt", "rank=paper"), "--adapter-opt rank=paper"),
    ("vpt-deep", ("--adapter-opt", "dropout=paper"), "--adapter-opt dropout=paper"),
])
def test_paper_on_a_setting_without_a_table_names_the_option_and_the_tables(adapter, argv, where):
    with pytest.raises(UserError, match=rf"^{where}: adapter '{adapter}' has no published per-task .*fact-tt rank/scale"):
        check_args(["--task", "dtd", "--adapter", adapter, *argv])
