"""The report's statistics (bench.report.stats) on synthetic seeds with known effects: interval
coverage, the permutation test's size and power, Holm's adjustment, verdicts by direction, and
P(rank first)."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.report import stats
from dibregman.results import Direction


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    """400 normal samples of 8 seeds: the expanded-percentile interval covers the mean in
    [0.90, 0.99] of them (the plain percentile interval covers about 0.89 at n = 8)."""
    rng = np.random.default_rng(20240601)
    covered, widths = 0, []
    for repetition in range(400):
        x = rng.normal(3.0, 2.0, size=8)
        low, high = stats.bootstrap_ci(x, 0.95, rng_seed=repetition)
        assert low <= x.mean() <= high
        covered += low <= 3.0 <= high
        widths.append(high - low)
    assert 0.90 <= covered / 400 <= 0.99
    # about Student's t interval's width, 2 t_{7, 0.975} sd / sqrt(n), sd = 2, on average
    expected = 2 * 2.3646 * 2.0 / math.sqrt(8) * 0.96  # E[s] = c4(8) sd, c4(8) ≈ 0.965
    assert np.mean(widths) == pytest.approx(expected, rel=0.1)


def test_bootstrap_ci_is_reproducible_and_degenerate_inputs_are_documented_values():
    x = [1.0, 2.5, 2.0, 4.0, 3.0, 3.5]
    assert stats.bootstrap_ci(x, rng_seed=3) == stats.bootstrap_ci(x, rng_seed=3)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.7]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.7, np.nan]))  # one finite value
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    low, high = stats.bootstrap_ci([1.0, 2.0, 3.0])  # n < 6: in effect the range
    assert (low, high) == pytest.approx((1.0, 3.0))


def test_min_seeds_is_where_the_exact_sign_flip_test_can_first_reject():
    assert stats.min_seeds(0.05) == 6 and stats.min_seeds(1 - 0.95) == 6
    assert stats.min_seeds(0.05, comparisons=5) == 8
    for comparisons in (1, 3):
        n = stats.min_seeds(0.05, comparisons)
        alpha = 0.05 / comparisons
        assert stats.sign_flip_p(np.arange(1.0, n)) > alpha  # n - 1 pairs, all one sign
        assert stats.sign_flip_p(np.arange(1.0, n + 1)) <= alpha


def null_pairs(rng, n=8):
    """Paired values with a strong per-seed effect shared by both arms and no arm effect."""
    seed_effect = rng.normal(0.0, 3.0, size=n)
    return seed_effect + rng.normal(size=n), seed_effect + rng.normal(size=n)


def test_permutation_p_values_are_uniform_under_no_difference():
    rng = np.random.default_rng(7)
    p = np.array([stats.paired_comparison(*null_pairs(rng), n_bootstrap=200,
                                          rng_seed=i).p_value for i in range(300)])
    assert 0.01 <= np.mean(p <= 0.05) <= 0.10
    assert 0.40 <= np.mean(p <= 0.5) <= 0.60
    assert p.min() >= 2 / 2**8 - 1e-12  # exact test: 2^(1-n) is the floor


def test_log_ratio_p_values_are_uniform_under_no_difference():
    rng = np.random.default_rng(8)
    rejected = 0
    for i in range(300):
        arm, reference = null_pairs(rng)
        result = stats.paired_comparison(np.exp(arm / 3), np.exp(reference / 3),
                                         n_bootstrap=200, rng_seed=i)
        assert result.scale == stats.LOG_RATIO
        rejected += result.p_value <= 0.05
    assert 0.01 <= rejected / 300 <= 0.10


def test_permutation_test_rejects_a_two_sd_paired_shift_almost_always():
    rng = np.random.default_rng(9)
    results = []
    for i in range(100):
        arm, reference = null_pairs(rng)
        results.append(stats.paired_comparison(arm - 2 * math.sqrt(2), reference,
                                                n_bootstrap=200, rng_seed=i))
    assert np.mean([r.p_value <= 0.05 for r in results]) >= 0.9
    assert all(r.scale == stats.DIFFERENCE and r.effect < 0 for r in results)


def test_paired_comparison_pairs_by_seed_and_reports_the_ratio_with_its_interval():
    rng = np.random.default_rng(11)
    seeds = np.arange(10)
    reference = pd.Series(rng.lognormal(0, 1, 10), index=seeds)
    arm = pd.Series(0.5 * reference.to_numpy() * rng.lognormal(0, 0.05, 10), index=seeds)
    shuffled = arm.sample(frac=1, random_state=0)  # a Series is joined on its seed index
    extra = pd.concat([shuffled, pd.Series([99.0], index=[42])])  # seed 42: no partner
    result = stats.paired_comparison(extra, reference)
    assert result.n_pairs == 10 and result.scale == stats.LOG_RATIO
    assert result.estimate == pytest.approx(0.5, rel=0.05)
    assert result.ci_low < 0.5 < result.ci_high and result.ci_high / result.ci_low < 1.2
    assert result.p_value == pytest.approx(2 / 2**10)
    # unpaired (wrong order) arrays lose the seed effect: no longer detectable
    unpaired = stats.paired_comparison(arm.to_numpy(), reference.to_numpy()[::-1])
    assert unpaired.p_value > 0.05


def test_paired_comparison_scales_and_degenerate_pairs():
    assert stats.paired_comparison([1.0, -2.0, 3.0], [0.5, 1.0, 1.0]).scale == stats.DIFFERENCE
    with pytest.raises(ValueError, match="> 0"):
        stats.paired_comparison([1.0, -2.0], [1.0, 1.0], scale=stats.LOG_RATIO)
    one = stats.paired_comparison([1.0, np.nan], [2.0, 3.0])
    assert one.n_pairs == 1 and math.isnan(one.p_value) and math.isnan(one.ci_low)
    same = stats.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.p_value == 1.0 and same.estimate == 1.0
    two = stats.paired_comparison([1.0, 2.0], [2.0, 4.0])
    assert two.p_value == pytest.approx(0.5)  # 2 pairs: the smallest p there is


def test_holm_on_known_vectors():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.01, 0.02, 0.03, 0.04]) == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.02]) == pytest.approx([0.02])
    adjusted = stats.holm([np.nan, 0.01, 0.04])  # NaN: not tested, not counted in m
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.02, 0.04])
    assert stats.holm([]).size == 0


def test_holm_is_monotone_capped_and_never_below_the_raw_p():
    rng = np.random.default_rng(3)
    for _ in range(200):
        p = rng.uniform(0, 0.3, size=rng.integers(1, 12))
        adjusted = stats.holm(p)
        order = np.argsort(p)
        assert np.all(np.diff(adjusted[order]) >= -1e-15)
        assert np.all(adjusted >= p) and np.all(adjusted <= 1)
        assert np.all(adjusted <= np.minimum(1, len(p) * p) + 1e-15)  # never above Bonferroni


def test_verdict_follows_the_declared_direction():
    assert stats.verdict(0.01, -0.3, Direction.LOWER) == stats.BETTER
    assert stats.verdict(0.01, 0.3, Direction.LOWER) == stats.WORSE
    assert stats.verdict(0.01, 0.3, Direction.HIGHER) == stats.BETTER
    assert stats.verdict(0.01, -0.3, "higher") == stats.WORSE
    assert stats.verdict(0.2, -5.0, Direction.LOWER) == stats.NO_DIFFERENCE
    assert stats.verdict(0.05, -5.0, Direction.LOWER, alpha=0.05) == stats.BETTER
    assert stats.verdict(0.03, -5.0, Direction.LOWER, alpha=0.01) == stats.NO_DIFFERENCE
    assert stats.verdict(np.nan, -5.0, Direction.LOWER) == stats.TOO_FEW


def test_probability_of_rank_first():
    rng = np.random.default_rng(5)
    clear = {"good": rng.normal(0, 1, 8), "bad": rng.normal(10, 1, 8),
             "worse": rng.normal(20, 1, 8)}
    shares = stats.probability_of_rank_first(clear, Direction.LOWER, 2000, rng_seed=1)
    assert list(shares) == ["good", "bad", "worse"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["good"] > 0.99
    flipped = stats.probability_of_rank_first(clear, Direction.HIGHER, 2000, rng_seed=1)
    assert flipped["worse"] > 0.99

    same = rng.normal(0, 1, 8)
    twins = stats.probability_of_rank_first({"a": same, "b": same.copy()}, "lower", 10_000)
    assert sum(twins.values()) == pytest.approx(1.0)
    assert twins["a"] == pytest.approx(0.5, abs=0.03)

    constant = stats.probability_of_rank_first({"a": [1.0, 1.0], "b": [1.0, 1.0]}, "lower",
                                               100)
    assert constant == {"a": 0.5, "b": 0.5}  # exact ties share the win

    three = {"x": rng.normal(0, 1, 6), "y": rng.normal(0, 1, 6), "z": rng.normal(0, 1, 6)}
    assert sum(stats.probability_of_rank_first(three, "lower", 3000).values()) == \
        pytest.approx(1.0)

    sparse = stats.probability_of_rank_first({"a": [0.0], "b": [1.0, 2.0], "c": []}, "lower")
    assert math.isnan(sparse["a"]) and math.isnan(sparse["c"]) and sparse["b"] == 1.0
