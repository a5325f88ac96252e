"""leaderboard/stats.py: known answers (scipy's Wilson and binomial test, identical predictions, a
large gap on every task, Holm) and simulations over many synthetic test sets at VTAB sizes:
interval coverage (one seed, several seeds, both averages) and false-positive rates under the null
(per task, and family-wise after Holm). Vectorised and seeded: each test runs in well under 2 s."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from vtab_lily.errors import UserError
from vtab_lily.leaderboard import stats
from vtab_lily.leaderboard.stats import TaskRuns
from vtab_lily.tasks import VTAB_TASKS

SIZES = {name: task.test_size for name, task in VTAB_TASKS.items()}
GROUPS = {name: task.group for name, task in VTAB_TASKS.items()}
Z95 = sps.norm.ppf(0.975)


def latent_correct(rng: np.random.Generator, draws: int, seeds: int, n: int, accuracy: np.ndarray,
                   image_share: float, extra: tuple[int, ...] = ()) -> np.ndarray:
    """(draws, *extra, seeds, n) booleans: run s is right on image i when a latent score is below
    the probit of its accuracy; the score shares ``image_share`` of its variance across runs (some
    images are hard for every run), so each run's population accuracy is exactly ``accuracy``."""
    image = rng.standard_normal((draws, *[1] * len(extra), 1, n), dtype=np.float32)
    own = rng.standard_normal((draws, *extra, seeds, n), dtype=np.float32)
    score = math.sqrt(image_share) * image + math.sqrt(1 - image_share) * own
    return score < sps.norm.ppf(accuracy)[..., None]


def runs(matrix: np.ndarray, seeds: tuple[int, ...] | None = None) -> TaskRuns:
    seeds = seeds or tuple(range(len(matrix)))
    return TaskRuns(seeds, tuple(int(x) for x in matrix.sum(axis=1)), (matrix.shape[1],) * len(matrix), matrix, "list")


# ---- known answers ----

def test_wilson_and_mcnemar_are_scipys() -> None:
    for k, n in [(0, 10), (3, 10), (10, 10), (1500, 1880), (700, 711), (26000, 26032)]:
        ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
        lo, hi = stats.wilson(k / n, n, sps.norm.ppf(0.95))
        assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-12)
        est = stats.task_estimate([k], [n], level=0.9)
        assert (est.lo, est.hi, est.mean) == pytest.approx((100 * ci.low, 100 * ci.high, 100 * k / n), abs=1e-9)
        assert est.kind == "test examples" and est.n_examples == n
    a_only, b_only = np.meshgrid(np.arange(0, 40, 3), np.arange(0, 40, 4))
    ours = stats.mcnemar_p(a_only, b_only)
    for x, y, p in zip(a_only.ravel(), b_only.ravel(), ours.ravel()):
        assert p == pytest.approx(1.0 if x + y == 0 else sps.binomtest(int(x), int(x + y)).pvalue, rel=1e-9)


def test_several_seeds_widen_the_interval_with_their_spread() -> None:
    same = stats.task_estimate([1500, 1500, 1500], [1880] * 3)
    one = stats.task_estimate([1500], [1880])
    assert (same.lo, same.hi) == pytest.approx((one.lo, one.hi))  # no spread: the images' Wilson interval
    spread = stats.task_estimate([1460, 1500, 1540], [1880] * 3)
    assert spread.kind == "test examples and seeds" and spread.n_seeds == 3
    assert spread.hi - spread.lo > 2 * (one.hi - one.lo)
    assert spread.df < 10  # three seeds: the seed variance is itself uncertain (t quantile)


@pytest.mark.parametrize("correct, n", [([5], [4]), ([1], [0]), ([-1], [10]), ([float("nan")], [10]), ([], []),
                                        ([1.5], [10]), ([1, 2], [10])])
def test_bad_counts_are_user_errors(correct, n) -> None:
    with pytest.raises(UserError):
        stats.task_estimate(correct, n)


