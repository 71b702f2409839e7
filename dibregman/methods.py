"""Distillation methods: the losses of one critic step and one student step, given its draws.

A method is one small class over the shared trainer (:class:`dibregman.distill.Distiller`): the
trainer draws every random number of a step (member-major, this rank's rows), stacks seed
batches, shards data-parallel batches, steps the optimisers, keeps the EMA, guards against
non-finite updates and writes checkpoints; the method only says what the losses are. Every
loss is per sample (``(R,)`` for the ``R = K B / W`` rows of a step) except the ratio
network's, which is per member (KLIEP's and uLSIF's losses are not sums over samples).

Student step (docs/method.md §3), with ``x = G(z)`` and ``x_s = x + sigma n``:

    grad_theta = E[ w(x_s, sigma) (s_fake(x_s, sigma) - s_teacher(x_s, sigma)) . dx/dtheta ],

computed by :func:`dibregman.losses.distribution_matching`. Methods differ in ``w``
(:meth:`Method.weights`):

* :class:`DiBregman` — ``w = h''(r) r`` read off the density-ratio estimate ``r`` at the same
  ``(x_s, sigma)`` as the score difference (Di-Bregman, arXiv 2510.16983);
* :class:`DMD` — ``w = 1`` (DMD, arXiv 2311.18828): Di-Bregman with reverse KL, without reading
  the ratio. Its ratio network still trains, for the live ratio check and the GAN term.

Both add the same optional terms, pure functions of :mod:`dibregman.losses`: DMD2's GAN term
``softplus(log r(x_s))`` (``train.gan_weight``) and DMD's regression term on fixed
latent-to-ODE-image pairs (``train.regression_weight``).

The critic step fits the fake score by denoising score matching on detached student samples,
and the ratio network on noised teacher-side samples (positive) against noised student samples
(negative) at the same levels.

A new method is a subclass registered in :data:`METHODS` overriding :meth:`Method.weights` (or
:meth:`Method.student_losses` / :meth:`Method.critic_losses` for a different loss); the config
key ``method`` picks it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dibregman.bregman import get_generator
from dibregman.config import Config
from dibregman.density import oracle_log_ratio
from dibregman.losses import distribution_matching, dsm_loss, gan_generator_loss, regression_loss
from dibregman.noise import expand_sigma
from dibregman.ratio import RatioEstimator
from dibregman.registry import Registry
from dibregman.teachers import Teacher


@dataclass(frozen=True)
class Networks:
    """What a method reads of the trainer: the networks of ``members`` runs (stacked for a
    seed batch), the autocast context, and DMD's regression pairs.

    Attributes:
        pairs: ``(latents (K P, *shape), labels (K P, C) or None, targets (K P, *shape))``
            member-major, or None without the regression term.
    """

    student: nn.Module
    fake: nn.Module
    ratio: RatioEstimator
    teacher: Teacher
    autocast: AbstractContextManager
    members: int
    pairs: tuple[Tensor, Tensor | None, Tensor] | None


@dataclass(frozen=True)
class CriticBatch:
    """One critic step's draws: this rank's ``R`` member-major rows of each.

    Attributes:
        labels: ``(R, C)`` one-hot classes, or None for an unconditional teacher.
        latents: ``(R, *shape)`` student latents.
        teacher_side: ``(R, *shape)`` positive-class samples (data or the teacher's).
        sigma: ``(R,)`` noise levels, shared by both sides.
        noise: ``(R, *shape)`` noise of the student samples.
        teacher_noise: ``(R, *shape)`` noise of the teacher-side samples.
    """

    labels: Tensor | None
    latents: Tensor
    teacher_side: Tensor
    sigma: Tensor
    noise: Tensor
    teacher_noise: Tensor


@dataclass(frozen=True)
class StudentBatch:
    """One student step's draws.

    Attributes:
        labels, latents, sigma, noise: this rank's ``R`` member-major rows, as in
            :class:`CriticBatch`.
        oracle_latents: ``(K N, *shape)`` latents of the oracle estimator's fresh student
            samples (``N = ratio.oracle_samples`` per member, the same on every rank), or None.
        pair_index: ``(R,)`` rows of the regression pairs, or None without them.
    """

    labels: Tensor | None
    latents: Tensor
    sigma: Tensor
    noise: Tensor
    oracle_latents: Tensor | None
    pair_index: Tensor | None


@dataclass(frozen=True)
class CriticLosses:
    """``fake``: ``(R,)`` per-sample DSM loss; ``ratio``, ``accuracy``: ``(K,)`` per member,
    None when the estimator is not fitted (the oracle)."""

    fake: Tensor
    ratio: Tensor | None
    accuracy: Tensor | None


@dataclass(frozen=True)
class StudentLosses:
    """One student step's losses.

    Attributes:
        terms: name to ``(per-sample loss (R,), its weight)``, summed by the trainer in this
            order after each member's mean; the first is ``loss_dm``.
        step_norm: ``(R,)`` the norm of each sample's distribution-matching step (recorded
            as ``grad_norm``).
        diagnostics: per member, the weight pipeline's record (empty for unit weights).
    """

    terms: dict[str, tuple[Tensor, float]]
    step_norm: Tensor
    diagnostics: list[dict[str, float]]


class Method:
    """The losses of a method for one run (or a seed batch of runs) over ``nets``."""

    name = ""

    def __init__(self, cfg: Config, nets: Networks) -> None:
        self.cfg, self.nets = cfg, nets

    def critic_losses(self, batch: CriticBatch) -> CriticLosses:
        """The fake score's DSM loss on detached student samples and the ratio network's
        fitting loss, teacher side against student side at the same levels."""
        nets = self.nets
        with torch.no_grad(), nets.autocast:
            x_student = nets.student(batch.latents, batch.labels).float()
        noised = x_student + expand_sigma(batch.sigma, x_student) * batch.noise
        with nets.autocast:
            denoised = nets.fake(noised, batch.sigma, batch.labels).float()
        fake = dsm_loss(denoised, x_student, batch.sigma, nets.teacher.sigma_data)
        if not nets.ratio.fitted:
            return CriticLosses(fake, None, None)
        side = batch.teacher_side
        teacher_noised = side + expand_sigma(batch.sigma, side) * batch.teacher_noise
        with nets.autocast:
            ratio, accuracy = nets.ratio.loss(teacher_noised, noised, batch.sigma, batch.labels)
        return CriticLosses(fake, ratio, accuracy)

    def weights(self, x_s: Tensor, batch: StudentBatch) -> tuple[Tensor | None,
                                                                list[dict[str, float]]]:
        """Per-sample weights ``(R,)`` of the distribution-matching step at the noised student
        samples ``x_s`` (None: ``w = 1``) and per-member diagnostics. Called under
        ``no_grad``."""
        raise NotImplementedError

    def student_losses(self, batch: StudentBatch) -> StudentLosses:
        """The weighted distribution-matching loss, plus the GAN and regression terms when
        their weights are positive."""
        nets, train = self.nets, self.cfg.train
        with nets.autocast:
            x = nets.student(batch.latents, batch.labels).float()
        x_noised = x + expand_sigma(batch.sigma, x) * batch.noise
        with torch.no_grad(), nets.autocast:
            x_s = x_noised.detach()
            denoised_teacher = nets.teacher.denoise(x_s, batch.sigma, batch.labels).float()
            denoised_fake = nets.fake(x_s, batch.sigma, batch.labels).float()
            weight, diagnostics = self.weights(x_s, batch)
        per_sample, step = distribution_matching(x, denoised_teacher, denoised_fake, weight)
        terms = {"loss_dm": (per_sample, 1.0)}
        if train.gan_weight > 0:
            with nets.autocast:
                log_r = nets.ratio.log_ratio(x_noised, batch.sigma, batch.labels)
            terms["loss_gan"] = (gan_generator_loss(log_r), train.gan_weight)
        if batch.pair_index is not None:  # drawn only when the run has regression pairs
            latents, labels, targets = nets.pairs
            index = batch.pair_index
            with nets.autocast:
                fitted = nets.student(latents[index],
                                      None if labels is None else labels[index]).float()
            terms["loss_regression"] = (regression_loss(fitted, targets[index]),
                                        train.regression_weight)
        return StudentLosses(terms, step.flatten(1).norm(dim=1), diagnostics)


class DiBregman(Method):
    """Di-Bregman: ``w = h''(r) r`` of the generator ``cfg.generator`` at the ratio estimate,
    through the weight pipeline (:meth:`dibregman.ratio.RatioEstimator.weights`)."""

    name = "di_bregman"

    def __init__(self, cfg: Config, nets: Networks) -> None:
        super().__init__(cfg, nets)
        self.h = get_generator(cfg.generator.name, cfg.generator.alpha)

    def weights(self, x_s: Tensor, batch: StudentBatch) -> tuple[Tensor,
                                                                list[dict[str, float]]]:
        return self.nets.ratio.weights(self.h, self.log_ratio(x_s, batch), batch.sigma)

    def log_ratio(self, x_s: Tensor, batch: StudentBatch) -> Tensor:
        """``log r`` at the rows ``x_s: (R, *shape)``: the ratio network's, or the oracle's,
        each member's against a KDE of its own fresh student samples (every rank of a
        data-parallel run holds the same samples: its rows differ, the truth does not)."""
        nets = self.nets
        if nets.ratio.fitted:
            return nets.ratio.log_ratio(x_s, batch.sigma, batch.labels)
        assert batch.oracle_latents is not None
        samples = nets.student(batch.oracle_latents).float().split(
            len(batch.oracle_latents) // nets.members)
        rows = len(x_s) // nets.members
        return torch.cat([
            oracle_log_ratio(x_s[k * rows:(k + 1) * rows], batch.sigma[k * rows:(k + 1) * rows],
                             student, nets.teacher.log_prob)
            for k, student in enumerate(samples)])


class DMD(Method):
    """DMD: unit weights, ``w = 1`` (the weight Di-Bregman's reverse KL gives exactly)."""

    name = "dmd"

    def weights(self, x_s: Tensor, batch: StudentBatch) -> tuple[None, list[dict[str, float]]]:
        return None, [{} for _ in range(self.nets.members)]


METHODS: Registry[type[Method]] = Registry("method", {m.name: m for m in (DiBregman, DMD)})
