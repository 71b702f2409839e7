"""Exact metrics against a known isotropic Gaussian mixture ``p = sum_k w_k N(mu_k, s_k^2 I)``.

These take the mixture as plain tensors ``means (K, D)``, ``stds (K,)``, ``weights (K,)`` (no
teacher object), and compute in float64.

* :func:`mixture_log_prob`, :func:`negative_log_likelihood`: ``log p(x)`` by log-sum-exp.
  The NLL of student samples is the cross-entropy ``H(q, p) = H(q) + KL(q || p)``: it punishes
  samples off the data but *not* mode dropping (dropping light modes even lowers it), so read
  it together with :func:`mode_stats`.
* :func:`mixture_moments`: exact mean and covariance (the reference for the Fréchet distance).
* :func:`mode_assignment`, :func:`mode_stats`: per-mode histogram of samples by maximum
  posterior responsibility, with a chi-square acceptance region per component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import chi2
from torch import Tensor


def _check_mixture(
    means: Tensor, stds: Tensor, weights: Tensor, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate the mixture and cast it to float64 on ``device``."""
    if means.ndim != 2 or stds.shape != means.shape[:1] or weights.shape != means.shape[:1]:
        raise ValueError("need means (K, D), stds (K,), weights (K,)")
    means64, stds64, w64 = (t.detach().to(device, torch.float64) for t in (means, stds, weights))
    if (stds64 <= 0).any() or (w64 < 0).any():
        raise ValueError("stds must be positive and weights non-negative")
    if not math.isclose(float(w64.sum()), 1.0, rel_tol=1e-5):
        raise ValueError(f"weights must sum to 1, got {float(w64.sum())}")
    return means64, stds64, w64


