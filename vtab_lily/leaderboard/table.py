"""Results -> leaderboard tables: one per (backbone, suite, protocol), one row per method.

A method is one ``results.row_key`` (method hash, deviations, precision), split further when
one task was run on data with different fingerprints (``datamarks``): runs that differ in
any setting or in their data never share a row. Its seeds on a task are aggregated as mean
and sample std; the group means and the two averages (mean of the group means, and mean over
all tasks) are computed from the per-task means and are marked partial whenever a task is
missing, never silently computed over fewer tasks. Results of a task or suite outside the
registry are skipped with a warning naming the file, so they are never ranked.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .. import tasks as task_registry
from ..errors import UserError, unknown_name
from ..results import (METRICS, RESULT_FILE, accuracy, adapter_config_of, data_of, deviations_of, finished_utc,
                       group_results, params_without_head, precision_of, row_key)
from ..tasks import GROUPS, PROTOCOLS
from . import datamarks
from .counts import LEVEL, best_marks, task_runs
from .reference import ReferenceRow, matching_reference, reference_rows
from .stats import Estimate, Mark, TaskRuns, average_estimate
from .text import setup_text

TABLE_METRICS = METRICS + ("both",)  # both: final-epoch cells with the best (test-selected) beside them


@dataclass
class Cell:
    """One task's accuracy in a row: mean over ``n`` seeds (n=0 for reported numbers), with its
    runs' counts and 95% interval (None for reported numbers, which carry no counts)."""

    mean: float
    std: float | None = None  # sample std over seeds; None for one seed or a reported number
    n: int = 0
    runs: TaskRuns | None = field(default=None, repr=False)  # per seed: correct of n, predictions
    interval: Estimate | None = None  # over the test examples, and the seeds when several


@dataclass
class Averages:
    """Group means and both averages of a set of cells, with partial flags."""

    group_means: dict[str, float | None] = field(default_factory=dict)
    group_partial: dict[str, bool] = field(default_factory=dict)
    by_groups: float | None = None
    by_groups_partial: bool = False
    by_tasks: float | None = None
    by_tasks_partial: bool = False
    tasks_done: int = 0
    # 95% intervals, the tasks' uncertainty propagated (task set fixed); None when a cell has none
    group_intervals: dict[str, Estimate | None] = field(default_factory=dict)
    by_groups_interval: Estimate | None = None
    by_tasks_interval: Estimate | None = None


@dataclass
class Row:
    kind: str  # "run" or "reported"
    method: str  # the label, unescaped (render escapes it)
    adapter: str
    method_hash: str | None = None
    cells: dict[str, Cell] = field(default_factory=dict)
    best_cells: dict[str, Cell] = field(default_factory=dict)  # metric "both" only
    seeds: list[int] = field(default_factory=list)
    params_m: float | None = None  # WITHOUT the head (as papers print), mean over runs
    head_m: float | None = None  # the classification head, mean over runs
    train_time_s: float | None = None  # summed over the row's runs that had their device alone
    shared_runs: int = 0  # runs made beside others on one GPU (--trials-per-gpu): left out of train_time_s
    peak_memory_mb: float | None = None  # max over the row's runs of memory_mb(): training memory where measured
    memory_kind: str | None = None  # what peak_memory_mb measured (MEMORY_KINDS), "/"-joined when mixed
    avg: Averages = field(default_factory=Averages)
    best_avg: Averages | None = None  # metric "both" only
    deviations: tuple[str, ...] | None = None  # () official; None: not recorded (older results)
    precision: str | None = None
    data: datamarks.RowData = field(default_factory=datamarks.RowData)
    reference: ReferenceRow | None = None  # the published row this run row is compared with
    setting_differs: bool = False  # its settings differ from that reference row's
    reported_average: float | None = None
    reported_average_text: str = ""
    average_mismatch: bool = False  # reported: printed average disagrees with its cells
    ref_id: str = ""
    source: str = ""
    note: str = ""
    run_dirs: list[str] = field(default_factory=list)
    paper_runs: int = 0  # runs made with --paper (accuracy.reported == "test-selected")
    adapter_config: dict = field(default_factory=dict, repr=False)
    mark: Mark | None = None  # vs the best row's average (intervals.best_marks); None: not tested

    # The averages under the names the renderers, plots and older callers use.
    group_means = property(lambda self: self.avg.group_means)
    group_partial = property(lambda self: self.avg.group_partial)
    avg_groups = property(lambda self: self.avg.by_groups)
    avg_groups_partial = property(lambda self: self.avg.by_groups_partial)
    avg_tasks = property(lambda self: self.avg.by_tasks)
    avg_tasks_partial = property(lambda self: self.avg.by_tasks_partial)
    tasks_done = property(lambda self: self.avg.tasks_done)

    @property
    def plot_average(self) -> float | None:
        """Mean of group means: computed when there are per-task numbers, else the printed one."""
        if self.avg.by_groups is not None:
            return self.avg.by_groups
        return self.reported_average if self.kind == "reported" else None


