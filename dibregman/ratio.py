"""Density-ratio estimation ``r = q_student / p_teacher`` and the weight hygiene of
docs/method.md §5.

Convention (docs/method.md §2): the teacher side is the positive class, so a logistic classifier's
logit is ``-log r`` and ``r = exp(-logit) = (1 - D) / D``; a network that says "teacher" with
confidence (large logit) gives ``r < 1``. Every estimator here parametrises ``log r`` directly.

Estimators (Sugiyama, Suzuki & Kanamori 2012, Bregman ratio fitting with ``r`` over ``p``):

    loss_h(r) = E_p[h'(r) r - h(r)] - E_q[h'(r)]

* ``classifier``: ``h = r log r - (1 + r) log(1 + r)`` gives the logistic loss
  ``E_p[softplus(log r)] + E_q[softplus(-log r)]`` (binary cross-entropy, teacher positive).
* ``ulsif``: ``h = (r - 1)^2 / 2`` gives ``E_p[r^2] / 2 - E_q[r]`` (least-squares fitting).
* ``kliep``: ``h = r log r - r`` gives ``E_p[r] - E_q[log r]`` (a KLIEP-type loss).

``log r`` is clamped to ``[-log_ratio_clamp, log_ratio_clamp]`` inside every loss, which also
clips the ratio from above (deep direct ratio fitting over-fits; Kato & Teshima 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dibregman.bregman import BregmanGenerator
from dibregman.config import RatioConfig

RatioLoss = Callable[[Tensor, Tensor], Tensor]

# Added to the batch mean that normalises the weights (docs/method.md §5).
WEIGHT_EPS = 1e-8


def classifier_loss(log_r_teacher: Tensor, log_r_student: Tensor) -> Tensor:
    """Logistic loss with the teacher side positive; logit ``= -log r``. Inputs ``(B,)``."""
    return F.softplus(log_r_teacher).mean() + F.softplus(-log_r_student).mean()


def ulsif_loss(log_r_teacher: Tensor, log_r_student: Tensor) -> Tensor:
    """``E_p[r^2] / 2 - E_q[r]`` (uLSIF, Kanamori et al. 2009). Inputs ``(B,)``."""
    return 0.5 * (2 * log_r_teacher).exp().mean() - log_r_student.exp().mean()


def kliep_loss(log_r_teacher: Tensor, log_r_student: Tensor) -> Tensor:
    """``E_p[r] - E_q[log r]`` (unnormalised KLIEP, Sugiyama et al. 2008). Inputs ``(B,)``."""
    return log_r_teacher.exp().mean() - log_r_student.mean()


ESTIMATORS: dict[str, RatioLoss] = {
    "classifier": classifier_loss,
    "ulsif": ulsif_loss,
    "kliep": kliep_loss,
}


def estimator_names() -> list[str]:
    """Sorted names of the ratio estimators."""
    return sorted(ESTIMATORS)


def get_estimator(name: str) -> RatioLoss:
    """The loss of a named estimator; an unknown name raises ``ValueError`` listing valid ones."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown ratio estimator {name!r}; valid: {', '.join(estimator_names())}"
        ) from None


