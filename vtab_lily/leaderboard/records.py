"""Tables -> flat records: CSV and JSON text, every column unrounded (no file I/O here).

The markdown keeps the essentials; these keep everything: per task the mean, the 95% interval
(``_lo``/``_hi``), the seeds' sample std, how many seeds and test examples, what the interval
covers and whether every seed kept its predictions; per row both averages with intervals, the
best-row mark, the seed ids and the counts.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .counts import LEVEL, has_predictions
from .stats import Estimate
from .table import Averages, Cell, Row, Table
from .text import csv_cell


def _interval(record: dict[str, Any], prefix: str, estimate: Estimate | None) -> None:
    record[f"{prefix}_lo"] = estimate.lo if estimate else None
    record[f"{prefix}_hi"] = estimate.hi if estimate else None


def _task_columns(record: dict[str, Any], task: str, cell: Cell | None, suffix: str = "") -> None:
    name = task + suffix
    record[name] = cell.mean if cell else None
    _interval(record, name, cell.interval if cell else None)
    if suffix:  # the test-selected side of --metric both: its seeds and examples are the final's
        return
    record[f"{task}_seed_std"] = cell.std if cell else None
    record[f"{task}_n_seeds"] = cell.n if cell else 0
    record[f"{task}_n_examples"] = cell.interval.n_examples if cell and cell.interval else None
    record[f"{task}_interval"] = cell.interval.kind if cell and cell.interval else None
    record[f"{task}_predictions"] = has_predictions(cell) if cell and cell.runs else None


def _average_columns(record: dict[str, Any], avg: Averages | None, suffix: str = "") -> None:
    record[f"avg_group_means{suffix}"] = avg.by_groups if avg else None
    _interval(record, f"avg_group_means{suffix}", avg.by_groups_interval if avg else None)
    record[f"avg_tasks{suffix}"] = avg.by_tasks if avg else None
    _interval(record, f"avg_tasks{suffix}", avg.by_tasks_interval if avg else None)


def _mark_columns(record: dict[str, Any], row: Row) -> None:
    """The best-row mark: ``best``, ``indistinguishable`` or ``below``; None when not tested."""
    mark = row.mark
    if mark is None:
        record.update(vs_best=None, vs_best_paired=None, vs_best_lead_lo=None, vs_best_lead_hi=None)
        return
    record.update(vs_best="best" if mark.best else "indistinguishable" if mark.indistinguishable else "below",
                  vs_best_paired=mark.paired, vs_best_lead_lo=None if mark.best else mark.lo,
                  vs_best_lead_hi=None if mark.best else mark.hi)


def csv_records(table: Table) -> list[dict[str, Any]]:
    """One flat record per row, unrounded: numbers as numbers, missing as None."""
    records = []
    both = table.metric == "both"
    for row in table.rows:
        ref = row.reference
        run = row.kind == "run"
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
            "data_digest": row.data.digest if run else None,
            "data_encoding": row.data.encoding if run else None,
            "data_differs": ";".join(sorted(row.data.differs)),
            "n_seeds": len(row.seeds) if run else None,
            "seed_ids": " ".join(map(str, row.seeds)),
            "interval_level": LEVEL if run else None,
            "predictions_tasks": sum(has_predictions(c) for c in row.cells.values()) if run else None,
        }
        for task in table.tasks:
            _task_columns(record, task, row.cells.get(task))
            if both:
                _task_columns(record, task, row.best_cells.get(task), "_test_selected")
            record[f"{task}_data"] = row.data.fingerprints.get(task)
        for group in table.groups:
            record[group] = row.group_means.get(group)
            record[f"{group}_partial"] = row.group_partial.get(group)
            _interval(record, group, row.avg.group_intervals.get(group))
        _average_columns(record, row.avg)
        record.update(avg_group_means_partial=row.avg_groups_partial, avg_tasks_partial=row.avg_tasks_partial,
                      avg_interval=row.avg.by_groups_interval.kind if row.avg.by_groups_interval else None,
                      tasks_done=row.tasks_done, tasks_total=len(table.tasks))
        if both:
            _average_columns(record, row.best_avg, "_test_selected")
        _mark_columns(record, row)
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