@dataclass
class Table:
    backbone: str
    suite: str
    protocol: str
    metric: str
    groups: dict[str, list[str]]  # group -> tasks, in registry order
    rows: list[Row] = field(default_factory=list)
    has_references: bool = False  # the source lists published rows for this backbone

    @property
    def tasks(self) -> list[str]:
        return [t for members in self.groups.values() for t in members]

    @property
    def qualifier(self) -> str:
        """What a file name adds to the backbone's: nothing for the main VTAB test-protocol table."""
        return "" if (self.suite, self.protocol) == ("vtab", "test") else f".{self.suite}-{self.protocol}"

    @property
    def slug(self) -> str:
        """The table's name: the backbone, qualified by suite and protocol unless VTAB test."""
        return self.backbone + self.qualifier

    def metric_name(self, metric: str) -> str:
        split = PROTOCOLS.get(self.protocol, ("?", "the evaluation split"))[1]
        if metric == "best":
            if split == "test":
                return "test-selected accuracy (best evaluation on the test split, as papers report; optimistic)"
            return f"best-epoch accuracy, epoch selected on {split} itself (optimistic)"
        return f"final-epoch accuracy on {split}"

    @property
    def metric_label(self) -> str:
        if self.metric == "both":
            return f"{self.metric_name('final')} / {self.metric_name('best')}"
        return self.metric_name(self.metric)

    @property
    def title(self) -> str:
        train, evaluate = PROTOCOLS.get(self.protocol, ("?", "?"))
        return (f"{self.backbone}, suite {self.suite}, protocol {self.protocol} "
                f"(train on {train}, evaluate on {evaluate}): {self.metric_label} (%)")


def suite_groups(suite: str) -> dict[str, list[str]] | None:
    """Group -> tasks of a registered suite (registry order), or None when it is not registered."""
    try:
        registry = task_registry.suite(suite)
    except (UserError, ImportError):
        return None
    groups: dict[str, list[str]] = {}
    for name, task in registry.items():
        groups.setdefault(task.group, []).append(name)
    ordered = {g: groups.pop(g) for g in GROUPS if g in groups}
    ordered.update(groups)  # a suite's own groups, in registry order
    return ordered


def averages(cells: dict[str, Cell], groups: dict[str, list[str]]) -> Averages:
    """Group means and both averages of ``cells``, marking partial ones."""
    all_tasks = [t for members in groups.values() for t in members]
    done = [t for t in all_tasks if t in cells]
    out = Averages(tasks_done=len(done))
    for group, members in groups.items():
        values = [cells[t].mean for t in members if t in cells]
        out.group_means[group] = statistics.fmean(values) if values else None
        out.group_partial[group] = len(values) < len(members)
    present = [v for v in out.group_means.values() if v is not None]
    out.by_groups = statistics.fmean(present) if present else None
    out.by_groups_partial = any(out.group_partial.values())
    out.by_tasks = statistics.fmean(cells[t].mean for t in done) if done else None
    out.by_tasks_partial = len(done) < len(all_tasks)
    if done and all(cells[t].interval is not None for t in done):
        group_of = {t: g for g, members in groups.items() for t in members}
        out.by_groups_interval = average_estimate({t: cells[t].interval for t in done}, group_of, LEVEL)
        out.by_tasks_interval = average_estimate({t: cells[t].interval for t in done}, None, LEVEL)
        for group, members in groups.items():
            present = {t: cells[t].interval for t in members if t in cells}
            out.group_intervals[group] = average_estimate(present, None, LEVEL) if present else None
    return out


def summarise(row: Row, groups: dict[str, list[str]]) -> Row:
    row.avg = averages(row.cells, groups)
    if row.best_cells or row.best_avg is not None:
        row.best_avg = averages(row.best_cells, groups)
    return row


def _cells(by_task: dict[str, dict[int, dict]], metric: str, warnings: list[str]) -> tuple[dict[str, Cell], list[dict]]:
    cells, used = {}, []
    for task, by_seed in by_task.items():
        values, counted = [], []
        for result in by_seed.values():
            value = accuracy(result, metric)
            if value is None:
                warnings.append(f"{result['run_dir']}: no {metric!r} accuracy recorded; not counted")
                continue
            values.append(value)
            counted.append(result)
        used += counted
        if values:
            runs = task_runs(counted, metric, warnings)
            where = f"{counted[0]['method']} on {task} ({len(counted)} seeds, e.g. {counted[0].get('run_dir', '?')})"
            cells[task] = Cell(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
                               len(values), runs, _estimate(runs, where, warnings))
    return cells, used


