"""A dibregman teacher plugin: one 2-D Gaussian with a full covariance, denoised exactly.

With ``x_0 ~ N(mu, Sigma)`` and ``x_sigma = x_0 + sigma n``, ``n ~ N(0, I)``, the pair is jointly
Gaussian, ``x_sigma ~ N(mu, Sigma + sigma^2 I)``, and the posterior mean is linear in ``x``:

    D(x, sigma) = E[x_0 | x_sigma = x] = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu).

With the eigendecomposition ``Sigma = U diag(lambda) U^T`` this is
``mu + U diag(lambda / (lambda + sigma^2)) U^T (x - mu)``, so the score of the noised marginal,
``(D - x) / sigma^2 = -(Sigma + sigma^2 I)^-1 (x - mu)``, is exact at every sigma.

The teacher keeps the defaults of :class:`dibregman.teachers.Teacher`: a ``vector`` kind, the
sample-based ``VectorEvaluator`` (no log-density is declared) and ``from_config`` = ``cls()``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dibregman.teachers import Teacher


class CorrelatedGaussianTeacher(Teacher):
    """``N(mu, Sigma)`` in 2-D with a non-diagonal ``Sigma``; exact denoiser and sampler.

    ``D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)``; ``sigma_data`` is the
    per-coordinate standard deviation ``sqrt(trace(Sigma) / 2)``.

    Args:
        mean: ``(2,)`` mean ``mu``.
        cov: ``(2, 2)`` symmetric positive-definite covariance ``Sigma``.
        sigma_min, sigma_max: noise range used for distillation.
    """

    def __init__(
        self,
        mean: tuple[float, float] = (0.5, -0.25),
        cov: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.8), (0.8, 0.9)),
        sigma_min: float = 0.002,
        sigma_max: float = 20.0,
    ) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        if self.mean.shape != (2,) or self.cov.shape != (2, 2):
            raise ValueError("need mean (2,) and cov (2, 2)")
        if not torch.allclose(self.cov, self.cov.T):
            raise ValueError("cov must be symmetric")
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.cov)
        if (self.eigenvalues <= 0).any():
            raise ValueError("cov must be positive definite")
        self.cholesky = torch.linalg.cholesky(self.cov)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = math.sqrt(float(torch.trace(self.cov)) / 2)
        self.shape = (2,)

    def to(self, device: str | torch.device) -> CorrelatedGaussianTeacher:
        """Move ``mu``, ``Sigma`` and its factors to ``device``; returns ``self``."""
        for name in ("mean", "cov", "eigenvalues", "eigenvectors", "cholesky"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def denoise(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """``D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)``.

        Args:
            x: ``(B, 2)`` noised samples.
            sigma: a scalar or ``(B,)`` per-sample noise levels.

        Returns:
            ``(B, 2)`` in ``x``'s dtype (computed in float64).
        """
        x64 = x.double()
        mean, lam, vectors = (t.to(x.device) for t in (self.mean, self.eigenvalues,
                                                        self.eigenvectors))
        sigma64 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        sigma_sq = sigma64.reshape(-1, 1) ** 2 if sigma64.ndim else sigma64**2  # (B, 1) or ()
        shrink = lam / (lam + sigma_sq)  # (B, 2) or (2,): eigenvalues of Sigma (Sigma+s^2 I)^-1
        centred = (x64 - mean) @ vectors  # coordinates in the eigenbasis U
        return (mean + (shrink * centred) @ vectors.T).to(x.dtype)

    def sample(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """``n`` exact draws ``mu + L z``, ``L L^T = Sigma``, ``z ~ N(0, I)`` from ``rng``;
        ``(n, 2)`` float32 on ``rng``'s device."""
        z = torch.randn(n, 2, generator=rng, dtype=torch.float64, device=rng.device)
        mean, cholesky = self.mean.to(z.device), self.cholesky.to(z.device)
        return (mean + z @ cholesky.T).float()
