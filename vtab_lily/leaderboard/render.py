"""Tables -> GitHub markdown, CSV and JSON text (no file I/O here)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from tabulate import tabulate

from .datamarks import DIFFERS_MARK
from .table import MEMORY_KINDS, Cell, Row, Table
from .text import csv_cell, md_escape, one_line, round_half_up, setup_text

MISSING = "-"
PARTIAL_MARK = "*"
SETTING_MARK = "‡"
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
BEST_SUFFIX = ", test-selected"


def format_cell(cell: Cell | None, usual_n: int, mark: str = "") -> str:
    """``mean`` or ``mean ± std``, with ``(n=k)`` when the seed count differs from the row's."""
    if cell is None:
        return MISSING
    text = round_half_up(cell.mean)
    if cell.std is not None:
        text += f" ± {round_half_up(cell.std)}"
    if cell.n and cell.n != usual_n:
        text += f" (n={cell.n})"
    return text + mark


def format_average(value: float | None, partial: bool) -> str:
    if value is None:
        return MISSING
    return round_half_up(value) + (PARTIAL_MARK if partial else "")


def format_params(millions: float | None) -> str:
    if millions is None:
        return MISSING
    return round_half_up(millions, 3) if millions < 1 else round_half_up(millions, 1)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 120:
        return f"{round_half_up(seconds)} s"
    if seconds < 2 * 3600:
        return f"{round_half_up(seconds / 60)} min"
    return f"{round_half_up(seconds / 3600)} h"


def format_seeds(row: Row) -> str:
    if row.kind != "run":
        return MISSING
    counts = sorted({c.n for c in row.cells.values()})
    if not counts:
        return MISSING
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def format_setup(row: Row) -> str:
    """``official``, the deviations, or ``?`` (not recorded), marked when they differ from the reference row's
    (``peft config`` and the recipe's deviations for an adapter without an official setup)."""
    text = setup_text(row.adapter, row.deviations)
    if row.kind == "run" and row.precision and not any(d.startswith("precision=") for d in row.deviations or ()):
        text += f" ({row.precision})" if row.precision != "fp32" else ""
    return text + (SETTING_MARK if row.setting_differs else "")


def format_reported(row: Row, groups: dict[str, list[str]]) -> str:
    """The printed average, which average it is, and what its cells give when they disagree."""
    if row.reported_average is None:
        return MISSING
    ref = row.reference
    tasks = len(ref.per_task) if ref.per_task else sum(len(members) for members in groups.values())
    kind = "groups" if ref.average_kind == "group_means" else f"{tasks} tasks"
    text = f"{row.reported_average_text} ({kind}"
    if row.average_mismatch:
        by_groups, by_tasks = ref.recomputed(groups)
        value = by_groups if ref.average_kind == "group_means" else by_tasks
        given_by = "cells" if ref.has_cells(groups) else "group means"
        text += f"; {given_by} give {round_half_up(value, len(row.reported_average_text.partition('.')[2]))}"
    return text + ")"


def _usual_n(row: Row) -> int:
    counts = [c.n for c in row.cells.values()]
    return max(set(counts), key=counts.count) if counts else 0


def _has_reference(table: Table) -> bool:
    return any(row.kind == "reported" for row in table.rows)


def _task_cell(row: Row, task: str, usual: int, both: bool) -> str:
    mark = DIFFERS_MARK if task in row.data.differs else ""
    final = format_cell(row.cells.get(task), usual, mark)
    if not both:
        return final if row.kind == "run" or row.cells else format_cell(row.best_cells.get(task), 0)
    return f"{final} / {format_cell(row.best_cells.get(task), usual, mark)}"


