"""Markdown reports and figures: one page per (backbone, suite, task), an index linking them.

Figures: a heat map of dW's effective rank per run (layers x targets), effective rank per layer
for every method on the task on one shared y scale (all methods on one axis, then per target;
adapter parameters in the legend, so equal budgets can be compared), and for Lily the experts:
router entropy per site against a uniform router's, B-expert similarity (labelled expert by
expert), and both over training (one point per evaluation).
"""

from __future__ import annotations

import math
from pathlib import Path

from tabulate import tabulate

from vtab_lily.analyze.analysis import RunAnalysis
from vtab_lily.fsutil import atomic_write_bytes
from vtab_lily.leaderboard.text import md_escape  # labels come from files: never a fake row or heading
from vtab_lily.leaderboard.text import safe_component as slug  # file contents never choose a path outside --out


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _run_slug(a: RunAnalysis) -> str:
    return slug(f"{a.run.config['adapter']}-{a.run.result.get('config_hash', a.run.run_dir.name)}")


def _kinds(a: RunAnalysis) -> list[str]:
    return sorted({s["kind"] for s in a.final.sites.values()}) if a.final else []


def _save(fig, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def rank_heatmap(a: RunAnalysis, path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = _kinds(a)
    layers = sorted({s["layer"] for s in a.final.sites.values()})
    grid = np.full((len(layers), len(kinds)), np.nan)
    for s in a.final.sites.values():
        grid[layers.index(s["layer"]), kinds.index(s["kind"])] = s["effective_rank"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(kinds), 1 + 0.32 * len(layers)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("target")
    ax.set_ylabel("layer")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(image, ax=ax, label="effective rank of dW")
    ax.set_title(f"{a.run.label}\n(epoch {a.final.epoch})", fontsize=9)
    _save(fig, path)
    plt.close(fig)


def _layer_ranks(a: RunAnalysis, kinds: set[str] | None = None) -> list[tuple[int, float]]:
    """(layer, effective rank of dW) of ``a``'s final state, averaged over its targets ``kinds``
    (default: every target it adapts) in each layer."""
    per_layer: dict[int, list[float]] = {}
    for s in a.final.sites.values():
        if kinds is None or s["kind"] in kinds:
            per_layer.setdefault(s["layer"], []).append(s["effective_rank"])
    means = {layer: _mean(values) for layer, values in per_layer.items()}
    return sorted((layer, float("nan") if m is None else m) for layer, m in means.items())


def methods_figure(analyses: list[RunAnalysis]):
    """Effective rank of dW per layer for every method of a task. Methods adapt different targets
    (Lily k, v, mlp; LoRA q, v), so the first panel puts every method on one axis (each layer's
    mean over the method's own targets); the panels after it split by target. All share one y
    scale from 0, so a higher line is a higher rank wherever it is drawn."""
    import matplotlib.pyplot as plt

    kinds = sorted({k for a in analyses for k in _kinds(a)})
    fig, axes = plt.subplots(1, 1 + len(kinds), figsize=(4 * (1 + len(kinds)), 3.2), squeeze=False, sharey=True)
    colours = {id(a): plt.get_cmap("tab10")(i % 10) for i, a in enumerate(analyses)}
    panels = [("all methods: mean over each method's targets", None)] + [(f"target {k}", {k}) for k in kinds]
    for ax, (title, only) in zip(axes[0], panels):
        for a in analyses:
            points = _layer_ranks(a, only)
            if points:
                ax.plot(*zip(*points), marker="o", color=colours[id(a)], label=a.run.label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("effective rank of dW")
    axes[0][0].set_ylim(bottom=0)
    labels = [f"{a.run.label} ({a.run.adapter_params:,} params)" if a.run.adapter_params is not None
              else a.run.label for a in analyses]
    handles = [plt.Line2D([], [], marker="o", color=colours[id(a)]) for a in analyses]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.04), fontsize=8)
    return fig


def methods_plot(analyses: list[RunAnalysis], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = methods_figure(analyses)
    _save(fig, path)
    plt.close(fig)


def experts_figure(a: RunAnalysis):
    """Lily's routers and experts: entropy per site at the final evaluation against a uniform
    router's (log ne, the most a router of ne experts can have), B similarity and dW rank over
    training, and each target's B-expert cosine similarity matrix."""
    import matplotlib.pyplot as plt

    kinds = sorted(a.final.experts)
    fig, axes = plt.subplots(1, 2 + len(kinds), figsize=(4 * (2 + len(kinds)), 3.6), squeeze=False,
                             layout="constrained")  # room for each heat map's labels beside the colour bars
    ax = axes[0][0]
    sites = list(a.routers)
    ax.barh(range(len(sites)), [a.routers[s]["entropy"] for s in sites])
    for i, ne in enumerate(sorted({len(a.routers[s]["weights"]) for s in sites})):
        ax.axvline(math.log(ne), color="k", linestyle=("--", ":", "-.")[i % 3], linewidth=1,
                   label=f"uniform router, {ne} experts (log {ne} = {math.log(ne):.2f})")
    if sites:  # below the axis: the bars fill the panel
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_yticks(range(len(sites)), sites, fontsize=6)
    ax.set_xlabel("router entropy (nats)")
    ax.set_title("routers, final evaluation", fontsize=9)
    ax = axes[0][1]
    epochs = [snap.epoch for snap in a.snapshots]
    for kind in kinds:
        ax.plot(epochs, [snap.experts.get(kind, {}).get("max_offdiag", float("nan")) for snap in a.snapshots],
                marker="o", label=f"{kind}: max B similarity")
    ax.plot(epochs, [_mean([s["effective_rank"] / s["max_rank"] for s in snap.sites.values()]) or float("nan")
                     for snap in a.snapshots], marker="s", label="dW: mean eff. rank / max rank")
    ax.set_xlabel("epoch")
    ax.set_title("over training", fontsize=9)
    ax.legend(fontsize=7)
    for ax, kind in zip(axes[0][2:], kinds):
        similarity = a.final.experts[kind]["similarity"]
        image = ax.imshow(similarity, vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(similarity)))
        ax.set_yticks(range(len(similarity)))
        ax.set_xlabel("B expert")
        ax.set_ylabel("B expert")
        ax.set_title(f"B experts ({kind}): cosine similarity", fontsize=9)
        fig.colorbar(image, ax=ax, label="cosine similarity")
    return fig


def experts_plot(a: RunAnalysis, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = experts_figure(a)
    _save(fig, path)
    plt.close(fig)


def _summary_row(a: RunAnalysis) -> list:
    sites = list(a.final.sites.values())
    return [md_escape(a.run.label), f"{a.run.adapter_params:,}" if a.run.adapter_params is not None else "-", len(sites),
            _fmt(_mean([s["effective_rank"] for s in sites])), _fmt(_mean([s["rank_above"] for s in sites]), 1),
            max((s["max_rank"] for s in sites), default="-"),
            _fmt(_mean([s["relative_norm"] for s in sites]), 4) if a.base_known else "n/a (no backbone weights)",
            len(a.skipped)]


def task_page(key: tuple[str, str, str], analyses: list[RunAnalysis], folder: Path) -> Path:
    """Write the page and figures for one (backbone, suite, task); returns the page path."""
    backbone, suite, task = key
    analyses = [a for a in analyses if a.final is not None]
    stem = slug(f"{suite}-{task}")
    lines = [f"# Adapter analysis: {task} ({backbone}, {suite} suite)", "",
             "Weight updates dW of every linear adapted weight, from the trained adapters "
             "(Lily composed with the mean expert weights its routers gave at the final evaluation). "
             f"Effective rank = exp(entropy of the normalised singular values); rank>{analyses[0].fraction:g} "
             f"counts singular values above {analyses[0].fraction:g} x the largest; rel. norm = "
             "||dW||_F / ||W0||_F. Adapter pieces that are not the update of one Linear's weight are counted "
             "under 'sites without dW' and listed under each run: bottlenecks with a ReLU (Lily's mlp target, "
             "AdaptFormer, Houlsby, Pfeiffer, Convpass) add a function; SSF scales and shifts features, "
             "RepAdapter maps a layer's input, VPT adds prompt tokens.",
             "", tabulate([_summary_row(a) for a in analyses], headers=[
                 "method", "adapter params", "sites", "mean eff. rank", f"mean rank>{analyses[0].fraction:g}", "max rank",
                 "mean rel. norm", "sites without dW"], tablefmt="github"), ""]
    if len(analyses) > 1 and any(_kinds(a) for a in analyses):  # a plot needs some method's dW
        methods_plot(analyses, folder / f"{stem}-methods.png")
        budgets = sorted({a.run.adapter_params for a in analyses if a.run.adapter_params})
        lines += [f"![effective rank per layer, all methods]({stem}-methods.png)", "",
                  "Adapter parameter budgets: " + ", ".join(f"{b:,}" for b in budgets) +
                  (" (equal)" if len(budgets) == 1 else " (compare rows of equal budget)"), ""]
    for a in analyses:
        rs = _run_slug(a)
        lines += [f"## {md_escape(a.run.label)}", "", f"Run: {md_escape(a.run.run_dir)}; states analysed at epochs "
                  + ", ".join(str(s.epoch) for s in a.snapshots) + ".", ""]
        if a.final.sites:
            rank_heatmap(a, folder / f"{stem}-{rs}-rank.png")
            lines += [f"![effective rank of dW per layer and target]({stem}-{rs}-rank.png)", ""]
        else:  # e.g. BitFit, SSF: biases and scales only, an empty heat map would say nothing
            lines += ["No linear adapted weight: no dW to analyse.", ""]
        if a.final.experts or a.routers:
            experts_plot(a, folder / f"{stem}-{rs}-experts.png")
            rows = []
            for kind in sorted(a.wins):
                ent = _mean([r["entropy"] for site, r in a.routers.items() if site.split(".", 2)[-1] == kind])
                width = len(a.wins[kind])
                sim = a.final.experts.get(kind, {})
                rows.append([kind, _fmt(ent, 3), _fmt(math.log(width), 3) if width else "-",
                             " / ".join(map(str, a.wins[kind])), _fmt(sim.get("max_offdiag"), 3),
                             _fmt(sim.get("mean_offdiag"), 3)])
            lines += [tabulate(rows, headers=["target", "mean router entropy", "uniform (log ne)",
                                              "sites won per expert", "max B similarity", "mean B similarity"],
                               tablefmt="github"), "",
                      f"![routers and experts]({stem}-{rs}-experts.png)", ""]
            lines += [tabulate([[s.epoch, _fmt(_mean([x["effective_rank"] for x in s.sites.values()])),
                                 " ".join(f"{k}:{v['max_offdiag']:.3f}" for k, v in sorted(s.experts.items())) or "-"]
                                for s in a.snapshots], headers=["epoch", "mean eff. rank", "max B similarity"],
                               tablefmt="github"), ""]
        if a.skipped:
            more = f" ... ({len(a.skipped)} in all)" if len(a.skipped) > 6 else ""
            lines += [f"Sites without dW: {md_escape('; '.join(a.skipped[:6]))}{more}", ""]
    page = folder / f"{stem}.md"
    atomic_write_bytes(page, "\n".join(lines).encode())
    return page


def write_reports(analyses: list[RunAnalysis], out: Path) -> list[Path]:
    """One page per (backbone, suite, task) under ``out/<backbone>/`` and ``out/README.md``."""
    groups: dict[tuple[str, str, str], list[RunAnalysis]] = {}
    for a in analyses:
        c = a.run.config
        groups.setdefault((str(c["backbone"]), str(c["suite"]), str(c["task"])), []).append(a)
    pages = []
    out = Path(out)
    for key in sorted(groups):
        folder = out / slug(key[0])
        if out.resolve() not in folder.resolve().parents:
            raise ValueError(f"refusing to write outside {out}: {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        pages.append(task_page(key, groups[key], folder))
    index = ["# Adapter analyses", "", "One page per task: dW spectra per method, and Lily's experts.", ""]
    index += [f"- [{p.parent.name} / {p.stem}]({p.relative_to(out).as_posix()})" for p in pages]
    atomic_write_bytes(out / "README.md", ("\n".join(index) + "\n").encode())
    return pages
