"""Networks for vector data: MLPs, EDM preconditioning, and seeded initialisation.

Every score model is a denoiser ``D(x, sigma)`` with EDM's preconditioning (Karras et al. 2022,
arXiv 2206.00364, Table 1):

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dibregman.teachers.base import expand_sigma


def mlp(in_features: int, out_features: int, hidden: int, depth: int) -> nn.Sequential:
    """``depth`` hidden SiLU layers of width ``hidden``; the output layer is linear."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def init_parameters(module: nn.Module, generator: torch.Generator, zero_last: bool = False) -> None:
    """Seeded re-initialisation of every ``nn.Linear`` (PyTorch's default scheme).

    The engine touches no global RNG: this replaces the default initialisation with the same
    distribution drawn from ``generator``. ``zero_last`` zeroes the final layer so that a
    preconditioned denoiser starts as ``c_skip x`` (the Gaussian optimum) and a ratio network
    starts at ``log r = 0``.
    """
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer in linears:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        if zero_last:
            linears[-1].weight.zero_()
            linears[-1].bias.zero_()


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of ``c_noise = log(sigma) / 4``: ``(B,) -> (B, 2 * n_frequencies)``."""

    def __init__(self, n_frequencies: int = 8) -> None:
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies) / 2)

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class SigmaConditionedMLP(nn.Module):
    """``F(c_in x, c_noise)``: an MLP on the scaled input and a noise-level embedding.

    Args:
        dim: data dimension ``d``.
        out_features: ``d`` for a denoiser, 1 for a ratio network.
        hidden, depth: MLP size.
        sigma_data: data standard deviation, for ``c_in``.
    """

    def __init__(self, dim: int, out_features: int, hidden: int, depth: int, sigma_data: float):
        super().__init__()
        self.sigma_data = sigma_data
        self.embedding = NoiseEmbedding()
        self.net = mlp(dim + 2 * len(self.embedding.frequencies), out_features, hidden, depth)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``x: (B, d)``, ``sigma: (B,)`` -> ``(B, out_features)``."""
        c_in = 1 / torch.sqrt(sigma**2 + self.sigma_data**2)
        c_noise = sigma.log() / 4
        return self.net(torch.cat([c_in[:, None] * x, self.embedding(c_noise)], dim=1))


class Denoiser(nn.Module):
    """An EDM-preconditioned MLP denoiser ``D(x, sigma)`` (used as the fake score network).

    Args:
        dim: data dimension ``d``.
        hidden, depth: MLP size.
        sigma_data: data standard deviation ``sd``.
    """

    def __init__(self, dim: int, hidden: int, depth: int, sigma_data: float) -> None:
        super().__init__()
        self.sigma_data = sigma_data
        self.model = SigmaConditionedMLP(dim, dim, hidden, depth, sigma_data)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``x: (B, d)``, ``sigma: (B,)`` -> ``(B, d)`` denoised."""
        sd = self.sigma_data
        s = expand_sigma(sigma, x)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        return c_skip * x + c_out * self.model(x, sigma)


class RatioNetwork(nn.Module):
    """``(x_sigma, sigma) -> log r`` (one scalar per sample), a separate small network.

    The classifier's logit is ``-log r`` (teacher side is the positive class, METHOD.md §2).
    """

    def __init__(self, dim: int, hidden: int, depth: int, sigma_data: float) -> None:
        super().__init__()
        self.model = SigmaConditionedMLP(dim, 1, hidden, depth, sigma_data)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``x: (B, d)``, ``sigma: (B,)`` -> ``(B,)`` raw log-ratio (before clamping)."""
        return self.model(x, sigma).squeeze(1)


class OneStepGenerator(nn.Module):
    """The student ``G_theta(z)``: latent ``z ~ N(0, I_d)`` to a sample in one evaluation.

    ``G(z) = sd * (z + MLP(z))``: a residual map scaled to the data, so step 0 already has the
    data's scale and the MLP learns the transport.
    """

    def __init__(self, dim: int, hidden: int, depth: int, sigma_data: float) -> None:
        super().__init__()
        self.sigma_data = sigma_data
        self.net = mlp(dim, dim, hidden, depth)

    def forward(self, z: Tensor) -> Tensor:
        """``z: (B, d)`` -> ``(B, d)``."""
        return self.sigma_data * (z + self.net(z))
