"""Forest plot of a comparison: per task A - B (points) with its interval against the baseline B,
a zero line, and both averages at the bottom. Headless (Agg), written atomically."""

from __future__ import annotations

import os

from .plots import _save, plain, plt
from .stats import Comparison, unpaired_difference

MAX_TITLE_CHARS = 100


def _short(text: str, limit: int = MAX_TITLE_CHARS) -> str:
    """A label from result files, shown literally and cut so that it cannot widen the figure without bound."""
    text = plain(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


COLOURS = {"better": "tab:green", "worse": "tab:red", "indistinguishable": "0.25", "not paired": "0.6"}


def forest_plot(comparison: Comparison, path: str | os.PathLike) -> int:
    """Draw ``comparison`` to the PNG ``path``; returns the number of rows drawn.

    Paired tasks: filled markers coloured by verdict, with the paired interval. Tasks that could
    not be paired: hollow grey markers with the wider unpaired interval, marked in the label."""
    rows = []  # (label, diff, lo, hi, colour, hollow)
    for r in comparison.tasks:
        if r.paired is not None:
            rows.append((r.task, r.paired.diff, r.paired.lo, r.paired.hi, COLOURS.get(r.verdict, "0.25"), False))
        else:
            diff, lo, hi, _, _ = unpaired_difference(r.a, r.b, comparison.level)
            rows.append((f"{r.task} (not paired)", diff, lo, hi, COLOURS["not paired"], True))
    averages = [("Avg (group means)", comparison.avg_groups), ("Avg (all tasks)", comparison.avg_tasks)]
    averages = [(name, d) for name, d in averages if d is not None]
    height = 1.2 + 0.32 * (len(rows) + len(averages) + 1)
    fig, ax = plt.subplots(figsize=(8, height))
    y = len(rows) + len(averages)
    for label, diff, lo, hi, colour, hollow in rows:
        ax.errorbar(diff, y, xerr=[[diff - lo], [hi - diff]], fmt="o", color=colour, capsize=3,
                    markerfacecolor="white" if hollow else colour)
        y -= 1
    labels = [_short(row[0], 40) for row in rows]
    if averages:
        ax.axhline(y + 0.5, color="0.8", linewidth=0.8)
    for name, d in averages:
        ax.errorbar(d.diff, y, xerr=[[d.diff - d.lo], [d.hi - d.diff]], fmt="D", color="black", capsize=4, markersize=7)
        labels.append(name + (f" ({d.unpaired} unpaired)" if d.unpaired else ""))
        y -= 1
    ax.set_yticks(range(len(labels), 0, -1), labels, fontsize=8)
    ax.axvline(0, color="0.3", linestyle="--", linewidth=1)
    ax.set_ylim(0.4, len(labels) + 0.6)
    ax.set_xlabel(f"A - B, accuracy points ({100 * comparison.level:g}% interval)")
    ax.set_title(f"A: {_short(comparison.a_name)}\nvs baseline B: {_short(comparison.b_name)}", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    if not labels:
        ax.text(0.5, 0.5, "no task that both methods ran", transform=ax.transAxes, ha="center")
    ax.annotate("green: better, red: worse, dark grey: indistinguishable (Holm-adjusted, over the paired tasks);\n"
                "hollow grey: not paired (no predictions, or another test list), with the wider unpaired interval",
                xy=(0, 0), xycoords="axes fraction", xytext=(0, -42), textcoords="offset points", fontsize=6, va="top")
    _save(fig, path)
    return len(labels)
