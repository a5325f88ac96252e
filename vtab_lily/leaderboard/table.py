"""Results -> leaderboard tables: one per (backbone, suite, protocol), one row per method.

A method is one ``method_hash`` (the config without task, seed and paths). Its seeds on a
task are aggregated as mean and sample std; the group means and the two averages (mean of
the group means, and mean over all tasks) are computed from the per-task means and are
marked partial whenever a task is missing, never silently computed over fewer tasks.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .. import tasks as task_registry
from ..errors import UserError, unknown_name
from ..results import METRICS, accuracy, group_results
from ..tasks import GROUPS, PROTOCOLS
from .reference import ReferenceRow, reference_rows

OTHER_GROUP = "Other"


@dataclass
class Cell:
    """One task's accuracy in a row: mean over ``n`` seeds (n=0 for reported numbers)."""

    mean: float
    std: float | None = None  # sample std over seeds; None for one seed or a reported number
    n: int = 0


@dataclass
class Row:
    kind: str  # "run" or "reported"
    method: str
    adapter: str
    method_hash: str | None = None
    cells: dict[str, Cell] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    params_m: float | None = None  # trainable (adapter + head), mean over runs; reported: as printed
    adapter_params_m: float | None = None
    train_time_s: float | None = None  # summed over the row's runs
    peak_memory_mb: float | None = None  # max over the row's runs
    memory_kind: str | None = None
    group_means: dict[str, float | None] = field(default_factory=dict)
    group_partial: dict[str, bool] = field(default_factory=dict)
    avg_groups: float | None = None  # mean of the group means
    avg_groups_partial: bool = False
    avg_tasks: float | None = None  # mean over all tasks
    avg_tasks_partial: bool = False
    tasks_done: int = 0
    reported_average: float | None = None
    source: str = ""
    note: str = ""
    run_dirs: list[str] = field(default_factory=list)

    @property
    def plot_average(self) -> float | None:
        """Mean of group means: computed when there are per-task numbers, else the printed one."""
        return self.avg_groups if self.avg_groups is not None else self.reported_average


@dataclass
class Table:
    backbone: str
    suite: str
    protocol: str
    metric: str
    groups: dict[str, list[str]]  # group -> tasks, in registry order
    rows: list[Row] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return [t for members in self.groups.values() for t in members]

    @property
    def slug(self) -> str:
        """File stem: the backbone for the main VTAB test-protocol table, qualified otherwise."""
        if (self.suite, self.protocol) == ("vtab", "test"):
            return self.backbone
        return f"{self.backbone}.{self.suite}-{self.protocol}"

    @property
    def metric_label(self) -> str:
        split = PROTOCOLS.get(self.protocol, ("?", "the evaluation split"))[1]
        if self.metric == "best":
            return f"best-epoch accuracy, epoch selected on {split} itself (optimistic)"
        return f"final-epoch accuracy on {split}"

    @property
    def title(self) -> str:
        train, evaluate = PROTOCOLS.get(self.protocol, ("?", "?"))
        return (
            f"{self.backbone}, suite {self.suite}, protocol {self.protocol} "
            f"(train on {train}, evaluate on {evaluate}): {self.metric_label} (%)"
        )


def suite_groups(suite: str, seen_tasks: list[str], warnings: list[str]) -> dict[str, list[str]]:
    """Group -> tasks for a suite from the registry; tasks it does not know go to 'Other'."""
    try:
        registry = task_registry.suite(suite)
    except (UserError, ImportError) as err:
        warnings.append(f"suite {suite!r} is not registered ({err}); its tasks are shown in one group")
        registry = {}
    groups: dict[str, list[str]] = {}
    for name, task in registry.items():
        groups.setdefault(task.group, []).append(name)
    ordered = {g: groups.pop(g) for g in GROUPS if g in groups}
    ordered.update(groups)  # a suite's own groups, in registry order
    unknown = [t for t in seen_tasks if t not in registry]
    if unknown:
        if registry:
            warnings.append(f"suite {suite!r} has no task(s) {', '.join(unknown)}; shown under {OTHER_GROUP!r}")
        ordered.setdefault(OTHER_GROUP, []).extend(unknown)
    return ordered


def summarise(row: Row, groups: dict[str, list[str]]) -> Row:
    """Fill the row's group means and both averages from its cells, marking partial ones."""
    all_tasks = [t for members in groups.values() for t in members]
    done = [t for t in all_tasks if t in row.cells]
    row.tasks_done = len(done)
    for group, members in groups.items():
        values = [row.cells[t].mean for t in members if t in row.cells]
        row.group_means[group] = statistics.fmean(values) if values else None
        row.group_partial[group] = len(values) < len(members)
    present = [v for v in row.group_means.values() if v is not None]
    row.avg_groups = statistics.fmean(present) if present else None
    row.avg_groups_partial = any(row.group_partial.values())
    row.avg_tasks = statistics.fmean(row.cells[t].mean for t in done) if done else None
    row.avg_tasks_partial = len(done) < len(all_tasks)
    return row


