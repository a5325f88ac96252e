"""Uncertainty of VTAB numbers: per-task intervals, averages, paired tests, Holm's correction.

numpy + scipy.stats only (no torch, no result files): the leaderboard and ``compare`` turn runs
into counts or correctness matrices and call these. Every number is in percent; every
resampling takes a seed, so a report is reproducible. What each interval covers:

- one seed of a task: the test images are a sample of the task's images, so the accuracy has a
  binomial spread; a Wilson score interval (Wilson 1927; scipy's ``binomtest.proportion_ci``).
- several seeds: the seeds are a sample of training runs and all of them are scored on the same
  images. The variance of the seed mean is the seeds' spread (sample variance of the per-seed
  accuracies / S) plus the images' share, bounded by p(1-p)/n (exact when the seeds agree on
  every image, conservative otherwise); the quantile is Student's t with Satterthwaite's degrees
  of freedom (few seeds make the seed variance uncertain), and the interval is Wilson's with the
  effective sample size p(1-p)/variance (with one seed it is exactly the Wilson interval).
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

KIND_EXAMPLES = "test examples"
KIND_SEEDS = "test examples and seeds"
VERDICTS = ("better", "worse", "indistinguishable")
BOOTSTRAP_RESAMPLES = 9999
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


def _quantile(level: float, df: float | np.ndarray) -> np.ndarray:
    """Two-sided quantile: normal for infinite df, else Student's t."""
    df = np.asarray(df, dtype=float)
    upper = (1 + level) / 2
    return np.where(np.isinf(df), sps.norm.ppf(upper), sps.t.ppf(upper, np.where(np.isinf(df), 1.0, df)))


