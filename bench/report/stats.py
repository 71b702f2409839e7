"""Statistics over seeds: confidence intervals, paired tests, multiplicity, rank-first shares.

Pure functions on numpy arrays (and pandas Series indexed by seed); the report's tables
(:mod:`bench.report.tables`) call them so that every claim it prints survives a rerun with
other seeds. The unit of replication is the seed: one value per arm and seed, and the same
seed means the same initialisation and latents in every arm, so arms are compared *paired by
seed*.

Methods, in the order the report uses them:

* :func:`bootstrap_ci` — a 95 % interval for an arm's mean over seeds: the *expanded
  percentile* bootstrap (Hesterberg 2015, section 5.4), i.e. ``scipy.stats.bootstrap``'s
  percentile interval at a confidence level widened so that, for normal data, its width
  matches Student's t interval. The plain percentile interval is too narrow at the seed counts
  of a benchmark (about 89 % coverage at n = 8, normal data); the expanded one reaches about
  95 %. No interval that lies inside the data's range (every bootstrap interval of a mean does)
  can cover the centre of a symmetric distribution with probability above 1 − 2^(1−n), which
  is below 95 % for n < 6: :func:`min_seeds` gives that bound, and the report withholds
  intervals below it.
* :func:`paired_comparison` — an arm against the reference on the seeds both finished: the
  paired log-ratios log(arm_i / ref_i) when every value is > 0 (FD, MMD², NLL of a density
  above 1: errors that are compared as multiples and spread over orders of magnitude across
  seeds), else the paired differences arm_i − ref_i. The p-value is a two-sided sign-flip
  permutation test of "the paired differences are symmetric about 0" (Fisher 1935; Good 2005,
  ch. 3) via ``scipy.stats.permutation_test(permutation_type="samples")``: exact over all
  2^n sign assignments when 2^n ≤ ``n_resamples``, Monte Carlo otherwise. Its smallest
  attainable p is 2^(1−n): with fewer than 6 pairs nothing can reach α = 0.05. The effect is
  the mean paired difference, or the geometric-mean ratio exp(mean log-ratio), with the
  expanded-percentile bootstrap interval of :func:`bootstrap_ci` over the pairs.
* :func:`holm` — Holm's step-down adjustment (Holm 1979) of the p-values of all arms against
  the reference: controls the family-wise error rate at α under any dependence between the
  tests (they share the reference arm, so they are dependent).
* :func:`verdict` — "better" / "worse" by the metric's declared direction when the adjusted p
  is ≤ α, else "no detectable difference" (which is not evidence of equality).
* :func:`minimum_detectable_effect`, :func:`power`, :func:`seeds_for_power` — what a paired
  comparison at the seeds run could have seen (80 % power), and how many seeds an observed
  effect needs, by the normal approximation of the paired test.
* :func:`probability_of_rank_first` — the share of stratified bootstrap resamples (seeds
  resampled with replacement within each arm, as in rliable: Agarwal et al. 2021) in which an
  arm's mean is the best. A description of the uncertainty of the ranking, not a test.

References:
    Hesterberg, T. C. (2015). What teachers should know about the bootstrap: resampling in the
    undergraduate statistics curriculum. The American Statistician 69(4), 371–386.
    Efron, B. & Tibshirani, R. J. (1993). An Introduction to the Bootstrap. Chapman & Hall.
    Fisher, R. A. (1935). The Design of Experiments, section 21. Oliver & Boyd.
    Good, P. (2005). Permutation, Parametric and Bootstrap Tests of Hypotheses. Springer.
    Holm, S. (1979). A simple sequentially rejective multiple test procedure. Scandinavian
    Journal of Statistics 6(2), 65–70.
    Agarwal, R., Schwarzer, M., Castro, P. S., Courville, A. & Bellemare, M. G. (2021). Deep
    reinforcement learning at the edge of the statistical precipice. NeurIPS 34.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from dibregman.results import Direction

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
TOO_FEW = "too few seeds"
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, TOO_FEW)

LOG_RATIO = "log-ratio"
DIFFERENCE = "difference"

N_BOOTSTRAP = 10_000
N_PERMUTATIONS = 9_999  # exact (all 2^n sign flips) up to n = 13 pairs


def _rng_kwarg(function: Callable[..., Any], seed: int) -> dict[str, Any]:
    """The seeded-generator keyword of a scipy resampling function: ``rng`` from scipy 1.15,
    ``random_state`` before."""
    name = "rng" if "rng" in inspect.signature(function).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def _finite(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def min_seeds(alpha: float = 0.05, comparisons: int = 1) -> int:
    """The fewest seeds (or pairs) with which a sign-flip test can reach ``alpha`` after a
    Bonferroni/Holm split over ``comparisons`` tests: the smallest n with 2^(1−n) ≤
    alpha / comparisons.

    The same number bounds intervals: no interval inside the range of n values covers the
    centre of a symmetric distribution with probability above 1 − 2^(1−n), so a
    ``confidence`` interval needs ``min_seeds(1 − confidence)`` values (6 for 95 %).
    """
    if not 0 < alpha < 1 or comparisons < 1:
        raise ValueError(f"need 0 < alpha < 1 and comparisons >= 1, got {alpha}, {comparisons}")
    n = 1
    while 2.0 ** (1 - n) > alpha / comparisons:
        n += 1
    return n


def bootstrap_ci(values: Any, confidence: float = 0.95, rng_seed: int = 0,
                 n_resamples: int = N_BOOTSTRAP) -> tuple[float, float]:
    """Expanded-percentile bootstrap interval of the mean of ``values`` (one per seed).

    ``scipy.stats.bootstrap`` (percentile method, ``n_resamples`` resamples, seeded) at the
    widened level 1 − α' with α'/2 = Φ(−sqrt(n/(n−1)) · t_{n−1, 1−α/2}) (Hesterberg 2015), which
    corrects the percentile interval's narrowness at small n (its bootstrap distribution has the
    plug-in spread, ddof = 0, and normal rather than t tails). For normal data the result
    matches Student's t interval; for skewed data (lognormal) it under-covers somewhat less
    than the plain percentile interval does.

    Degenerate inputs (non-finite values are dropped first): fewer than 2 values give
    ``(nan, nan)`` — one seed says nothing about the spread over seeds; values that are all
    equal give ``(mean, mean)`` — every resample has that mean. With fewer than
    :func:`min_seeds` ``(1 − confidence)`` values (6 at 95 %) the interval is in effect the
    values' range and cannot reach the nominal coverage; callers should not print it as a
    ``confidence`` interval.

    Returns:
        (low, high).
    """
    x = _finite(values)
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    alpha = 1 - confidence
    expanded = 2 * sps.norm.sf(math.sqrt(n / (n - 1)) * sps.t.ppf(1 - alpha / 2, n - 1))
    result = sps.bootstrap((x,), np.mean, confidence_level=1 - expanded,
                           n_resamples=n_resamples, method="percentile", vectorized=True,
                           **_rng_kwarg(sps.bootstrap, rng_seed))
    low, high = result.confidence_interval
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """An arm against the reference, paired by seed.

    Attributes:
        n_pairs: seeds with a finite value in both arms.
        scale: :data:`LOG_RATIO` (log(arm/ref) per seed) or :data:`DIFFERENCE` (arm − ref).
        effect: mean paired log-ratio or difference (> 0: the arm's values are higher).
        estimate: the effect on the metric's scale: the geometric-mean ratio exp(effect) for
            log-ratios, the mean difference otherwise.
        ci_low, ci_high: bootstrap interval of ``estimate`` (:func:`bootstrap_ci` over pairs).
        p_value: two-sided sign-flip permutation p-value (NaN with fewer than 2 pairs).
    """

    n_pairs: int
    scale: str
    effect: float
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float


def _pairs(arm: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (arm, reference) arrays without non-finite pairs; Series are joined on their
    index (the seed), arrays must already be in the same seed order."""
    if isinstance(arm, pd.Series) and isinstance(reference, pd.Series):
        joined = pd.concat([arm.rename("arm"), reference.rename("ref")], axis=1, join="inner")
        a, r = joined["arm"].to_numpy(float), joined["ref"].to_numpy(float)
    else:
        a, r = np.asarray(arm, dtype=float).ravel(), np.asarray(reference, dtype=float).ravel()
        if a.shape != r.shape:
            raise ValueError(f"paired values need the same length, got {a.size} and {r.size}")
    keep = np.isfinite(a) & np.isfinite(r)
    return a[keep], r[keep]


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def sign_flip_p(differences: Any, n_resamples: int = N_PERMUTATIONS, rng_seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of the mean of paired ``differences`` under H0
    "symmetric about 0" (``scipy.stats.permutation_test``, ``permutation_type="samples"``, the
    differences as pairs (d_i, 0) whose members are swapped): exact when 2^n ≤ ``n_resamples``,
    else Monte Carlo with the (count + 1) / (``n_resamples`` + 1) correction. NaN with fewer
    than 2 differences; 1 when all are 0."""
    d = _finite(differences)
    if len(d) < 2:
        return math.nan
    result = sps.permutation_test((d, np.zeros_like(d)), _mean_difference,
                                  permutation_type="samples", alternative="two-sided",
                                  vectorized=True, n_resamples=n_resamples,
                                  **_rng_kwarg(sps.permutation_test, rng_seed))
    return float(min(1.0, result.pvalue))


def paired_comparison(arm: Any, reference: Any, *, scale: str = "auto",
                      confidence: float = 0.95, n_resamples: int = N_PERMUTATIONS,
                      n_bootstrap: int = N_BOOTSTRAP, rng_seed: int = 0) -> PairedComparison:
    """Compare ``arm`` with ``reference`` on the seeds both have.

    Args:
        arm, reference: one value per seed: pandas Series indexed by seed (joined on it) or
            arrays in the same seed order. Pairs with a non-finite member are dropped.
        scale: ``"auto"`` (:data:`LOG_RATIO` when every paired value is > 0, else
            :data:`DIFFERENCE`), or either of those to force it (a report fixes one scale for
            all arms of a metric). :data:`LOG_RATIO` with a value ≤ 0 raises ``ValueError``.
        confidence: level of the effect's bootstrap interval.
        n_resamples: permutation budget (exact test up to 2^n ≤ n_resamples).
        n_bootstrap: bootstrap resamples of the effect's interval.
        rng_seed: seeds both resamplings (the report is reproducible).

    Returns:
        :class:`PairedComparison`; with fewer than 2 pairs its p-value and interval are NaN.
    """
    a, r = _pairs(arm, reference)
    positive = bool(len(a)) and bool(np.all(a > 0) and np.all(r > 0))
    if scale == "auto":
        scale = LOG_RATIO if positive else DIFFERENCE
    if scale not in (LOG_RATIO, DIFFERENCE):
        raise ValueError(f"scale must be auto, {LOG_RATIO} or {DIFFERENCE}, got {scale!r}")
    if scale == LOG_RATIO and len(a) and not positive:
        raise ValueError("log-ratios need every paired value > 0")
    d = np.log(a) - np.log(r) if scale == LOG_RATIO else a - r
    effect = float(np.mean(d)) if len(d) else math.nan
    low, high = bootstrap_ci(d, confidence, rng_seed, n_bootstrap)
    p = sign_flip_p(d, n_resamples, rng_seed)
    if scale == LOG_RATIO:
        estimate, low, high = math.exp(effect), math.exp(low), math.exp(high)
    else:
        estimate = effect
    return PairedComparison(len(d), scale, effect, estimate, low, high, p)


def holm(p_values: Any) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input's order.

    With the m finite p-values sorted, p_(1) ≤ … ≤ p_(m), the adjusted value of p_(i) is
    max_{j ≤ i} min(1, (m − j + 1) · p_(j)): monotone in p, capped at 1, and rejecting where it is
    ≤ α controls the family-wise error rate at α (Holm 1979). NaN entries (no test) stay NaN
    and do not count in m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    m = int(tested.sum())
    if m == 0:
        return adjusted
    order = np.argsort(p[tested], kind="stable")
    steps = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[tested][order]))
    values = np.empty(m)
    values[order] = steps
    adjusted[tested] = values
    return adjusted


def verdict(adjusted_p: float, effect: float, direction: Direction | str,
            alpha: float = 0.05) -> str:
    """:data:`BETTER` or :data:`WORSE` when ``adjusted_p`` ≤ ``alpha``, by the sign of
    ``effect`` (arm minus reference on the compared scale: > 0 means the arm's values are
    higher) and the metric's declared ``direction``; :data:`NO_DIFFERENCE` otherwise;
    :data:`TOO_FEW` when ``adjusted_p`` is NaN (no test was possible)."""
    direction = Direction(direction)
    if adjusted_p is None or not np.isfinite(adjusted_p):
        return TOO_FEW
    if adjusted_p > alpha or effect == 0 or not np.isfinite(effect):
        return NO_DIFFERENCE
    higher = effect > 0
    return BETTER if higher == (direction is Direction.HIGHER) else WORSE


def minimum_detectable_effect(sd: float, n: int, alpha: float, power: float = 0.8,
                              log_scale: bool = False) -> float:
    """The smallest true mean paired difference a two-sided test at level ``alpha`` detects
    with probability ``power`` from ``n`` pairs whose differences have standard deviation
    ``sd``: ``(z_{1-alpha/2} + z_power) sd / sqrt(n)`` (the normal approximation of the
    paired test; the sign-flip test's power is close to the t-test's for symmetric
    differences). Infinite when ``n`` pairs cannot reach ``alpha`` at all (the sign-flip test's
    smallest p, 2^(1-n), is above it) or ``sd`` is unknown. With ``log_scale`` the differences
    are log-ratios and the result is the ratio ``exp(mde)`` (a factor either way)."""
    if n < 2 or not np.isfinite(sd) or 2.0 ** (1 - n) > alpha:
        return math.inf
    mde = (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd / math.sqrt(n)
    return math.exp(mde) if log_scale else float(mde)


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """The probability that a two-sided paired test at ``alpha`` flags a true mean difference
    ``effect`` from ``n`` pairs of spread ``sd`` (normal approximation,
    ``Phi(|effect| sqrt(n) / sd - z_{1-alpha/2})``); 0 when ``n`` pairs cannot reach
    ``alpha`` (see :func:`minimum_detectable_effect`)."""
    if n < 2 or not np.isfinite(sd) or not np.isfinite(effect) or 2.0 ** (1 - n) > alpha:
        return 0.0
    if sd == 0:
        return 1.0 if effect != 0 else 0.0
    return float(sps.norm.cdf(abs(effect) * math.sqrt(n) / sd - sps.norm.ppf(1 - alpha / 2)))


def seeds_for_power(effect: float, sd: float, alpha: float, power: float = 0.8) -> int:
    """The fewest pairs with which :func:`power` reaches ``power`` for ``effect`` and ``sd``
    (and the sign-flip test can reach ``alpha``); a large number when the effect is 0."""
    if not np.isfinite(effect) or not np.isfinite(sd) or effect == 0:
        return 10**6
    n = max(2, min_seeds(alpha))
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return max(n, math.ceil((z * sd / abs(effect)) ** 2 - 1e-9))


def probability_of_rank_first(per_arm_values_by_seed: Mapping[str, Any],
                              direction: Direction | str, n_resamples: int = N_BOOTSTRAP,
                              rng_seed: int = 0) -> dict[str, float]:
    """Per arm, the share of stratified bootstrap resamples in which its mean is the best.

    Each resample draws, independently for every arm, as many of that arm's seeds as it has,
    with replacement (the stratified bootstrap of rliable, Agarwal et al. 2021); the arms'
    means are compared by ``direction`` and the best gets 1 (tied best arms share it equally),
    so the shares sum to 1. Arms with fewer than 2 finite values get NaN and take no part: a
    single seed has no resampling spread and would look certain.

    Returns:
        ``{arm: share}`` in the input's order.
    """
    direction = Direction(direction)
    values = {arm: _finite(v) for arm, v in per_arm_values_by_seed.items()}
    shares = {arm: math.nan for arm in values}
    eligible = [arm for arm, v in values.items() if len(v) >= 2]
    if not eligible:
        return shares
    rng = np.random.default_rng(rng_seed)
    means = np.stack([v[rng.integers(0, len(v), size=(n_resamples, len(v)))].mean(axis=1)
                      for v in (values[arm] for arm in eligible)])
    best = means.min(axis=0) if direction is Direction.LOWER else means.max(axis=0)
    winners = means == best
    share = (winners / winners.sum(axis=0)).mean(axis=1)
    shares.update({arm: float(s) for arm, s in zip(eligible, share, strict=True)})
    return shares