def test_identical_predictions_give_zero_difference_and_p_one() -> None:
    rng = np.random.default_rng(0)
    for seeds in (1, 3):
        a = rng.random((seeds, 1880)) < 0.7
        result = stats.paired_task(a, a.copy())
        assert (result.diff, result.p) == (0.0, 1.0) and result.lo <= 0 <= result.hi
    with pytest.raises(UserError, match="n = 0"):
        stats.paired_task(np.zeros((1, 0), bool), np.zeros((1, 0), bool))
    with pytest.raises(UserError, match="same images"):
        stats.paired_task(np.zeros((1, 5), bool), np.zeros((1, 6), bool))


@pytest.mark.parametrize("seeds", [1, 3])
def test_a_large_gap_on_every_task_is_better_after_holm(seeds: int) -> None:
    rng = np.random.default_rng(1)
    a_runs, b_runs = {}, {}
    for task, n in SIZES.items():
        n = min(n, 5000)  # smaller than dsprites' 73,728 to stay fast; the gap is still clear
        b = latent_correct(rng, 1, seeds, n, np.array(0.6), 0.6)[0]
        a = b | (rng.random((seeds, n)) < 0.25)  # right where B is, and on a quarter of the rest
        a_runs[task], b_runs[task] = runs(a), runs(b)
    comparison = stats.compare(a_runs, b_runs, GROUPS, seed=3)
    assert [r.verdict for r in comparison.tasks] == ["better"] * 19
    assert all(r.p_holm >= r.paired.p for r in comparison.tasks)
    for avg in (comparison.avg_tasks, comparison.avg_groups):
        assert avg.lo > 5 and avg.unpaired == 0 and avg.n_tasks == 19
    reverse = stats.compare(b_runs, a_runs, GROUPS)
    assert [r.verdict for r in reverse.tasks] == ["worse"] * 19


def test_holm_known_answer_and_untested_tasks() -> None:
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    adjusted = stats.holm([0.01, math.nan, 0.02])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # 2 x 0.8 capped at 1; monotone
    assert stats.holm([]) == []


def test_averages_weight_tasks_and_groups() -> None:
    tasks = {"t1": stats.task_estimate([900], [1000]), "t2": stats.task_estimate([500], [1000]),
             "t3": stats.task_estimate([700], [1000])}
    plain = stats.average_estimate(tasks)
    assert plain.mean == pytest.approx(70.0)
    grouped = stats.average_estimate(tasks, {"t1": "g1", "t2": "g1", "t3": "g2"})
    assert grouped.mean == pytest.approx((90 + 50) / 4 + 70 / 2)
    se = math.sqrt(sum(e.se**2 for e in tasks.values())) / 3
    assert plain.hi - plain.lo == pytest.approx(2 * Z95 * se)
    with pytest.raises(UserError, match="no group given for task"):
        stats.average_estimate(tasks, {"t1": "g1"})
    with pytest.raises(UserError, match="at least one task"):
        stats.average_estimate({})


def test_the_best_rows_mark() -> None:
    rng = np.random.default_rng(2)
    best, close, far = {}, {}, {}
    for task in ("t1", "t2", "t3"):
        b = rng.random((1, 2000)) < 0.7
        right, wrong = np.flatnonzero(b[0]), np.flatnonzero(~b[0])
        c = b.copy()
        c[0, right[:10]], c[0, wrong[:9]] = False, True  # one image fewer right: a hair below the best
        best[task], close[task] = runs(b), runs(c)
        far[task] = runs(b & (rng.random((1, 2000)) < 0.8))
    old = {t: TaskRuns((0,), r.correct, r.n) for t, r in close.items()}  # no predictions
    marks = stats.indistinguishable_from_best({"best": best, "close": close, "far": far, "old": old,
                                               "partial": {"t1": best["t1"]}})
    assert marks["best"].best and not marks["close"].best
    assert marks["close"].indistinguishable and marks["close"].paired
    assert not marks["far"].indistinguishable and marks["far"].lo > 0
    assert marks["old"].indistinguishable and not marks["old"].paired
    assert "partial" not in marks  # other task set: no mark


