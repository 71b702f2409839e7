"""Quality of student samples against a mixture teacher; every metric name carries its ``n``.

Curve metrics (cheap, logged over training): ``fd_n{N}`` (Fréchet distance on raw coordinates
against the teacher's exact mean and covariance, clean-fid's ``frechet_distance``) and
``nll_n{N}`` (negative log-likelihood of student samples under the true mixture).

Final metrics add mode statistics (``modes_covered_n{N}``, ``mode_tv_n{N}``,
``off_mode_n{N}``), improved precision / recall (``precision_k{k}_n{N}``,
``recall_k{k}_n{N}``, Kynkäänniemi et al. 2019) and ``mmd_n{N}`` (unbiased RBF MMD²), each
against a reference draw of the teacher fixed by ``eval.seed``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dibregman.config import EvalConfig
from dibregman.metrics import (
    frechet_distance_to_moments,
    mixture_moments,
    mmd_rbf,
    mode_stats,
    negative_log_likelihood,
    precision_recall,
)
from dibregman.teachers import GaussianMixtureTeacher


def _mixture(teacher: GaussianMixtureTeacher) -> tuple[Tensor, Tensor, Tensor]:
    return teacher.means, teacher.stds, teacher.weights


def curve_metrics(teacher: GaussianMixtureTeacher, samples: Tensor) -> dict[str, float]:
    """``fd_n{N}`` and ``nll_n{N}`` of ``samples: (N, d)``; NaN-free only for finite samples."""
    n = len(samples)
    if not torch.isfinite(samples).all():
        return {f"fd_n{n}": float("nan"), f"nll_n{n}": float("nan")}
    mu, cov = mixture_moments(*_mixture(teacher))
    return {
        f"fd_n{n}": frechet_distance_to_moments(samples, mu, cov),
        f"nll_n{n}": negative_log_likelihood(samples, *_mixture(teacher)),
    }


def final_metrics(
    teacher: GaussianMixtureTeacher, samples: Tensor, cfg: EvalConfig
) -> dict[str, float]:
    """Every quality metric of ``samples: (cfg.n_final, d)``.

    Precision / recall and MMD use the first ``cfg.n_pr`` / ``cfg.n_mmd`` samples against a
    teacher draw of the same size from ``torch.Generator(cfg.seed)``.
    """
    n = len(samples)
    metrics = curve_metrics(teacher, samples)
    if not torch.isfinite(samples).all():
        return metrics
    stats = mode_stats(samples, *_mixture(teacher))
    metrics[f"modes_covered_n{n}"] = float(stats.covered)
    metrics[f"mode_tv_n{n}"] = stats.weight_tv
    metrics[f"off_mode_n{n}"] = stats.off_mode_fraction
    reference = teacher.sample(max(cfg.n_pr, cfg.n_mmd), torch.Generator().manual_seed(cfg.seed))
    precision, recall = precision_recall(reference[: cfg.n_pr], samples[: cfg.n_pr], k=cfg.pr_k)
    metrics[f"precision_k{cfg.pr_k}_n{cfg.n_pr}"] = precision
    metrics[f"recall_k{cfg.pr_k}_n{cfg.n_pr}"] = recall
    metrics[f"mmd_n{cfg.n_mmd}"] = mmd_rbf(reference[: cfg.n_mmd], samples[: cfg.n_mmd])
    return metrics
