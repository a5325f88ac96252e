"""Tables -> GitHub markdown, CSV and JSON text (no file I/O here)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from tabulate import tabulate

from .table import Cell, Row, Table

MISSING = "-"
PARTIAL_MARK = "*"
# Short column headers for the VTAB tasks (the paper's names); other suites use task names.
SHORT_NAMES = {
    "cifar": "Cifar100",
    "caltech101": "Caltech101",
    "dtd": "DTD",
    "oxford_flowers102": "Flowers102",
    "oxford_iiit_pet": "Pets",
    "svhn": "SVHN",
    "sun397": "Sun397",
    "patch_camelyon": "Camelyon",
    "eurosat": "EuroSAT",
    "resisc45": "Resisc45",
    "diabetic_retinopathy": "Retinopathy",
    "clevr_count": "Clevr-Count",
    "clevr_dist": "Clevr-Dist",
    "dmlab": "DMLab",
    "kitti": "KITTI-Dist",
    "dsprites_loc": "dSpr-Loc",
    "dsprites_ori": "dSpr-Ori",
    "smallnorb_azi": "sNORB-Azim",
    "smallnorb_ele": "sNORB-Ele",
}
AVG_GROUPS = "Avg (group means)"
AVG_TASKS = "Avg (all tasks)"


def format_cell(cell: Cell | None, usual_n: int) -> str:
    """``mean`` or ``mean ± std``, with ``(n=k)`` when the seed count differs from the row's."""
    if cell is None:
        return MISSING
    text = f"{cell.mean:.1f}"
    if cell.std is not None:
        text += f" ± {cell.std:.1f}"
    if cell.n and cell.n != usual_n:
        text += f" (n={cell.n})"
    return text


def format_average(value: float | None, partial: bool) -> str:
    if value is None:
        return MISSING
    return f"{value:.1f}{PARTIAL_MARK if partial else ''}"


