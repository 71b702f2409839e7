"""Ratio estimators recover a known log-ratio; the weight pipeline does what docs/method.md §5
says."""

import math

import pytest
import torch
from torch import nn

from dibregman.bregman import get_generator
from dibregman.config import RatioConfig
from dibregman.networks import MLPNet, RatioNetwork, init_parameters
from dibregman.ratio import RatioEstimator, fitted_estimator_names, get_estimator

SHIFT = torch.tensor([0.75, 0.0])
SIGMA = 0.05  # a fixed level: the estimators are tested as plain ratio fitters


def true_log_ratio(x: torch.Tensor) -> torch.Tensor:
    """log q/p for p = N(0, I), q = N(SHIFT, I): SHIFT.x - |SHIFT|^2 / 2."""
    return x @ SHIFT - 0.5 * SHIFT.dot(SHIFT)


def fit(name: str, steps: int = 600) -> RatioEstimator:
    gen = torch.Generator().manual_seed(0)
    network = RatioNetwork(MLPNet(2, 1, 64, 2), sigma_data=1.0)
    init_parameters(network, gen, zero_last=True)
    estimator = RatioEstimator(network, RatioConfig(estimator=name), 0.002, 20.0)
    opt = torch.optim.Adam(estimator.parameters(), lr=3e-3)
    sigma = torch.full((512,), SIGMA)
    for _ in range(steps):
        p = torch.randn(512, 2, generator=gen)
        q = torch.randn(512, 2, generator=gen) + SHIFT
        loss, _ = estimator.loss(p, q, sigma)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return estimator


# Mean absolute error of log r on held-out points of the central region |x_i| < 1.5.
TOLERANCE = {"classifier": 0.1, "kliep": 0.15, "ulsif": 0.2}


@pytest.mark.parametrize("name", fitted_estimator_names())
def test_estimator_recovers_known_log_ratio(name):
    estimator = fit(name)
    held_out = torch.rand(2000, 2, generator=torch.Generator().manual_seed(9)) * 3 - 1.5
    with torch.no_grad():
        estimate = estimator.log_ratio(held_out, torch.full((2000,), SIGMA))
    error = (estimate - true_log_ratio(held_out)).abs().mean()
    assert error < TOLERANCE[name], f"{name}: mean |log r error| {error:.3f}"


def test_sign_convention_teacher_confident_means_ratio_below_one():
    """A point deep in teacher territory (p >> q) gets r < 1, i.e. a positive logit."""
    estimator = fit("classifier", steps=300)
    teacher_side = torch.tensor([[-2.0, 0.0]])
    student_side = torch.tensor([[3.0, 0.0]])
    sigma = torch.full((1,), SIGMA)
    with torch.no_grad():
        assert estimator.log_ratio(teacher_side, sigma).exp() < 1
        assert estimator.log_ratio(student_side, sigma).exp() > 1


def test_registry_rejects_unknown():
    with pytest.raises(ValueError, match="valid: classifier, kliep, oracle, ulsif"):
        get_estimator("gan")


class ConstantLogRatio(nn.Module):
    """A stand-in network whose log r is given per sample, to test the pipeline exactly."""

    def __init__(self, log_r: torch.Tensor) -> None:
        super().__init__()
        self.log_r = log_r

    def forward(self, x, sigma, labels=None):
        return self.log_r


def pipeline(log_r, **overrides) -> RatioEstimator:
    cfg = RatioConfig(**{"bin_ema": 0.0, **overrides})
    return RatioEstimator(ConstantLogRatio(log_r), cfg, 0.002, 20.0)


def test_bin_self_normalisation_makes_mean_inverse_ratio_one():
    """r = 2 everywhere on student samples: E_q[1/r] = 1 forces r back to 1 in every bin."""
    log_r = torch.full((100,), math.log(2.0))
    est = pipeline(log_r, weight_normalize=False)
    sigma = torch.logspace(-2.5, 1.2, 100)
    weight, diag = est.weights(get_generator("pearson"), est.network.log_r, sigma)
    torch.testing.assert_close(weight, torch.ones(100))  # Pearson: w = r = 1
    assert diag[0]["ratio_q50"] == pytest.approx(1.0)
    assert est.bin_seen.all()
    torch.testing.assert_close(est.bin_mean_inv_ratio, torch.full((1, 10), 0.5))