def markdown_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the markdown table (every text cell escaped)."""
    groups = list(table.groups)
    both = table.metric == "both"
    headers = ["Method", "Setup", "Data", "Seeds"] + [SHORT_NAMES.get(t, t) if table.suite == "vtab" else t for t in table.tasks]
    headers += groups + [AVG_GROUPS, AVG_TASKS]
    if both:
        headers += [AVG_GROUPS + BEST_SUFFIX, AVG_TASKS + BEST_SUFFIX]
    reported = _has_reference(table)
    if reported:
        headers.append("Reported avg")
    if table.has_references:
        headers.append("Ref")
    headers += ["Params (M, no head)", "Head (M)", "Train time (alone)", "Train mem (MB)"]
    body = []
    for row in table.rows:
        usual = _usual_n(row)
        line = [md_escape(row.method), md_escape(format_setup(row)), md_escape(row.data.label) if row.kind == "run" else MISSING,
                format_seeds(row)]
        line += [md_escape(_task_cell(row, t, usual, both)) for t in table.tasks]
        avg = row.avg if (row.cells or both or row.kind == "run") else (row.best_avg or row.avg)
        line += [format_average(avg.group_means.get(g), avg.group_partial.get(g, False)) for g in groups]
        line += [format_average(avg.by_groups, avg.by_groups_partial), format_average(avg.by_tasks, avg.by_tasks_partial)]
        if both:
            best = row.best_avg
            line += [format_average(best.by_groups, best.by_groups_partial) if best else MISSING,
                     format_average(best.by_tasks, best.by_tasks_partial) if best else MISSING]
        if reported:
            line.append(md_escape(format_reported(row, table.groups)))
        if table.has_references:
            ref = row.reference
            line.append(md_escape(ref.id) if ref else MISSING)
        memory = MISSING if row.peak_memory_mb is None else round_half_up(row.peak_memory_mb, 0)
        train_time = format_duration(row.train_time_s) + (f" (+{row.shared_runs} shared)" if row.shared_runs else "")
        line += [format_params(row.params_m), format_params(row.head_m), train_time, memory]
        body.append(line)
    return headers, body


def _reference_notes(table: Table) -> list[str]:
    if not table.has_references:
        if table.suite != "vtab":
            return [f"No published rows for the {md_escape(table.suite)} suite (published rows exist for VTAB-1K only)."]
        if table.protocol != "test":
            return ["Published rows are shown in the test-protocol table only."]
        return [f"No published rows for backbone {md_escape(table.backbone)}."]
    notes = []
    if any(row.kind == "run" and row.reference for row in table.rows):
        notes.append(f"Ref: the published row a run row is compared with (same adapter and variant). `{SETTING_MARK}` "
                     "in Setup: the run's settings differ from that row's (see its Setup and the notes below), so "
                     "the two numbers are not the same experiment.")
    if not _has_reference(table):
        return notes + ["Published rows left out (`--no-reference`)."]
    from .reference import load_reference

    citations = {ref.source: ref.citation for ref in load_reference()}
    notes.append(
        "Rows marked (reported) are published numbers, not run here. Reported avg: the printed average and which one "
        "it is (groups: mean of group means; 19 tasks: mean over tasks), with what the printed cells (or, for a row "
        "printed with group means only, those means) give when they disagree; the other averages are recomputed "
        "from the printed cells or group means. Most published numbers take the best "
        "evaluation on the test set (test-selected): compare with `--metric best` or `--metric both`; "
        "MambaPEFT's are its last epoch's (final), as its source says. "
        "Params: without the head, as printed."
    )
    for source in dict.fromkeys(row.source for row in table.rows if row.kind == "reported"):
        notes.append(f"Source `{source}`: {md_escape(citations[source])}")
    for row in table.rows:
        if row.kind == "reported":
            ref = row.reference
            text = f"{md_escape(row.method)} [{ref.id}]: {md_escape(ref.setting)}."
            if ref.note:
                text += f" {md_escape(ref.note)}"
            notes.append(text)
    return notes


def footnotes(table: Table) -> list[str]:
    """What the marks and columns mean, and where each reported row comes from."""
    n_tasks = len(table.tasks)
    notes = [
        f"Cells: mean ± sample std over seeds (± only with 2+ seeds); `(n=k)`: that task has k seeds. `{MISSING}`: no result."
        + (" Each cell: final-epoch / test-selected (best evaluation)." if table.metric == "both" else ""),
        f"`{PARTIAL_MARK}` partial: the row lacks some of the {n_tasks} tasks ({'/'.join(table.groups)}); that mean "
        "covers only the tasks present and is not comparable with complete rows.",
        f"{AVG_GROUPS}: mean of the {len(table.groups)} group means (VPT/NOAH/Lily papers). "
        f"{AVG_TASKS}: mean over the {n_tasks} tasks (official VTAB).",
        "Method: the run's label (adapter settings, then its differences from the official setup). Setup: those "
        "differences (result.json `deviations`); `official`: none; `?`: not recorded (older result); `peft config`: "
        "the adapter's settings are a PEFT config file (spelled out in the label), so it has no official setup and "
        "only the recipe is compared.",
        f"Data: image encoding (png lossless / jpeg / mixed) and a digest of the per-task data fingerprints "
        f"(`?` not recorded, `mixed` recorded for some tasks only); `{DIFFERS_MARK}`: built on data other than what "
        "most rows of this table use for that task, or, when no one copy is the most used, made on a copy other "
        "rows disagree with (cell marked too): such numbers are not comparable. Select with `--data-fingerprint`.",
        "Params (M, no head): trainable parameters without the classification head (as papers print them), mean over "
        "the row's runs; Head (M) beside it. Train time (alone): summed over the row's runs that had their GPU to "
        "themselves; `+N shared`: N runs made beside other trials on one GPU (`--trials-per-gpu`), left out. Train "
        "mem: the largest over the row's runs of the memory the method itself needed to train.",
        "Numbers are rounded half-up on their decimal value (71.25 -> 71.3); CSV/JSON keep them unrounded.",
    ]
    kinds = sorted({kind for row in table.rows if row.memory_kind for kind in row.memory_kind.split("/")})
    if kinds:
        notes[5] += " Measured as " + "; ".join(MEMORY_KINDS.get(k, md_escape(k)) for k in kinds) + "."
    paper_runs = sum(row.paper_runs for row in table.rows)
    if paper_runs and table.metric == "final":
        notes.append(f"{paper_runs} of these runs were made with `--paper` (they report the test-selected number): "
                     "this table shows final-epoch accuracy; `--metric both` shows both, `--metric best` the paper's.")
    return notes + _reference_notes(table)


def table_markdown(table: Table, heading_level: int = 2) -> str:
    headers, body = markdown_rows(table)
    parts = [
        f"{'#' * heading_level} {md_escape(table.title)}",
        "",
        tabulate(body, headers=headers, tablefmt="github", disable_numparse=True),
        "",
    ]
    parts += [f"- {one_line(note)}" for note in footnotes(table)]
    return "\n".join(parts) + "\n"


def csv_records(table: Table) -> list[dict[str, Any]]:
    """One flat record per row, unrounded: numbers as numbers, missing as None."""
    records = []
    for row in table.rows:
        ref = row.reference
        record: dict[str, Any] = {
            "kind": row.kind,
            "backbone": table.backbone,
            "suite": table.suite,
            "protocol": table.protocol,
            "metric": table.metric,
            "method": row.method,
            "method_hash": row.method_hash,
            "adapter": row.adapter,
            "deviations": None if row.deviations is None else ";".join(row.deviations),
            "precision": row.precision,
            "setting_differs_from_reference": row.setting_differs,
            "reference_id": ref.id if ref else None,
            "data_digest": row.data.digest if row.kind == "run" else None,
            "data_encoding": row.data.encoding if row.kind == "run" else None,
            "data_differs": ";".join(sorted(row.data.differs)),
            "seeds": " ".join(map(str, row.seeds)),
        }
        for task in table.tasks:
            cell = row.cells.get(task)
            record[task] = cell.mean if cell else None
            record[f"{task}_std"] = cell.std if cell else None
            record[f"{task}_n"] = cell.n if cell else 0
            if table.metric == "both":
                best = row.best_cells.get(task)
                record[f"{task}_test_selected"] = best.mean if best else None
            record[f"{task}_data"] = row.data.fingerprints.get(task)
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
        )
        if table.metric == "both":
            best = row.best_avg
            record.update(avg_group_means_test_selected=best.by_groups if best else None,
                          avg_tasks_test_selected=best.by_tasks if best else None)
        record.update(
            reported_average=row.reported_average,
            reported_average_kind=ref.average_kind if row.kind == "reported" else None,
            reported_average_mismatch=row.average_mismatch if row.kind == "reported" else None,
            params_no_head_m=row.params_m,
            params_head_m=row.head_m,
            train_time_s=row.train_time_s,
            shared_gpu_runs=row.shared_runs,
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
        writer.writerows({key: csv_cell(value) for key, value in record.items()} for record in records)
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
