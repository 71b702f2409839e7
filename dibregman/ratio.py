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
* ``oracle``: no fitting; the true ratio as far as it can be computed, for teachers with an
  exact density: the teacher's noised density against a KDE of fresh student samples
  (:func:`dibregman.density.kde_log_ratio`), the ceiling of how much ``h`` can matter on a task.
  The Distiller computes it (it holds the student); this module only knows it is not fitted.

``log r`` is clamped to ``[-log_ratio_clamp, log_ratio_clamp]`` inside every loss, which also
clips the ratio from above (deep direct ratio fitting over-fits; Kato & Teshima 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dibregman import distributed
from dibregman.bregman import BregmanGenerator
from dibregman.config import RatioConfig
from dibregman.members import member_means
from dibregman.registry import Registry
from dibregman.results import WEIGHT_DIAGNOSTICS

# A fitting loss per pair of samples (teacher side, student side): its batch mean is the loss.
RatioLoss = Callable[[Tensor, Tensor], Tensor]

def classifier_loss(log_r_teacher: Tensor, log_r_student: Tensor) -> Tensor:
    """Logistic loss with the teacher side positive; logit ``= -log r``: per pair
    ``softplus(log r_p) + softplus(-log r_q)``. Inputs ``(B,)``, output ``(B,)``."""
    return F.softplus(log_r_teacher) + F.softplus(-log_r_student)


def ulsif_loss(log_r_teacher: Tensor, log_r_student: Tensor) -> Tensor:
    """``E_p[r^2] / 2 - E_q[r]`` (uLSIF, Kanamori et al. 2009): per pair
    ``r_p^2 / 2 - r_q``. Inputs ``(B,)``, output ``(B,)``."""
    return 0.5 * (2 * log_r_teacher).exp() - log_r_student.exp()


def kliep_loss(log_r_teacher: Tensor, log_r_student: Tensor) -> Tensor:
    """``E_p[r] - E_q[log r]`` (unnormalised KLIEP, Sugiyama et al. 2008): per pair
    ``r_p - log r_q``. Inputs ``(B,)``, output ``(B,)``."""
    return log_r_teacher.exp() - log_r_student


ORACLE = "oracle"
# The fitting loss of each estimator; None: not fitted (the oracle).
ESTIMATORS: Registry[RatioLoss | None] = Registry("ratio estimator", {
    "classifier": classifier_loss,
    "ulsif": ulsif_loss,
    "kliep": kliep_loss,
    ORACLE: None,
})


def estimator_names() -> list[str]:
    """Sorted names of the ratio estimators."""
    return ESTIMATORS.names()


def fitted_estimator_names() -> list[str]:
    """Sorted names of the estimators that fit a ratio network (all but the oracle)."""
    return [name for name, loss in ESTIMATORS.items() if loss is not None]


def get_estimator(name: str) -> RatioLoss | None:
    """The loss of a named estimator (None for the oracle); an unknown name raises
    ``ValueError`` listing valid ones."""
    return ESTIMATORS[name]


class RatioEstimator(nn.Module):
    """A network ``(x_sigma, sigma) -> log r``, its fitting loss, and the weight pipeline.

    With the ``oracle`` estimator the network is kept (checkpoints have one shape) but never
    fitted: ``fitted`` is False and the weights are read off log-ratios computed elsewhere.

    The per-noise-bin means of ``1/r`` live in a buffer, so checkpoints carry them. With a seed
    batch (:mod:`dibregman.members`) every member has its own bins; batches are member-major,
    ``K * B`` rows.

    A class-conditional network also takes one-hot labels ``y: (K B, C)`` and estimates the
    conditional ratio ``q_sigma(x | y) / p_sigma(x | y)``; every method passes them through.

    Args:
        network: maps ``x: (K B, d)``, ``sigma: (K B,)`` (and ``y``) to raw ``log r: (K B,)``.
        cfg: estimator name, clamps, clips and normalisation switches.
        sigma_min, sigma_max: the range split into ``cfg.noise_bins`` equal bins of log-sigma.
        members: ``K``, the number of independent members the network holds.
    """

    def __init__(self, network: nn.Module, cfg: RatioConfig, sigma_min: float,
                 sigma_max: float, members: int = 1) -> None:
        super().__init__()
        self.network = network
        self.cfg = cfg
        self.members = members
        self.fit_loss = get_estimator(cfg.estimator)
        self.fitted = self.fit_loss is not None
        self.log_sigma_min = math.log(sigma_min)
        self.log_sigma_max = math.log(sigma_max)
        self.register_buffer("bin_mean_inv_ratio", torch.ones(members, cfg.noise_bins))
        self.register_buffer("bin_seen", torch.zeros(members, cfg.noise_bins, dtype=torch.bool))

    def log_ratio(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """Clamped ``log r`` in fp32, ``(K B,)``."""
        clamp = self.cfg.log_ratio_clamp
        return self.network(x, sigma, labels).float().clamp(-clamp, clamp)

    def loss(self, x_teacher: Tensor, x_student: Tensor, sigma: Tensor,
             labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Fitting loss on a pair of noised batches at the same levels.

        Args:
            x_teacher: ``(K B, d)`` noised teacher-side samples (positive class).
            x_student: ``(K B, d)`` noised, detached student samples (negative class).
            sigma: ``(K B,)`` their noise levels.
            labels: ``(K B, C)`` one-hot classes of both (row ``i`` of each is of class
                ``labels[i]``); None for an unconditional network.

        Returns:
            Each member's loss ``(K,)``, and each member's accuracy of the sign rule
            "``log r < 0`` means teacher" ``(K,)``.
        """
        if self.fit_loss is None:
            raise ValueError(f"the {self.cfg.estimator} ratio estimator is not fitted")
        log_r_teacher = self.log_ratio(x_teacher, sigma, labels)
        log_r_student = self.log_ratio(x_student, sigma, labels)
        with torch.no_grad():
            correct = ((log_r_teacher < 0).float() + (log_r_student > 0).float()) / 2
        loss = self.fit_loss(log_r_teacher, log_r_student)
        return member_means(loss, self.members), member_means(correct, self.members)

    def noise_bin(self, sigma: Tensor) -> Tensor:
        """``(B,)`` bin index of each level over ``[log sigma_min, log sigma_max]``."""
        span = self.log_sigma_max - self.log_sigma_min
        position = (sigma.float().log() - self.log_sigma_min) / span
        return (position * self.cfg.noise_bins).long().clamp(0, self.cfg.noise_bins - 1)

    @torch.no_grad()
    def weights(
        self, h: BregmanGenerator, log_r: Tensor, sigma: Tensor, update: bool = True,
    ) -> tuple[Tensor, list[dict[str, float]]]:
        """Per-sample Di-Bregman weights ``w = h''(r) r`` from log-ratios at noised student
        samples (:meth:`log_ratio` of the network, or the oracle's).

        Steps (all fp32, docs/method.md §5), each member on its own rows: clamp ``log r``; clip
        ``r`` to ``[clip_min, clip_max]`` *before* normalising, so that one over-confident
        sample cannot inflate its bin's factor (f-distill's order); per-bin
        self-normalisation ``r <- r * m_bin`` with ``m_bin`` the (EMA) mean of ``1/r`` over
        student samples in the bin, since ``E_q[1/r] = E_q[p/q] = 1``; clip to ``h``'s convex
        domain ``(0, ratio_max]``; ``w = h.weight(r)``, exactly 0 at a finite domain end
        (``BregmanGenerator.ratio_max``); divide by the member's batch mean. The
        weights are never negative, so a zero mean means every weight is zero (``log_squared``
        with every ``r >= e``): such a batch keeps ``w = 0``, no distribution-matching step,
        rather than ``0 / 0``; any positive mean, however small, is divided by exactly.

        Data-parallel (:mod:`dibregman.distributed`, one member): ``x`` is this rank's shard,
        and the bin statistics, the batch mean and the diagnostics are those of the global
        batch (bin counts and sums all-reduced; weights and ratios gathered), so every rank
        gets its rows of the weights one process would compute on the whole batch.

        Args:
            h: the Bregman generator.
            log_r: ``(K B,)`` ``log r`` at the noised student samples, the same ``x_s`` as the
                score difference (clamped here to ``log_ratio_clamp``).
            sigma: ``(K B,)`` their noise levels.
            update: fold this batch into the per-bin EMA (False for pure evaluation).

        Returns:
            ``w: (K B,)`` and, per member, diagnostics: the raw weight's min / mean / max
            before the batch-mean division, ratio quantiles after clipping and normalisation,
            and the share of samples clipped by ``[clip_min, clip_max]`` or by ``h``'s domain.
        """
        cfg, k = self.cfg, self.members
        clamp = cfg.log_ratio_clamp
        raw = log_r.float().clamp(-clamp, clamp).exp().reshape(k, -1)
        ratio = raw.clamp(cfg.clip_min, cfg.clip_max)
        clipped = ratio != raw
        if cfg.bin_normalize:
            bins = self.noise_bin(sigma).reshape(k, -1)
            if update:
                self._update_bins(bins, 1 / ratio)
            ratio = ratio * self.bin_mean_inv_ratio.gather(1, bins)
        clipped |= ratio > h.ratio_max
        ratio = ratio.clamp(max=h.ratio_max)
        weight = torch.where(ratio < h.ratio_max, h.weight(ratio), 0.0)
        # The global batch's rows of every rank (this batch itself in one process).
        every = distributed.all_gather(torch.stack([weight, ratio, clipped.float()]), dim=2)
        weight_all, ratio_all, clipped_all = every[0], every[1], every[2]
        quantiles = torch.quantile(ratio_all,
                                   torch.tensor([0.05, 0.5, 0.95], device=ratio.device), dim=1)
        table = torch.stack([weight_all.amin(1), weight_all.mean(1), weight_all.amax(1),
                             *quantiles, clipped_all.mean(1)]).T.tolist()
        names = tuple(WEIGHT_DIAGNOSTICS)  # the result contract's order
        diagnostics = [dict(zip(names, row, strict=True)) for row in table]
        if cfg.weight_normalize:
            mean = weight_all.mean(dim=1, keepdim=True)
            weight = weight / torch.where(mean > 0, mean, 1.0)
        return weight.reshape(-1), diagnostics

    def _update_bins(self, bins: Tensor, inv_ratio: Tensor) -> None:
        """Fold each member's per-bin batch means of ``1/r`` (``bins``, ``inv_ratio``:
        ``(K, B)``) into ``bin_mean_inv_ratio`` (EMA ``bin_ema``). Data-parallel, the counts
        and sums are summed over ranks first: the means are the global batch's, and every
        rank's bins stay equal."""
        k, n_bins = self.members, self.cfg.noise_bins
        flat = (bins + n_bins * torch.arange(k, device=bins.device)[:, None]).reshape(-1)
        counts = torch.bincount(flat, minlength=k * n_bins).reshape(k, n_bins)
        sums = torch.bincount(flat, weights=inv_ratio.reshape(-1),
                              minlength=k * n_bins).reshape(k, n_bins)
        counts, sums = distributed.all_reduce_sum(counts), distributed.all_reduce_sum(sums)
        present = counts > 0
        batch_mean = sums[present] / counts[present]
        decay = torch.where(self.bin_seen[present], self.cfg.bin_ema, 0.0)
        self.bin_mean_inv_ratio[present] = (
            decay * self.bin_mean_inv_ratio[present] + (1 - decay) * batch_mean
        )
        self.bin_seen |= present

    def member_bins(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s bins, as a one-member estimator holds them (``(1, n_bins)``)."""
        return {"bin_mean_inv_ratio": self.bin_mean_inv_ratio[k:k + 1].clone(),
                "bin_seen": self.bin_seen[k:k + 1].clone()}

    def load_member_bins(self, states: list[dict[str, Tensor]]) -> None:
        """Load one :meth:`member_bins` state per member."""
        for name in ("bin_mean_inv_ratio", "bin_seen"):
            getattr(self, name).copy_(torch.cat([s[name] for s in states]))
