"""Sample-quality metrics: how well one-step student samples match a Gaussian-mixture teacher.

* :mod:`~dibregman.metrics.frechet`: Fréchet distance (clean-fid's implementation) on raw
  coordinates.
* :mod:`~dibregman.metrics.samples`: improved precision / recall and unbiased RBF MMD².
* :mod:`~dibregman.metrics.mixture`: exact log-likelihood, moments and mode statistics against
  a known isotropic Gaussian mixture.
"""

from dibregman.metrics.frechet import (
    frechet_distance,
    frechet_distance_to_moments,
    gaussian_moments,
)
from dibregman.metrics.mixture import (
    ModeStats,
    mixture_log_prob,
    mixture_moments,
    mode_assignment,
    mode_stats,
    negative_log_likelihood,
)
from dibregman.metrics.samples import mmd_rbf, precision_recall

__all__ = [
    "ModeStats",
    "frechet_distance",
    "frechet_distance_to_moments",
    "gaussian_moments",
    "mixture_log_prob",
    "mixture_moments",
    "mmd_rbf",
    "mode_assignment",
    "mode_stats",
    "negative_log_likelihood",
    "precision_recall",
]
