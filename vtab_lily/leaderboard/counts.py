"""Counts per run for the statistics: a leaderboard cell's runs -> ``stats.TaskRuns``, and the best-row mark.

Each run of a cell gives a count of correct test examples out of n: from its
``predictions.npz`` when it kept one (then the per-example correctness too, so two rows can be
compared on the same images), otherwise from ``round(accuracy * n / 100)`` with n the split's
size, so runs made before predictions were kept still get an interval (never a paired test).
``stats.py`` turns the counts into intervals and decides the mark; this module only gathers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..results import accuracy, read_predictions
from ..tasks import PROTOCOLS, get_task
from .stats import Mark, TaskRuns, indistinguishable_from_best

LEVEL = 0.95
MARK_SEED = 0  # the paired bootstrap's seed: the same runs always give the same marks


@dataclass(frozen=True)
class RunCounts:
    """One run's score on its evaluation split: ``correct`` of ``n``; ``hits`` (n booleans,
    list-file order) and the list's hash when the run kept its predictions."""

    correct: int
    n: int
    hits: np.ndarray | None = None
    list_sha256: str | None = None
    why: str = ""  # why ``hits`` is None: no predictions, unreadable ones, no selected evaluation's


def split_size(result: dict, metric: str) -> int | None:
    """How many examples the run's ``metric`` accuracy was measured on, without its predictions:
    result.json's ``predictions.n``, else the registry's size of the evaluation split (the
    final evaluation is always complete; with ``eval_limit`` an earlier, selected one may have
    seen only the first ``eval_limit`` examples: the smaller n, the wider and safer interval)."""
    recorded = (result.get("predictions") or {}).get("n")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        return recorded
    try:
        size = get_task(result["task"], result["suite"]).expected_size(PROTOCOLS[result["protocol"]][1])
    except (UserError, KeyError):
        return None
    limit = (result.get("config") or {}).get("eval_limit")
    if metric == "best" and isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return min(size, limit)
    return size


def run_counts(result: dict, metric: str, warnings: list[str]) -> RunCounts | None:
    """The run's counts under ``metric`` (None when even its split size is unknown)."""
    predictions, why = None, "no predictions"
    if result.get("run_dir") is not None:
        try:
            predictions = read_predictions(result["run_dir"])
        except UserError as err:
            warnings.append(f"{err}; its interval comes from the accuracy instead (never paired)")
            why = "unreadable predictions"
    if predictions is not None:
        predicted = predictions.final if metric == "final" else predictions.selected
        if predicted is not None:
            hits = np.asarray(predicted) == np.asarray(predictions.labels)
            return RunCounts(int(hits.sum()), int(hits.size), hits, predictions.list_sha256)
        why = f"no predictions of the selected evaluation ({predictions.note})" if predictions.note else why
    n, value = split_size(result, metric), accuracy(result, metric)
    if n is None or value is None or not math.isfinite(value):
        return None
    return RunCounts(min(max(round(value * n / 100), 0), n), n, why=why)


def task_runs(results: list[dict], metric: str, warnings: list[str]) -> TaskRuns | None:
    """One cell's runs (one per seed) as stats' ``TaskRuns``: counts for every seed, and the
    correctness matrix only when every seed kept predictions on the same list (else unpaired).
    None when some seed has no count (no interval is better than one over part of the seeds)."""
    counts = [run_counts(r, metric, warnings) for r in results]
    if not counts or any(c is None for c in counts):
        return None
    seeds = tuple(r["seed"] for r in results)
    matrix, sha, reason = None, None, "no predictions"
    hashes = {c.list_sha256 for c in counts}
    if all(c.hits is not None for c in counts):
        if len(hashes) == 1 and len({c.n for c in counts}) == 1:
            matrix, sha, reason = np.stack([c.hits for c in counts]), hashes.pop(), ""
        else:
            reason = "its seeds were scored on different test lists"
    elif any(c.hits is not None for c in counts):
        reason = "some seeds kept no predictions"
    return TaskRuns(seeds, tuple(c.correct for c in counts), tuple(c.n for c in counts), matrix, sha, reason)


def best_marks(rows: list, groups: dict[str, list[str]], warnings: list[str]) -> dict[int, Mark]:
    """``stats.indistinguishable_from_best`` over the rows that can be tested: run rows with
    every task of the table and an interval on each (reported rows have no counts; a partial
    row's average is over other tasks). Keys are indices into ``rows``; none when the
    statistics refuse the counts (named in ``warnings``)."""
    all_tasks = [t for members in groups.values() for t in members]
    group_of = {t: g for g, members in groups.items() for t in members}
    testable = {}
    for i, row in enumerate(rows):
        if row.kind != "run" or set(row.cells) != set(all_tasks):
            continue
        if all(cell.runs is not None and cell.interval is not None for cell in row.cells.values()):
            testable[i] = {t: cell.runs for t, cell in row.cells.items()}
    if not testable:
        return {}
    try:
        return indistinguishable_from_best(testable, group_of, LEVEL, MARK_SEED, tasks=all_tasks)
    except UserError as err:
        warnings.append(f"no row marked against the best: {err}")
        return {}


def has_predictions(cell) -> bool:
    """The cell's every seed kept its per-example predictions (so it can be paired)."""
    return cell is not None and cell.runs is not None and cell.runs.matrix is not None