# ---- simulations over synthetic test sets ----

def covered(lo: np.ndarray, hi: np.ndarray, truth: float | np.ndarray) -> float:
    return float(np.mean((lo <= truth) & (truth <= hi)))


@pytest.mark.parametrize("n, p", [(711, 0.8), (1880, 0.7), (6149, 0.99), (26032, 0.95), (73728, 0.5)])
def test_one_seed_interval_covers_95_percent(n: int, p: float) -> None:
    rng = np.random.default_rng(n)
    correct = rng.binomial(n, p, size=(4000, 1))
    out = stats.task_intervals(correct, np.full_like(correct, n))
    assert 0.93 <= covered(out["lo"], out["hi"], p) <= 0.97


def test_several_seeds_interval_covers_95_percent() -> None:
    """Three seeds scored on the same 711 images (kitti's size); each seed's population accuracy is
    drawn around the truth (sd 1 point), and the seeds agree on the hard images."""
    rng = np.random.default_rng(4)
    truth, draws, seeds, n = 0.75, 2000, 3, 711
    accuracy = truth + 0.01 * rng.standard_normal((draws, seeds))
    matrix = latent_correct(rng, draws, seeds, n, accuracy, 0.7)
    out = stats.task_intervals(matrix.sum(axis=-1), np.full((draws, seeds), n), matrix=matrix)
    assert 0.93 <= covered(out["lo"], out["hi"], truth) <= 0.97
    # From counts alone (old runs) the images' share is bounded, not measured: conservative.
    counts_only = stats.task_intervals(matrix.sum(axis=-1), np.full((draws, seeds), n))
    assert covered(counts_only["lo"], counts_only["hi"], truth) >= 0.95


def test_average_intervals_cover_95_percent() -> None:
    """19 tasks at VTAB's test sizes and varied accuracies, one seed each: both averages' intervals."""
    rng = np.random.default_rng(5)
    names = list(SIZES)
    truth = rng.uniform(0.3, 0.98, size=len(names))
    n = np.array([SIZES[t] for t in names])
    correct = rng.binomial(n, truth, size=(4000, len(names)))
    per_task = stats.task_intervals(correct[..., None], np.broadcast_to(n[:, None], correct.shape + (1,)))
    for groups in (None, GROUPS):
        w = stats.task_weights(names, groups)
        _, lo, hi, _, _ = stats.combine(per_task["mean"], per_task["se"], per_task["df"], w, 0.95)
        assert 0.93 <= covered(lo, hi, float(w @ truth)) <= 0.97


def test_average_over_seeds_covers_95_percent() -> None:
    """19 tasks of 300 images, three seeds each with a seed spread: the mean of group means."""
    rng = np.random.default_rng(6)
    draws, seeds, n = 1000, 3, 300
    truth = rng.uniform(0.4, 0.95, size=19)
    means, ses, dfs = [], [], []
    for p in truth:
        accuracy = np.clip(p + 0.01 * rng.standard_normal((draws, seeds)), 0.01, 0.99)
        matrix = latent_correct(rng, draws, seeds, n, accuracy, 0.7)
        out = stats.task_intervals(matrix.sum(axis=-1), np.full((draws, seeds), n), matrix=matrix)
        means.append(out["mean"]), ses.append(out["se"]), dfs.append(out["df"])
    w = stats.task_weights(list(SIZES), GROUPS)
    _, lo, hi, _, _ = stats.combine(np.stack(means, -1), np.stack(ses, -1), np.stack(dfs, -1), w, 0.95)
    assert 0.93 <= covered(lo, hi, float(w @ truth)) <= 0.97


