"""PNG figures: average accuracy vs trainable parameters, and Lily router heat maps.

Matplotlib runs headless (Agg); figures are rendered to memory and written atomically.
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from ..fsutil import atomic_write_bytes  # noqa: E402
from .table import Table  # noqa: E402


def plain(text: str) -> str:
    """Text from result files shown literally: ``$`` would start matplotlib mathtext (and can fail to parse)."""
    return " ".join(str(text).split()).replace("$", r"\$")


def _save(fig, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def adapter_colours(adapters: list[str]) -> dict[str, tuple]:
    """One colour per adapter: tab10 while it suffices, else tab20, else tab20 then tab20b and tab20c
    (more than twenty adapters exist, and a repeated colour would make the legend name two methods
    for one point)."""
    if len(adapters) <= 20:
        n = 10 if len(adapters) <= 10 else 20
        return {a: plt.get_cmap(f"tab{n}")(i % n) for i, a in enumerate(adapters)}
    palette = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    return {a: palette[i % len(palette)] for i, a in enumerate(adapters)}


def plot_accuracy_vs_params(table: Table, path: str | os.PathLike) -> int:
    """Scatter of mean-of-group-means accuracy vs params (M, log x); returns the points drawn.

    Runs are circles coloured by adapter (hollow when the row is partial); reported rows are
    grey diamonds, or dotted horizontal lines when the source gives no (or zero) params.
    Rows without an average are left out and named in the caption.
    """
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 5.5))
    adapters = sorted({row.adapter for row in table.rows if row.kind == "run"})
    colours = adapter_colours(adapters)
    drawn, left_out, lines, labels = 0, [], [], []
    for row in table.rows:
        y = row.plot_average
        has_params = row.params_m is not None and row.params_m > 0
        if y is None or (row.kind == "run" and not has_params):
            left_out.append(row.method)
            continue
        if row.kind == "reported" and not has_params:
            lines.append((row, y))
            continue
        if row.kind == "run":
            colour = colours[row.adapter]
            face = "none" if row.avg_groups_partial else colour
            ax.scatter(row.params_m, y, s=60, marker="o", facecolors=face, edgecolors=[colour], linewidths=1.5, zorder=3)
            text = plain(row.method) + (f" (partial {row.tasks_done}/{len(table.tasks)})" if row.avg_groups_partial else "")
        else:
            ax.scatter(row.params_m, y, s=60, marker="D", color="0.55", zorder=2)
            text = plain(row.method)
        labels.append((text, row.params_m, y))
        drawn += 1
    ax.set_xscale("log")
    _pad_log_axis(ax, [x for _, x, _ in labels])
    for row, y in lines:
        ax.axhline(y, color="0.55", linestyle=":", linewidth=1, zorder=1)
        params = "0 params" if row.params_m == 0 else "params not given"
        ax.annotate(f"{plain(row.method)}, {params}", (0.01, y), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=7, color="0.35")
    _place_labels(ax, labels)  # last: needs the final data limits
    ax.set_xlabel("trainable parameters without the head (M, log scale)")
    ax.set_ylabel("average accuracy, mean of group means (%)")
    ax.set_title(plain(table.title), fontsize=9, wrap=True)
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[a], label=f"run: {plain(a)}") for a in adapters]
    if any(row.kind == "run" and row.avg_groups_partial for row in table.rows):
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.2", label="run, partial row"))
    if any(row.kind == "reported" for row in table.rows):
        handles.append(Line2D([], [], marker="D", linestyle="", color="0.55", label="reported (not run here)"))
    if lines:
        handles.append(Line2D([], [], linestyle=":", color="0.55", label="reported, no params"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")
    if not drawn and not lines:
        ax.text(0.5, 0.5, "no rows with params and an average", transform=ax.transAxes, ha="center")
    caption = "hollow: partial row (its average covers only the tasks present); runs: " + (
        "test-selected" if table.metric == "best" else "final-epoch") + (
        " accuracy; reported rows: as published (mostly test-selected; see each source)")
    if left_out:
        caption += "; not drawn (no average or no params): " + ", ".join(map(plain, left_out))
    fig.text(0.01, -0.02, caption, fontsize=7, wrap=True)
    _save(fig, path)
    return drawn + len(lines)


def _pad_log_axis(ax, xs: list[float]) -> None:
    """Room for the labels right of the points, and plain tick labels (0.05, not 5x10^-2)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if not xs:
        return
    low, high = min(xs), max(xs)
    ax.set_xlim(low / 1.6, high * 6)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    # on a short axis also label the 2x and 5x ticks of each decade
    two_five = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else "")
    ax.xaxis.set_minor_formatter(two_five if high / low < 30 else NullFormatter())


