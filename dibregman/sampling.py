"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dibregman.noise import karras_sigmas

DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def heun_sample(
    denoise: DenoiseFn,
    latents: Tensor,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> Tensor:
    """Integrate the probability-flow ODE from ``sigma_max`` to 0 with Heun's 2nd-order method.

    ``dx/dsigma = (x - D(x, sigma)) / sigma`` on the Karras grid, with an Euler step into
    ``sigma = 0``: ``2 * num_steps - 1`` network evaluations (35 for the default 18 steps).

    Args:
        denoise: ``D(x, sigma)`` with ``sigma: (B,)``.
        latents: ``(B, *shape)`` standard normal; the start is ``sigma_max * latents``.
        num_steps, sigma_min, sigma_max, rho: the grid.

    Returns:
        ``(B, *shape)`` samples.
    """
    grid = karras_sigmas(num_steps, sigma_min, sigma_max, rho).to(latents.device).double()
    grid = torch.cat([grid, grid.new_zeros(1)])
    x = latents.double() * grid[0]

    def derivative(x: Tensor, sigma: Tensor) -> Tensor:
        level = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=latents.dtype)
        return (x - denoise(x.to(latents.dtype), level).double()) / sigma

    for sigma, sigma_next in zip(grid[:-1], grid[1:], strict=True):
        slope = derivative(x, sigma)
        x_next = x + (sigma_next - sigma) * slope
        if sigma_next > 0:
            x_next = x + (sigma_next - sigma) * 0.5 * (slope + derivative(x_next, sigma_next))
        x = x_next
    return x.to(latents.dtype)
