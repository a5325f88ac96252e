"""Leaderboards: every complete result.json under a runs directory -> markdown, CSV and PNG.

``python -m vtab_lily.leaderboard --runs runs --out leaderboards`` writes, per backbone,
``<backbone>.md`` (one section per suite/protocol table), a CSV and an accuracy-vs-params
PNG per table, heat maps of Lily's router weights, and ``index.md``. Reported rows from
publications (``reference.json``) are attached to the VTAB test-protocol tables. ``--metric
both`` puts the test-selected number beside the final-epoch one; ``--data-fingerprint``
keeps the numbers made on given data. Every file name built from result contents is made
safe and checked to stay inside the output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_bytes
from ..results import read_router_weights, scan_runs
from .counts import LEVEL, MARK_SEED, has_predictions
from .records import tables_csv
from .render import table_markdown
from .stats import compare as compare_rows  # not ``compare``: that name is the CLI's submodule
from .table import Table, build_tables, known_results
from .text import inside, md_escape, safe_component

__all__ = ["Report", "build_tables", "collect", "generate", "write_leaderboards"]


@dataclass
class Report:
    """What a leaderboard build read, skipped and wrote."""

    results: list[dict] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # run dirs per state


def _write_text(path: Path, text: str, files: list[Path]) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
    files.append(path)


def collect(runs_dir: str | os.PathLike, metric: str = "final", backbone: str | None = None,
            with_reference: bool = True, data_fingerprints: list[str] | None = None) -> Report:
    """Read the runs directory and build the tables (no files written)."""
    report = Report()
    for status in scan_runs(runs_dir):
        report.counts[status.state] = report.counts.get(status.state, 0) + 1
        if status.state == "complete":
            if backbone is None or status.result["backbone"] == backbone:
                report.results.append(status.result)
        else:
            report.warnings.append(f"skipped {status.run_dir} ({status.state}): {status.detail}")
    report.results = known_results(report.results, report.warnings)  # tasks/suites outside the registry: never shown
    if backbone is not None and not report.results and report.counts.get("complete"):
        raise UserError(f"--backbone {backbone}: no complete results for this backbone under {runs_dir}")
    report.tables = build_tables(report.results, metric, with_reference, report.warnings, data_fingerprints)
    return report


def _metric_suffix(metric: str) -> str:
    """``--metric best|both`` files get their own names instead of replacing the final-epoch ones."""
    return {"best": ".best", "both": ".both"}.get(metric, "")


# Names of the folder's own files and folders: a backbone named like one of them gets a prefix.
RESERVED_STEMS = ("index", "readme", "examples", "router", "analysis", "bench")


def backbone_stems(backbones: list[str]) -> dict[str, str]:
    """A file stem per backbone, made safe (the name comes from result files), never one of the
    folder's own files (``index.md``, ``README.md``, ``bench-*.md``...) and never shared by two
    backbones whose names only differ in characters the safe form drops."""
    stems: dict[str, str] = {}
    for backbone in backbones:
        stem = safe_component(backbone)
        if stem.lower().startswith(RESERVED_STEMS):
            stem = safe_component("backbone-" + stem)
        base, k = stem, 2
        while stem.lower() in {s.lower() for s in stems.values()}:
            stem, k = f"{base}-{k}", k + 1
        stems[backbone] = stem
    return stems


def _file_stem(table: Table, backbone_stem: str) -> str:
    """The table's file stem: its backbone's, its qualifier and the metric's suffix; made safe
    (suite and protocol come from result files)."""
    rest = table.qualifier + _metric_suffix(table.metric)  # "" or ".<suite>-<protocol>[.best]"
    return f"{backbone_stem}.{safe_component(rest[1:])}" if rest else backbone_stem


def _router_section(results: list[dict], backbone: str, out: Path, files: list[Path], warnings: list[str]) -> list[str]:
    """Heat maps of the recorded router weights of this backbone's Lily runs; markdown lines."""
    from .plots import plot_router_heatmap

    lines = []
    for r in sorted(results, key=lambda r: (r["task"], r["method"], r["seed"])):
        if r["backbone"] != backbone or r["adapter"] != "lily":
            continue
        try:
            weights = read_router_weights(r["run_dir"])
        except UserError as err:
            warnings.append(f"router heat map skipped: {err}")
            continue
        if weights is None:
            continue
        path = inside(out, "router", backbone, r["task"], r["config_hash"], suffix=".png")
        relative = path.relative_to(out).as_posix()
        title = f"{backbone} / {r['task']} / {r['method']} / seed {r['seed']}: mean router weights"
        plot_router_heatmap(weights, title, path)
        files.append(path)
        lines.append(f"- {md_escape(r['task'])}, {md_escape(r['method'])}, seed {r['seed']} ({md_escape(r['protocol'])}): [{relative}]({relative})")
    return lines


