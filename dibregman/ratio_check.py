"""How well a ratio estimate tracks the true ratio, noise level by noise level.

The Di-Bregman weight ``w(r) = h''(r) r`` is read off an estimate of ``r_sigma = q_sigma /
p_sigma`` (student over teacher). A generator can only matter where the estimate moves with the
truth, so every mixture run checks it live (:class:`LiveRatioCheck`), and
``benchmarks/ratio.py`` measures every estimator on pairs of mixtures whose ratio is exact.

At each noise level ``sigma`` (:func:`check_sigmas`: the centres of the estimator's log-sigma
bins) the check compares, on noised student points ``x_s = x + sigma n`` (where the weights are
read) and on as many noised teacher-side points:

* ``correlation``: Pearson's correlation of the estimated and true ``log r`` at student points,
  both clipped to the weight pipeline's ``[log clip_min, log clip_max]`` (beyond it every weight
  is the clip's: a difference there cannot reach a weight);
* ``abs_error``: the mean absolute difference of the same clipped log-ratios;
* ``accuracy``: how often the estimate's rule "``log r <= 0``: teacher" is right on the balanced
  set of student and teacher points, and ``truth_accuracy``: the same for the true ratio's rule;
* ``truth_spread``: the standard deviation of the clipped true ``log r`` at student points (a
  correlation means little where the truth barely varies).

The live check's truth is the best available one (:func:`dibregman.density.kde_log_ratio`):
the teacher's exact noised density against a KDE of the student. Its bias is bounded by a
control, the same KDE of the teacher against the teacher's exact density, whose true log-ratio
is 0: ``control_error`` is the 95th percentile of that control's ``|log r|`` at teacher points.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dibregman.bregman import BregmanGenerator
from dibregman.config import Config
from dibregman.density import kde_log_ratio, loo_bandwidth

# ``(x, sigma) -> log r``: an estimator's (or the truth's) log-ratio at points ``x: (M, d)``
# noised to ``sigma: (M,)``, ``(M,)``.
LogRatioFn = Callable[[Tensor, Tensor], Tensor]
# The fields of one check row, after its ``step`` and ``sigma``.
CHECK_FIELDS = ("correlation", "abs_error", "accuracy", "truth_accuracy", "truth_spread",
                "control_error")


def check_sigmas(sigma_min: float, sigma_max: float, bins: int) -> list[float]:
    """The geometric centres of ``bins`` equal bins of ``[log sigma_min, log sigma_max]`` (the
    ratio estimator's noise bins)."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(lo + (i + 0.5) * (hi - lo) / bins) for i in range(bins)]


def agreement(true_student: Tensor, true_teacher: Tensor, est_student: Tensor,
              est_teacher: Tensor, clip_min: float, clip_max: float) -> dict[str, float]:
    """The check's numbers at one noise level (see the module docstring).

    Args:
        true_student, est_student: ``(M,)`` true and estimated ``log r`` at noised student
            points.
        true_teacher, est_teacher: ``(M',)`` the same at noised teacher-side points.
        clip_min, clip_max: the weight pipeline's ratio clip.

    Returns:
        ``correlation`` (NaN where either side is constant), ``abs_error``, ``accuracy``,
        ``truth_accuracy``, ``truth_spread``.
    """
    lo, hi = math.log(clip_min), math.log(clip_max)
    truth = true_student.double().clamp(lo, hi)
    estimate = est_student.double().clamp(lo, hi)
    if truth.std() > 0 and estimate.std() > 0:
        correlation = float(torch.corrcoef(torch.stack([truth, estimate]))[0, 1])
    else:
        correlation = math.nan

    def rule_accuracy(student_side: Tensor, teacher_side: Tensor) -> float:
        return 0.5 * float((student_side > 0).double().mean() + (teacher_side <= 0).double().mean())

    return {"correlation": correlation,
            "abs_error": float((truth - estimate).abs().mean()),
            "accuracy": rule_accuracy(est_student, est_teacher),
            "truth_accuracy": rule_accuracy(true_student, true_teacher),
            "truth_spread": float(truth.std())}


def weight_spread(h: BregmanGenerator, log_r: Tensor, clip_min: float,
                  clip_max: float) -> float:
    """The coefficient of variation (std / mean) of ``w = h''(r) r`` over ``log r: (M,)``
    clipped as the weight pipeline clips it: 0 means every sample gets the same weight, the
    DMD step whatever ``h``. NaN when every weight is 0."""
    r = log_r.double().exp().clamp(clip_min, min(clip_max, h.ratio_max))
    weight = torch.where(r < h.ratio_max, h.weight(r), 0.0)
    mean = float(weight.mean())
    return float(weight.std()) / mean if mean > 0 else math.nan


@dataclass(frozen=True)
class LiveRatioCheck:
    """The live check of a run whose teacher has an exact density: its ratio estimate against
    the teacher's exact noised density over a KDE of the live student.

    Attributes:
        teacher_log_prob: ``(x, sigma) -> log p_sigma(x)``, ``(M,)``.
        teacher_sample: ``(n, rng) -> (n, d)`` exact teacher samples.
        sigmas: the noise levels checked.
        clip_min, clip_max: the weight pipeline's ratio clip.
        seed: the control's generator seed (the same in every run).
        summary_sigma_max: :meth:`summary` averages the levels up to this one.
    """

    teacher_log_prob: Callable[[Tensor, Tensor | float], Tensor]
    teacher_sample: Callable[[int, torch.Generator], Tensor]
    sigmas: tuple[float, ...]
    clip_min: float
    clip_max: float
    seed: int
    summary_sigma_max: float

    @classmethod
    def for_run(cls, cfg: Config, teacher_log_prob: Callable[[Tensor, Tensor | float], Tensor],
                teacher_sample: Callable[[int, torch.Generator], Tensor],
                sigma_data: float) -> LiveRatioCheck:
        """The check of a run of ``cfg``: at the centres of its ratio estimator's noise bins,
        with its clip, the evaluation seed, and a summary over ``sigma <= sigma_data`` (above
        the data's scale the noise hides most of any difference, and the true ratio is close
        to 1)."""
        sigmas = check_sigmas(cfg.train.sigma_min, cfg.train.sigma_max, cfg.ratio.noise_bins)
        return cls(teacher_log_prob, teacher_sample, tuple(sigmas), cfg.ratio.clip_min,
                   cfg.ratio.clip_max, cfg.eval.seed, sigma_data)

    def summary(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """The record's summary of :meth:`measure`'s rows
        (:data:`dibregman.results.RATIO_CHECK_METRICS`): over the levels ``sigma <=
        summary_sigma_max`` (the lowest level if none is), the mean correlation (NaN-free
        levels) and the mean of ``truth_accuracy - accuracy``."""
        kept = [r for r in rows if r["summarised"]] or rows[:1]
        correlations = [r["correlation"] for r in kept if math.isfinite(r["correlation"])]
        return {"ratio_check_correlation": (float(np.mean(correlations)) if correlations
                                            else math.nan),
                "ratio_check_accuracy_gap": float(np.mean(
                    [r["truth_accuracy"] - r["accuracy"] for r in kept]))}

    def measure(self, estimate: LogRatioFn, student_kde: Tensor, student_points: Tensor,
                seed: int) -> list[dict[str, float]]:
        """One row per noise level: ``sigma``, :data:`CHECK_FIELDS` and ``summarised`` (whether
        :meth:`summary` counts the level).

        Args:
            estimate: the run's ratio estimate.
            student_kde: ``(N, d)`` live student samples for the KDE.
            student_points: ``(M, d)`` other live student samples, the points checked.
            seed: the teacher points' and every noise draw's seed; give every (run,
                evaluation) its own, so that averages over runs and evaluations average the
                points' sampling noise away too.
        """
        n = len(student_points)
        rng = torch.Generator().manual_seed(seed)
        teacher_points = self.teacher_sample(n, rng)
        bandwidth = loo_bandwidth(student_kde)
        controls = self._control_errors(len(student_kde))
        rows = []
        for sigma, control in zip(self.sigmas, controls, strict=True):
            levels = torch.full((n,), sigma)
            x_student = student_points + sigma * torch.randn(student_points.shape, generator=rng)
            x_teacher = teacher_points + sigma * torch.randn(teacher_points.shape, generator=rng)

            def truth(x: Tensor, sigma: float = sigma) -> Tensor:
                return kde_log_ratio(x, sigma, student_kde, bandwidth, self.teacher_log_prob)

            row = agreement(truth(x_student), truth(x_teacher), estimate(x_student, levels),
                            estimate(x_teacher, levels), self.clip_min, self.clip_max)
            rows.append({"sigma": sigma, **row, "control_error": control,
                         "summarised": sigma <= self.summary_sigma_max})
        return rows

    @functools.cache  # noqa: B019 (one check per run: its control is the same every time)
    def _control_errors(self, n_kde: int, n: int = 500) -> tuple[float, ...]:
        """Per level, the control's error: the 95th percentile of ``|log r|`` of the teacher's
        KDE of ``n_kde`` samples against its exact density, at ``n`` noised teacher points. It
        does not depend on the student, so it is measured once per run."""
        rng = torch.Generator().manual_seed(self.seed)
        points, kde = self.teacher_sample(n, rng), self.teacher_sample(n_kde, rng)
        noise = torch.randn(points.shape, generator=rng)
        bandwidth = loo_bandwidth(kde)
        return tuple(float(np.quantile(kde_log_ratio(points + sigma * noise, sigma, kde,
                                                     bandwidth, self.teacher_log_prob).abs(),
                                       0.95))
                     for sigma in self.sigmas)