def wilson(p: np.ndarray, n: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's score interval for a proportion ``p`` from ``n`` trials at quantile ``q``
    (vectorised; with a normal q and integer n it is scipy's ``proportion_ci(method='wilson')``,
    which tests check). ``n`` may be an effective, non-integer sample size."""
    p, n, q = (np.asarray(x, dtype=float) for x in (p, n, q))
    q2n = q * q / n
    centre = (p + q2n / 2) / (1 + q2n)
    half = q / (1 + q2n) * np.sqrt(p * (1 - p) / n + q2n / (4 * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def task_intervals(correct: np.ndarray, n: np.ndarray, level: float = 0.95,
                   matrix: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Vectorised core of :func:`task_estimate`: ``correct`` and ``n`` shaped (..., seeds);
    ``matrix`` (optional, (..., seeds, images) booleans) the per-image correctness they count.

    Returns arrays (shape ``...``) ``mean``, ``lo``, ``hi`` as fractions plus ``se`` (fraction)
    and ``df``. With several seeds and a matrix, the images' share of the variance is measured
    (two-way variance components); from counts alone it is bounded by p(1-p)/n."""
    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    seeds = correct.shape[-1]
    n_min = n.min(axis=-1)
    if matrix is not None and seeds > 1:
        p, total, df = two_way(matrix)
    else:
        acc = correct / n
        p = acc.mean(axis=-1)
        # The images' share: at most p(1-p)/n because every seed is scored on the same images.
        v_images = p * (1 - p) / n_min
        v_seeds = acc.var(axis=-1, ddof=1) / seeds if seeds > 1 else np.zeros_like(p)
        total = v_images + v_seeds
        with np.errstate(divide="ignore", invalid="ignore"):
            df = np.where(v_seeds > 0, total**2 * (seeds - 1) / np.where(v_seeds > 0, v_seeds, 1.0) ** 2, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        usable = (total > 0) & (p > 0) & (p < 1)
        n_eff = np.where(usable, p * (1 - p) / np.where(usable, total, 1.0), n_min)
    q = _quantile(level, df)
    lo, hi = wilson(p, n_eff, q)
    return {"mean": p, "lo": lo, "hi": hi, "se": (hi - lo) / (2 * q), "df": df}


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
        q = float(_quantile(level, math.inf))
        return Estimate(100 * k / trials, 100 * float(ci.low), 100 * float(ci.high), 1, trials, KIND_EXAMPLES,
                        se=100 * float(ci.high - ci.low) / (2 * q), level=level)
    out = task_intervals(correct_a[None, :], n_a[None, :], level, None if matrix is None else matrix[None])
    return Estimate(100 * float(out["mean"][0]), 100 * float(out["lo"][0]), 100 * float(out["hi"][0]),
                    int(correct_a.size), int(n_a.min()), KIND_SEEDS, se=100 * float(out["se"][0]),
                    df=float(out["df"][0]), level=level)


def task_weights(tasks: Sequence[str], groups: Mapping[str, str] | None) -> np.ndarray:
    """Each task's weight in the plain mean (groups None) or in the mean of group means."""
    if groups is None:
        return np.full(len(tasks), 1 / len(tasks))
    missing = [t for t in tasks if t not in groups]
    if missing:
        raise UserError(f"no group given for task(s) {', '.join(missing)}")
    sizes: dict[str, int] = {}
    for t in tasks:
        sizes[groups[t]] = sizes.get(groups[t], 0) + 1
    return np.array([1 / (len(sizes) * sizes[groups[t]]) for t in tasks])


def combine(means: np.ndarray, ses: np.ndarray, dfs: np.ndarray, weights: np.ndarray,
            level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted sum of independent estimates along the last axis: (mean, lo, hi, se, df).

    Variances add with squared weights (the tasks' test sets and runs are independent); the
    degrees of freedom follow Satterthwaite; the interval is symmetric (a sum of many tasks)."""
    parts = (weights * ses) ** 2
    var = parts.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        finite = np.isfinite(dfs)
        denom = np.where(finite, parts**2 / np.where(finite, dfs, 1.0), 0.0).sum(axis=-1)
        df = np.where(denom > 0, var**2 / np.where(denom > 0, denom, 1.0), np.inf)
    mean = (weights * means).sum(axis=-1)
    se = np.sqrt(var)
    half = _quantile(level, df) * se
    return mean, mean - half, mean + half, se, df


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
    return Estimate(float(mean), float(lo), float(hi), min(e.n_seeds for e in est), sum(e.n_examples for e in est),
                    kind, se=float(se), df=float(df), level=level)


def mcnemar_p(a_only: np.ndarray, b_only: np.ndarray) -> np.ndarray:
    """Exact two-sided McNemar p from the discordant counts (vectorised): under the null each
    discordant image is A-only right with probability 1/2, so the smaller count is binomial;
    the same p as ``scipy.stats.binomtest(a_only, a_only + b_only).pvalue`` (tests check)."""
    a_only, b_only = np.asarray(a_only), np.asarray(b_only)
    m = a_only + b_only
    p = 2 * sps.binom.cdf(np.minimum(a_only, b_only), m, 0.5)
    return np.where(m == 0, 1.0, np.minimum(p, 1.0))


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
        lo, hi = bootstrap_pairs(a_only, b_only, n, level, seed)
        se = math.sqrt(max((a_only + b_only) / n - diff**2, 0.0) / n)
        return Paired(100 * diff, 100 * lo, 100 * hi, p, "exact McNemar; paired bootstrap interval",
                      se=100 * se, n_seeds=1, n_examples=n)
    diff, se, df, p = (float(x) for x in paired_t(a, b))
    half = float(_quantile(level, df)) * se
    return Paired(100 * diff, 100 * (diff - half), 100 * (diff + half), p,
                  "t over images and seeds (variance components, Satterthwaite df)",
                  se=100 * se, df=df, n_seeds=seeds, n_examples=n)


def paired_t(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised several-seed test of :func:`paired_task` on (..., seeds, n) booleans:
    (difference, standard error, df, two-sided p), as fractions. A zero standard error (the
    two never differ in a way that varies) gives p = 1 for no difference, else 0."""
    mean, var, df = two_way(np.asarray(a).astype(np.int8) - np.asarray(b).astype(np.int8))
    se = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * sps.t.sf(np.abs(mean) / np.where(se > 0, se, 1.0), df), np.where(mean == 0, 1.0, 0.0))
    return mean, se, df, p


def bootstrap_pairs(a_only: int, b_only: int, n: int, level: float, seed: int,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile interval of (A-only - B-only)/n over paired bootstrap resamples of the n images.

    Drawing n images with replacement draws the three kinds of pair with their observed
    frequencies, i.e. one multinomial per resample; the interval is the same as resampling the
    images themselves, in O(resamples) instead of O(resamples * n)."""
    rng = np.random.default_rng(seed)
    probs = np.array([a_only, b_only, n - a_only - b_only], dtype=float) / n
    draws = rng.multinomial(n, probs, size=resamples)
    diffs = (draws[:, 0] - draws[:, 1]) / n
    tail = (1 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    return float(lo), float(hi)


def two_way(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of (..., seeds, images) matrices of 0/1 or -1/0/1 values with the variance of that
    mean over both factors (seeds and images both random) and Satterthwaite's df, vectorised
    over leading axes.

    Var = s2_images/n + s2_seeds/S - s2_residual/(nS), from the expected mean squares of a
    two-way layout without replication: the images' term plus the seeds' own component
    s2_seeds/S - s2_residual/(nS) when that is positive (else the seeds add nothing beyond the
    images). Sums run on the small integers, so a (seeds, n) matrix is never copied as floats."""
    d = np.asarray(d)
    d = d.astype(np.int8) if d.dtype == bool else d
    seeds, n = d.shape[-2:]
    by_image = d.sum(axis=-2, dtype=np.float64) / seeds
    by_seed = d.sum(axis=-1, dtype=np.float64) / n
    grand = by_seed.mean(axis=-1)
    ss_images = seeds * ((by_image - grand[..., None]) ** 2).sum(axis=-1)
    ss_seeds = n * ((by_seed - grand[..., None]) ** 2).sum(axis=-1)
    ss_total = np.count_nonzero(d, axis=(-2, -1)) - seeds * n * grand**2  # values are -1, 0 or 1: d^2 = |d|
    images_term = ss_images / seeds / (n - 1) / n if n > 1 else np.zeros_like(grand)
    seeds_term = ss_seeds / n / (seeds - 1) / seeds if seeds > 1 else np.zeros_like(grand)
    dof_resid = (n - 1) * (seeds - 1)
    if dof_resid > 0:
        resid_term = np.maximum(ss_total - ss_images - ss_seeds, 0.0) / dof_resid / (n * seeds)
    else:
        resid_term = np.zeros_like(grand)
    seed_part = seeds_term - resid_term
    used = seed_part > 0
    var = images_term + np.where(used, seed_part, 0.0)
    denom = images_term**2 / (n - 1) if n > 1 else np.zeros_like(grand)
    if dof_resid > 0:
        denom = denom + np.where(used, seeds_term**2 / (seeds - 1) + resid_term**2 / dof_resid, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, var**2 / np.where(denom > 0, denom, 1.0), np.inf)
    return grand, var, df


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN entries (tasks not tested)
    stay NaN and do not count in the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out.tolist()


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
    paired = paired_task(a.matrix[ia], b.matrix[ib], level, seed)
    return TaskComparison(task, ea, eb, paired, note=how, seeds=tuple(a.seeds[i] for i in ia))


def unpaired_difference(a: Estimate, b: Estimate, level: float) -> tuple[float, float, float, float, float]:
    """(diff, lo, hi, se, df) of A - B treated as independent (Welch-Satterthwaite df): for tasks
    that cannot be paired. Conservative: on the same images the two sides are positively correlated."""
    va, vb = a.se**2, b.se**2
    denom = (va**2 / a.df if math.isfinite(a.df) else 0.0) + (vb**2 / b.df if math.isfinite(b.df) else 0.0)
    df = (va + vb) ** 2 / denom if denom > 0 else math.inf
    se = math.sqrt(va + vb)
    half = float(_quantile(level, df)) * se
    diff = a.mean - b.mean
    return diff, diff - half, diff + half, se, df


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
    return Difference(float(mean), float(lo), float(hi), len(rows), sum(r.paired is None for r in rows), a, b)


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
    """For the rows that have every task in ``tasks`` (default: every task any row has), the best
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
