"""The numbers behind leaderboard/stats.py, vectorised over leading axes so that simulations over
thousands of synthetic test sets (tests/test_stats.py) run the same code as a report: Wilson's
interval, the two-way (images x seeds) variance components, weighted sums of task estimates, the
exact McNemar p, the paired bootstrap over images, Holm's adjustment. Fractions, not percent.
numpy + scipy.stats only; the API with its dataclasses and checks is in stats.py.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from ..errors import UserError

BOOTSTRAP_RESAMPLES = 9999


def quantile(level: float, df: float | np.ndarray) -> np.ndarray:
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
    q = quantile(level, df)
    lo, hi = wilson(p, n_eff, q)
    return {"mean": p, "lo": lo, "hi": hi, "se": (hi - lo) / (2 * q), "df": df}


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
    half = quantile(level, df) * se
    return mean, mean - half, mean + half, se, df


def mcnemar_p(a_only: np.ndarray, b_only: np.ndarray) -> np.ndarray:
    """Exact two-sided McNemar p from the discordant counts (vectorised): under the null each
    discordant image is A-only right with probability 1/2, so the smaller count is binomial;
    the same p as ``scipy.stats.binomtest(a_only, a_only + b_only).pvalue`` (tests check)."""
    a_only, b_only = np.asarray(a_only), np.asarray(b_only)
    m = a_only + b_only
    p = 2 * sps.binom.cdf(np.minimum(a_only, b_only), m, 0.5)
    return np.where(m == 0, 1.0, np.minimum(p, 1.0))


def paired_t(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised several-seed test of :func:`paired_task` on (..., seeds, n) booleans:
    (difference, standard error, df, two-sided p), as fractions. A zero standard error (the
    two never differ in a way that varies) gives p = 1 for no difference, else 0."""
    mean, var, df = two_way(np.asarray(a).astype(np.int8) - np.asarray(b).astype(np.int8))
    se = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * sps.t.sf(np.abs(mean) / np.where(se > 0, se, 1.0), df), np.where(mean == 0, 1.0, 0.0))
    return mean, se, df, p


def bootstrap_pairs(a_only, b_only, n, level: float, seed: int,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of (A-only - B-only)/n over paired bootstrap resamples of the n images
    (vectorised over arrays of counts; scalars give scalars).

    Drawing n images with replacement draws the three kinds of pair with their observed
    frequencies, i.e. one multinomial per resample; the interval is the same as resampling the
    images themselves, in O(resamples) instead of O(resamples * n)."""
    a_only, b_only, n = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (a_only, b_only, n)))
    rng = np.random.default_rng(seed)
    probs = np.stack([a_only, b_only, n - a_only - b_only], axis=-1) / n[..., None]
    draws = rng.multinomial(n, probs, size=(resamples, *n.shape))
    diffs = (draws[..., 0] - draws[..., 1]) / n
    tail = (1 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail], axis=0)
    return lo, hi


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
    if seeds > 1:
        denom = denom + np.where(used, seeds_term**2 / (seeds - 1), 0.0)
    if dof_resid > 0:
        denom = denom + np.where(used, resid_term**2 / dof_resid, 0.0)
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