class RatioEstimator(nn.Module):
    """A network ``(x_sigma, sigma) -> log r``, its fitting loss, and the weight pipeline.

    The per-noise-bin means of ``1/r`` live in a buffer, so checkpoints carry them.

    Args:
        network: maps ``x: (B, d)``, ``sigma: (B,)`` to raw ``log r: (B,)``.
        cfg: estimator name, clamps, clips and normalisation switches.
        sigma_min, sigma_max: the range split into ``cfg.noise_bins`` equal bins of log-sigma.
    """

    def __init__(
        self, network: nn.Module, cfg: RatioConfig, sigma_min: float, sigma_max: float
    ) -> None:
        super().__init__()
        self.network = network
        self.cfg = cfg
        self.fit_loss = get_estimator(cfg.estimator)
        self.log_sigma_min = math.log(sigma_min)
        self.log_sigma_max = math.log(sigma_max)
        self.register_buffer("bin_mean_inv_ratio", torch.ones(cfg.noise_bins))
        self.register_buffer("bin_seen", torch.zeros(cfg.noise_bins, dtype=torch.bool))

    def log_ratio(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Clamped ``log r`` in fp32, ``(B,)``."""
        clamp = self.cfg.log_ratio_clamp
        return self.network(x, sigma).float().clamp(-clamp, clamp)

    def loss(self, x_teacher: Tensor, x_student: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Fitting loss on a pair of noised batches at the same levels.

        Args:
            x_teacher: ``(B, d)`` noised teacher-side samples (positive class).
            x_student: ``(B, d)`` noised, detached student samples (negative class).
            sigma: ``(B,)`` their noise levels.

        Returns:
            The scalar loss, and the accuracy of the sign rule "``log r < 0`` means teacher".
        """
        log_r_teacher = self.log_ratio(x_teacher, sigma)
        log_r_student = self.log_ratio(x_student, sigma)
        with torch.no_grad():
            correct = torch.cat([log_r_teacher < 0, log_r_student > 0]).float().mean()
        return self.fit_loss(log_r_teacher, log_r_student), correct

    def noise_bin(self, sigma: Tensor) -> Tensor:
        """``(B,)`` bin index of each level over ``[log sigma_min, log sigma_max]``."""
        span = self.log_sigma_max - self.log_sigma_min
        position = (sigma.float().log() - self.log_sigma_min) / span
        return (position * self.cfg.noise_bins).long().clamp(0, self.cfg.noise_bins - 1)

    @torch.no_grad()
    def weights(
        self, h: BregmanGenerator, x: Tensor, sigma: Tensor, update: bool = True
    ) -> tuple[Tensor, dict[str, float]]:
        """Per-sample Di-Bregman weights ``w = h''(r) r`` at noised student samples.

        Steps (all fp32, docs/method.md §5): clamp ``log r``; clip ``r`` to
        ``[clip_min, clip_max]`` *before* normalising, so that one over-confident sample cannot
        inflate its bin's factor (f-distill's order); per-bin self-normalisation
        ``r <- r * m_bin`` with ``m_bin`` the (EMA) mean of ``1/r`` over student samples in the
        bin, since ``E_q[1/r] = E_q[p/q] = 1``; clip to ``h``'s convex domain
        ``(0, ratio_max]``; ``w = h.weight(r)``; divide by ``batch mean + WEIGHT_EPS``. A batch
        whose weights are all zero (``log_squared`` with every ``r >= e``) thus gives ``w = 0``:
        no distribution-matching step, rather than ``0 / 0``.

        Args:
            h: the Bregman generator.
            x: ``(B, d)`` noised student samples, the same ``x_s`` as the score difference.
            sigma: ``(B,)`` their noise levels.
            update: fold this batch into the per-bin EMA (False for pure evaluation).

        Returns:
            ``w: (B,)`` and diagnostics: the raw weight's min / mean / max before the batch-mean
            division, ratio quantiles after clipping and normalisation, and the share of samples
            clipped by ``[clip_min, clip_max]`` or by ``h``'s domain.
        """
        cfg = self.cfg
        raw = self.log_ratio(x, sigma).exp()
        ratio = raw.clamp(cfg.clip_min, cfg.clip_max)
        clipped = ratio != raw
        if cfg.bin_normalize:
            bins = self.noise_bin(sigma)
            if update:
                self._update_bins(bins, 1 / ratio)
            ratio = ratio * self.bin_mean_inv_ratio[bins]
        clipped |= ratio > h.ratio_max
        ratio = ratio.clamp(max=h.ratio_max)
        weight = h.weight(ratio)
        quantiles = torch.quantile(ratio, torch.tensor([0.05, 0.5, 0.95], device=ratio.device))
        diagnostics = {
            "weight_min": float(weight.min()),
            "weight_mean": float(weight.mean()),
            "weight_max": float(weight.max()),
            "ratio_q05": float(quantiles[0]),
            "ratio_q50": float(quantiles[1]),
            "ratio_q95": float(quantiles[2]),
            "ratio_clipped_fraction": float(clipped.float().mean()),
        }
        if cfg.weight_normalize:
            weight = weight / (weight.mean() + WEIGHT_EPS)
        return weight, diagnostics

    def _update_bins(self, bins: Tensor, inv_ratio: Tensor) -> None:
        """Fold per-bin batch means of ``1/r`` into ``bin_mean_inv_ratio`` (EMA ``bin_ema``)."""
        n_bins = self.cfg.noise_bins
        counts = torch.bincount(bins, minlength=n_bins)
        sums = torch.bincount(bins, weights=inv_ratio, minlength=n_bins)
        present = counts > 0
        batch_mean = sums[present] / counts[present]
        decay = torch.where(self.bin_seen[present], self.cfg.bin_ema, 0.0)
        self.bin_mean_inv_ratio[present] = (
            decay * self.bin_mean_inv_ratio[present] + (1 - decay) * batch_mean
        )
        self.bin_seen |= present