def _estimate(runs: TaskRuns | None, where: str, warnings: list[str]) -> Estimate | None:
    if runs is None:
        return None
    try:
        return runs.estimate(LEVEL)
    except UserError as err:  # counts the statistics refuse (e.g. more seeds than they take)
        warnings.append(f"{where}: no interval, so its averages have none and the row is not tested ({err})")
        return None


def latest_per_seed(results: list[dict], warnings: list[str]) -> dict[str, dict[int, dict]]:
    """One method's results by task, then seed; the same run stored twice keeps its latest result
    (by UTC finish time, so runs from other time zones order right), with a warning naming both."""
    per_task: dict[str, dict[int, dict]] = {}
    for result in sorted(results, key=finished_utc):
        seeds = per_task.setdefault(result["task"], {})
        if result["seed"] in seeds:
            warnings.append(f"{result['method']} {result['task']} seed {result['seed']}: several results "
                            f"({seeds[result['seed']]['run_dir']}, {result['run_dir']}); using the latest")
        seeds[result["seed"]] = result
    return per_task


def _method_row(results: list[dict], metric: str, groups: dict[str, list[str]], warnings: list[str]) -> Row:
    """Aggregate one method's results (all tasks, all seeds, one data variant) into a row."""
    first = results[0]
    row = Row(kind="run", method=first["method"], adapter=first["adapter"], method_hash=first["method_hash"],
              deviations=deviations_of(first), precision=precision_of(first), adapter_config=adapter_config_of(first))
    per_task = latest_per_seed(results, warnings)
    row.cells, used = _cells(per_task, "final" if metric == "both" else metric, warnings)
    if metric == "both":
        row.best_cells, _ = _cells(per_task, "best", [])
        row.best_avg = Averages()
    if used:
        row.seeds = sorted({r["seed"] for r in used})
        no_head = [n for n in map(params_without_head, used) if n is not None]
        row.params_m = statistics.fmean(no_head) / 1e6 if no_head else None
        heads = [r["params"]["head"] for r in used if isinstance(r["params"].get("head"), int)]
        row.head_m = statistics.fmean(heads) / 1e6 if heads else None
        solo = [r for r in used if not shared_gpu(r)]
        row.shared_runs = len(used) - len(solo)
        times = [(r.get("time") or {}).get("train_s") for r in solo]
        row.train_time_s = sum(t for t in times if t is not None) if any(t is not None for t in times) else None
        memories = [memory_mb(r) for r in used]
        peaks = [mb for mb, _ in memories if mb is not None]
        row.peak_memory_mb = max(peaks) if peaks else None
        row.memory_kind = "/".join(sorted({kind for mb, kind in memories if mb is not None and kind})) or None
        row.run_dirs = sorted(r["run_dir"] for r in used)
        row.paper_runs = sum(1 for r in used if r["accuracy"].get("reported") == "test-selected")
        row.data = datamarks.row_data({r["task"]: data_of(r) for r in used})
    return summarise(row, groups)


# What a row's memory figure measured, by result.json ``memory`` (older results have no training figure).
MEMORY_KINDS = {"train": "training memory on the GPU (model, activations, optimizer; the data kept on the GPU "
                         "excluded)",
                "cuda_max_allocated": "GPU peak with the data kept on the GPU included (older results)",
                "cpu_peak_rss": "the process's peak resident memory on a CPU (data, libraries included)"}


def memory_mb(result: dict) -> tuple[float | None, str | None]:
    """(MB, kind) of a result's memory: the training-only peak where recorded, else the old peak."""
    memory = result.get("memory") or {}
    if memory.get("train_peak_mb") is not None:
        return memory["train_peak_mb"], "train"
    return memory.get("peak_mb"), memory.get("kind")


def shared_gpu(result: dict) -> bool:
    """The run shared its GPU with other trials (``time.trials_per_gpu`` > 1): its times are not solo times."""
    return ((result.get("time") or {}).get("trials_per_gpu") or 1) > 1


