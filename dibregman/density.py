"""Densities of noised samples, for a truth to hold a ratio estimate against.

A one-step student ``q`` is known only through its samples ``x_i = G(z_i)``. Its noised marginal
``q_sigma = q * N(0, sigma^2 I)`` is then estimated by a Gaussian kernel density estimate whose
kernel is the noise itself, widened by a small bandwidth ``b`` for the finite sample:

    q_sigma(x) ~= (1 / N) sum_i N(x; x_i, (sigma^2 + b^2) I).

At large ``sigma`` the estimate is nearly exact (the noise dominates ``b``); at small ``sigma``
it is as good as a KDE of ``q`` itself, which is why every truth built on it comes with a
teacher-against-teacher control (the same estimate of the teacher, against the teacher's exact
density) that bounds its bias. ``b`` is chosen by leave-one-out likelihood of the clean samples
(:func:`loo_bandwidth`), the standard choice for a KDE whose shape is unknown.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Candidate bandwidths of loo_bandwidth, as fractions of the samples' per-coordinate scale.
BANDWIDTH_FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)


def kde_log_density(points: Tensor, centres: Tensor, variance: Tensor | float,
                    exclude_self: bool = False, chunk: int = 4096) -> Tensor:
    """``log (1/N) sum_i N(x; c_i, v I)`` at every point, in float64.

    Args:
        points: ``(M, d)`` where to evaluate.
        centres: ``(N, d)`` the kernel centres (samples).
        variance: the kernel variance ``v``, a scalar or one per point ``(M,)``.
        exclude_self: leave-one-out (``points`` are ``centres``, ``M = N``): point ``j``'s own
            kernel is left out of its sum, which then averages over ``N - 1``.
        chunk: points per block (memory ``chunk * N``).

    Returns:
        ``(M,)`` float64 log-densities.
    """
    centres64 = centres.double()
    n, d = centres64.shape
    var = torch.as_tensor(variance, dtype=torch.float64).expand(len(points))
    out = []
    for start in range(0, len(points), chunk):
        block = points[start:start + chunk].double()
        v = var[start:start + chunk, None]
        log_kernel = -0.5 * torch.cdist(block, centres64) ** 2 / v - 0.5 * d * torch.log(
            2 * math.pi * v)
        if exclude_self:
            rows = torch.arange(len(block))
            log_kernel[rows, rows + start] = -math.inf
        out.append(torch.logsumexp(log_kernel, dim=1) - math.log(n - exclude_self))
    return torch.cat(out)


def loo_bandwidth(samples: Tensor, fractions: tuple[float, ...] = BANDWIDTH_FRACTIONS) -> float:
    """The KDE bandwidth ``b`` that maximises the leave-one-out log-likelihood of ``samples``.

    Candidates are ``fractions`` of the samples' root-mean-square per-coordinate standard
    deviation. ``samples``: ``(N, d)``, at least 2 rows.
    """
    scale = float(samples.double().var(dim=0).mean().sqrt())
    if not math.isfinite(scale) or scale <= 0:
        return 0.0
    best, best_ll = 0.0, -math.inf
    for fraction in fractions:
        b = fraction * scale
        ll = float(kde_log_density(samples, samples, b**2, exclude_self=True).mean())
        if ll > best_ll:
            best, best_ll = b, ll
    return best