def _mixture(
    x: Tensor, means: Tensor, stds: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate and cast ``x (N, D)`` and the mixture to float64 on ``x``'s device."""
    if x.ndim != 2 or x.shape[1] != means.shape[-1]:
        raise ValueError(f"need x of shape (N, {means.shape[-1]}), got {tuple(x.shape)}")
    return (x.detach().double(), *_check_mixture(means, stds, weights, x.device))


def _sq_dist(x: Tensor, means: Tensor) -> Tensor:
    """``(N, K)`` squared Euclidean distances ``||x_n - mu_k||^2``."""
    return torch.cdist(x, means).square()


def _log_joint(x: Tensor, means: Tensor, stds: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """``log w_k + log N(x; mu_k, s_k^2 I)`` ``(N, K)`` and ``||x - mu_k||^2`` ``(N, K)``."""
    d = x.shape[1]
    sq = _sq_dist(x, means)
    var = stds**2
    log_joint = (
        weights.log()[None, :] - 0.5 * sq / var[None, :] - 0.5 * d * torch.log(2 * math.pi * var)
    )
    return log_joint, sq


def mixture_log_prob(x: Tensor, means: Tensor, stds: Tensor, weights: Tensor) -> Tensor:
    """Log-density of an isotropic Gaussian mixture.

    ``log p(x) = logsumexp_k [log w_k - ||x - mu_k||^2 / (2 s_k^2) - (D/2) log(2 pi s_k^2)]``.

    Args:
        x: ``(N, D)`` points.
        means: ``(K, D)`` component means ``mu_k``.
        stds: ``(K,)`` component standard deviations ``s_k > 0``.
        weights: ``(K,)`` mixture weights ``w_k >= 0`` summing to 1.

    Returns:
        ``(N,)`` log-densities, computed in float64 and returned in ``x.dtype``.
    """
    x64, means64, stds64, w64 = _mixture(x, means, stds, weights)
    log_joint, _ = _log_joint(x64, means64, stds64, w64)
    return torch.logsumexp(log_joint, dim=1).to(x.dtype)


def mixture_moments(means: Tensor, stds: Tensor, weights: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and covariance of ``p = sum_k w_k N(mu_k, s_k^2 I)``.

    ``m = sum_k w_k mu_k`` and ``C = sum_k w_k (s_k^2 I + mu_k mu_k^T) - m m^T`` (law of total
    covariance).

    Args:
        means: ``(K, D)`` component means.
        stds: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights summing to 1.

    Returns:
        ``(mean (D,), covariance (D, D))`` as float64 NumPy arrays.
    """
    mu, s, w = _check_mixture(means, stds, weights)
    m = w @ mu
    second = (w * s**2).sum() * torch.eye(mu.shape[1], dtype=torch.float64) + (
        mu.T * w[None, :]
    ) @ mu
    cov = second - torch.outer(m, m)
    cov = 0.5 * (cov + cov.T)
    return m.numpy(), cov.numpy()


def mode_assignment(
    x: Tensor, means: Tensor, stds: Tensor, weights: Tensor, coverage: float = 0.999
) -> Tensor:
    """Assign each point to the mode with the highest posterior responsibility, or to none.

    ``k*(x) = argmax_k w_k N(x; mu_k, s_k^2 I)``; the point is off-mode (``-1``) when it lies
    outside that component's ``coverage`` region, ``||x - mu_k*||^2 / s_k*^2 >
    chi2.ppf(coverage, D)``: a draw from component ``k`` lands outside its own region with
    probability exactly ``1 - coverage``.

    Args:
        x: ``(N, D)`` points.
        means: ``(K, D)`` component means.
        stds: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights summing to 1.
        coverage: probability mass of each component's acceptance region, in ``(0, 1)``.

    Returns:
        ``(N,)`` long tensor of component indices in ``[0, K)``, or ``-1`` for off-mode points.
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    x64, means64, stds64, w64 = _mixture(x, means, stds, weights)
    log_joint, sq = _log_joint(x64, means64, stds64, w64)
    best = log_joint.argmax(dim=1)
    scaled = sq.gather(1, best[:, None]).squeeze(1) / stds64[best] ** 2
    threshold = float(chi2.ppf(coverage, x.shape[1]))
    return torch.where(scaled > threshold, torch.full_like(best, -1), best)


@dataclass(frozen=True)
class ModeStats:
    """Mode histogram of a sample set against the mixture (see :func:`mode_stats`).

    Attributes:
        counts: ``(K,)`` long, samples assigned to each mode (off-mode samples excluded).
        covered: modes holding at least a quarter of their expected mass,
            ``counts_k / N >= w_k / 4``.
        off_mode_fraction: share of samples in no mode's region.
        weight_tv: ``0.5 * (sum_k |counts_k / N - w_k| + off_mode_fraction)``, the total
            variation between the sample histogram (with an "off-mode" bin) and the weights
            (whose off-mode bin is 0).
    """

    counts: Tensor
    covered: int
    off_mode_fraction: float
    weight_tv: float


def mode_stats(
    x: Tensor, means: Tensor, stds: Tensor, weights: Tensor, coverage: float = 0.999
) -> ModeStats:
    """Mode coverage, off-mode mass and histogram distance of samples against the mixture.

    Assignments come from :func:`mode_assignment`; exact mixture draws give ``covered = K`` (for
    ``N`` large), ``off_mode_fraction ~ 1 - coverage`` (for well-separated modes) and
    ``weight_tv ~ O(sqrt(K / N))``.

    Args:
        x: ``(N, D)`` samples, ``N >= 1``.
        means: ``(K, D)`` component means.
        stds: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights summing to 1.
        coverage: probability mass of each component's acceptance region.

    Returns:
        A :class:`ModeStats`.
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"need samples of shape (N >= 1, D), got {tuple(x.shape)}")
    n, k = x.shape[0], means.shape[0]
    assign = mode_assignment(x, means, stds, weights, coverage)
    on = assign >= 0
    counts = torch.bincount(assign[on], minlength=k).cpu()
    freq = counts.double() / n
    w = weights.detach().to("cpu", torch.float64)
    off = float((~on).sum()) / n
    covered = int((freq >= w / 4).sum())
    tv = 0.5 * (float((freq - w).abs().sum()) + off)
    return ModeStats(counts=counts, covered=covered, off_mode_fraction=off, weight_tv=tv)


def negative_log_likelihood(x: Tensor, means: Tensor, stds: Tensor, weights: Tensor) -> float:
    """``-(1/N) sum_n log p(x_n)`` under the true mixture (a Monte Carlo cross-entropy).

    For samples from ``q`` it estimates ``H(q, p) = H(q) + KL(q || p)``; for exact draws from
    ``p`` it estimates the entropy ``H(p)``.

    Args:
        x: ``(N, D)`` samples.
        means: ``(K, D)`` component means.
        stds: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights summing to 1.

    Returns:
        The mean negative log-density (nats).
    """
    return float(-mixture_log_prob(x.double(), means, stds, weights).mean())
