"""Fréchet distance between Gaussians, through clean-fid's own implementation.

The Fréchet (2-Wasserstein) distance between ``N(mu1, C1)`` and ``N(mu2, C2)`` is

    FD = ||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^{1/2})

(Dowson & Landau 1982; used as FID by Heusel et al. 2017). Here it is applied to raw sample
coordinates rather than Inception features, and delegated to ``cleanfid.fid.frechet_distance``
(Parmar et al. 2022), the exact code path clean-fid uses for FID.

Behaviour of ``cleanfid.fid.frechet_distance`` (clean-fid 0.1.35 with SciPy 1.17), checked by
hand and by ``tests/test_metrics.py``:

* It works for any dimension ``D >= 2``; nothing in it is specific to 2048-d features.
* ``D = 1`` crashes (``ValueError: not enough values to unpack``): it calls
  ``scipy.linalg.sqrtm(..., disp=False)`` and unpacks two return values, but SciPy >= 1.16
  returns a bare array for ``1 x 1`` input. :func:`frechet_distance` therefore embeds 1-d
  moments in 2-d with an extra unit-variance, zero-mean coordinate shared by both Gaussians,
  which adds exactly ``0 + 1 + 1 - 2 * 1 = 0`` to the distance.
* ``disp=False`` raises a ``DeprecationWarning`` on SciPy >= 1.16 (removal announced for SciPy
  1.18, after which clean-fid 0.1.35 will fail); the warning is silenced here.
* Singular (e.g. mode-collapsed, zero) covariances still give a finite, correct value, with a
  SciPy ``LinAlgWarning``; clean-fid's ``eps`` diagonal fallback (which *prints* a message)
  only fires when ``sqrtm`` returns non-finite values.
* Float32 input is computed in float32 (error ~1e-7); inputs are cast to float64 here.
* The result is a NumPy scalar and may be slightly negative by round-off (~1e-12) for
  identical moments; it is returned as a Python ``float`` without clamping.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _as_moments(mu: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    if mu.ndim != 1 or cov.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"need mean (D,) and covariance (D, D), got {mu.shape} and {cov.shape}")
    return mu, cov


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians, ``||mu1-mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^{1/2})``.

    Delegates to ``cleanfid.fid.frechet_distance`` (clean-fid's own code path, the same one FID
    uses; Heusel et al. 2017, Parmar et al. 2022) after casting to float64. clean-fid needs
    ``D >= 2``; for ``D = 1`` both Gaussians are embedded in 2-d with a shared ``N(0, 1)``
    coordinate, which leaves the distance unchanged (see the module docstring).

    Args:
        mu1: ``(D,)`` mean of the first Gaussian.
        cov1: ``(D, D)`` covariance of the first Gaussian (symmetric PSD).
        mu2: ``(D,)`` mean of the second Gaussian.
        cov2: ``(D, D)`` covariance of the second Gaussian (symmetric PSD).

    Returns:
        The distance (>= 0 up to round-off of order 1e-12).
    """
    from cleanfid.fid import frechet_distance as _cleanfid_fd  # heavy import (torchvision)

    mu1, cov1 = _as_moments(mu1, cov1)
    mu2, cov2 = _as_moments(mu2, cov2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
    if mu1.shape[0] == 1:
        mu1, mu2 = np.append(mu1, 0.0), np.append(mu2, 0.0)
        cov1 = np.diag([cov1[0, 0], 1.0])
        cov2 = np.diag([cov2[0, 0], 1.0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated.*")
        return float(_cleanfid_fd(mu1, cov1, mu2, cov2))


def gaussian_moments(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and unbiased sample covariance (``np.cov(x, rowvar=False)``) in float64.

    Args:
        x: ``(N, D)`` samples, ``N >= 2``.

    Returns:
        ``(mean (D,), covariance (D, D))`` as float64 NumPy arrays (also ``(1, 1)`` for D = 1).
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need samples of shape (N >= 2, D), got {tuple(x.shape)}")
    xs = x.detach().to("cpu", torch.float64).numpy()
    return xs.mean(axis=0), np.atleast_2d(np.cov(xs, rowvar=False))


def frechet_distance_to_moments(x: torch.Tensor, mu: np.ndarray, cov: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fitted to samples and reference moments.

    Args:
        x: ``(N, D)`` samples, ``N >= 2``.
        mu: ``(D,)`` reference mean (e.g. the exact mixture mean, :func:`mixture_moments`).
        cov: ``(D, D)`` reference covariance.

    Returns:
        ``frechet_distance(*gaussian_moments(x), mu, cov)``.
    """
    return frechet_distance(*gaussian_moments(x), mu, cov)
