"""Tables -> GitHub markdown (no file I/O here; CSV and JSON: ``records.py``).

Each table is written as sections narrow enough to read without scrolling: the main table (the
method, its setup, both averages with their 95% intervals, the best-row mark, params), one
per-task table per group of tasks, and the details (data, predictions, reported averages,
head, time, memory). The CSV keeps every column in full.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from .datamarks import DIFFERS_MARK
from .counts import has_predictions
from .stats import Estimate
from .table import MEMORY_KINDS, Averages, Cell, Row, Table
from .text import md_escape, one_line, round_half_up, setup_text

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
VS_BEST = "Vs best"
PARAMS = "Params (M, no head)"
AVG_TASKS = "Avg (all tasks)"
BEST_SUFFIX = ", test-selected"


def format_interval(estimate: Estimate | None) -> str:
    """`` ±h``: half the width of the 95% interval (the CSV has its exact ends), or nothing."""
    return "" if estimate is None else f" ±{round_half_up(estimate.half_width)}"


def format_cell(cell: Cell | None, usual_n: int, mark: str = "") -> str:
    """``mean ±h``, then ``(sd s, n=k)``: the seeds' sample std (2+ seeds) and the seed count when
    it differs from the row's usual one. ``±`` is always the interval, ``sd`` always the seeds' spread."""
    if cell is None:
        return MISSING
    text = round_half_up(cell.mean) + format_interval(cell.interval)
    extra = []
    if cell.std is not None:
        extra.append(f"sd {round_half_up(cell.std)}")
    if cell.n and cell.n != usual_n:
        extra.append(f"n={cell.n}")
    return text + (f" ({', '.join(extra)})" if extra else "") + mark


def format_average(value: float | None, partial: bool, interval: Estimate | None = None) -> str:
    if value is None:
        return MISSING
    return round_half_up(value) + (PARTIAL_MARK if partial else "") + format_interval(interval)


def format_mark(row: Row) -> str:
    """The best-row mark in words (``MARK_NOTE`` explains it)."""
    if row.kind != "run":
        return "not tested"
    mark = row.mark
    if mark is None:
        return "not tested"
    if mark.best:
        return "best"
    text = "≈ best" if mark.indistinguishable else "below"
    return text if mark.paired else f"{text} (unpaired)"


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


def _label(row: Row) -> str:
    return md_escape(row.method)


def _averages_of(row: Row, both: bool) -> Averages:
    """The averages a row shows: a reported row printed only in the test-selected place (``both``
    or no final cells) shows those."""
    return row.avg if (row.cells or both or row.kind == "run") else (row.best_avg or row.avg)


def main_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """The main table: method, setup, seeds, both averages with their intervals, the best-row
    mark and params; every text cell escaped."""
    both = table.metric == "both"
    headers = ["Method", "Setup", "Seeds", AVG_GROUPS, AVG_TASKS]
    if both:
        headers += [AVG_GROUPS + BEST_SUFFIX, AVG_TASKS + BEST_SUFFIX]
    headers += [VS_BEST, PARAMS]
    body = []
    for row in table.rows:
        avg = _averages_of(row, both)
        # published numbers are test-selected: with --metric both a printed-only average sits there
        line = [_label(row), md_escape(format_setup(row)), format_seeds(row)] + _main_averages(row, avg, not both)
        if both:
            line += _main_averages(row, row.best_avg or Averages(), True)
        line += [format_mark(row), format_params(row.params_m)]
        body.append(line)
    return headers, body


markdown_rows = main_rows  # the table most callers mean


def _main_averages(row: Row, avg: Averages, printed: bool) -> list[str]:
    """Both averages with their intervals; a published row printed with its average alone (no
    cells, no group means) shows that printed number in its own column, marked as printed."""
    shown = [format_average(avg.by_groups, avg.by_groups_partial, avg.by_groups_interval),
             format_average(avg.by_tasks, avg.by_tasks_partial, avg.by_tasks_interval)]
    if printed and row.kind == "reported" and avg.by_groups is None and avg.by_tasks is None and row.reported_average is not None:
        shown[0 if row.reference.average_kind == "group_means" else 1] = f"{row.reported_average_text} (printed)"
    return shown


def task_rows(table: Table, group: str) -> tuple[list[str], list[list[str]]]:
    """One group's per-task table: the tasks' cells and the group's mean, with intervals."""
    both = table.metric == "both"
    tasks = table.groups[group]
    headers = ["Method"] + [SHORT_NAMES.get(t, t) if table.suite == "vtab" else md_escape(t) for t in tasks]
    headers.append(f"{md_escape(group)} (mean)")
    body = []
    for row in table.rows:
        usual = _usual_n(row)
        avg = _averages_of(row, both)
        line = [_label(row)] + [md_escape(_task_cell(row, t, usual, both)) for t in tasks]
        line.append(format_average(avg.group_means.get(group), avg.group_partial.get(group, False),
                                   avg.group_intervals.get(group)))
        body.append(line)
    return headers, body


