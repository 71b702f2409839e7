"""Metrics for any vector teacher (no log-density needed): FD, precision / recall, MMD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dibregman.config import EvalConfig
from dibregman.evaluators.base import Evaluator, metric, nan_if_not_finite
from dibregman.metrics import (
    frechet_distance_to_moments,
    gaussian_moments,
    kth_nn_radii,
    mmd_rbf,
    precision_recall,
)
from dibregman.plots import plot_vector_samples
from dibregman.results import Direction, MetricSpec, Role, Stage

LOWER, HIGHER = Direction.LOWER, Direction.HIGHER


class VectorEvaluator(Evaluator):
    """Sample-based metrics against a vector teacher ``(N, d)`` that can only be sampled.

    ``fd_n{N}``: Fréchet distance on raw coordinates (clean-fid's ``frechet_distance``) against
    the moments of :meth:`teacher_moments`; improved precision / recall (k-NN manifolds,
    Kynkäänniemi et al. 2019) and unbiased RBF ``mmd_n{N}`` against a teacher draw from
    ``torch.Generator(eval.seed)``, so every run is measured on the same reference set.
    """

    def __init__(self, teacher, cfg: EvalConfig) -> None:
        super().__init__(teacher, cfg)
        self.reference = teacher.sample(max(cfg.n_pr, cfg.n_mmd),
                                        torch.Generator().manual_seed(cfg.seed))
        self.moments = self.teacher_moments()
        self.reference_radii: Tensor | None = None
        self.protocol = {
            "fd": self.fd_protocol,
            "precision_recall": f"k-NN manifolds, k={cfg.pr_k}, vs teacher draw seed {cfg.seed}",
            "mmd": f"unbiased RBF MMD^2 vs teacher draw seed {cfg.seed}",
        }

    fd_protocol = ("Frechet distance on raw coordinates vs the moments of n_final teacher "
                   "samples drawn with seed eval.seed + 1 (cleanfid.fid.frechet_distance)")

    def teacher_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(d,)`` and covariance ``(d, d)`` the FD compares against: here those of
        ``n_final`` teacher samples from ``torch.Generator(eval.seed + 1)``."""
        draw = self.teacher.sample(self.cfg.n_final,
                                   torch.Generator().manual_seed(self.cfg.seed + 1))
        return gaussian_moments(draw)

    @classmethod
    def metrics(cls, cfg: EvalConfig, class_conditional: bool = False) -> list[MetricSpec]:
        return [
            *cls.curve_metrics(cfg.n_curve, Stage.CURVE, Role.DIAGNOSTIC),
            *cls.curve_metrics(cfg.n_final, Stage.FINAL, Role.HEADLINE),
            *cls.exact_metrics(cfg.n_final),
            metric("precision", f"precision k={cfg.pr_k}", cfg.n_pr, HIGHER,
                   key=f"precision_k{cfg.pr_k}_n{cfg.n_pr}"),
            metric("recall", f"recall k={cfg.pr_k}", cfg.n_pr, HIGHER,
                   key=f"recall_k{cfg.pr_k}_n{cfg.n_pr}"),
            metric("mmd", "MMD²", cfg.n_mmd, LOWER),
        ]

    @classmethod
    def curve_metrics(cls, n: int, stage: Stage, fd_role: Role) -> list[MetricSpec]:
        """What :meth:`curve` reports on ``n`` samples; the FD plays ``fd_role``."""
        return [metric("fd", "FD", n, LOWER, fd_role, stage)]

    @classmethod
    def exact_metrics(cls, n: int) -> list[MetricSpec]:
        """Final metrics beyond the curve's that need more than samples (none here)."""
        return []

    def curve(self, samples: Tensor) -> dict[str, float]:
        """The curve metrics of ``samples: (N, d)`` (NaN for non-finite samples)."""
        declared = self.curve_metrics(len(samples), Stage.CURVE, Role.DIAGNOSTIC)
        return (nan_if_not_finite(samples, [spec.key for spec in declared])
                or self.measure_curve(samples))

    def measure_curve(self, samples: Tensor) -> dict[str, float]:
        """``fd_n{N}`` of finite ``samples: (N, d)``."""
        return {f"fd_n{len(samples)}": frechet_distance_to_moments(samples, *self.moments)}

    def final(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Every metric; precision / recall and MMD on the first ``n_pr`` / ``n_mmd`` samples
        (vector teachers are unconditional: ``labels`` is None)."""
        cfg = self.cfg
        metrics = self.curve(samples)
        if not torch.isfinite(samples).all():
            return metrics
        metrics.update(self.exact(samples))
        if self.reference_radii is None:  # once per evaluator: every run meets the same set
            self.reference_radii = kth_nn_radii(self.reference[: cfg.n_pr], cfg.pr_k)
        precision, recall = precision_recall(self.reference[: cfg.n_pr], samples[: cfg.n_pr],
                                             k=cfg.pr_k, real_radii=self.reference_radii)
        metrics[f"precision_k{cfg.pr_k}_n{cfg.n_pr}"] = precision
        metrics[f"recall_k{cfg.pr_k}_n{cfg.n_pr}"] = recall
        metrics[f"mmd_n{cfg.n_mmd}"] = mmd_rbf(self.reference[: cfg.n_mmd],
                                               samples[: cfg.n_mmd])
        return metrics

    def exact(self, samples: Tensor) -> dict[str, float]:
        """The values of :meth:`exact_metrics` (none here)."""
        return {}

    def budget(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """At a budget: the FD (and NLL) on every sample and the exact metrics; precision /
        recall and MMD (k-nearest neighbours and kernels over thousands of samples, most of a
        final evaluation's time) only at the end."""
        metrics = self.curve(samples)
        if torch.isfinite(samples).all():
            metrics.update(self.exact(samples))
        return metrics

    # A student passes when its precision and recall are both at least this share of the
    # teacher's: it draws the teacher's support without much mass outside it.
    GATE_SHARE = 0.8

    @classmethod
    def quality_gate(cls, student: dict[str, float],
                     teacher: dict[str, float]) -> tuple[bool, str]:
        """Precision and recall both >= 80 % of the teacher's samples' own."""
        keys = [k for k in student if k.startswith(("precision", "recall")) and k in teacher]
        if not keys:
            return False, "no precision or recall to judge the student by"
        ratios = {k: student[k] / teacher[k] if teacher[k] > 0 else 0.0 for k in keys}
        passes = all(r >= cls.GATE_SHARE for r in ratios.values())
        shown = ", ".join(f"{k} {student[k]:.3g} (teacher {teacher[k]:.3g})" for k in keys)
        return passes, f"precision and recall >= {cls.GATE_SHARE:g} x the teacher's: {shown}"

    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        """Student samples over 3000 teacher samples (seed 0), on the principal axes."""
        return plot_vector_samples(samples, path, title,
                                   teacher_samples=self.teacher.sample(
                                       3000, torch.Generator().manual_seed(0)))