def reference_row(ref: ReferenceRow, groups: dict[str, list[str]], metric: str = "final") -> Row:
    """A published row, labelled as reported; averages recomputed from its per-task numbers, or
    from its printed group means when it has only those."""
    row = Row(kind="reported", method=f"{ref.method} (reported)", adapter=ref.adapter, params_m=ref.params_m,
              reported_average=ref.average, reported_average_text=ref.average_text, ref_id=ref.id,
              source=ref.source, note=ref.note, deviations=ref.deviations, reference=ref,
              average_mismatch=ref.average_mismatch(groups))
    if ref.per_task:
        cells = {t: Cell(v) for t, v in ref.per_task.items() if t in {t for m in groups.values() for t in m}}
        if metric == "both":  # published numbers are test-selected: they sit in the 'best' place
            row.best_cells, row.best_avg = cells, Averages()
        else:
            row.cells = cells
        return summarise(row, groups)
    row.avg.group_means = {g: None for g in groups}
    by_groups, by_tasks = ref.recomputed(groups)
    if by_groups is not None:  # printed group means, no cells
        printed = Averages(group_means={g: ref.group_means[g] for g in groups},
                           group_partial={g: False for g in groups}, by_groups=by_groups, by_tasks=by_tasks)
        if metric == "both":  # published numbers are test-selected: they sit in the 'best' place
            row.best_avg = printed
        else:
            row.avg = printed
    return row


def _sort_key(row: Row) -> tuple:
    complete = not row.avg_groups_partial
    return (not complete, -row.tasks_done, -(row.avg_groups if row.avg_groups is not None else -1.0), row.method)


def _disambiguate(rows: list[Row]) -> None:
    """Rows with the same label get a tag: the method hash, then (when even that is shared:
    older results, or another data copy) the precision, deviations and data variant."""
    def tags(row: Row) -> list[str]:
        out = [row.method_hash or ""]
        if row.precision:
            out.append(row.precision)
        out.append("setup ?" if row.deviations is None else setup_text(row.adapter, row.deviations, sep=","))
        if row.data.variant:
            out.append(f"data {row.data.variant + 1}")
        return out

    labels = [row.method for row in rows]
    for depth in range(1, 5):
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        if all(n == 1 for n in counts.values()):
            break
        labels = [f"{row.method} [{' '.join(tags(row)[:depth])}]" if counts[label] > 1 else label
                  for row, label in zip(rows, labels)]
    for row, label in zip(rows, labels):
        row.method = label


def known_results(results: list[dict], warnings: list[str]) -> list[dict]:
    """Drop results whose suite or task the registry does not know (never ranked), naming the file."""
    kept = []
    for result in results:
        groups = suite_groups(result["suite"])
        where = Path(result.get("run_dir", "?")) / RESULT_FILE
        if groups is None:
            warnings.append(f"{where}: suite {result['suite']!r} is not registered; not tabulated")
        elif result["task"] not in {t for members in groups.values() for t in members}:
            warnings.append(f"{where}: task {result['task']!r} is not in suite {result['suite']!r}; not tabulated (never ranked)")
        else:
            kept.append(result)
    return kept


def build_tables(results: list[dict], metric: str = "final", with_reference: bool = True,
                 warnings: list[str] | None = None, data_fingerprints: list[str] | None = None) -> list[Table]:
    """One table per (backbone, suite, protocol) of ``results``, sorted by backbone.

    Rows: methods sorted complete-first by mean of group means, then the reference rows
    (VTAB test-protocol tables only). ``data_fingerprints`` keeps only cells built on data
    with one of those fingerprints (hex prefixes) or rows whose data digest matches.
    """
    warnings = warnings if warnings is not None else []
    if metric not in TABLE_METRICS:
        raise unknown_name("metric", metric, TABLE_METRICS)
    tables = []
    for (backbone, suite, protocol), members in sorted(group_results(known_results(results, warnings), "backbone", "suite", "protocol").items()):
        groups = suite_groups(suite)
        table = Table(backbone, suite, protocol, metric, groups)
        rows = []
        for same_key in _by_row_key(members):
            for variant, variant_results in enumerate(datamarks.split_by_data(same_key)):
                row = _method_row(variant_results, metric, groups, warnings)
                row.data.variant = variant
                rows.append(row)
        if data_fingerprints:
            rows = [datamarks.select(row, data_fingerprints, lambda r: summarise(r, groups)) for row in rows]
        rows = [r for r in rows if r.cells or r.best_cells]
        datamarks.mark_against_majority(rows, data_fingerprints)
        _disambiguate(rows)
        refs = reference_rows(backbone, suite) if protocol == "test" else []
        table.has_references = bool(refs)
        for row in rows:
            row.reference = matching_reference(refs, row.adapter, row.adapter_config, row.params_m, row.deviations)
            row.setting_differs = row.reference is not None and (row.deviations is None or row.deviations != row.reference.deviations)
        table.rows = sorted(rows, key=_sort_key)
        for index, mark in best_marks(table.rows, groups, warnings).items():
            table.rows[index].mark = mark
        if with_reference:
            table.rows += [reference_row(ref, groups, metric) for ref in refs]
        tables.append(table)
    return tables


def _by_row_key(results: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault(row_key(result), []).append(result)
    return list(groups.values())
