"""Exact metrics against an analytic Gaussian-mixture teacher (its moments and log-density are
known): FD to the exact moments, NLL, mode coverage, plus the sample-based ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dibregman.evaluators.base import metric
from dibregman.evaluators.vector import HIGHER, LOWER, VectorEvaluator
from dibregman.metrics import mixture_moments, mode_stats, negative_log_likelihood
from dibregman.plots import plot_vector_samples, principal_axes
from dibregman.results import MetricSpec, Role, Stage


class MixtureEvaluator(VectorEvaluator):
    """:class:`VectorEvaluator` with the mixture's exact moments and log-density.

    ``fd_n{N}`` against the exact moments, ``nll_n{N}`` under the true mixture, and the mode
    statistics: ``modes_covered_n{N}`` (a mode counts when it holds >= 1/4 of its expected
    mass), ``mode_tv_n{N}`` (total variation of mode weights), ``off_mode_n{N}``.
    """

    fd_protocol = ("Frechet distance on raw coordinates vs the teacher's exact moments "
                   "(cleanfid.fid.frechet_distance)")

    def __init__(self, teacher, cfg) -> None:
        self.mixture = (teacher.means, teacher.stds, teacher.weights)
        super().__init__(teacher, cfg)
        self.protocol.update({
            "nll": "negative log-likelihood under the true mixture",
            "modes_covered": "modes holding >= 1/4 of their expected mass (99.9% chi2 region)",
        })

    def teacher_moments(self) -> tuple[np.ndarray, np.ndarray]:
        return mixture_moments(*self.mixture)

    @classmethod
    def curve_metrics(cls, n: int, stage: Stage, fd_role: Role) -> list[MetricSpec]:
        return [*super().curve_metrics(n, stage, fd_role),
                metric("nll", "NLL", n, LOWER, Role.DIAGNOSTIC, stage)]

    @classmethod
    def exact_metrics(cls, n: int) -> list[MetricSpec]:
        return [metric("modes_covered", "modes covered", n, HIGHER),
                metric("mode_tv", "mode-weight TV", n, LOWER),
                metric("off_mode", "off-mode share", n, LOWER)]

    def measure_curve(self, samples: Tensor) -> dict[str, float]:
        """The FD of :class:`VectorEvaluator` and ``nll_n{N}``."""
        return {**super().measure_curve(samples),
                f"nll_n{len(samples)}": negative_log_likelihood(samples, *self.mixture)}

    def exact(self, samples: Tensor) -> dict[str, float]:
        n = len(samples)
        stats = mode_stats(samples, *self.mixture)
        return {f"modes_covered_n{n}": float(stats.covered),
                f"mode_tv_n{n}": stats.weight_tv,
                f"off_mode_n{n}": stats.off_mode_fraction}

    # A student passes when it covers every mode the teacher's own samples cover and leaves at
    # most this share of its samples more off-mode than they do.
    GATE_OFF_MODE = 0.10

    @classmethod
    def quality_gate(cls, student: dict[str, float],
                     teacher: dict[str, float]) -> tuple[bool, str]:
        """Every mode the teacher covers covered (mean over seeds within half a mode) and an
        off-mode share at most 10 points above the teacher's. FD alone cannot judge a
        multi-modal student: it compares means and covariances, which a student can match
        while it leaves most modes empty."""
        covered = next((k for k in student if k.startswith("modes_covered")), None)
        off = next((k for k in student if k.startswith("off_mode")), None)
        if covered is None or off is None or covered not in teacher or off not in teacher:
            return False, "no mode statistics to judge the student by"
        passes = (student[covered] >= teacher[covered] - 0.5
                  and student[off] <= teacher[off] + cls.GATE_OFF_MODE)
        return passes, (f"modes covered {student[covered]:.3g} of the teacher's "
                        f"{teacher[covered]:.3g}, off-mode share {student[off]:.3g} (teacher "
                        f"{teacher[off]:.3g}; at most +{cls.GATE_OFF_MODE:g})")

    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        """Over the log-density (2-D) or teacher samples, projected on the means' principal
        axes; the mode means as crosses."""
        means = self.teacher.means
        return plot_vector_samples(
            samples, path, title,
            teacher_samples=self.teacher.sample(3000, torch.Generator().manual_seed(0)),
            projection=principal_axes(means), markers=means,
            log_density=self.teacher.log_prob if means.shape[1] == 2 else None)
