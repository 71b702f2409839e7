"""EDM's preconditioning, defined once and read by every denoiser and ratio network."""

from __future__ import annotations

import torch
from torch import nn

from dibregman.networks import Denoiser, RatioNetwork, edm_preconditioning
from dibregman.pretrained.edm_networks import EDMPrecond


def test_edm_coefficients_satisfy_their_identities():
    """``c_in^2 (sigma^2 + sd^2) = 1``, ``c_skip = sd^2 c_in^2``, ``c_out = sigma sd c_in`` and
    ``c_noise = log(sigma) / 4`` (EDM, Table 1), at levels from 0.002 to 80."""
    sigma = torch.logspace(-2.7, 1.9, 50, dtype=torch.float64)
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sd)
    torch.testing.assert_close(c_in**2 * (sigma**2 + sd**2), torch.ones_like(sigma))
    torch.testing.assert_close(c_skip, sd**2 * c_in**2)
    torch.testing.assert_close(c_out, sigma * sd * c_in)
    torch.testing.assert_close(c_noise, sigma.log() / 4)


class Probe(nn.Module):
    """``F(x_in, c_noise) = x_in + c_noise`` (broadcast over the sample's coordinates)."""

    def forward(self, x_in, c_noise, labels=None):
        return x_in + c_noise.reshape(-1, *([1] * (x_in.ndim - 1)))


def test_denoiser_ratio_network_and_imported_edm_read_the_same_coefficients():
    x = torch.randn(6, 3, dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = (c[:, None] for c in edm_preconditioning(sigma, 0.5))
    expected = c_skip * x + c_out * (c_in * x + c_noise)
    torch.testing.assert_close(Denoiser(Probe(), 0.5)(x, sigma), expected)

    class First(nn.Module):
        def forward(self, x_in, c_noise, labels=None):
            return (x_in[:, :1] + c_noise[:, None])

    torch.testing.assert_close(RatioNetwork(First(), 0.5)(x, sigma),
                               (c_in * x[:, :1] + c_noise).squeeze(1))
    imported = EDMPrecond.__new__(EDMPrecond)
    imported.sigma_data = 0.5
    for ours, theirs in zip(edm_preconditioning(sigma, 0.5), imported.preconditioning(sigma),
                            strict=True):
        torch.testing.assert_close(ours, theirs)
