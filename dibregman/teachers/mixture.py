"""Analytic isotropic Gaussian-mixture teachers: the exact denoiser of every noised marginal.

With ``p = sum_k w_k N(mu_k, s_k^2 I)`` and ``x_sigma = x + sigma n``, the noised marginal is
``p_sigma = sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)``, and the posterior mean is

    D(x, sigma) = sum_k gamma_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)],
    gamma_k(x)  = w_k N(x; mu_k, (s_k^2 + sigma^2) I) / p_sigma(x),

so ``(D - x) / sigma^2 = -sum_k gamma_k (x - mu_k) / (s_k^2 + sigma^2)`` is the exact score.

The registry's ``mixture`` teacher is built from the config's ``mixture`` section alone
(:meth:`GaussianMixtureTeacher.from_config`); the ``gmm2d`` and ``gmm16d`` presets are two such
named mixtures.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dibregman.config import Config, MixtureConfig
from dibregman.evaluators import MixtureEvaluator
from dibregman.noise import expand_sigma
from dibregman.teachers.base import Teacher

MIXTURE_LAYOUTS = ("ring", "grid", "random", "explicit")


def mixture_means(mix: MixtureConfig) -> Tensor:
    """The ``(modes, dim)`` float64 means that ``mix.layout`` places (see ``MixtureConfig``)."""
    k = mix.modes
    if mix.layout == "ring":  # angles 2 pi j / k from 0, radius scale
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        return mix.scale * torch.stack([angles.cos(), angles.sin()], dim=1)
    if mix.layout == "grid":  # side x side points scale apart, centred at 0, row by row
        side = math.isqrt(k)
        axis = mix.scale * (torch.arange(side, dtype=torch.float64) - (side - 1) / 2)
        return torch.cartesian_prod(axis, axis)
    if mix.layout == "random":  # a private generator: the same positions on every machine
        rng = torch.Generator().manual_seed(mix.seed)
        return mix.scale * torch.randn(k, mix.dim, generator=rng, dtype=torch.float64)
    if mix.layout == "explicit":
        return torch.tensor(mix.means, dtype=torch.float64).reshape(k, mix.dim)
    raise ValueError(f"unknown mixture.layout {mix.layout!r}; valid: {', '.join(MIXTURE_LAYOUTS)}")


class GaussianMixtureTeacher(Teacher):
    """A mixture of isotropic Gaussians in ``d`` dimensions, with exact scores at every sigma.

    Args:
        means: ``(K, d)`` component means.
        stds: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights, positive, summing to 1.
        sigma_min, sigma_max: noise range used for distillation.
    """

    evaluator = MixtureEvaluator
    exact_density = True
    exact_sampler = True

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

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> GaussianMixtureTeacher:
        """The mixture of ``cfg.mixture`` (built on the CPU; :meth:`to` moves nothing)."""
        return cls.from_mixture(cfg.mixture)

    @classmethod
    def from_mixture(cls, mix: MixtureConfig) -> GaussianMixtureTeacher:
        """The mixture a :class:`~dibregman.config.MixtureConfig` defines. Check it with
        :func:`dibregman.validation.validate` first: this applies only the constructor's checks."""
        if mix.weights:
            weights = torch.tensor(mix.weights, dtype=torch.float64)
        else:
            weights = mix.weight_decay ** torch.arange(mix.modes, dtype=torch.float64)
        return cls(
            mixture_means(mix),
            torch.full((mix.modes,), mix.std, dtype=torch.float64),
            weights / weights.sum(),
            sigma_max=mix.sigma_max,
        )

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

    def denoise(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        log_joint, var = self._log_joint(x, sigma)
        gamma = torch.softmax(log_joint, dim=1)  # (B, K)
        x64 = x.double()
        shrink = self.stds[None, :] ** 2 / var  # (B or 1, K)
        # sum_k gamma_k [mu_k + shrink_k (x - mu_k)] = sum_k gamma_k (1 - shrink_k) mu_k
        #                                             + (sum_k gamma_k shrink_k) x
        denoised = (gamma * (1 - shrink)) @ self.means + (gamma * shrink).sum(1, keepdim=True) * x64
        return denoised.to(x.dtype)

    def sample(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        components = torch.multinomial(self.weights, n, replacement=True, generator=rng)
        noise = torch.randn(n, self.shape[0], generator=rng, dtype=torch.float64)
        x = self.means[components] + self.stds[components, None] * noise
        return x.float()