def test_bin_ema_blends_batches():
    est = pipeline(torch.full((4,), math.log(2.0)), bin_ema=0.5, weight_normalize=False)
    sigma = torch.full((4,), 1.0)
    gen = get_generator("pearson")
    est.weights(gen, est.network.log_r, sigma)  # first batch sets the bin: mean 1/r = 0.5
    est.network.log_r = torch.full((4,), math.log(0.5))
    est.weights(gen, est.network.log_r, sigma)  # second: 0.5 * 0.5 + 0.5 * 2 = 1.25
    assert float(est.bin_mean_inv_ratio[0, est.noise_bin(sigma[:1])]) == pytest.approx(1.25)
    assert "bin_mean_inv_ratio" in est.state_dict()


def test_clamp_and_clip_bound_the_ratio():
    log_r = torch.tensor([-50.0, 0.0, 50.0])
    est = pipeline(log_r, bin_normalize=False, weight_normalize=False)
    _, diag = est.weights(get_generator("pearson"), est.network.log_r, torch.ones(3))
    assert diag[0]["ratio_q05"] >= 0.05 - 1e-6 and diag[0]["ratio_q95"] <= 10.0 + 1e-5
    assert diag[0]["ratio_clipped_fraction"] == pytest.approx(2 / 3)


def test_ratio_is_clipped_before_the_bin_normalisation():
    """One over-confident sample (r = e^-10) among r = 1. Clipped first (to 0.05), the bin factor
    is mean(1/r) = (63 + 20) / 64 and the others end at r = 1.30. Normalised first, the factor
    would be (63 + e^10) / 64 = 345 and every other sample would be clipped to 10."""
    log_r = torch.zeros(64)
    log_r[0] = -10.0
    est = pipeline(log_r, weight_normalize=False)
    weight, diag = est.weights(get_generator("pearson"), est.network.log_r, torch.ones(64))
    factor = (63 + 20) / 64
    torch.testing.assert_close(est.bin_mean_inv_ratio[0, est.noise_bin(torch.ones(1))],
                               torch.tensor([factor]))
    torch.testing.assert_close(weight[1:], torch.full((63,), factor))  # Pearson: w = r
    torch.testing.assert_close(weight[0], torch.tensor(0.05 * factor))
    assert diag[0]["ratio_clipped_fraction"] == pytest.approx(1 / 64)


def test_all_zero_weights_make_no_step_instead_of_nan():
    """log_squared has w = (1 - log r) / r = 0 at its domain's end r = e: a batch with every
    r >= e has all-zero weights, and the batch-mean division must not give 0 / 0. The zero is
    decided on r against the bound, never on float32 log(e) (1 or 0.99999994 by libm)."""
    est = pipeline(torch.full((8,), 3.0), bin_normalize=False)
    weight, diag = est.weights(get_generator("log_squared"), est.network.log_r, torch.ones(8))
    assert torch.equal(weight, torch.zeros(8))
    assert diag[0]["ratio_clipped_fraction"] == 1.0


def test_tiny_positive_weights_are_normalised_to_mean_one():
    """Weights of 1e-6 (log_squared just below e) are still weights: the batch-mean division
    scales them to mean 1, with no absolute epsilon to distort a small mean."""
    log_r = torch.full((8,), math.log(math.e * (1 - 1e-6)))
    est = pipeline(log_r, bin_normalize=False)
    weight, diag = est.weights(get_generator("log_squared"), est.network.log_r, torch.ones(8))
    assert 0 < diag[0]["weight_max"] < 1e-4
    torch.testing.assert_close(weight, torch.ones(8), rtol=1e-5, atol=0)


def test_log_squared_is_clipped_to_its_convex_domain():
    est = pipeline(torch.tensor([2.0, 3.0]), bin_normalize=False, weight_normalize=False)
    weight, diag = est.weights(get_generator("log_squared"), est.network.log_r, torch.ones(2))
    assert diag[0]["ratio_q95"] <= math.e + 1e-6
    assert (weight >= 0).all()  # w = (1 - log r) / r would be negative above e


def test_batch_mean_normalisation_and_reverse_kl_identity():
    log_r = torch.linspace(-2, 2, 64)
    est = pipeline(log_r)
    weight, _ = est.weights(get_generator("forward_kl"), est.network.log_r, torch.ones(64))
    assert float(weight.mean()) == pytest.approx(1.0)
    assert weight[0] > weight[-1]  # FKL weight 1/r shrinks with r
    weight, diag = est.weights(get_generator("reverse_kl"), est.network.log_r, torch.ones(64))
    assert torch.equal(weight, torch.ones(64))
    assert diag[0]["weight_min"] == diag[0]["weight_max"] == 1.0