@pytest.mark.parametrize("discordant", [0.42, 0.1, 0.02])  # independent errors at 70% ... strongly correlated
def test_mcnemar_false_positives_under_the_null(discordant: float) -> None:
    """Equal accuracy: an image is A-only right as often as B-only right; 1,880 images (dtd)."""
    rng = np.random.default_rng(7)
    q = discordant / 2
    counts = rng.multinomial(1880, [q, q, 1 - 2 * q], size=4000)
    p = stats.mcnemar_p(counts[:, 0], counts[:, 1])
    assert 0.03 <= np.mean(p < 0.05) <= 0.07


@pytest.mark.parametrize("between_methods", [0.0, 0.2])  # A's and B's errors independent / correlated
def test_several_seed_test_false_positives_under_the_null(between_methods: float) -> None:
    """Three seeds per method, each seed's accuracy drawn around the same truth (sd 1 point),
    711 images shared by all runs (hard images hard for all)."""
    rng = np.random.default_rng(8)
    draws, seeds, n = 2000, 3, 711
    accuracy = 0.7 + 0.01 * rng.standard_normal((draws, 2, seeds))
    image = rng.standard_normal((draws, 1, 1, n), dtype=np.float32)
    pair = rng.standard_normal((draws, 1, seeds, n), dtype=np.float32)
    own = rng.standard_normal((draws, 2, seeds, n), dtype=np.float32)
    score = math.sqrt(0.6) * image + math.sqrt(between_methods) * pair + math.sqrt(0.4 - between_methods) * own
    correct = score < sps.norm.ppf(accuracy)[..., None]
    _, _, _, p = stats.paired_t(correct[:, 0], correct[:, 1])
    assert 0.03 <= np.mean(p < 0.05) <= 0.07


def test_holm_keeps_the_family_wise_rate() -> None:
    """19 null tasks at VTAB sizes, one seed: some task is 'significant' in ~60% of benchmarks
    unadjusted; after Holm in at most ~5%."""
    rng = np.random.default_rng(9)
    draws = 2000
    p = np.stack([stats.mcnemar_p(*rng.multinomial(n, [0.05, 0.05, 0.9], size=draws)[:, :2].T)
                  for n in SIZES.values()], axis=1)
    assert np.mean((p < 0.05).any(axis=1)) > 0.5
    adjusted = np.array([stats.holm(row) for row in p])
    assert np.mean((adjusted < 0.05).any(axis=1)) <= 0.06


def test_intervals_stay_inside_percentages() -> None:
    perfect = {t: stats.task_estimate([300], [300]) for t in ("t1", "t2")}
    assert all(e.hi == pytest.approx(100.0) and e.lo < 100 for e in perfect.values())
    average = stats.average_estimate(perfect)
    assert average.mean == 100.0 and average.lo < 100 and average.hi == 100.0
    one_image = stats.paired_task(np.array([[True], [True], [False]]), np.array([[False], [True], [False]]))
    assert -100 <= one_image.lo <= one_image.diff <= one_image.hi <= 100


def test_paired_bootstrap_interval_covers_the_true_difference() -> None:
    """One seed, 711 images: A alone right on 6% of images, B alone on 3% (true difference 3 points)."""
    rng = np.random.default_rng(10)
    n, a_only, b_only = 711, 0.06, 0.03
    draws = rng.multinomial(n, [a_only, b_only, 1 - a_only - b_only], size=1000)
    lo, hi = stats.bootstrap_pairs(draws[:, 0], draws[:, 1], n, 0.95, seed=11, resamples=999)
    assert 0.93 <= covered(lo, hi, a_only - b_only) <= 0.97
    # seeded: the same call gives the same interval; another seed another one
    first = stats.paired_task(*(np.array([[True] * 40 + [False] * 20 + [True] * 60, [False] * 40 + [True] * 20 + [True] * 60])[:, None]))
    assert first == stats.paired_task(*(np.array([[True] * 40 + [False] * 20 + [True] * 60, [False] * 40 + [True] * 20 + [True] * 60])[:, None]))
    few = [stats.bootstrap_pairs(400, 200, 1200, 0.95, seed=s, resamples=99) for s in (1, 1, 2)]
    assert few[0] == few[1] and few[0] != few[2]
