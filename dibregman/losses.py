"""Losses as pure functions of tensors: the Distiller and teacher training compose them.

Every loss returns *per-sample* values ``(B,)``: the caller reduces them, with ``.mean()`` for
one network, or per member of a seed batch with :func:`dibregman.members.member_means`.

* :func:`dsm_loss`: EDM's weighted denoising score matching (Karras et al. 2022, §5), for the
  image teachers and for the fake score.
* :func:`distribution_matching`: the Di-Bregman student update (DMD's, weighted per sample).
* :func:`regression_loss`: DMD's regression term on fixed noise-to-image pairs.
* :func:`gan_generator_loss`: the optional adversarial term read off the ratio network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dibregman.noise import expand_sigma

# Added to the per-sample normaliser mean|x - D_teacher(x_s)| of distribution_matching.
NORMALISER_EPS = 1e-8


def dsm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``, ``(B,)``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def dsm_loss(denoised: Tensor, clean: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """Per sample ``lambda(sigma) mean_coords (D(x + sigma n, sigma) - x)^2``, ``(B,)``.

    Args:
        denoised: ``(B, *shape)`` the denoiser's output at the noised ``clean`` samples.
        clean: ``(B, *shape)`` the clean samples ``x``.
        sigma: ``(B,)`` their noise levels.
        sigma_data: the data scale of the preconditioning.
    """
    dims = tuple(range(1, clean.ndim))
    return dsm_weight(sigma, sigma_data) * ((denoised - clean) ** 2).mean(dim=dims)


def distribution_matching(x: Tensor, denoised_teacher: Tensor, denoised_fake: Tensor,
                          weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """The weighted distribution-matching loss of student samples (docs/method.md §3).

    With ``x_s = x + sigma n`` and ``D_fake - D_teacher = sigma^2 (s_fake - s_teacher)``, the
    per-sample step is ``g = w (D_fake(x_s) - D_teacher(x_s)) / mean|x - D_teacher(x_s)|`` (the
    normaliser plays the role of DMD's ``lambda(sigma)``), and
    per-sample loss ``0.5 ||x - stopgrad(x - g)||^2`` so that autograd delivers
    ``g . dx/dtheta``.
    ``NORMALISER_EPS`` is added to the normaliser, so a student sample that the teacher already
    denoises to itself gives a finite step.

    Args:
        x: ``(B, *shape)`` student samples, with gradient.
        denoised_teacher, denoised_fake: ``(B, *shape)`` both denoisers at the same ``x_s``.
        weight: ``(B,)`` Di-Bregman weights ``w = h''(r) r`` at ``x_s``; None for ``w = 1``.

    Returns:
        The per-sample loss ``(B,)`` and the step ``g: (B, *shape)``.
    """
    dims = tuple(range(1, x.ndim))
    with torch.no_grad():
        normaliser = (x.detach() - denoised_teacher).abs().mean(dim=dims, keepdim=True)
        normaliser = normaliser + NORMALISER_EPS
        step = (denoised_fake - denoised_teacher) / normaliser
        if weight is not None:
            step = expand_sigma(weight, step) * step
    return 0.5 * ((x - (x.detach() - step)) ** 2).sum(dim=dims), step


def regression_loss(fitted: Tensor, targets: Tensor) -> Tensor:
    """DMD's regression term ``0.5 ||G(z_i) - y_i||^2`` per pair (arXiv 2311.18828, §3.3),
    with L2 in place of LPIPS. ``fitted``, ``targets``: ``(B, *shape)``; output ``(B,)``."""
    dims = tuple(range(1, fitted.ndim))
    return 0.5 * ((fitted - targets) ** 2).sum(dim=dims)


def gan_generator_loss(log_ratio: Tensor) -> Tensor:
    """``softplus(log r(x_s))`` per sample: the student wants the ratio network to call its
    noised samples teacher-like (``log r < 0``). ``log_ratio``: ``(B,)``, output ``(B,)``."""
    return F.softplus(log_ratio)
