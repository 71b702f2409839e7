"""Noise levels: EDM's Karras grid, the uniform-index draw used by distillation, and the
broadcast of per-sample levels over a batch."""

from __future__ import annotations

import torch
from torch import Tensor


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's grid, decreasing from ``sigma_max`` to ``sigma_min`` (Karras et al. 2022, eq. 5).

    ``sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Returns:
        ``(n,)`` float32.
    """
    if n < 2:
        raise ValueError("the Karras grid needs n >= 2")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).float()


def sample_sigmas(
    batch: int,
    grid: Tensor,
    quantile_low: float,
    quantile_high: float,
    rng: torch.Generator,
) -> Tensor:
    """Draw ``(batch,)`` levels from ``grid``, the index uniform in ``[low, high]`` of its length.

    DMD2 / f-distill draw the distribution-matching timestep uniformly in [2 %, 98 %].
    """
    n = len(grid)
    low = int(round(quantile_low * (n - 1)))
    high = max(low, int(round(quantile_high * (n - 1))))
    index = torch.randint(low, high + 1, (batch,), generator=rng, device=rng.device)
    return grid[index]


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