def format_predictions(row: Row, n_tasks: int) -> str:
    """How many of the row's tasks kept per-example predictions on every seed (pairable)."""
    if row.kind != "run":
        return MISSING
    kept = sum(has_predictions(c) for c in row.cells.values())
    return "all" if kept == n_tasks else "none" if kept == 0 else f"{kept}/{n_tasks} tasks"


def detail_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Everything else a row has: data, predictions, reported average, reference, head, time, memory."""
    headers = ["Method", "Data", "Predictions"]
    reported = _has_reference(table)
    if reported:
        headers.append("Reported avg")
    if table.has_references:
        headers.append("Ref")
    headers += ["Head (M)", "Train time (alone)", "Train mem (MB)"]
    body = []
    for row in table.rows:
        line = [_label(row), md_escape(row.data.label) if row.kind == "run" else MISSING,
                format_predictions(row, len(table.tasks))]
        if reported:
            line.append(md_escape(format_reported(row, table.groups)))
        if table.has_references:
            line.append(md_escape(row.reference.id) if row.reference else MISSING)
        memory = MISSING if row.peak_memory_mb is None else round_half_up(row.peak_memory_mb, 0)
        train_time = format_duration(row.train_time_s) + (f" (+{row.shared_runs} shared)" if row.shared_runs else "")
        line += [format_params(row.head_m), train_time, memory]
        body.append(line)
    return headers, body


@dataclass
class Section:
    """One markdown table of a leaderboard table, with its heading (None: right under the title) and notes."""

    heading: str | None
    headers: list[str]
    body: list[list[str]]
    notes: list[str]


def markdown_sections(table: Table) -> list[Section]:
    """The main table, one per-task table per group, and the details, each with its notes."""
    sections = [Section(None, *main_rows(table), main_notes(table))]
    groups = list(table.groups)
    for i, group in enumerate(groups):
        notes = task_notes(table) if i == len(groups) - 1 else []
        sections.append(Section(f"Per task: {md_escape(group)}", *task_rows(table, group), notes))
    sections.append(Section("Details", *detail_rows(table), detail_notes(table)))
    return sections


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


def main_notes(table: Table) -> list[str]:
    """Under the main table: what ± and the mark mean, the averages, partial rows, the Setup column."""
    n_tasks = len(table.tasks)
    both = table.metric == "both"
    which = "final-epoch " if both else ""
    notes = [
        f"`±`: half the width of the 95% interval (its exact ends are in the CSV: `_lo`, `_hi`). Per task it covers "
        "the test examples (a Wilson interval on the count of correct ones) and, where a task has several seeds, the "
        "seeds' spread too; an average propagates each task's uncertainty with the task set held fixed (these "
        f"{n_tasks} tasks are the benchmark, not a sample of tasks). It does not cover the choice of "
        "hyperparameters (it is not a hyperparameter-search interval), other tasks or other data copies. Counts "
        "come from each run's `predictions.npz`, or from accuracy x test size for runs that did not keep one.",
        f"{VS_BEST}: `best` is the complete row with the highest {which}{AVG_GROUPS}; `≈ best`: statistically "
        "indistinguishable from it (the 95% interval of the best row's lead contains 0); `below`: the lead's interval "
        "excludes 0. Paired on the same test images when both rows kept predictions on every task, else "
        "`(unpaired)`: the two rows' intervals combined as if independent (conservative: fewer rows are told "
        "apart). Each row is tested against the best alone. `not tested`: published (reported) rows, which carry "
        "no counts, partial rows, and rows with a cell without an interval (see the warnings in index.md).",
        f"{AVG_GROUPS}: mean of the {len(table.groups)} group means (VPT/NOAH/Lily papers). "
        f"{AVG_TASKS}: mean over the {n_tasks} tasks (official VTAB). `{PARTIAL_MARK}` partial: the row lacks some "
        f"of the {n_tasks} tasks ({'/'.join(table.groups)}); that mean covers only the tasks present and is not "
        "comparable with complete rows.",
        "Method: the run's label (adapter settings, then its differences from the official setup). Setup: those "
        "differences (result.json `deviations`); `official`: none; `?`: not recorded (older result); `peft config`: "
        "the adapter's settings are a PEFT config file (spelled out in the label), so it has no official setup and "
        "only the recipe is compared. Seeds: how many seeds a row's tasks have (their ids are in the CSV, `seed_ids`). "
        "Params (M, no head): trainable parameters without the classification head (as papers print them), mean "
        "over the row's runs.",
    ]
    lacking = [row for row in table.rows if row.kind == "run" and not all(has_predictions(c) for c in row.cells.values())]
    if lacking:
        names = "; ".join(f"{md_escape(row.method)} ({format_predictions(row, len(table.tasks))})" for row in lacking)
        notes.append(f"Rows without predictions on every task (runs made before they were kept): {names}. Their "
                     "intervals come from accuracy x test size and they cannot be paired: their marks are unpaired.")
    return notes


def task_notes(table: Table) -> list[str]:
    """Under the per-task tables: what a cell holds."""
    return [
        f"Cells: mean over seeds `±` the 95% interval's half-width (over test examples, and seeds when several); "
        f"`(sd s)`: the seeds' sample std (2+ seeds; not an interval); `n=k`: that task has k seeds, unlike the "
        f"rest of the row. `{MISSING}`: no result. `{DIFFERS_MARK}`: made on data other than most rows' (see Data)."
        + (" Each cell: final-epoch / test-selected (best evaluation)." if table.metric == "both" else "")
    ]


def detail_notes(table: Table) -> list[str]:
    """Under the details table: data, predictions, time and memory, rounding, published rows."""
    notes = [
        f"Data: image encoding (png lossless / jpeg / mixed) and a digest of the per-task data fingerprints "
        f"(`?` not recorded, `mixed` recorded for some tasks only); `{DIFFERS_MARK}`: built on data other than what "
        "most rows of this table use for that task, or, when no one copy is the most used, made on a copy other "
        "rows disagree with (cell marked too): such numbers are not comparable. Select with `--data-fingerprint`.",
        "Predictions: on how many tasks every seed kept its per-example predictions (`all`, `k/N tasks`, `none`): "
        "only those can be compared on the same images (`python -m vtab_lily.leaderboard compare`).",
        "Head (M): the classification head's parameters (not in Params). Train time (alone): summed over the row's "
        "runs that had their GPU to themselves; `+N shared`: N runs made beside other trials on one GPU "
        "(`--trials-per-gpu`), left out. Train mem: the largest over the row's runs of the memory the method itself "
        "needed to train.",
        "Numbers are rounded half-up on their decimal value (71.25 -> 71.3); CSV/JSON keep them unrounded.",
    ]
    kinds = sorted({kind for row in table.rows if row.memory_kind for kind in row.memory_kind.split("/")})
    if kinds:
        notes[2] += " Measured as " + "; ".join(MEMORY_KINDS.get(k, md_escape(k)) for k in kinds) + "."
    paper_runs = sum(row.paper_runs for row in table.rows)
    if paper_runs and table.metric == "final":
        notes.append(f"{paper_runs} of these runs were made with `--paper` (they report the test-selected number): "
                     "this table shows final-epoch accuracy; `--metric both` shows both, `--metric best` the paper's.")
    return notes + _reference_notes(table)


def footnotes(table: Table) -> list[str]:
    """Every note of the table's sections, in order."""
    return [note for section in markdown_sections(table) for note in section.notes]


def table_markdown(table: Table, heading_level: int = 2) -> str:
    """The table's title, then its sections (main table, per-task tables, details), each with its notes."""
    parts = [f"{'#' * heading_level} {md_escape(table.title)}", ""]
    for section in markdown_sections(table):
        if section.heading:
            parts += [f"{'#' * (heading_level + 1)} {section.heading}", ""]
        parts += [tabulate(section.body, headers=section.headers, tablefmt="github", disable_numparse=True), ""]
        if section.notes:
            parts += [f"- {one_line(note)}" for note in section.notes] + [""]
    return "\n".join(parts).rstrip("\n") + "\n"
