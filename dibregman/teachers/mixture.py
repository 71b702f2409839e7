"""Analytic isotropic Gaussian-mixture teachers: the exact denoiser of every noised marginal.

With ``p = sum_k w_k N(mu_k, s_k^2 I)`` and ``x_sigma = x + sigma n``, the noised marginal is
``p_sigma = sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)``, and the posterior mean is

    D(x, sigma) = sum_k gamma_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)],
    gamma_k(x)  = w_k N(x; mu_k, (s_k^2 + sigma^2) I) / p_sigma(x),

so ``(D - x) / sigma^2 = -sum_k gamma_k (x - mu_k) / (s_k^2 + sigma^2)`` is the exact score.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dibregman.evaluators import MixtureEvaluator
from dibregman.noise import expand_sigma
from dibregman.teachers.base import Teacher


class GaussianMixtureTeacher(Teacher):
    """A mixture of isotropic Gaussians in ``d`` dimensions, with exact scores at every sigma.

    Args:
        means: ``(K, d)`` component means.
        stds: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights, positive, summing to 1.
        sigma_min, sigma_max: noise range used for distillation.
    """

    evaluator = MixtureEvaluator

    def __init__(
        self,
        means: Tensor,
        stds: Tensor,
        weights: Tensor,
        sigma_min: float = 0.002,
        sigma_max: float = 20.0,
    ) -> None:
        if means.ndim != 2 or stds.shape != means.shape[:1] or weights.shape != means.shape[:1]:
            raise ValueError("need means (K, d), stds (K,), weights (K,)")
        if (weights <= 0).any() or not math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6):
            raise ValueError("mixture weights must be positive and sum to 1")
        self.means = means.double()
        self.stds = stds.double()
        self.weights = weights.double()
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.shape = (means.shape[1],)
        mean = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights * (self.stds**2 * self.shape[0] + (self.means**2).sum(1))).sum()
        self.sigma_data = float(((second - (mean**2).sum()) / self.shape[0]).sqrt())

    def _log_joint(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """``log w_k N(x; mu_k, v_k I)`` ``(B, K)`` and the variances ``v_k = s_k^2 + sigma^2``."""
        x64 = x.double()
        sigma64 = expand_sigma(sigma, x64)
        sigma_sq = sigma64.reshape(-1, 1) ** 2 if sigma64.ndim else sigma64**2
        var = self.stds[None, :] ** 2 + sigma_sq  # (B or 1, K)
        sq_dist = torch.cdist(x64, self.means) ** 2  # (B, K)
        d = self.shape[0]
        log_joint = (
            self.weights.log()[None, :]
            - 0.5 * sq_dist / var
            - 0.5 * d * torch.log(2 * math.pi * var)
        )
        return log_joint, var

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """``log p_sigma(x)``, ``(B,)`` in ``x``'s dtype; ``sigma = 0`` is the clean mixture."""
        log_joint, _ = self._log_joint(x, sigma)
        return torch.logsumexp(log_joint, dim=1).to(x.dtype)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        log_joint, var = self._log_joint(x, sigma)
        gamma = torch.softmax(log_joint, dim=1)  # (B, K)
        x64 = x.double()
        shrink = self.stds[None, :] ** 2 / var  # (B or 1, K)
        # sum_k gamma_k [mu_k + shrink_k (x - mu_k)] = sum_k gamma_k (1 - shrink_k) mu_k
        #                                             + (sum_k gamma_k shrink_k) x
        denoised = (gamma * (1 - shrink)) @ self.means + (gamma * shrink).sum(1, keepdim=True) * x64
        return denoised.to(x.dtype)

    def sample(self, n: int, rng: torch.Generator) -> Tensor:
        components = torch.multinomial(self.weights, n, replacement=True, generator=rng)
        noise = torch.randn(n, self.shape[0], generator=rng, dtype=torch.float64)
        x = self.means[components] + self.stds[components, None] * noise
        return x.float()


def ring_mixture(
    n_modes: int = 8,
    radius: float = 2.0,
    std: float = 0.2,
    weights: tuple[float, ...] = (0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.07, 0.03),
    sigma_max: float = 20.0,
) -> GaussianMixtureTeacher:
    """``gmm2d``: modes on a circle with unequal weights; the smallest (3 %) shows mode dropping."""
    if len(weights) != n_modes:
        raise ValueError("need one weight per mode")
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixtureTeacher(
        means,
        torch.full((n_modes,), std, dtype=torch.float64),
        torch.tensor(weights, dtype=torch.float64),
        sigma_max=sigma_max,
    )


def random_mixture(
    dim: int = 16,
    n_modes: int = 10,
    scale: float = 2.0,
    std: float = 0.25,
    seed: int = 0,
    sigma_max: float = 20.0,
) -> GaussianMixtureTeacher:
    """``gmm16d``: modes at fixed random positions; weights decay geometrically (ratio 0.75).

    The positions come from a private ``torch.Generator(seed)``, so the teacher is the same on
    every machine. With ``n_modes = 10`` the smallest weight is about 2.2 %.
    """
    rng = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(n_modes, dim, generator=rng, dtype=torch.float64)
    raw = 0.75 ** torch.arange(n_modes, dtype=torch.float64)
    return GaussianMixtureTeacher(
        means,
        torch.full((n_modes,), std, dtype=torch.float64),
        raw / raw.sum(),
        sigma_max=sigma_max,
    )
