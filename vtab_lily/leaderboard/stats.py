"""Uncertainty of VTAB numbers: per-task intervals, averages, paired tests, Holm's correction.

numpy + scipy.stats only (no torch, no result files): the leaderboard and ``compare`` turn runs
into counts or correctness matrices and call these. Every number is in percent; every
resampling takes a seed, so a report is reproducible. What each interval covers:

- one seed of a task: the test images are a sample of the task's images, so the accuracy has a
  binomial spread; a Wilson score interval (Wilson 1927; scipy's ``binomtest.proportion_ci``).
- several seeds: the seeds are a sample of training runs and all of them are scored on the same
  images, so the seed mean varies with both. With the runs' predictions (a seeds x images
  correctness matrix) the two shares are measured by the variance components of a two-way
  layout (images and seeds random; ``intervals.two_way``); from counts alone (old runs) the
  seeds' share is the per-seed accuracies' sample variance / S and the images' share is bounded
  by p(1-p)/n (exact when the seeds agree on every image, conservative otherwise). The quantile
  is Student's t with Satterthwaite's degrees of freedom (few seeds make the seed variance itself
  uncertain); the interval is Wilson's at the effective sample size p(1-p)/variance, so with one
  seed, or seeds that agree, it is the plain Wilson interval.
- averages over tasks: the task set is fixed (it is the benchmark), so the average's variance
  is the weighted sum of the tasks' variances; plain mean (1/T each) or mean of group means
  (1/(G * tasks in the group) each).
- a paired difference on one task (``paired_task``): one seed: the exact McNemar test
  (McNemar 1947: a binomial test on the discordant images, ``scipy.stats.binomtest``) and a
  seeded paired bootstrap over images for the interval (Efron 1979; resampling n images with
  replacement only changes how many of the three kinds of pair, A-only right / both equal /
  B-only right, are drawn, so it is drawn as one multinomial: the same distribution, no n x B
  array). Several seeds paired by seed: a t test on the two-way (images x seeds) variance
  components of the per-image differences, with Satterthwaite's degrees of freedom, so the
  seeds' own spread counts as well as the images'.
- ``holm``: Holm's (1979) step-down adjustment over the tasks compared.

None of these cover the choice of hyperparameters (a tuned method's interval is not a
hyperparameter-search interval) nor another set of tasks. See docs/statistics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from ..errors import UserError
from .intervals import (bootstrap_pairs, combine, holm, mcnemar_p, paired_t, quantile, task_intervals,  # noqa: F401
                        task_weights, two_way, wilson)

KIND_EXAMPLES = "test examples"
KIND_SEEDS = "test examples and seeds"
VERDICTS = ("better", "worse", "indistinguishable")
MAX_SEEDS = 1000  # far beyond any sweep; keeps a hand-made runs folder from building huge arrays


@dataclass(frozen=True)
class Estimate:
    """An accuracy (percent) with a ``level`` interval [lo, hi]; ``kind`` says what it covers.

    ``se`` is the standard error in points and ``df`` the degrees of freedom of its quantile
    (inf: normal), used to propagate the task's uncertainty into averages."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    n_examples: int
    kind: str
    se: float = math.nan
    df: float = math.inf
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


@dataclass(frozen=True)
class Paired:
    """A - B in points on the same images, its ``level`` interval, the test's two-sided p."""

    diff: float
    lo: float
    hi: float
    p: float
    test: str
    se: float = math.nan
    df: float = math.inf
    n_seeds: int = 1
    n_examples: int = 0


def _check_level(level: float) -> float:
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0.5 <= level < 1:
        raise UserError(f"confidence level must be in [0.5, 1), got {level!r}")
    return float(level)


