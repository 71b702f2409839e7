"""The Di-Bregman loop: critic steps and weighted student steps (one run's training state).

Student gradient (docs/method.md §3), with ``x = G(z)``, ``x_s = x + sigma n``:

    grad_theta = E[ w(r(x_s, sigma)) (s_fake(x_s, sigma) - s_teacher(x_s, sigma)) . dx/dtheta ],
    w(r) = h''(r) r,

computed as in DMD2 by :func:`dibregman.losses.distribution_matching`; the ratio and the weight
are read at the same ``(x_s, sigma)`` as the score difference. With
``train.regression_weight > 0`` the student loss adds DMD's regression term on fixed pairs of
latents and the teacher's ODE images (:func:`dibregman.students.regression_pairs`); with
``train.gan_weight > 0`` the adversarial term. Both are the same for every ``h``.

The critic step fits the fake score by denoising score matching on detached student samples
and the ratio network on noised teacher-side samples (positive) against noised student samples
(negative) at the same levels.

Nothing here touches files or global RNG: all randomness comes from ``torch.Generator``s
seeded by ``cfg.seed``, so a run is a deterministic function of its config.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from dibregman.bregman import get_generator
from dibregman.config import Config
from dibregman.device import adamw, autocast, prepare_modules, resolve_device
from dibregman.losses import distribution_matching, dsm_loss, gan_generator_loss, regression_loss
from dibregman.networks import ema_update
from dibregman.noise import expand_sigma, karras_sigmas, sample_sigmas
from dibregman.ratio import RatioEstimator
from dibregman.results import Status
from dibregman.students import build_networks, regression_pairs
from dibregman.teachers import Teacher

_STATE = ("student", "student_ema", "fake", "ratio", "opt_student", "opt_fake", "opt_ratio")


def apply_update(loss: Tensor, optimizer: torch.optim.Optimizer, module: torch.nn.Module,
                 clip: float) -> bool:
    """Backpropagate ``loss`` and step ``optimizer`` with the gradient norm clipped to ``clip``,
    unless the gradient is non-finite (a non-finite loss gives a non-finite norm, so one host
    sync covers both); True if stepped."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