def write_leaderboards(report: Report, out_dir: str | os.PathLike, plots: bool = True) -> list[Path]:
    """Write the report's tables under ``out_dir``; returns the files written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    files: list[Path] = []
    by_backbone: dict[str, list[Table]] = {}
    for table in report.tables:
        by_backbone.setdefault(table.backbone, []).append(table)
    index = ["# Leaderboards", "", "Generated by `python -m vtab_lily.leaderboard`; see README.md for how to read them. "
             "One section (and one file) per backbone: numbers made on different backbones are never ranked together.", ""]
    stems = backbone_stems(list(by_backbone))
    for backbone, tables in by_backbone.items():
        stem = stems[backbone] + _metric_suffix(tables[0].metric)
        about = backbone_description(backbone)
        parts = [f"# Leaderboard: {md_escape(backbone)}", "", about, ""]
        for table in tables:
            parts.append(table_markdown(table))
            table_stem = _file_stem(table, stems[backbone])
            _write_text(inside(out, table_stem, suffix=".csv"), tables_csv([table]), files)
            parts.append(f"CSV: [{table_stem}.csv]({table_stem}.csv)")
            if plots:
                from .plots import plot_accuracy_vs_params

                png = inside(out, table_stem, suffix=".png")
                plot_accuracy_vs_params(table, png)
                files.append(png)
                parts.append(f"\n![average accuracy vs trainable parameters]({png.name})")
                parts += _forest_section(table, out, table_stem, files)
            parts.append("")
        router_lines = _router_section(report.results, backbone, out, files, report.warnings) if plots else []
        if router_lines:
            parts += ["## Lily router weights (mean expert weight per adapted site)", ""] + router_lines + [""]
        parts += _analysis_links(out, backbone)
        _write_text(inside(out, stem, suffix=".md"), "\n".join(parts), files)
        runs = sum(1 for r in report.results if r["backbone"] == backbone)
        published = sum(1 for t in tables for row in t.rows if row.kind == "reported")
        index += [f"## {md_escape(backbone)}", "", about, "",
                  f"- [{stem}.md]({stem}.md): {runs} run{'s' * (runs != 1)}; {published} published reference "
                  f"row{'s' * (published != 1)}; tables: "
                  + ", ".join(f"{md_escape(t.suite)} suite, {md_escape(t.protocol)} protocol" for t in tables), ""]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts.items()))
    index += [f"Run directories read: {counts or 'none'}."]
    if report.warnings:
        index += ["", "## Skipped or questionable runs", ""] + [f"- {md_escape(w)}" for w in report.warnings]
    suffix = _metric_suffix(report.tables[0].metric) if report.tables else ""
    _write_text(inside(out, f"index{suffix}", suffix=".md"), "\n".join(index) + "\n", files)
    report.files = files
    return files


def backbone_description(name: str) -> str:
    """One line saying what the backbone is, from the backbone registry (its description, family,
    input size), or that this version does not know it (a result from another version)."""
    from ..backbones import BACKBONES  # here, not at the top: only the written files need it, and it loads torch

    spec = BACKBONES.get(name)
    if spec is None:
        return f"Backbone {md_escape(name)}: not in this version's backbone registry."
    return f"{md_escape(spec.description)} (family {md_escape(spec.family)}, {spec.img_size} px input)."


MAX_FOREST_PLOTS = 5  # the rows nearest the baseline; `compare A B` draws any other pair


def _forest_section(table: Table, out: Path, stem: str, files: list[Path]) -> list[str]:
    """Forest plots (per-task differences with intervals) of the rows that kept predictions on
    every task against a baseline: the best row when it kept them, else the highest such row.
    Nothing when fewer than two rows can be paired."""
    from .forest import forest_plot

    paired = [row for row in table.rows if row.kind == "run" and set(row.cells) == set(table.tasks)
              and all(has_predictions(c) for c in row.cells.values())]
    if len(paired) < 2:
        return []
    baseline = next((row for row in paired if row.mark is not None and row.mark.best), paired[0])
    group_of = {t: g for g, members in table.groups.items() for t in members}
    lines = ["", f"Forest plots: each row minus the baseline {md_escape(baseline.method)}, per task and for both "
             "averages, on the same test images (95% intervals; Holm-adjusted verdicts over the tasks). Rows that "
             f"kept predictions on every task, the {MAX_FOREST_PLOTS} nearest the baseline at most; "
             "`python -m vtab_lily.leaderboard compare A B` compares any two.", ""]
    others = [row for row in paired if row is not baseline][:MAX_FOREST_PLOTS]
    for k, row in enumerate(others, 1):
        comparison = compare_rows({t: c.runs for t, c in row.cells.items()}, {t: c.runs for t, c in baseline.cells.items()},
                             group_of, LEVEL, MARK_SEED, row.method, baseline.method)
        path = inside(out, stem + f".forest-{k}", suffix=".png")
        forest_plot(comparison, path)
        files.append(path)
        lines.append(f"- {md_escape(row.method)} minus {md_escape(baseline.method)}: ![forest plot {k}]({path.name})")
    return lines


def _analysis_links(out: Path, backbone: str) -> list[str]:
    """Links to ``python -m vtab_lily.analyze``'s pages for this backbone, when they exist under ``out/analysis``."""
    folder = out / "analysis" / safe_component(backbone)
    pages = sorted(folder.glob("*.md")) if folder.is_dir() else []
    if not pages:
        return []
    links = [f"- [{md_escape(p.stem)}](analysis/{folder.name}/{p.name})" for p in pages]
    return ["## Adapter analyses (dW spectra and ranks, Lily's experts)", ""] + links + [""]


def generate(runs_dir: str | os.PathLike, out_dir: str | os.PathLike, metric: str = "final", plots: bool = True,
             data_fingerprints: list[str] | None = None) -> Report:
    """Read ``runs_dir`` and write every leaderboard file under ``out_dir``."""
    report = collect(runs_dir, metric, data_fingerprints=data_fingerprints)
    if report.results:
        write_leaderboards(report, out_dir, plots)
    return report
