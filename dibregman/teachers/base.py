"""The ``Teacher`` seam: every teacher is a denoiser ``D(x, sigma)`` (EDM convention).

A noised sample is ``x_sigma = x + sigma * n`` with ``n ~ N(0, I)``; the denoiser predicts the
clean ``x``, and the score of the noised marginal follows from Tweedie's formula:
``s(x, sigma) = (D(x, sigma) - x) / sigma**2``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from dibregman.sampling import heun_sample


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a noise level to ``x``'s shape.

    Args:
        sigma: a scalar, or ``(B,)`` per-sample levels.
        x: ``(B, *shape)``.

    Returns:
        ``(B, 1, ..., 1)`` (or a 0-d tensor for a scalar), same dtype and device as ``x``.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class Teacher(ABC):
    """A frozen diffusion teacher.

    Attributes:
        sigma_min, sigma_max: the noise range the teacher is defined and trained on.
        sigma_data: the data's standard deviation (EDM preconditioning of students and critics).
        shape: the shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        sampler_steps: Heun steps of :meth:`sample_from` (18 = EDM's 35 evaluations).
    """

    sigma_min: float
    sigma_max: float
    sigma_data: float
    shape: tuple[int, ...]
    sampler_steps: int = 18

    @abstractmethod
    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``D(x, sigma)``: the posterior mean ``E[x_0 | x_sigma = x]``.

        Args:
            x: ``(B, *shape)`` noised samples.
            sigma: scalar or ``(B,)`` noise levels.

        Returns:
            ``(B, *shape)``.
        """

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma**2``, shape of ``x``."""
        return (self.denoise(x, sigma) - x) / expand_sigma(sigma, x) ** 2

    @torch.no_grad()
    def sample_from(self, latents: Tensor) -> Tensor:
        """The probability-flow ODE's image of standard-normal ``latents: (B, *shape)``.

        EDM's Heun sampler from ``sigma_max * latents`` (``2 * sampler_steps - 1`` evaluations):
        a deterministic noise-to-sample map, the pairing DMD's regression term fits.
        """
        return heun_sample(self.denoise, latents, self.sampler_steps, self.sigma_min,
                           self.sigma_max)

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` clean samples of the teacher's distribution, ``(n, *shape)``."""

    def sample_data(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` samples of the data the teacher models, ``(n, *shape)``.

        An analytic teacher's distribution is its data, so by default this is :meth:`sample`;
        a trained teacher draws from its training set.
        """
        return self.sample(n, generator)