class Distiller:
    """Student, fake score, ratio estimator and their optimisers for one run.

    Args:
        cfg: the run's config.
        teacher: a frozen teacher (vector or image), already on ``cfg.device``.
    """

    def __init__(self, cfg: Config, teacher: Teacher) -> None:
        self.cfg, self.teacher, train = cfg, teacher, cfg.train
        self.h = get_generator(cfg.generator.name, cfg.generator.alpha)
        self.device = resolve_device(cfg.device)
        init_rng = torch.Generator().manual_seed(2 * cfg.seed)
        self.rng = torch.Generator(device=self.device).manual_seed(2 * cfg.seed + 1)
        self.student, self.fake, ratio_net = build_networks(cfg, teacher, init_rng)
        # The pairs' latents continue the initialisation stream: never the evaluation latents.
        self.pairs = (regression_pairs(teacher, train.regression_pairs, init_rng, self.device)
                      if train.regression_weight > 0 else None)
        self.student_ema = copy.deepcopy(self.student).requires_grad_(False)
        self.ratio = RatioEstimator(ratio_net, cfg.ratio, train.sigma_min, train.sigma_max)
        for module in (self.student, self.student_ema, self.fake, self.ratio):
            module.to(self.device)
        prepare_modules([self.student, self.fake, self.ratio.network, teacher.network],
                        self.device, cfg.compile)
        self.autocast = autocast(self.device, cfg.precision)
        opt = {"betas": train.betas, "weight_decay": train.weight_decay, "device": self.device}
        self.opt_student = adamw(self.student, train.lr, **opt)
        self.opt_fake = adamw(self.fake, train.lr * train.fake_lr_scale, **opt)
        self.opt_ratio = adamw(self.ratio, train.lr, **opt)
        self.sigma_grid = karras_sigmas(
            train.sigma_grid_size, train.sigma_min, train.sigma_max, train.rho
        ).to(self.device)
        self.generator_step = self.nonfinite_streak = self.nonfinite_total = 0
        self.status = Status.RUNNING

    def _latents(self, n: int, rng: torch.Generator) -> Tensor:
        return torch.randn(n, *self.teacher.shape, generator=rng, device=rng.device)

    def _noised(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``x + sigma n`` with ``n`` from the run's generator."""
        return x + expand_sigma(sigma, x) * torch.randn(x.shape, generator=self.rng,
                                                        device=self.device)

    def _sigmas(self, n: int) -> Tensor:
        t = self.cfg.train
        return sample_sigmas(n, self.sigma_grid, t.sigma_quantile_low, t.sigma_quantile_high,
                             self.rng)

    @torch.no_grad()
    def sample(self, n: int, seed: int, batch_size: int = 1024) -> Tensor:
        """``n`` samples of the EMA student from latents fixed by ``seed``, ``(n, *shape)``.

        All ``n`` latents are drawn first (on the CPU), so sample ``i`` is the same at any
        batch size and on any device.
        """
        latents = self._latents(n, torch.Generator().manual_seed(seed))
        with self.autocast:
            return torch.cat([self.student_ema(chunk.to(self.device)).float().cpu()
                              for chunk in latents.split(batch_size)])

    def critic_step(self) -> dict[str, float]:
        """One update of the fake score (DSM) and the ratio network on detached student samples."""
        batch = self.cfg.train.batch_size
        with torch.no_grad(), self.autocast:
            x_student = self.student(self._latents(batch, self.rng)).float()
        x_teacher = (self.teacher.sample(batch, self.rng) if self.cfg.ratio.teacher_side ==
                     "teacher" else self.teacher.sample_data(batch, self.rng))
        sigma = self._sigmas(batch)
        noised = self._noised(x_student, sigma)
        with self.autocast:
            denoised = self.fake(noised, sigma).float()
        fake_loss = dsm_loss(denoised, x_student, sigma, self.teacher.sigma_data)
        teacher_noised = self._noised(x_teacher, sigma)
        with self.autocast:
            ratio_loss, accuracy = self.ratio.loss(teacher_noised, noised, sigma)
        finite = apply_update(fake_loss, self.opt_fake, self.fake, clip=math.inf)
        finite &= apply_update(ratio_loss, self.opt_ratio, self.ratio, clip=math.inf)
        self._count_nonfinite(finite)
        return {"loss_fake_dsm": fake_loss.item(), "loss_ratio": ratio_loss.item(),
                "ratio_accuracy": float(accuracy)}

    def student_step(self) -> dict[str, float]:
        """One weighted distribution-matching update of the student (docs/method.md §3)."""
        train = self.cfg.train
        with self.autocast:
            x = self.student(self._latents(train.batch_size, self.rng)).float()
        sigma = self._sigmas(train.batch_size)
        x_noised = self._noised(x, sigma)
        diagnostics: dict[str, float] = {}
        weight = None
        with torch.no_grad(), self.autocast:
            x_s = x_noised.detach()
            denoised_teacher = self.teacher.denoise(x_s, sigma).float()
            denoised_fake = self.fake(x_s, sigma).float()
            if not train.force_unit_weight:
                weight, diagnostics = self.ratio.weights(self.h, x_s, sigma)
        loss_dm, step = distribution_matching(x, denoised_teacher, denoised_fake, weight)
        loss = loss_dm
        if train.gan_weight > 0:
            with self.autocast:
                loss_gan = gan_generator_loss(self.ratio.log_ratio(x_noised, sigma))
            loss = loss + train.gan_weight * loss_gan
            diagnostics["loss_gan"] = loss_gan.item()
        if self.pairs is not None:
            latents, targets = self.pairs
            index = torch.randint(len(latents), (train.batch_size,), generator=self.rng,
                                  device=self.device)
            with self.autocast:
                fitted = self.student(latents[index]).float()
            loss_regression = regression_loss(fitted, targets[index])
            loss = loss + train.regression_weight * loss_regression
            diagnostics["loss_regression"] = loss_regression.item()
        finite = apply_update(loss, self.opt_student, self.student, clip=train.grad_clip)
        self._count_nonfinite(finite)
        if finite:
            # Decay min(ema_decay, t / (t + 1)) at update t = 0, 1, ...: until the cap the EMA is
            # the plain mean of the iterates, so it never carries the initial weights.
            t = self.generator_step
            ema_update(self.student_ema, self.student, min(train.ema_decay, t / (t + 1)))
        return {**diagnostics, "loss_dm": loss_dm.item(),
                "grad_norm": float(step.flatten(1).norm(dim=1).mean())}

    def step(self) -> dict[str, float]:
        """``critic_steps_per_generator_step`` critic updates, then one student update.

        Returns:
            Diagnostics of the last critic step and of the student step, plus non-finite counts.
            Sets ``status`` to ``diverged`` after ``train.max_nonfinite_steps`` consecutive
            non-finite updates.
        """
        critic: dict[str, float] = {}
        for _ in range(self.cfg.train.critic_steps_per_generator_step):
            critic = self.critic_step()
        record = {**critic, **self.student_step()}
        self.generator_step += 1
        record["nonfinite_steps"] = float(self.nonfinite_total)
        return record

    def warmup(self) -> dict[str, float]:
        """``train.fake_warmup_steps`` critic steps before the first student update."""
        record: dict[str, float] = {}
        for _ in range(self.cfg.train.fake_warmup_steps):
            record = self.critic_step()
        return record

    def _count_nonfinite(self, finite: bool) -> None:
        self.nonfinite_streak = 0 if finite else self.nonfinite_streak + 1
        self.nonfinite_total += not finite
        if self.nonfinite_streak >= self.cfg.train.max_nonfinite_steps:
            self.status = Status.DIVERGED

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; tensors and plain data only (``weights_only`` safe)."""
        return {**{name: getattr(self, name).state_dict() for name in _STATE},
                "rng": self.rng.get_state(), "generator_step": self.generator_step,
                "nonfinite_streak": self.nonfinite_streak,
                "nonfinite_total": self.nonfinite_total, "status": str(self.status)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in _STATE:
            getattr(self, name).load_state_dict(state[name])
        self.rng.set_state(state["rng"].cpu())
        self.generator_step = state["generator_step"]
        self.nonfinite_streak = state["nonfinite_streak"]
        self.nonfinite_total = state["nonfinite_total"]
        self.status = Status(state["status"])
