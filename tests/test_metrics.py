"""Tests for dibregman.metrics: Fréchet distance, precision/recall, MMD, exact mixture metrics.

Every random draw uses its own seeded ``torch.Generator``. Statistical assertions are stated in
units of the estimator's standard error (or as exact identities), not as tuned numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from torch import distributions as dist

from dibregman.metrics import (
    ModeStats,
    frechet_distance,
    frechet_distance_to_moments,
    gaussian_moments,
    kth_nn_radii,
    mixture_log_prob,
    mixture_moments,
    mmd_rbf,
    mode_assignment,
    mode_stats,
    negative_log_likelihood,
    precision_recall,
)

# ----------------------------------------------------------------------------------------------
# helpers


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ring_mixture(
    k: int = 8, radius: float = 10.0, std: float = 0.5, weights: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k`` well-separated isotropic 2-d Gaussians on a circle (adjacent means ~15 std apart)."""
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    stds = torch.full((k,), std, dtype=torch.float64)
    w = (
        torch.full((k,), 1.0 / k, dtype=torch.float64)
        if weights is None
        else torch.tensor(weights, dtype=torch.float64)
    )
    return means, stds, w


def sample_mixture(
    n: int, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact draws ``(n, D)`` from the mixture and their component labels ``(n,)``."""
    g = gen(seed)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    noise = torch.randn(n, means.shape[1], generator=g, dtype=torch.float64)
    return means[labels] + stds[labels, None] * noise, labels


def torch_mixture(means, stds, weights) -> dist.MixtureSameFamily:
    comp = dist.Independent(dist.Normal(means, stds[:, None].expand_as(means)), 1)
    return dist.MixtureSameFamily(dist.Categorical(probs=weights), comp)


def random_spd(d: int, seed: int) -> np.ndarray:
    a = torch.randn(d, d, generator=gen(seed), dtype=torch.float64).numpy()
    return a @ a.T / d + 0.1 * np.eye(d)


def psd_sqrt(c: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


# ----------------------------------------------------------------------------------------------
# Fréchet distance


@pytest.mark.parametrize("d", [2, 16])
def test_frechet_identical_moments_is_zero(d):
    mu = torch.randn(d, generator=gen(d), dtype=torch.float64).numpy()
    cov = random_spd(d, seed=d + 1)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6


def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.5, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_non_commuting_covariances_match_symmetric_form():
    # Tr (C1 C2)^{1/2} = Tr (C1^{1/2} C2 C1^{1/2})^{1/2}; the right side only needs eigh.
    c1, c2 = random_spd(4, seed=1), random_spd(4, seed=2)
    assert not np.allclose(c1 @ c2, c2 @ c1)
    mu1, mu2 = np.arange(4.0), np.ones(4)
    r1 = psd_sqrt(c1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * psd_sqrt(r1 @ c2 @ r1))
    fd = frechet_distance(mu1, c1, mu2, c2)
    assert fd == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(fd, rel=1e-8)


def test_frechet_one_dimensional_is_wasserstein2_squared():
    # clean-fid itself fails on 1x1 covariances (SciPy's sqrtm returns no error estimate);
    # the wrapper pads a shared unit coordinate: W2^2 = (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.eye(1)) == (
        pytest.approx(9.0 + 1.0, rel=1e-12)
    )
    assert frechet_distance(0.5, 9.0, 0.5, 0.25) == pytest.approx((3.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_float32_inputs_are_computed_in_float64():
    c = random_spd(3, seed=5)
    mu = np.zeros(3, dtype=np.float32)
    fd = frechet_distance(mu, c.astype(np.float32), mu, c.astype(np.float32))
    assert isinstance(fd, float) and abs(fd) < 1e-6


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


@pytest.mark.filterwarnings("ignore")  # SciPy warns that the collapsed covariance is singular
def test_frechet_of_collapsed_samples():
    # All samples at one point c: the fitted Gaussian is N(c, 0), FD = ||c - m||^2 + Tr C.
    mu, cov = np.array([1.0, -1.0]), random_spd(2, seed=3)
    x = torch.tensor([[3.0, 2.0]]).repeat(50, 1)
    expected = (2.0**2 + 3.0**2) + np.trace(cov)
    assert frechet_distance_to_moments(x, mu, cov) == pytest.approx(expected, rel=1e-8)


def test_gaussian_moments_match_numpy():
    x = torch.randn(500, 3, generator=gen(0), dtype=torch.float32) * 2 + 1
    mu, cov = gaussian_moments(x)
    xs = x.double().numpy()
    assert mu.dtype == np.float64 and cov.dtype == np.float64
    np.testing.assert_allclose(mu, xs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(xs, rowvar=False), rtol=1e-12)
    mu1, cov1 = gaussian_moments(x[:, :1])
    assert mu1.shape == (1,) and cov1.shape == (1, 1)  # np.cov would return a 0-d array


def test_frechet_to_moments_shrinks_with_sample_size():
    mu, cov = np.array([1.0, -2.0]), random_spd(2, seed=7)
    chol = torch.from_numpy(np.linalg.cholesky(cov))
    mean_fd = []
    for n in (100, 1_000, 10_000, 100_000):
        fds = []
        for seed in range(4):
            z = torch.randn(n, 2, generator=gen(100 * seed + n), dtype=torch.float64)
            fds.append(frechet_distance_to_moments(z @ chol.T + torch.from_numpy(mu), mu, cov))
        mean_fd.append(np.mean(fds))
    assert all(a > b for a, b in zip(mean_fd, mean_fd[1:], strict=False)), mean_fd


def test_frechet_grows_with_added_noise():
    means, stds, weights = ring_mixture()
    x, _ = sample_mixture(5000, means, stds, weights, seed=1)
    noise = torch.randn(x.shape, generator=gen(2), dtype=torch.float64)
    mu, cov = gaussian_moments(x)
    fds = [frechet_distance_to_moments(x + s * noise, mu, cov) for s in (0.0, 0.3, 1.0, 3.0, 10.0)]
    assert abs(fds[0]) < 1e-6
    assert all(a < b for a, b in zip(fds, fds[1:], strict=False)), fds


# ----------------------------------------------------------------------------------------------
# precision / recall


def test_precision_recall_hand_example():
    # real 0, 1, 3 with k = 1 -> radii 1, 1, 2: manifold [-1, 2] U [1, 5] (closed balls).
    # fake -1 (on the boundary), 5 (boundary), 5.5, -2 -> precision 2/4.
    # fake radii (k = 1) 1, 0.5, 0.5, 1: only real 0 lies within 1 of fake -1 -> recall 1/3.
    real = torch.tensor([[0.0], [1.0], [3.0]])
    fake = torch.tensor([[-1.0], [5.0], [5.5], [-2.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(0.5)
    assert recall == pytest.approx(1 / 3)
    # a set is inside its own manifold
    assert precision_recall(real, real, k=1) == (1.0, 1.0)


def test_precision_recall_same_distribution_high():
    means, stds, weights = ring_mixture()
    real, _ = sample_mixture(2000, means, stds, weights, seed=10)
    fake, _ = sample_mixture(2000, means, stds, weights, seed=11)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.8 and recall > 0.8


def test_precision_recall_detects_mode_dropping():
    means, stds, weights = ring_mixture()
    real, labels = sample_mixture(2000, means, stds, weights, seed=12)
    keep = torch.tensor([0, 2, 4, 6])
    fake, _ = sample_mixture(2000, means[keep], stds[keep], torch.full((4,), 0.25).double(), 13)
    precision, recall = precision_recall(real, fake, k=3)
    kept_share = float(torch.isin(labels, keep).double().mean())
    assert precision > 0.8
    # real points of dropped modes are ~15 std from every fake point: recall cannot exceed
    # the share of real points in the kept modes (~1/2)
    assert recall <= kept_share
    assert recall < 0.6


def test_precision_recall_far_away_is_zero():
    means, stds, weights = ring_mixture()
    real, _ = sample_mixture(1000, means, stds, weights, seed=14)
    fake, _ = sample_mixture(1000, means, stds, weights, seed=15)
    assert precision_recall(real, fake + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_chunking_does_not_change_result():
    means, stds, weights = ring_mixture()
    real, _ = sample_mixture(160, means, stds, weights, seed=16)
    fake, _ = sample_mixture(120, means * 1.1, stds * 1.5, weights, seed=17)
    small = precision_recall(real, fake, k=3, chunk=7)
    whole = precision_recall(real, fake, k=3, chunk=10_000)
    assert small == whole
    assert 0.0 < small[0] < 1.0 and 0.0 < small[1] < 1.0  # a non-trivial case


def test_precision_recall_with_known_real_radii_is_the_same_result():
    means, stds, weights = ring_mixture()
    real, _ = sample_mixture(300, means, stds, weights, seed=18)
    fake, _ = sample_mixture(200, means * 1.1, stds * 1.5, weights, seed=19)
    radii = kth_nn_radii(real, k=3)
    assert precision_recall(real, fake, k=3, real_radii=radii) == precision_recall(real, fake, k=3)
    with pytest.raises(ValueError, match="real_radii must have shape"):
        precision_recall(real, fake, k=3, real_radii=radii[:10])


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ValueError):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)


# ----------------------------------------------------------------------------------------------
# MMD


def test_mmd_hand_computed_single_bandwidth():
    # x = {0, 1}, y = {0, 2}, k(a, b) = exp(-(a - b)^2 / 2):
    # xx = k(0, 1) = e^-0.5, yy = k(0, 2) = e^-2, xy = (1 + e^-2 + 2 e^-0.5) / 4.
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    e05, e2 = math.exp(-0.5), math.exp(-2.0)
    expected = e05 + e2 - 2 * (1 + e2 + 2 * e05) / 4
    assert mmd_rbf(x, y, bandwidths=(1.0,)) == pytest.approx(expected, rel=1e-12)
    # a sum of kernels gives the sum of the per-kernel MMDs
    both = mmd_rbf(x, y, bandwidths=(1.0, 2.0))
    assert both == pytest.approx(expected + mmd_rbf(x, y, bandwidths=(2.0,)), rel=1e-12)


def test_mmd_default_bandwidths_are_scaled_median():
    x = torch.randn(300, 3, generator=gen(20), dtype=torch.float64)
    y = torch.randn(200, 3, generator=gen(21), dtype=torch.float64) + 0.5
    median = float(torch.pdist(torch.cat([x, y])).median())
    explicit = mmd_rbf(x, y, bandwidths=(0.5 * median, median, 2 * median))
    assert mmd_rbf(x, y) == pytest.approx(explicit, rel=1e-9)


def test_mmd_same_distribution_near_zero_shifted_positive_and_symmetric():
    means, stds, weights = ring_mixture()

    def draw(seed: int, shift: float = 0.0) -> torch.Tensor:
        moved = means + torch.tensor([shift, 0.0], dtype=torch.float64)
        return sample_mixture(1000, moved, stds, weights, seed)[0]

    # spread of the estimate under the null, from independent pairs of draws
    null_sd = float(np.std([mmd_rbf(draw(100 + i), draw(200 + i)) for i in range(6)]))
    x, y, shifted = draw(22), draw(23), draw(24, shift=3.0)
    same, shift = mmd_rbf(x, y), mmd_rbf(x, shifted)
    assert abs(same) < 4 * null_sd
    assert shift > 20 * null_sd
    assert mmd_rbf(shifted, x) == pytest.approx(shift, rel=1e-9)
    assert mmd_rbf(y, x) == pytest.approx(same, rel=1e-6, abs=1e-12)


def test_mmd_is_unbiased_not_a_v_statistic():
    # Under the null the unbiased estimate has mean 0, so it must go negative sometimes; the
    # biased (V-statistic) estimate never would.
    values = []
    for seed in range(20):
        x = torch.randn(100, 2, generator=gen(1000 + seed), dtype=torch.float64)
        y = torch.randn(100, 2, generator=gen(2000 + seed), dtype=torch.float64)
        values.append(mmd_rbf(x, y, bandwidths=(1.0,)))
    values = np.array(values)
    assert (values < 0).any() and (values > 0).any()
    assert abs(values.mean()) < 3 * values.std() / math.sqrt(len(values))


# ----------------------------------------------------------------------------------------------
# exact mixture metrics


def test_mixture_log_prob_matches_torch_distributions():
    g = gen(30)
    means = torch.randn(5, 3, generator=g, dtype=torch.float64) * 3
    stds = torch.rand(5, generator=g, dtype=torch.float64) + 0.2
    weights = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64) * 5
    expected = torch_mixture(means, stds, weights).log_prob(x)
    got = mixture_log_prob(x, means, stds, weights)
    assert got.dtype == torch.float64 and got.shape == (400,)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    got32 = mixture_log_prob(x.float(), means.float(), stds.float(), weights.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, expected.float(), rtol=1e-5, atol=1e-4)
    # far from every component the log-sum-exp must not underflow to -inf
    assert torch.isfinite(mixture_log_prob(torch.full((1, 3), 1e3).double(), means, stds, weights))


def test_mixture_moments_exact_small_case():
    # 0.5 N(-1, s^2) + 0.5 N(1, s^2): mean 0, variance s^2 + 1
    mu, cov = mixture_moments(
        torch.tensor([[-1.0], [1.0]]), torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])
    )
    np.testing.assert_allclose(mu, [0.0], atol=1e-15)
    np.testing.assert_allclose(cov, [[1.25]], rtol=1e-12)


def test_mixture_moments_match_sample_moments():
    means, stds, weights = ring_mixture(k=5, weights=[0.4, 0.3, 0.15, 0.1, 0.05])
    stds = torch.tensor([0.5, 1.0, 2.0, 0.3, 1.5], dtype=torch.float64)
    x, _ = sample_mixture(200_000, means, stds, weights, seed=31)
    mu, cov = mixture_moments(means, stds, weights)
    xs = x.numpy()
    n = len(xs)
    centred = xs - xs.mean(0)
    mean_se = xs.std(0) / math.sqrt(n)
    prods = centred[:, :, None] * centred[:, None, :]
    cov_se = prods.std(0) / math.sqrt(n)
    assert (np.abs(xs.mean(0) - mu) < 5 * mean_se).all()
    assert (np.abs(np.cov(xs, rowvar=False) - cov) < 5 * cov_se).all()
    np.testing.assert_allclose(cov, cov.T)


def test_mode_assignment_chi2_boundary_and_labels():
    means, stds, weights = ring_mixture()
    r = math.sqrt(chi2.ppf(0.999, 2)) * 0.5
    direction = torch.tensor([0.0, 1.0], dtype=torch.float64)  # tangential at mode 0
    inside, outside = means[0] + 0.999 * r * direction, means[0] + 1.001 * r * direction
    pts = torch.stack([means[3], inside, outside])
    assert mode_assignment(pts, means, stds, weights).tolist() == [3, 0, -1]

    x, labels = sample_mixture(20_000, means, stds, weights, seed=32)
    assign = mode_assignment(x, means, stds, weights)
    on = assign >= 0
    assert torch.equal(assign[on], labels[on])  # modes ~15 std apart: no confusions
    # a draw from component k leaves its own 0.999 region with probability exactly 0.001
    p, n = 0.001, len(x)
    assert abs(float((~on).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_mode_stats_exact_draws_cover_everything():
    means, stds, weights = ring_mixture(weights=[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    n, k = 20_000, 8
    x, _ = sample_mixture(n, means, stds, weights, seed=33)
    stats = mode_stats(x, means, stds, weights)
    assert isinstance(stats, ModeStats)
    assert stats.covered == k
    assert int(stats.counts.sum()) == round(n * (1 - stats.off_mode_fraction))
    # E sum_k |p_k - w_k| <= sum_k sqrt(w_k (1 - w_k) / N) <= sqrt(K / N)
    assert stats.weight_tv < 0.5 * (3 * math.sqrt(k / n) + stats.off_mode_fraction) + 1e-12
    assert stats.off_mode_fraction < 0.002


def test_mode_stats_three_of_eight_modes():
    means, stds, weights = ring_mixture()
    keep = torch.tensor([1, 4, 6])
    x, _ = sample_mixture(3000, means[keep], stds[keep], torch.full((3,), 1 / 3).double(), 34)
    stats = mode_stats(x, means, stds, weights)
    assert stats.covered == 3
    assert stats.counts[[0, 2, 3, 5, 7]].sum() == 0
    # kept modes hold ~1/3 > 1/8 each, so sum_k |p_k - w_k| = (1 - off - 3/8) + 5/8 and
    # TV = 0.5 (1 - off + 1/4 + off) = 0.625 exactly, whatever the off-mode share
    assert stats.weight_tv == pytest.approx(0.625, abs=1e-12)


def test_mode_stats_far_away_points():
    means, stds, weights = ring_mixture()
    x = torch.randn(500, 2, generator=gen(35), dtype=torch.float64) + 1000.0
    stats = mode_stats(x, means, stds, weights)
    assert stats.off_mode_fraction == 1.0
    assert stats.covered == 0
    assert stats.counts.sum() == 0
    assert stats.weight_tv == pytest.approx(1.0)


@pytest.mark.parametrize("count_last, covered_last", [(25, True), (24, False)])
def test_mode_stats_quarter_mass_threshold(count_last, covered_last):
    # w_3 = 1/8, N = 800: mode 3 is covered iff counts_3 / 800 >= 1/32, i.e. counts_3 >= 25
    means, stds, weights = ring_mixture(k=4, weights=[0.5, 0.25, 0.125, 0.125])
    counts = [400, 200, 800 - 600 - count_last, count_last]
    x = torch.cat([means[i].expand(c, 2) for i, c in enumerate(counts)])
    stats = mode_stats(x, means, stds, weights)
    assert stats.counts.tolist() == counts
    assert stats.off_mode_fraction == 0.0
    assert stats.covered == 3 + int(covered_last)
    assert stats.weight_tv == pytest.approx(0.5 * 2 * abs(count_last / 800 - 0.125), abs=1e-15)


def test_nll_of_exact_samples_estimates_entropy():
    means, stds, weights = ring_mixture(k=5, weights=[0.4, 0.3, 0.15, 0.1, 0.05], radius=3.0)
    stds = torch.tensor([0.5, 1.0, 2.0, 0.3, 1.5], dtype=torch.float64)  # overlapping modes
    x, _ = sample_mixture(20_000, means, stds, weights, seed=36)
    nll = negative_log_likelihood(x, means, stds, weights)
    se_nll = float(mixture_log_prob(x, means, stds, weights).std()) / math.sqrt(len(x))
    # independent Monte Carlo entropy: separate draw, torch.distributions' own log_prob
    ref = torch_mixture(means, stds, weights)
    y, _ = sample_mixture(20_000, means, stds, weights, seed=37)
    log_q = ref.log_prob(y)
    entropy, se_ent = float(-log_q.mean()), float(log_q.std()) / math.sqrt(len(y))
    assert abs(nll - entropy) < 5 * math.hypot(se_nll, se_ent)


def test_nll_rewards_dropping_light_modes_and_punishes_dropping_heavy_ones():
    # Well-separated modes: a draw from component k has log p(x) = log w_k + log N_k(x) up to
    # e^-100 corrections, so samples from the modes S give
    #   NLL = -sum_{k in S} (w_k / W_S) log w_k + H(N(0, s^2 I)),   H(N) = log(2 pi e s^2).
    # NLL is a cross-entropy, blind to mode dropping: it only rises when heavy modes go.
    w = [0.4, 0.4, 0.1, 0.1]
    means, stds, weights = ring_mixture(k=4, weights=w)
    h_gauss = math.log(2 * math.pi * math.e * 0.25)

    def nll_and_se(keep: list[int], seed: int) -> tuple[float, float]:
        sub_w = weights[keep] / weights[keep].sum()
        x, _ = sample_mixture(20_000, means[keep], stds[keep], sub_w, seed)
        lp = mixture_log_prob(x, means, stds, weights)
        return negative_log_likelihood(x, means, stds, weights), float(lp.std()) / math.sqrt(len(x))

    def predicted(keep: list[int]) -> float:
        ws = np.array([w[i] for i in keep])
        return float(-(ws / ws.sum() * np.log(ws)).sum() + h_gauss)

    results = {}
    cases = (("all", [0, 1, 2, 3], 40), ("heavy", [0, 1], 41), ("light", [2, 3], 42))
    for name, keep, seed in cases:
        nll, se = nll_and_se(keep, seed)
        assert abs(nll - predicted(keep)) < 5 * se, name
        results[name] = nll
    assert results["heavy"] < results["all"] < results["light"]


def test_mixture_input_validation():
    means, stds, weights = ring_mixture(k=3)
    with pytest.raises(ValueError):
        mixture_log_prob(torch.zeros(4, 3), means, stds, weights)  # wrong D
    with pytest.raises(ValueError):
        mixture_log_prob(torch.zeros(4, 2), means, stds, weights * 2)  # weights sum to 2
    with pytest.raises(ValueError):
        mode_assignment(torch.zeros(4, 2), means, stds, weights, coverage=1.0)