def _place_labels(ax, labels: list[tuple[str, float, float]]) -> None:
    """Annotate points; each label takes the first candidate offset whose box overlaps no
    label placed before and no other marker (else the least overlapping one)."""
    ax.autoscale_view()
    pixels_per_point = ax.figure.dpi / 72
    char_w, line_h = 4.2 * pixels_per_point, 8.5 * pixels_per_point  # fontsize 7, roughly
    candidates = [(5, 4), (5, -11), (5, 14), (5, -20), (5, 24)]
    anchors = [tuple(ax.transData.transform((x, y))) for _, x, y in labels]
    markers = [(mx - 6, my - 6, mx + 6, my + 6) for mx, my in anchors]
    placed: list[tuple[float, float, float, float]] = []

    def overlap(box: tuple[float, float, float, float], obstacles: list) -> float:
        total = 0.0
        for other in obstacles:
            w = min(box[2], other[2]) - max(box[0], other[0])
            h = min(box[3], other[3]) - max(box[1], other[1])
            total += max(w, 0) * max(h, 0)
        return total

    for i in sorted(range(len(labels)), key=lambda k: -labels[k][2]):
        text, x, y = labels[i]
        obstacles = placed + markers[:i] + markers[i + 1:]
        options = []
        for dx, dy in candidates:
            left, bottom = anchors[i][0] + dx * pixels_per_point, anchors[i][1] + dy * pixels_per_point
            box = (left, bottom, left + char_w * len(text), bottom + line_h)
            options.append((overlap(box, obstacles), (dx, dy), box))
        best = next((o for o in options if o[0] == 0), min(options, key=lambda o: o[0]))
        placed.append(best[2])
        moved = best[1] != candidates[0]  # a thin leader line says which point a moved label belongs to
        ax.annotate(text, (x, y), textcoords="offset points", xytext=best[1], fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6, "shrinkA": 0, "shrinkB": 4} if moved else None)


def plot_router_heatmap(weights: dict, title: str, path: str | os.PathLike) -> None:
    """Heat map of a Lily run's mean router weights: one row per adapted site, one column per expert.

    Sites with fewer experts than the widest (Vim Lily's dt_proj sites have one) leave the
    missing columns blank (grey, no number)."""
    sites, experts = weights["sites"], weights["experts"]
    matrix = np.full((len(sites), experts), np.nan)
    for i, row in enumerate(weights["weights"]):
        matrix[i, : len(row)] = row
    height = min(2 + 0.28 * len(sites), 30)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * experts), height))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(experts), [f"B{e}" for e in range(experts)])
    ax.set_yticks(range(len(sites)), [plain(s) for s in sites], fontsize=7 if len(sites) > 24 else 8)
    ax.set_xlabel("expert")
    ax.set_ylabel("adapted site (layer)")
    ax.set_title(plain(title), fontsize=9, wrap=True)
    finite = matrix[np.isfinite(matrix)]
    if 0 < matrix.size <= 400:  # print the weights when they stay readable
        threshold = finite.min() + 0.6 * (finite.max() - finite.min())
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="black" if value > threshold else "white")
    fig.colorbar(image, ax=ax, label="mean router weight")
    _save(fig, path)