def _method_row(results: list[dict], metric: str, groups: dict[str, list[str]], warnings: list[str]) -> Row:
    """Aggregate one method's results (all tasks, all seeds) into a row."""
    first = results[0]
    row = Row(kind="run", method=first["method"], adapter=first["adapter"], method_hash=first["method_hash"])
    per_task: dict[str, dict[int, dict]] = {}
    for result in sorted(results, key=lambda r: str(r.get("finished_at") or "")):
        seeds = per_task.setdefault(result["task"], {})
        if result["seed"] in seeds:  # the same run stored twice: keep the most recent
            warnings.append(
                f"{row.method} {result['task']} seed {result['seed']}: several results "
                f"({seeds[result['seed']]['run_dir']}, {result['run_dir']}); using the latest"
            )
        seeds[result["seed"]] = result
    used = []
    for task, by_seed in per_task.items():
        values = []
        for result in by_seed.values():
            value = accuracy(result, metric)
            if value is None:
                warnings.append(f"{result['run_dir']}: no {metric!r} accuracy recorded; not counted")
                continue
            values.append(value)
            used.append(result)
        if values:
            std = statistics.stdev(values) if len(values) > 1 else None
            row.cells[task] = Cell(statistics.fmean(values), std, len(values))
    if used:
        row.seeds = sorted({r["seed"] for r in used})
        row.params_m = statistics.fmean(r["params"]["total"] for r in used) / 1e6
        adapter = [r["params"]["adapter"] for r in used if isinstance(r["params"].get("adapter"), int)]
        row.adapter_params_m = statistics.fmean(adapter) / 1e6 if adapter else None
        times = [(r.get("time") or {}).get("train_s") for r in used]
        row.train_time_s = sum(t for t in times if t is not None) if any(t is not None for t in times) else None
        memories = [(r.get("memory") or {}) for r in used]
        peaks = [m["peak_mb"] for m in memories if m.get("peak_mb") is not None]
        row.peak_memory_mb = max(peaks) if peaks else None
        kinds = sorted({m.get("kind") for m in memories if m.get("kind")})
        row.memory_kind = "/".join(kinds) or None
        row.run_dirs = sorted(r["run_dir"] for r in used)
    return summarise(row, groups)


def reference_row(ref: ReferenceRow, groups: dict[str, list[str]]) -> Row:
    """A published row, labelled as reported; averages recomputed when per-task numbers exist."""
    row = Row(
        kind="reported",
        method=f"{ref.method} (reported)",
        adapter=ref.adapter,
        params_m=ref.params_m,
        reported_average=ref.average,
        source=ref.source,
        note=ref.note,
    )
    if ref.per_task:
        row.cells = {t: Cell(v) for t, v in ref.per_task.items()}
        return summarise(row, groups)
    row.group_means = {g: None for g in groups}
    return row


def _sort_key(row: Row) -> tuple:
    complete = not row.avg_groups_partial
    return (not complete, -row.tasks_done, -(row.avg_groups if row.avg_groups is not None else -1.0), row.method)


def _disambiguate(rows: list[Row]) -> None:
    """Two methods with the same label (different hyperparameters) get their hash appended."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.method] = counts.get(row.method, 0) + 1
    for row in rows:
        if counts[row.method] > 1:
            row.method = f"{row.method} [{row.method_hash}]"


def build_tables(
    results: list[dict], metric: str = "final", with_reference: bool = True, warnings: list[str] | None = None
) -> list[Table]:
    """One table per (backbone, suite, protocol) of ``results``, sorted by backbone.

    Rows: methods sorted complete-first by mean of group means, then the reference rows
    (VTAB test-protocol tables only).
    """
    warnings = warnings if warnings is not None else []
    if metric not in METRICS:
        raise unknown_name("metric", metric, METRICS)
    tables = []
    for (backbone, suite, protocol), members in sorted(group_results(results, "backbone", "suite", "protocol").items()):
        seen_tasks = list(dict.fromkeys(r["task"] for r in members))
        groups = suite_groups(suite, seen_tasks, warnings)
        table = Table(backbone, suite, protocol, metric, groups)
        methods = group_results(members, "method_hash")
        rows = [_method_row(rs, metric, groups, warnings) for rs in methods.values()]
        rows = [r for r in rows if r.cells]
        _disambiguate(rows)
        table.rows = sorted(rows, key=_sort_key)
        if with_reference and protocol == "test":
            table.rows += [reference_row(ref, groups) for ref in reference_rows(backbone, suite)]
        tables.append(table)
    return tables