def _counts(correct: Sequence[int], n: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    correct_a, n_a = np.asarray(correct), np.asarray(n)
    if correct_a.ndim != 1 or correct_a.shape != n_a.shape or not 1 <= correct_a.size <= MAX_SEEDS:
        raise UserError(f"need one (correct, n) count per seed, 1 to {MAX_SEEDS} seeds; got {correct_a.size} and {n_a.size}")
    for name, values in (("correct", correct_a), ("n", n_a)):
        if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise UserError(f"{name} counts must be finite whole numbers, got {values.tolist()[:5]}")
    if np.any(n_a < 1) or np.any(correct_a < 0) or np.any(correct_a > n_a):
        raise UserError(f"counts must satisfy 0 <= correct <= n and n >= 1; got correct={correct_a.tolist()[:5]}, n={n_a.tolist()[:5]}")
    return correct_a.astype(np.int64), n_a.astype(np.int64)


def task_estimate(correct: Sequence[int], n: Sequence[int], level: float = 0.95,
                  matrix: np.ndarray | None = None) -> Estimate:
    """One task's accuracy and interval from one count of correct test images per seed; with
    several seeds, ``matrix`` ((seeds, n) booleans from the predictions, rows in the order of
    ``correct``) measures the images' share instead of bounding it."""
    level = _check_level(level)
    correct_a, n_a = _counts(correct, n)
    if matrix is not None:
        matrix = _as_matrix(matrix, "matrix")
        if matrix.shape != (correct_a.size, int(n_a.min())) or np.any(matrix.sum(axis=1) != correct_a):
            raise UserError(f"the correctness matrix {matrix.shape} disagrees with the counts {correct_a.tolist()[:5]}")
    if correct_a.size == 1:  # one seed: the Wilson interval, as scipy computes it
        k, trials = int(correct_a[0]), int(n_a[0])
        ci = sps.binomtest(k, trials).proportion_ci(confidence_level=level, method="wilson")
        q = float(quantile(level, math.inf))
        return Estimate(100 * k / trials, 100 * float(ci.low), 100 * float(ci.high), 1, trials, KIND_EXAMPLES,
                        se=100 * float(ci.high - ci.low) / (2 * q), level=level)
    out = task_intervals(correct_a[None, :], n_a[None, :], level, None if matrix is None else matrix[None])
    return Estimate(100 * float(out["mean"][0]), 100 * float(out["lo"][0]), 100 * float(out["hi"][0]),
                    int(correct_a.size), int(n_a.min()), KIND_SEEDS, se=100 * float(out["se"][0]),
                    df=float(out["df"][0]), level=level)


def average_estimate(tasks: Mapping[str, Estimate], groups: Mapping[str, str] | None = None,
                     level: float | None = None) -> Estimate:
    """The plain mean over ``tasks`` (``groups`` None) or the mean of group means (``groups``:
    task -> group), each task's uncertainty propagated with the task set held fixed."""
    if not tasks:
        raise UserError("an average needs at least one task")
    names = list(tasks)
    level = _check_level(level if level is not None else next(iter(tasks.values())).level)
    est = [tasks[t] for t in names]
    if any(not math.isfinite(e.mean) or not math.isfinite(e.se) for e in est):
        bad = [t for t, e in zip(names, est) if not math.isfinite(e.mean) or not math.isfinite(e.se)]
        raise UserError(f"task(s) {', '.join(bad)} have no finite estimate; cannot average")
    weights = task_weights(names, groups)
    mean, lo, hi, se, df = combine(np.array([e.mean for e in est]), np.array([e.se for e in est]),
                                   np.array([e.df for e in est]), weights, level)
    kind = KIND_SEEDS if any(e.n_seeds > 1 for e in est) else KIND_EXAMPLES
    # symmetric around the mean, so clipped to the percentages an average can take
    return Estimate(float(mean), max(float(lo), 0.0), min(float(hi), 100.0), min(e.n_seeds for e in est),
                    sum(e.n_examples for e in est),
                    kind, se=float(se), df=float(df), level=level)


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.dtype != bool:
        raise UserError(f"{name}: need a (seeds, images) boolean matrix of correct answers, got {x.dtype} {x.shape}")
    return x


def paired_task(a: np.ndarray, b: np.ndarray, level: float = 0.95, seed: int = 0) -> Paired:
    """A - B accuracy (points) on the same images; ``a``, ``b``: (seeds, n) booleans, row s of
    both from the same seed id. One seed: exact McNemar + seeded paired bootstrap interval;
    several: a t test over images and seeds (module docstring)."""
    level = _check_level(level)
    a, b = _as_matrix(a, "A"), _as_matrix(b, "B")
    if a.shape != b.shape:
        raise UserError(f"A and B must be scored on the same images and seeds: shapes {a.shape} and {b.shape}")
    seeds, n = a.shape
    if n == 0:
        raise UserError("no images to compare (n = 0)")
    if seeds > MAX_SEEDS:
        raise UserError(f"{seeds} seeds: more than {MAX_SEEDS}")
    if seeds == 1:
        a_only = int(np.count_nonzero(a[0] & ~b[0]))
        b_only = int(np.count_nonzero(~a[0] & b[0]))
        p = 1.0 if a_only + b_only == 0 else float(sps.binomtest(a_only, a_only + b_only).pvalue)
        diff = (a_only - b_only) / n
        lo, hi = (float(x) for x in bootstrap_pairs(a_only, b_only, n, level, seed))
        se = math.sqrt(max((a_only + b_only) / n - diff**2, 0.0) / n)
        return Paired(100 * diff, 100 * lo, 100 * hi, p, "exact McNemar",
                      se=100 * se, n_seeds=1, n_examples=n)
    diff, se, df, p = (float(x) for x in paired_t(a, b))
    half = float(quantile(level, df)) * se
    # a difference of two accuracies lies in [-100, 100] points; so does its interval
    return Paired(100 * diff, 100 * max(diff - half, -1.0), 100 * min(diff + half, 1.0), p,
                  "t over images and seeds",
                  se=100 * se, df=df, n_seeds=seeds, n_examples=n)


def verdict(diff: float, p_adjusted: float, level: float = 0.95) -> str:
    """Plain words: better / worse when the Holm-adjusted p is below 1 - level, else indistinguishable."""
    if math.isnan(p_adjusted) or p_adjusted >= 1 - level or diff == 0:
        return "indistinguishable"
    return "better" if diff > 0 else "worse"


@dataclass(frozen=True)
class TaskRuns:
    """One method's runs of one task: per seed the correct count and the number of images, and,
    when every seed kept its predictions, the (seeds, n) correctness matrix and the test list's hash."""

    seeds: tuple[int, ...]
    correct: tuple[int, ...]
    n: tuple[int, ...]
    matrix: np.ndarray | None = field(default=None, compare=False, repr=False)
    list_sha256: str | None = None
    unpaired_reason: str = "no predictions"  # why ``matrix`` is None (shown as "not paired: ...")

    def estimate(self, level: float = 0.95) -> Estimate:
        return task_estimate(self.correct, self.n, level, self.matrix)


@dataclass(frozen=True)
class TaskComparison:
    task: str
    a: Estimate | None
    b: Estimate | None
    paired: Paired | None  # None: not paired (``note`` says why)
    p_holm: float = math.nan
    verdict: str = "indistinguishable"
    note: str = ""
    seeds: tuple[int, ...] = ()  # the seed ids paired


@dataclass(frozen=True)
class Difference:
    """A difference of averages (points) with its interval; ``unpaired`` tasks entered it unpaired."""

    diff: float
    lo: float
    hi: float
    n_tasks: int
    unpaired: int
    a: Estimate | None = None  # each side's own average over the same tasks
    b: Estimate | None = None


@dataclass(frozen=True)
class Comparison:
    a_name: str
    b_name: str
    level: float
    tasks: list[TaskComparison]
    avg_tasks: Difference | None
    avg_groups: Difference | None
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()


def pair_seeds(a: TaskRuns, b: TaskRuns) -> tuple[list[int], list[int], str]:
    """Row indices of ``a`` and ``b`` to pair: by seed id where they share ids, else in seed order."""
    common = sorted(set(a.seeds) & set(b.seeds))
    if common:
        return [a.seeds.index(s) for s in common], [b.seeds.index(s) for s in common], ""
    k = min(len(a.seeds), len(b.seeds))
    ia = sorted(range(len(a.seeds)), key=lambda i: a.seeds[i])[:k]
    ib = sorted(range(len(b.seeds)), key=lambda i: b.seeds[i])[:k]
    return ia, ib, "no common seed ids: seeds paired in order"


def _pair_task(task: str, a: TaskRuns, b: TaskRuns, level: float, seed: int) -> TaskComparison:
    ea, eb = a.estimate(level), b.estimate(level)
    if a.matrix is None or b.matrix is None:
        reasons = [f"{r} ({side})" for side, runs in (("A", a), ("B", b)) if runs.matrix is None
                   for r in [runs.unpaired_reason]]
        return TaskComparison(task, ea, eb, None, note="not paired: " + "; ".join(reasons))
    if a.list_sha256 != b.list_sha256 or a.matrix.shape[1] != b.matrix.shape[1]:
        return TaskComparison(task, ea, eb, None, note="not paired: different test lists (list_sha256)")
    ia, ib, how = pair_seeds(a, b)
    paired_seeds = tuple(a.seeds[i] for i in ia)
    if not how and (len(ia) < len(a.seeds) or len(ib) < len(b.seeds)):
        shown = ", ".join(map(str, paired_seeds[:5])) + (", ..." if len(paired_seeds) > 5 else "")
        how = f"paired on seed{'s' if len(ia) > 1 else ''} {shown} only (A has {len(a.seeds)}, B {len(b.seeds)})"
    paired = paired_task(a.matrix[ia], b.matrix[ib], level, seed)
    return TaskComparison(task, ea, eb, paired, note=how, seeds=paired_seeds)


def unpaired_difference(a: Estimate, b: Estimate, level: float) -> tuple[float, float, float, float, float]:
    """(diff, lo, hi, se, df) of A - B treated as independent (Welch-Satterthwaite df): for tasks
    that cannot be paired. Conservative: on the same images the two sides are positively correlated."""
    va, vb = a.se**2, b.se**2
    denom = (va**2 / a.df if math.isfinite(a.df) else 0.0) + (vb**2 / b.df if math.isfinite(b.df) else 0.0)
    df = (va + vb) ** 2 / denom if denom > 0 else math.inf
    se = math.sqrt(va + vb)
    half = float(quantile(level, df)) * se
    diff = a.mean - b.mean
    return diff, max(diff - half, -100.0), min(diff + half, 100.0), se, df


def compare(a_runs: Mapping[str, TaskRuns], b_runs: Mapping[str, TaskRuns], groups: Mapping[str, str] | None = None,
            level: float = 0.95, seed: int = 0, a_name: str = "A", b_name: str = "B") -> Comparison:
    """Per task A vs B (paired where both kept predictions on the same test list), Holm over the
    paired tasks, verdicts, and the difference of both averages over the tasks both have.

    Unpaired tasks enter the averages' difference with the two sides' variances added (as if
    independent: conservative, since the same images make the sides positively correlated)."""
    level = _check_level(level)
    common = [t for t in a_runs if t in b_runs]
    rows = [_pair_task(t, a_runs[t], b_runs[t], level, seed) for t in common]
    adjusted = holm([r.paired.p if r.paired else math.nan for r in rows])
    rows = [TaskComparison(r.task, r.a, r.b, r.paired, p, verdict(r.paired.diff, p, level) if r.paired else "not paired",
                           r.note, r.seeds) for r, p in zip(rows, adjusted)]
    avg_tasks = _average_difference(rows, None, level) if rows else None
    avg_groups = _average_difference(rows, groups, level) if rows and groups is not None else None
    return Comparison(a_name, b_name, level, rows, avg_tasks, avg_groups,
                      tuple(t for t in a_runs if t not in b_runs), tuple(t for t in b_runs if t not in a_runs))


def _average_difference(rows: list[TaskComparison], groups: Mapping[str, str] | None, level: float) -> Difference:
    means, ses, dfs = [], [], []
    for r in rows:
        if r.paired is not None:
            means.append(r.paired.diff)
            ses.append(r.paired.se)
            dfs.append(r.paired.df)
        else:
            diff, _, _, se, df = unpaired_difference(r.a, r.b, level)
            means.append(diff)
            ses.append(se)
            dfs.append(df)
    weights = task_weights([r.task for r in rows], groups)
    mean, lo, hi, _, _ = combine(np.array(means), np.array(ses), np.array(dfs), weights, level)
    a = average_estimate({r.task: r.a for r in rows}, groups, level)
    b = average_estimate({r.task: r.b for r in rows}, groups, level)
    return Difference(float(mean), max(float(lo), -100.0), min(float(hi), 100.0), len(rows),
                      sum(r.paired is None for r in rows), a, b)


@dataclass(frozen=True)
class Mark:
    """The table's mark for one row: is its average indistinguishable from the best row's?"""

    best: bool
    indistinguishable: bool
    paired: bool
    lo: float  # interval of (best - this row), points
    hi: float


def indistinguishable_from_best(rows: Mapping[Hashable, Mapping[str, TaskRuns]], groups: Mapping[str, str] | None = None,
                                level: float = 0.95, seed: int = 0,
                                tasks: Sequence[str] | None = None) -> dict[Hashable, Mark]:
    """``rows``: any hashable key (a row index) -> task -> TaskRuns (``compare.runs_by_task``).

    For the rows that have every task in ``tasks`` (default: every task any row has), the best
    (highest average; the mean of group means when ``groups`` is given) and whether the best's
    lead over each other row is within noise (its interval contains 0). Paired on predictions
    where both rows have them on every task, else from the two averages' intervals (``paired``
    False: unpaired tasks enter as independent, which is conservative). Each row is tested
    against the best alone (no correction for the number of rows). Rows missing a task get no
    mark (they are absent from the result)."""
    level = _check_level(level)
    wanted = set(tasks) if tasks is not None else {t for by_task in rows.values() for t in by_task}
    complete = {key: {t: by_task[t] for t in sorted(wanted)} for key, by_task in rows.items()
                if wanted and wanted <= set(by_task)}
    if not complete:
        return {}
    averages = {key: average_estimate({t: r.estimate(level) for t, r in by_task.items()}, groups, level)
                for key, by_task in complete.items()}
    best_key = max(averages, key=lambda k: averages[k].mean)
    best = complete[best_key]
    marks = {best_key: Mark(True, True, True, 0.0, 0.0)}
    for key, by_task in complete.items():
        if key == best_key:
            continue
        comparison = compare(best, by_task, groups, level, seed)
        diff = comparison.avg_groups if groups is not None else comparison.avg_tasks
        marks[key] = Mark(False, diff.lo <= 0, diff.unpaired == 0, diff.lo, diff.hi)
    return marks
