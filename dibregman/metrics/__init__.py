"""Sample-quality metrics: how well one-step student samples match a Gaussian-mixture teacher.

* :mod:`~dibregman.metrics.frechet`: Fréchet distance (clean-fid's implementation) on raw
  coordinates.
* :mod:`~dibregman.metrics.samples`: improved precision / recall and unbiased RBF MMD².
* :mod:`~dibregman.metrics.mixture`: exact log-likelihood, moments and mode statistics against
  a known isotropic Gaussian mixture.
* :mod:`~dibregman.metrics.classifier`: a small domain classifier for image data sets, its
  64-d features (for FD and precision / recall) and a class-coverage score.
* :mod:`~dibregman.metrics.inception`: clean-fid's Inception-v3 features, offline.
* :mod:`~dibregman.metrics.reference`: content-hashed caching of reference moments.

Importing this package stays cheap: clean-fid, torchvision and scikit-learn are imported only
inside the functions that need them.
"""

from dibregman.metrics.classifier import (
    DomainClassifier,
    class_coverage,
    classifier_features,
    predict_classes,
    train_domain_classifier,
)
from dibregman.metrics.frechet import (
    frechet_distance,
    frechet_distance_to_moments,
    gaussian_moments,
)
from dibregman.metrics.inception import (
    InceptionUnavailable,
    inception_extractor,
    inception_features,
    inception_weights,
)
from dibregman.metrics.mixture import (
    ModeStats,
    mixture_log_prob,
    mixture_moments,
    mode_assignment,
    mode_stats,
    negative_log_likelihood,
)
from dibregman.metrics.reference import cached_moments, content_hash
from dibregman.metrics.samples import kth_nn_radii, mmd_rbf, precision_recall

__all__ = [
    "DomainClassifier",
    "InceptionUnavailable",
    "ModeStats",
    "cached_moments",
    "class_coverage",
    "classifier_features",
    "content_hash",
    "frechet_distance",
    "frechet_distance_to_moments",
    "gaussian_moments",
    "inception_extractor",
    "inception_features",
    "inception_weights",
    "kth_nn_radii",
    "mixture_log_prob",
    "mixture_moments",
    "mmd_rbf",
    "mode_assignment",
    "mode_stats",
    "negative_log_likelihood",
    "precision_recall",
    "predict_classes",
    "train_domain_classifier",
]
