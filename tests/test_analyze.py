"""python -m vtab_lily.analyze: dW composition and spectra on adapters whose answer is known,
then the reports of real (tiny) demo runs of Lily and LoRA."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vtab_lily import run
from vtab_lily.adapters import apply_adapter
from vtab_lily.adapters.lily import lily_deltas
from vtab_lily.adapters.lora import LoraDelta
from vtab_lily.analyze import __main__ as analyze_cli
from vtab_lily.analyze.compose import lily_update, probe_update, weight_updates
from vtab_lily.analyze.spectra import (
    effective_rank,
    expert_similarity,
    expert_wins,
    rank_above,
    router_entropy,
    singular_values,
    weight_stats,
)
from vtab_lily.backbones import create_backbone
from vtab_lily.data import ensure_demo
from vtab_lily.errors import UserError


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("vit-tiny-test", num_classes=3, img_size=32)


def test_effective_rank_and_counts_on_known_spectra():
    assert effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0])) == pytest.approx(3.0)
    assert effective_rank(torch.zeros(4)) == 0.0
    assert 1.0 < effective_rank(torch.tensor([1.0, 0.1])) < 2.0
    assert rank_above(torch.tensor([1.0, 0.5, 0.009, 0.0]), 0.01) == 2
    assert rank_above(torch.zeros(3)) == 0
    stats = weight_stats(torch.diag(torch.tensor([3.0, 4.0])), torch.eye(2) * 5)
    assert stats["norm"] == pytest.approx(5.0) and stats["relative_norm"] == pytest.approx(5.0 / (50 ** 0.5))
    assert router_entropy([0.5, 0.5]) == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert router_entropy([1.0, 0.0]) == pytest.approx(0.0)
    assert expert_wins({"a": [0.2, 0.8], "b": [0.9, 0.1], "c": [0.1, 0.9], "d": [1.0]}) == [1, 2]


def test_lora_rank_two_update_has_rank_two():
    model = apply_adapter(tiny_vit(), "lora", rank=2, targets=("q", "v"))
    for module in model.modules():
        if isinstance(module, LoraDelta):
            torch.nn.init.normal_(module.lora_B.weight)
    updates, skipped = weight_updates(model)
    assert updates and not skipped
    for u in updates:
        values = singular_values(u.delta)
        assert rank_above(values, 1e-6) == 2
        assert 1.0 < effective_rank(values) <= 2.0 + 1e-9
        assert u.kind in ("q", "v") and u.base.shape == u.delta.shape


def lily_model(rank: int = 3, ne: int = 4) -> torch.nn.Module:
    return apply_adapter(tiny_vit(), "lily", rank=rank, ne=ne, targets=("k", "v"), scale=0.5)


def test_lily_identical_experts_have_the_rank_of_one_expert():
    model = lily_model()
    for delta in lily_deltas(model):
        experts = delta.lily_B.weight
        rank_one = torch.randn(experts.shape[1], 1) @ torch.randn(1, experts.shape[2])  # one expert of rank 1
        with torch.no_grad():
            experts.copy_(rank_one.expand_as(experts))
    routed = {d.site_name: torch.softmax(torch.randn(4), 0).tolist() for d in lily_deltas(model)}
    updates, _ = weight_updates(model, routed)
    assert len(updates) == len(lily_deltas(model))
    for u in updates:
        assert rank_above(singular_values(u.delta), 1e-6) == 1  # not rank 3: the experts add nothing


def test_one_hot_routing_reduces_lily_to_lora_with_that_expert():
    model = lily_model()
    delta = lily_deltas(model)[0]
    torch.nn.init.normal_(delta.lily_B.weight)
    for j in range(delta.lily_B.weight.shape[0]):
        one_hot = [1.0 if i == j else 0.0 for i in range(delta.lily_B.weight.shape[0])]
        rank, width = delta.lily_B.weight.shape[1:]
        lora = LoraDelta(delta.lily_A.in_features, width, rank, alpha=rank * delta.scale, dropout=0.0,
                         out_slice=None)
        with torch.no_grad():
            lora.lora_A.weight.copy_(delta.lily_A.weight)
            lora.lora_B.weight.copy_(delta.lily_B.weight[j].T)
        torch.testing.assert_close(lily_update(delta, one_hot), lora.delta_weight())
    # and the composed update is what the layer adds under those weights (uniform: router-free check)
    x = torch.randn(5, delta.lily_A.in_features)
    delta.lily_router = None
    torch.testing.assert_close(delta(x), x @ lily_update(delta, None).T, rtol=1e-5, atol=1e-6)


def test_probe_recovers_a_linear_delta_and_refuses_a_nonlinear_one():
    linear = torch.nn.Linear(6, 4, bias=False)
    torch.testing.assert_close(probe_update(linear, 6), linear.weight.detach())
    assert probe_update(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()), 6) is None


def test_expert_similarity():
    experts = torch.randn(3, 2, 5)
    experts[1] = experts[0] * 2
    experts[2] = 0
    sim = expert_similarity(experts)
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == 0 and sim[2, 2] == 0


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "vtab-demo"
    ensure_demo(root)
    out = tmp_path_factory.mktemp("runs")
    common = ["--demo", "--backbone", "vit", "--task", "colours", "--img-size", "16", "--epochs", "2",
              "--eval-every", "1", "--batch-size", "100", "--data-root", str(root), "--out", str(out),
              "--no-tensorboard"]
    assert run.main([*common, "--adapter", "lily", "--rank", "4"]) == 0
    assert run.main([*common, "--adapter", "lora", "--rank", "4"]) == 0
    assert run.main([*common, "--adapter", "bitfit"]) == 0  # no weight matrix adapted
    return out


def test_report_from_demo_runs(demo_runs, tmp_path):
    out = tmp_path / "analysis"
    assert analyze_cli.main([str(demo_runs), "--out", str(out)]) == 0
    index = (out / "README.md").read_text()
    (page,) = (out / "vit-tiny-test").glob("*.md")
    assert page.name in index
    text = page.read_text()
    assert "lily r=4" in text and "lora" in text and "mean eff. rank" in text and "sites won per expert" in text
    images = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(images) >= 4  # methods side by side, two rank heat maps, Lily's experts
    for name in images:
        with Image.open(page.parent / name) as image:
            image.verify()
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    assert "No linear adapted weight" in text.split("## bitfit")[1]
    assert not list(page.parent.glob("*bitfit*-rank.png"))  # no empty heat map


def test_a_task_whose_methods_have_no_weight_update_gets_a_page_without_the_methods_plot(tmp_path):
    """Two methods on one task, neither adapting a weight matrix (BitFit, LN-tune; on Vim: affix,
    additional-scan): the page lists both, draws no empty side-by-side plot, and nothing fails."""
    root = tmp_path / "vtab-demo"
    ensure_demo(root)
    common = ["--demo", "--backbone", "vit", "--task", "colours", "--img-size", "16", "--epochs", "1",
              "--eval-every", "1", "--batch-size", "100", "--data-root", str(root), "--out", str(tmp_path / "runs"),
              "--no-tensorboard"]
    for adapter in ("bitfit", "ln-tune"):
        assert run.main([*common, "--adapter", adapter]) == 0
    out = tmp_path / "analysis"
    assert analyze_cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    (page,) = (out / "vit-tiny-test").glob("*.md")
    text = page.read_text()
    assert "## bitfit" in text and "## ln-tune" in text and "methods.png" not in text


def test_cli_errors(tmp_path):
    with pytest.raises(UserError, match="no such run folder"):
        analyze_cli.main([str(tmp_path / "nope")])
    with pytest.raises(UserError, match="no complete runs"):
        analyze_cli.main([str(tmp_path)])
    with pytest.raises(UserError, match="--fraction"):
        analyze_cli.main([str(tmp_path), "--fraction", "nan"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile"):
        analyze_cli.main([str(tmp_path), "--out", str(tmp_path / "afile" / "sub")])
    with pytest.raises(UserError, match="--out"):
        analyze_cli.main([str(tmp_path), "--out", ""])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_bytes(b"\xff\xfe not json")
    with pytest.warns(UserWarning, match="skipped"):
        from vtab_lily.analyze.load import find_runs
        assert find_runs([tmp_path]) == []


def test_leaderboard_links_the_analysis_pages(demo_runs, tmp_path):
    from vtab_lily.leaderboard import generate

    out = tmp_path / "leaderboards"
    generate(demo_runs, out, plots=False)
    assert "Adapter analyses" not in (out / "vit-tiny-test.md").read_text()  # none written yet
    assert analyze_cli.main([str(demo_runs), "--out", str(out / "analysis")]) == 0
    generate(demo_runs, out, plots=False)
    text = (out / "vit-tiny-test.md").read_text()
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if "](analysis/" in line]
    assert links and all((out / link).is_file() for link in links)


def _copy_run(demo_runs, tmp_path, adapter="lily"):
    import shutil

    (src,) = [p.parent for p in demo_runs.rglob("result.json") if f"/{adapter}/" in str(p)]
    dst = tmp_path / "runs" / src.relative_to(demo_runs)
    shutil.copytree(src, dst)
    return dst


class Evil:
    def __reduce__(self):
        return (print, ("payload ran",))


@pytest.mark.parametrize("damage", ["corrupt", "empty", "wrong-shape", "nan", "pickle", "not-a-table", "odd-name"])
def test_a_bad_snapshot_is_skipped_with_one_warning_and_the_report_goes_on(demo_runs, tmp_path, capsys, damage):
    """Issue 22.8: each of these was a traceback that aborted the whole report."""
    import pickle

    run_dir = _copy_run(demo_runs, tmp_path)
    _copy_run(demo_runs, tmp_path, "lora")  # a second, sound run on the same task
    snap = run_dir / "snapshots" / "epoch_0001.pt"
    state = torch.load(snap, weights_only=True)
    if damage == "corrupt":
        snap.write_bytes(snap.read_bytes()[:200])
    elif damage == "empty":
        snap.write_bytes(b"")
    elif damage == "wrong-shape":
        name = next(iter(state))
        torch.save({**state, name: torch.zeros(3, 5, 7)}, snap)
    elif damage == "nan":
        name = next(k for k, v in state.items() if v.is_floating_point())
        torch.save({**state, name: torch.full_like(state[name], float("nan"))}, snap)
    elif damage == "pickle":
        snap.write_bytes(pickle.dumps({"x": Evil()}))
    elif damage == "not-a-table":
        torch.save([1, 2, 3], snap)
    elif damage == "odd-name":
        snap.rename(run_dir / "snapshots" / "epoch_one.pt")
    out = tmp_path / "analysis"
    assert analyze_cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and ("epoch_one.pt" if damage == "odd-name" else "epoch_0001.pt") in warnings[0]
    assert "weights_only" not in printed and "payload ran" not in printed
    if damage == "pickle":
        assert "not a safe tensor checkpoint" in warnings[0]
    text = next((out / "vit-tiny-test").glob("*.md")).read_text()
    assert "## lora" in text and "## lily" in text  # epoch 2's snapshot still analysed
    assert "states analysed at epochs 2." in text.split("## lily")[1]


ROUTER_DAMAGE = ['{"sites": ["a"], "experts": 2, "epochs": [1], "weights": [[["x", 0.5]]]}',
                 '{"sites": ["a"], "experts": 2, "epochs": [1], "weights": [[[0.5, 0.5, 0.1]]]}',
                 '{"sites": ["a"], "experts": 2, "epochs": [1, 2], "weights": [[[0.5, 0.5]]]}',
                 '{"sites": ["a"], "experts": 2, "epochs": ["1"], "weights": [[[0.5, 0.5]]]}',
                 '{"sites": "a", "experts": 2, "epochs": [1], "weights": 3}',
                 '{"sites": ["a"], "experts": true, "epochs": [1], "weights": [[[1.0]]]}',
                 '{"sites": ["a"], "experts": 2, "epochs": [1], "weights": [[[NaN, 0.5]]]}',
                 '[1, 2]', '{"sites": [', '']


@pytest.mark.parametrize("text", ROUTER_DAMAGE)
def test_a_malformed_router_history_is_skipped_with_a_warning(demo_runs, tmp_path, capsys, text):
    """Issue 22.9: ARCHITECTURE.md says malformed router files are skipped with a warning; a
    malformed router_history.json was a traceback."""
    run_dir = _copy_run(demo_runs, tmp_path)
    (run_dir / "router_history.json").write_text(text)
    out = tmp_path / "analysis"
    assert analyze_cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "router_history.json" in warnings[0] and "history skipped" in warnings[0]
    assert "## lily" in next((out / "vit-tiny-test").glob("*.md")).read_text()


@pytest.mark.parametrize("text", ['{"sites": ["a"], "experts": 2, "weights": [["x", 0.5]]}',
                                  '{"sites": ["a"], "experts": 2, "weights": [[0.5, 0.5, 0.1]]}',
                                  '{"sites": ["a", "b"], "experts": 2, "weights": [[0.5, 0.5]]}',
                                  '{"sites": "a", "experts": 2, "weights": 3}',
                                  '{"sites": ["a"], "experts": 2, "weights": [[Infinity, 0.5]]}',
                                  '[1, 2]', '{"sites": [', ''])
def test_a_malformed_router_weights_file_skips_the_run_with_a_warning(demo_runs, tmp_path, capsys, text):
    run_dir = _copy_run(demo_runs, tmp_path)
    _copy_run(demo_runs, tmp_path, "lora")
    (run_dir / "router_weights.json").write_text(text)
    out = tmp_path / "analysis"
    assert analyze_cli.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "router_weights.json" in warnings[0]
    assert "## lora" in next((out / "vit-tiny-test").glob("*.md")).read_text()


def test_peft_lora_on_q_v_gives_the_same_dw_as_ours(tmp_path):
    """Issue 22.6: a PEFT LoRA run on q,v reported 'sites 0 ... no dW to analyse'."""
    import json

    pytest.importorskip("peft")
    path = tmp_path / "lora.json"
    path.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q", "v"]}))
    peft_model = apply_adapter(tiny_vit(), "peft", config=str(path))
    ours = apply_adapter(tiny_vit(), "lora", rank=2, alpha=4, targets=("q", "v"))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    peft_layers = {n: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")}
    peft_updates, skipped = weight_updates(peft_model)
    assert not skipped and len(peft_updates) == 2 * len(peft_model.blocks)
    assert {u.kind for u in peft_updates} == {"q", "v"}
    for u in peft_updates:
        layer = peft_layers[f"blocks.{u.layer}.attn.qkv.{u.kind}"]
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        torch.testing.assert_close(u.delta, (4 / 2) * b @ a)  # scaling alpha / r, as ours
        assert rank_above(singular_values(u.delta), 1e-6) == 2 and u.base.shape == u.delta.shape
    assert sorted(u.site for u in peft_updates) == sorted(u.site for u in weight_updates(ours)[0])


@pytest.mark.parametrize("adapter, count, what", [
    ("adaptformer", "blocks", "bottleneck with a ReLU"), ("houlsby", "2 blocks", "bottleneck with a ReLU"),
    ("pfeiffer", "blocks", "bottleneck with a ReLU"), ("ssf", None, "scale and shift"),
    ("repadapter", "2 blocks", "linear map of the layer's input"), ("vpt-deep", "blocks", "prompt tokens"),
    ("vpt-shallow", None, "prompt tokens")])
def test_adapters_without_a_weight_update_are_listed_as_the_page_says(adapter, count, what):
    """Issue 22.6: these were listed with 0 sites although the page header says they are listed."""
    model = apply_adapter(tiny_vit(), adapter, task="dtd")
    updates, skipped = weight_updates(model)
    assert not updates and skipped and all(what in line for line in skipped)
    depth = len(model.blocks)
    if count == "blocks":
        assert len(skipped) == depth
    elif count == "2 blocks":
        assert len(skipped) == 2 * depth


# --- figures (issue 25 item 5): read from the matplotlib objects, not from pixels -------------
def fake_analysis(adapter: str, ranks: dict[str, list[float]], routers: dict | None = None,
                  experts: dict | None = None):
    from pathlib import Path

    from vtab_lily.analyze.analysis import RunAnalysis, Snapshot
    from vtab_lily.analyze.load import RunRecord

    record = RunRecord(Path("runs/x"), {"adapter": adapter}, {"method": f"{adapter} r=4", "params": {"adapter": 96}})
    sites = {f"blocks.{layer}.{kind}": {"layer": layer, "kind": kind, "effective_rank": r, "max_rank": 4}
             for kind, per_layer in ranks.items() for layer, r in enumerate(per_layer)}
    return RunAnalysis(record, [Snapshot(2, sites, experts or {})], [], routers or {}, {}, True)


def test_the_methods_figure_compares_methods_on_one_y_scale():
    import matplotlib.pyplot as plt

    from vtab_lily.analyze.report import methods_figure

    lily = fake_analysis("lily", {"k": [1.0, 1.2], "v": [1.4, 1.6], "mlp": [2.0, 2.2]})
    lora = fake_analysis("lora", {"q": [3.0, 3.5], "v": [3.2, 3.9]})
    fig = methods_figure([lily, lora])
    try:
        first = fig.axes[0]
        assert [ax.get_title() for ax in fig.axes[1:5]] == ["target k", "target mlp", "target q", "target v"]
        # both methods on the first panel, each layer the mean over the method's own targets
        lines = {line.get_label(): line for line in first.get_lines()}
        assert set(lines) == {"lily r=4", "lora r=4"}
        assert list(lines["lily r=4"].get_ydata()) == pytest.approx([(1.0 + 1.4 + 2.0) / 3, (1.2 + 1.6 + 2.2) / 3])
        assert list(lines["lora r=4"].get_ydata()) == pytest.approx([3.1, 3.7])
        limits = {ax.get_ylim() for ax in fig.axes if ax.get_lines()}
        assert len(limits) == 1  # one y scale on every panel
        (low, high), = limits
        assert low == 0 and high >= 3.9
        assert first.get_ylabel() == "effective rank of dW"
    finally:
        plt.close(fig)


def test_the_experts_figure_has_a_uniform_line_and_labelled_heat_maps():
    import math

    import matplotlib.pyplot as plt

    from vtab_lily.analyze.report import experts_figure

    routers = {f"blocks.{i}.attn.k": {"weights": [0.7, 0.1, 0.1, 0.1], "entropy": 0.94} for i in range(2)}
    similarity = [[1.0, 0.2, 0.1], [0.2, 1.0, 0.3], [0.1, 0.3, 1.0]]
    a = fake_analysis("lily", {"k": [1.0, 1.2]}, routers,
                      {"k": {"similarity": similarity, "max_offdiag": 0.3, "mean_offdiag": 0.2}})
    fig = experts_figure(a)
    try:
        entropy, _, heat = fig.axes[:3]
        uniform = [line for line in entropy.get_lines() if "uniform" in line.get_label()]
        assert len(uniform) == 1 and set(uniform[0].get_xdata()) == {math.log(4)}
        assert heat.get_xlabel() == "B expert" and heat.get_ylabel() == "B expert"
        assert [t.get_text() for t in heat.get_xticklabels()] == ["0", "1", "2"]
        assert any(ax.get_ylabel() == "cosine similarity" for ax in fig.axes[3:])  # the colour bar
    finally:
        plt.close(fig)
