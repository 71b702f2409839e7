"""Sample-based distribution metrics, generic in the dimension ``D``.

* Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
  Metric for Assessing Generative Models"): k-NN ball manifolds.
* Unbiased kernel MMD² (Gretton et al. 2012, "A Kernel Two-Sample Test", eq. 3) with a sum of
  RBF kernels.

Everything is computed in float64 on the inputs' device, in row chunks so that memory stays
``O(chunk * N)`` instead of ``O(N^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Pooled points used for the median heuristic (all of them up to this; 1024 points keep the
# pairwise matrix at ~8 MB, and the heuristic needs no exact median).
_MEDIAN_MAX_POINTS = 1024


def _check_samples(name: str, x: Tensor, min_n: int) -> Tensor:
    if x.ndim != 2 or x.shape[0] < min_n:
        raise ValueError(f"{name} must have shape (N >= {min_n}, D), got {tuple(x.shape)}")
    return x.detach().double()


def _kth_nn_radii(x: Tensor, k: int, chunk: int) -> Tensor:
    """``(N,)`` distance from each point to its k-th nearest neighbour in ``x``, itself excluded."""
    n = x.shape[0]
    radii = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        dist = torch.cdist(x[start:stop], x)  # (c, N)
        rows = torch.arange(stop - start, device=x.device)
        dist[rows, rows + start] = float("inf")  # exclude the point itself (by index)
        radii[start:stop] = dist.topk(k, dim=1, largest=False).values[:, -1]
    return radii


def _inside_manifold(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """``(M,)`` bool: ``points[i]`` lies in some closed ball ``B(centres[j], radii[j])``."""
    inside = torch.empty(points.shape[0], dtype=torch.bool, device=points.device)
    for start in range(0, points.shape[0], chunk):
        dist = torch.cdist(points[start : start + chunk], centres)  # (c, N)
        inside[start : start + chunk] = (dist <= radii[None, :]).any(dim=1)
    return inside


def kth_nn_radii(x: Tensor, k: int = 3, chunk: int = 256) -> Tensor:
    """The k-NN ball radii of a sample set ``x: (N, D)``, float64 ``(N,)``: what
    :func:`precision_recall` computes for its real set, to pass again when one reference set
    measures many generators."""
    return _kth_nn_radii(_check_samples("x", x, k + 1), k, chunk)


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 256,
    real_radii: Tensor | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2).

    The manifold of a set is the union of closed balls centred at its points, each with radius
    equal to the distance to the point's k-th nearest neighbour within the set (the point itself
    excluded). ``precision`` is the share of fake points inside the real manifold (sample
    quality); ``recall`` is the share of real points inside the fake manifold (coverage).
    Euclidean distances, float64, computed in row chunks so memory stays ``O(chunk * N)``.

    Args:
        real: ``(N, D)`` reference samples, ``N > k``.
        fake: ``(M, D)`` generated samples, ``M > k``.
        k: neighbour rank defining the ball radii (the paper uses 3).
        chunk: rows per distance block; does not change the result.
        real_radii: ``kth_nn_radii(real, k)`` when already known (the same result, faster).

    Returns:
        ``(precision, recall)``, each in ``[0, 1]``.
    """
    if k < 1 or chunk < 1:
        raise ValueError("k and chunk must be >= 1")
    real = _check_samples("real", real, k + 1)
    fake = _check_samples("fake", fake, k + 1).to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"dimension mismatch: {real.shape[1]} vs {fake.shape[1]}")
    if real_radii is None:
        real_radii = _kth_nn_radii(real, k, chunk)
    elif real_radii.shape != (real.shape[0],):
        raise ValueError(f"real_radii must have shape ({real.shape[0]},), got "
                         f"{tuple(real_radii.shape)}")
    real_radii = real_radii.to(real)
    fake_radii = _kth_nn_radii(fake, k, chunk)
    precision = _inside_manifold(fake, real, real_radii, chunk).double().mean()
    recall = _inside_manifold(real, fake, fake_radii, chunk).double().mean()
    return float(precision), float(recall)


def _median_pairwise_distance(x: Tensor, y: Tensor) -> float:
    """Median distance over distinct pairs of the pooled sample ``x ∪ y``.

    Exact when ``N + M <= 1024``; otherwise over evenly spaced subsets of ``x`` and ``y`` in
    proportion to their sizes (deterministic and symmetric in ``x`` and ``y``).
    """
    n, m = x.shape[0], y.shape[0]
    if n + m > _MEDIAN_MAX_POINTS:
        n_sub = max(1, round(_MEDIAN_MAX_POINTS * n / (n + m)))
        m_sub = max(1, _MEDIAN_MAX_POINTS - n_sub)
        x = x[torch.linspace(0, n - 1, n_sub, device=x.device).long()]
        y = y[torch.linspace(0, m - 1, m_sub, device=y.device).long()]
    pooled = torch.cat([x, y])
    dist = torch.cdist(pooled, pooled)
    i, j = torch.triu_indices(len(pooled), len(pooled), offset=1, device=pooled.device)
    return float(dist[i, j].median())


def _rbf_kernel_sum(a: Tensor, b: Tensor, gammas: Tensor, chunk: int) -> Tensor:
    """``sum_{i, j} sum_h exp(-gamma_h ||a_i - b_j||^2)`` as a 0-d tensor."""
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for start in range(0, a.shape[0], chunk):
        sq = torch.cdist(a[start : start + chunk], b).square()  # (c, Nb)
        total = total + torch.exp(-sq[..., None] * gammas).sum()
    return total


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] | None = None) -> float:
    """Unbiased squared MMD with a sum of RBF kernels (Gretton et al. 2012, eq. 3).

    ``k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2))`` and

        MMD_u^2 = 1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(NM) sum_{i, j} k(x_i, y_j).

    The estimate is unbiased, so it can be slightly negative when the distributions agree.

    Args:
        x: ``(N, D)`` samples, ``N >= 2``.
        y: ``(M, D)`` samples, ``M >= 2``.
        bandwidths: kernel bandwidths ``h`` (> 0). Default: the median pairwise distance of the
            pooled sample times ``(0.5, 1, 2)`` (exact median up to 1024 pooled points, else of
            evenly spaced subsets).

    Returns:
        ``MMD_u^2`` as a float.
    """
    x = _check_samples("x", x, 2)
    y = _check_samples("y", y, 2).to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    if bandwidths is None:
        median = _median_pairwise_distance(x, y)
        if median <= 0:
            raise ValueError("median pairwise distance is 0; pass bandwidths explicitly")
        bandwidths = tuple(median * s for s in (0.5, 1.0, 2.0))
    if len(bandwidths) == 0 or min(bandwidths) <= 0:
        raise ValueError(f"bandwidths must be positive, got {bandwidths}")
    h = torch.tensor(bandwidths, dtype=torch.float64, device=x.device)
    gammas = 1.0 / (2.0 * h**2)
    chunk = 256
    n, m, n_kernels = x.shape[0], y.shape[0], len(bandwidths)
    # each diagonal term k(x_i, x_i) = number of kernels
    kxx = (_rbf_kernel_sum(x, x, gammas, chunk) - n * n_kernels) / (n * (n - 1))
    kyy = (_rbf_kernel_sum(y, y, gammas, chunk) - m * n_kernels) / (m * (m - 1))
    kxy = _rbf_kernel_sum(x, y, gammas, chunk) / (n * m)
    return float(kxx + kyy - 2.0 * kxy)
