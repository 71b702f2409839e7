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
from collections.abc import Callable

import torch
from torch import Tensor

# Candidate bandwidths of loo_bandwidth, as fractions of the samples' per-coordinate scale.
BANDWIDTH_FRACTIONS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)


def _log_kernel_sums(sq_dist: Tensor, variance: Tensor, d: int) -> Tensor:
    """``log sum_i N(x_j; c_i, v_j I)`` from squared distances ``(M, N)`` and ``v: (M, 1)``."""
    return (torch.logsumexp(-0.5 * sq_dist / variance, dim=1)
            - 0.5 * d * torch.log(2 * math.pi * variance[:, 0]))


def kde_log_density(points: Tensor, centres: Tensor, variance: Tensor | float,
                    chunk: int = 4096) -> Tensor:
    """``log (1/N) sum_i N(x; c_i, v I)`` at every point.

    Computed in float32: the kernel sums' relative rounding (about 1e-6) is far below any
    KDE's own error, and float32 halves the cost of the live check and the oracle.

    Args:
        points: ``(M, d)`` where to evaluate.
        centres: ``(N, d)`` the kernel centres (samples).
        variance: the kernel variance ``v``, a scalar or one per point ``(M,)``.
        chunk: points per block (memory ``chunk * N``).

    Returns:
        ``(M,)`` float64 log-densities.
    """
    centres32 = centres.float()
    n, d = centres32.shape
    var = torch.as_tensor(variance, dtype=torch.float32).expand(len(points))
    out = []
    for start in range(0, len(points), chunk):
        block = points[start:start + chunk].float()
        sq_dist = torch.cdist(block, centres32).square()
        out.append(_log_kernel_sums(sq_dist, var[start:start + chunk, None], d) - math.log(n))
    return torch.cat(out).double()


def loo_bandwidth(samples: Tensor, points: int = 250,
                  fractions: tuple[float, ...] = BANDWIDTH_FRACTIONS) -> float:
    """The KDE bandwidth ``b`` that maximises the leave-one-out log-likelihood of ``samples``.

    Candidates are ``fractions`` of the samples' root-mean-square per-coordinate standard
    deviation; the likelihood is that of the first ``points`` samples, each under the KDE of
    all the others (``N - 1`` centres). ``samples``: ``(N, d)``, at least 2 rows. A constant
    sample gives 0.
    """
    samples32 = samples.float()
    n, d = samples32.shape
    scale = float(samples32.var(dim=0).mean().sqrt())
    if not math.isfinite(scale) or scale <= 0:
        return 0.0
    held_out = samples32[:points]
    sq_dist = torch.cdist(held_out, samples32).square()
    rows = torch.arange(len(held_out))
    sq_dist[rows, rows] = math.inf  # each point's own kernel is left out
    best, best_ll = 0.0, -math.inf
    for fraction in fractions:
        b = fraction * scale
        variance = torch.full((len(held_out), 1), b**2)
        ll = float(_log_kernel_sums(sq_dist, variance, d).mean()) - math.log(n - 1)
        if ll > best_ll:
            best, best_ll = b, ll
    return best


def kde_log_ratio(points: Tensor, sigma: Tensor | float, student: Tensor, bandwidth: float,
                  teacher_log_prob: Callable[[Tensor, Tensor | float], Tensor]) -> Tensor:
    """``log q_sigma(x) - log p_sigma(x)``: the student's noised density by its KDE (kernel
    variance ``sigma^2 + b^2``) against the teacher's exact noised density.

    Args:
        points: ``(M, d)`` noised points.
        sigma: their noise level, a scalar or ``(M,)``.
        student: ``(N, d)`` clean student samples.
        bandwidth: ``b`` (:func:`loo_bandwidth` of ``student``).
        teacher_log_prob: ``(x, sigma) -> log p_sigma(x)``, ``(M,)``.

    Returns:
        ``(M,)`` float64 log-ratios.
    """
    sigma64 = torch.as_tensor(sigma, dtype=torch.float64)
    student_log = kde_log_density(points, student, sigma64**2 + bandwidth**2)
    return student_log - teacher_log_prob(points.double(), sigma).double()


# Held-out points of the oracle's leave-one-out bandwidth choice (of its KDE's N centres).
ORACLE_BANDWIDTH_POINTS = 100


@torch.no_grad()
def oracle_log_ratio(points: Tensor, sigma: Tensor, student: Tensor,
                     teacher_log_prob: Callable[[Tensor, Tensor | float], Tensor]) -> Tensor:
    """The ``oracle`` estimator's ``log r`` at ``points: (M, d)``, ``sigma: (M,)``: the
    teacher's exact noised density against a KDE of the live student's samples ``student:
    (N, d)`` (:func:`kde_log_ratio`, bandwidth by :func:`loo_bandwidth` over
    ``ORACLE_BANDWIDTH_POINTS`` held-out centres), ``(M,)`` float32."""
    bandwidth = loo_bandwidth(student, points=ORACLE_BANDWIDTH_POINTS)
    return kde_log_ratio(points, sigma, student, bandwidth, teacher_log_prob).float()