def format_params(millions: float | None) -> str:
    if millions is None:
        return MISSING
    return f"{millions:.3f}" if millions < 1 else f"{millions:.1f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_seeds(row: Row) -> str:
    if row.kind != "run":
        return MISSING
    counts = sorted({c.n for c in row.cells.values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def _usual_n(row: Row) -> int:
    counts = [c.n for c in row.cells.values()]
    return max(set(counts), key=counts.count) if counts else 0


def _has_reference(table: Table) -> bool:
    return any(row.kind == "reported" for row in table.rows)


def markdown_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the markdown table."""
    groups = list(table.groups)
    headers = ["Method", "Seeds"] + [SHORT_NAMES.get(t, t) if table.suite == "vtab" else t for t in table.tasks]
    headers += groups + [AVG_GROUPS, AVG_TASKS]
    reported = _has_reference(table)
    if reported:
        headers.append("Reported avg")
    headers += ["Params (M)", "Train time", "Peak mem (MB)"]
    body = []
    for row in table.rows:
        usual = _usual_n(row)
        line = [row.method, format_seeds(row)]
        line += [format_cell(row.cells.get(t), usual) for t in table.tasks]
        line += [format_average(row.group_means.get(g), row.group_partial.get(g, False)) for g in groups]
        line += [format_average(row.avg_groups, row.avg_groups_partial), format_average(row.avg_tasks, row.avg_tasks_partial)]
        if reported:
            line.append(MISSING if row.reported_average is None else f"{row.reported_average:.1f}")
        memory = MISSING if row.peak_memory_mb is None else f"{row.peak_memory_mb:.0f}"
        line += [format_params(row.params_m), format_duration(row.train_time_s), memory]
        body.append(line)
    return headers, body


def footnotes(table: Table) -> list[str]:
    """What the marks and columns mean, and where each reported row comes from."""
    n_tasks = len(table.tasks)
    notes = [
        f"Cells: mean ± sample std over seeds (± only with 2+ seeds); `(n=k)`: that task has k seeds. `{MISSING}`: no result.",
        f"`{PARTIAL_MARK}` partial: the row lacks some of the {n_tasks} tasks ({'/'.join(table.groups)}); that mean "
        "covers only the tasks present and is not comparable with complete rows.",
        f"{AVG_GROUPS}: mean of the {len(table.groups)} group means (VPT/NOAH/Lily papers). "
        f"{AVG_TASKS}: mean over the {n_tasks} tasks (official VTAB).",
        "Params (M): trainable parameters (adapter + classification head), mean over the row's runs; "
        "reported rows: as printed in the source (usually without the head). Train time: summed over the "
        "row's runs. Peak mem: the largest peak over the runs.",
    ]
    kinds = sorted({row.memory_kind for row in table.rows if row.memory_kind})
    if kinds:
        notes[-1] += f" Memory measured as {', '.join(kinds)}."
    if _has_reference(table):
        from .reference import load_reference

        citations = {ref.source: ref.citation for ref in load_reference()}
        notes.append(
            "Rows marked (reported) are published numbers, not run here; their Reported avg is the printed one, "
            "the other averages are recomputed from the printed per-task numbers. Published VTAB numbers usually "
            "pick the best epoch on the test set."
        )
        for source in dict.fromkeys(row.source for row in table.rows if row.kind == "reported"):
            notes.append(f"Source `{source}`: {citations[source]}")
        for row in table.rows:
            if row.note:
                notes.append(f"{row.method}: {row.note}")
    return notes


def table_markdown(table: Table, heading_level: int = 2) -> str:
    headers, body = markdown_rows(table)
    parts = [
        f"{'#' * heading_level} {table.title}",
        "",
        tabulate(body, headers=headers, tablefmt="github", disable_numparse=True),
        "",
    ]
    parts += [f"- {note}" for note in footnotes(table)]
    return "\n".join(parts) + "\n"


def csv_records(table: Table) -> list[dict[str, Any]]:
    """One flat record per row, unrounded: numbers as numbers, missing as None."""
    records = []
    for row in table.rows:
        record: dict[str, Any] = {
            "kind": row.kind,
            "backbone": table.backbone,
            "suite": table.suite,
            "protocol": table.protocol,
            "metric": table.metric,
            "method": row.method,
            "method_hash": row.method_hash,
            "adapter": row.adapter,
            "seeds": " ".join(map(str, row.seeds)),
        }
        for task in table.tasks:
            cell = row.cells.get(task)
            record[task] = cell.mean if cell else None
            record[f"{task}_std"] = cell.std if cell else None
            record[f"{task}_n"] = cell.n if cell else 0
        for group in table.groups:
            record[group] = row.group_means.get(group)
            record[f"{group}_partial"] = row.group_partial.get(group)
        record.update(
            avg_group_means=row.avg_groups,
            avg_group_means_partial=row.avg_groups_partial,
            avg_tasks=row.avg_tasks,
            avg_tasks_partial=row.avg_tasks_partial,
            tasks_done=row.tasks_done,
            tasks_total=len(table.tasks),
            reported_average=row.reported_average,
            params_trainable_m=row.params_m,
            params_adapter_m=row.adapter_params_m,
            train_time_s=row.train_time_s,
            peak_memory_mb=row.peak_memory_mb,
            memory_kind=row.memory_kind,
            source=row.source or None,
        )
        records.append(record)
    return records


def tables_csv(tables: list[Table]) -> str:
    """CSV text; tables with different task columns are separated by a blank line and new header."""
    out = io.StringIO()
    for i, table in enumerate(tables):
        records = csv_records(table)
        if not records:
            continue
        if i:
            out.write("\n")
        writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    return out.getvalue()


def tables_json(tables: list[Table]) -> str:
    payload = [
        {
            "backbone": t.backbone,
            "suite": t.suite,
            "protocol": t.protocol,
            "metric": t.metric,
            "title": t.title,
            "groups": t.groups,
            "rows": csv_records(t),
        }
        for t in tables
    ]
    return json.dumps(payload, indent=2) + "\n"


def task_view(results: list[dict], task: str, failed: list[Any] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Every run of one task: config, seed, final/best accuracy, params, time, run dir."""
    headers = ["backbone", "suite", "protocol", "adapter", "method", "seed", "final", "best (epoch)", "params (M)", "train time", "status", "run dir"]
    body = []
    for r in sorted(results, key=lambda r: (r["backbone"], r["protocol"], r["method"], r["seed"])):
        acc = r["accuracy"]
        best = MISSING if acc.get("best") is None else f"{acc['best']:.2f} ({acc.get('best_epoch', '?')})"
        body.append(
            [r["backbone"], r["suite"], r["protocol"], r["adapter"], r["method"], r["seed"], f"{acc['final']:.2f}", best,
             format_params(r["params"]["total"] / 1e6), format_duration((r.get("time") or {}).get("train_s")), "complete", r["run_dir"]]
        )
    for status in failed or []:
        config = status.config or {}
        body.append(
            [config.get("backbone", MISSING), config.get("suite", MISSING), config.get("protocol", MISSING),
             config.get("adapter", MISSING), MISSING, config.get("seed", MISSING), MISSING, MISSING, MISSING, MISSING,
             f"{status.state}: {status.detail}", str(status.run_dir)]
        )
    return headers, body
