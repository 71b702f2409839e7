"""The Di-Bregman loop for vector data: critic steps and weighted generator steps.

Generator gradient (METHOD.md §3), with ``x = G(z)``, ``x_s = x + sigma n``:

    grad_theta = E[ w(r(x_s, sigma)) (s_fake(x_s, sigma) - s_teacher(x_s, sigma)) . dx/dtheta ],
    w(r) = h''(r) r.

Implemented as in DMD2: under ``no_grad``,
``g = w * (D_fake(x_s) - D_teacher(x_s)) / mean|x - D_teacher(x_s)|`` (``D_fake - D_teacher =
sigma^2 (s_fake - s_teacher)``; the per-sample normaliser plays the role of ``lambda(sigma)``),
then ``loss = 0.5 ||x - stopgrad(x - g)||^2`` so autograd delivers ``g . dx/dtheta``. The ratio
and the weight are read at the same ``(x_s, sigma)`` as the score difference.

With ``train.regression_weight > 0`` the student loss adds DMD's regression term
``lambda_reg * 0.5 ||G(z_i) - y_i||^2`` on fixed pairs of latents ``z_i`` and the teacher's ODE
images ``y_i`` (:func:`regression_pairs`); it is the same for every generator ``h``.

The critic step fits the fake score by denoising score matching on detached student samples
(loss weight ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``) and the ratio network on noised
teacher samples (positive) against noised student samples (negative) at the same levels.

Nothing here touches files or global RNG: all randomness comes from ``torch.Generator``s
seeded by ``cfg.seed``, so a run is a deterministic function of its config.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dibregman.bregman import get_generator
from dibregman.config import Config
from dibregman.networks import (
    ConvEncoder,
    Denoiser,
    DenoiserStudent,
    MLPNet,
    OneStepGenerator,
    RatioNetwork,
    ema_update,
    init_parameters,
)
from dibregman.noise import karras_sigmas, sample_sigmas
from dibregman.ratio import RatioEstimator
from dibregman.teachers import Teacher, expand_sigma

FINISHED = "finished"
DIVERGED = "diverged"
RUNNING = "running"


def build_networks(
    cfg: Config, teacher: Teacher, init_rng: torch.Generator
) -> tuple[torch.nn.Module, Denoiser, RatioNetwork]:
    """Student, fake score and ratio network for ``teacher``.

    Vector teachers (analytic mixtures have no network to copy): a residual MLP student, an
    MLP fake score starting at ``c_skip x`` and an MLP ratio network, all seeded by
    ``init_rng``. Image teachers (DMD2): student ``G(z) = D(sigma_init z, sigma_init)`` and fake
    score both copied from the teacher's denoiser; the ratio network is a separate small CNN
    (not a head on the fake score's bottleneck) so its updates never move the fake score.
    """
    sd = teacher.sigma_data
    network = getattr(teacher, "network", None)
    if network is None:
        dim, net = teacher.shape[0], cfg.net
        student = OneStepGenerator(dim, net.hidden, net.depth, sd)
        init_parameters(student, init_rng)
        fake = Denoiser(MLPNet(dim, dim, net.hidden, net.depth), sd)
        init_parameters(fake, init_rng, zero_last=True)
        ratio_net = RatioNetwork(MLPNet(dim, 1, net.hidden, net.depth), sd)
    else:
        student = DenoiserStudent(copy.deepcopy(network).requires_grad_(True),
                                  cfg.train.sigma_init)
        fake = copy.deepcopy(network).requires_grad_(True)
        ratio_net = RatioNetwork(ConvEncoder(teacher.shape[0]), sd)
    init_parameters(ratio_net, init_rng, zero_last=True)
    return student.train(), fake.train(), ratio_net


@torch.no_grad()
def regression_pairs(
    teacher: Teacher, n: int, generator: torch.Generator, device: torch.device,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """DMD's regression set: ``n`` latents and the teacher's ODE images of them.

    Args:
        teacher: the frozen teacher; ``y = teacher.sample_from(z)`` (35 evaluations each).
        n: number of pairs.
        generator: a CPU generator for the latents ``z ~ N(0, I)``.
        device: where the pairs live.

    Returns:
        latents ``(n, *shape)`` and targets ``(n, *shape)``, both fp32 on ``device``.
    """
    latents = torch.randn(n, *teacher.shape, generator=generator).to(device)
    targets = torch.cat([teacher.sample_from(chunk).float()
                         for chunk in latents.split(batch_size)])
    return latents, targets.to(device)


def resolve_device(name: str) -> torch.device:
    """``auto`` is ``cuda`` when a GPU is visible, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Distiller:
    """Student, fake score, ratio estimator and their optimisers for one run.

    Args:
        cfg: the run's config.
        teacher: a frozen teacher (vector or image), already on ``cfg.device``.
    """

    def __init__(self, cfg: Config, teacher: Teacher) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.bregman = get_generator(cfg.generator.name, cfg.generator.alpha)
        self.device = resolve_device(cfg.device)
        train = cfg.train

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
        if self.device.type == "cuda":
            # Fixed shapes: let cuDNN time its convolution algorithms once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        if cfg.compile:
            # In place (state-dict keys unchanged); the teacher's network is compiled too.
            teacher_network = getattr(teacher, "network", None)
            for module in (self.student, self.fake, self.ratio.network, teacher_network):
                if module is not None:
                    module.compile()
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.precision == "bf16")

        def adamw(module: torch.nn.Module, lr: float = train.lr) -> torch.optim.AdamW:
            return torch.optim.AdamW(
                module.parameters(), lr=lr, betas=train.betas,
                weight_decay=train.weight_decay, fused=self.device.type == "cuda",
            )

        self.opt_student = adamw(self.student)
        self.opt_fake = adamw(self.fake, train.lr * train.fake_lr_scale)
        self.opt_ratio = adamw(self.ratio)
        self.sigma_grid = karras_sigmas(
            train.sigma_grid_size, train.sigma_min, train.sigma_max, train.rho
        ).to(self.device)
        self.generator_step = 0
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.status = RUNNING

    # -- sampling -------------------------------------------------------------------------------

    def _latents(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, *self.teacher.shape, generator=generator,
                           device=generator.device)

    def _sigmas(self, n: int) -> Tensor:
        t = self.cfg.train
        return sample_sigmas(n, self.sigma_grid, t.sigma_quantile_low, t.sigma_quantile_high,
                             self.rng)

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.rng, device=self.device)

    def _teacher_side(self, n: int) -> Tensor:
        """Positive-class samples for the ratio estimator (``ratio.teacher_side``)."""
        if self.cfg.ratio.teacher_side == "teacher":
            return self.teacher.sample(n, self.rng)
        return self.teacher.sample_data(n, self.rng)

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

    # -- steps ----------------------------------------------------------------------------------

    def critic_step(self) -> dict[str, float]:
        """One update of the fake score (DSM) and the ratio network on detached student samples."""
        batch = self.cfg.train.batch_size
        sd = self.teacher.sigma_data
        with torch.no_grad(), self.autocast:
            x_student = self.student(self._latents(batch, self.rng)).float()
        x_teacher = self._teacher_side(batch)
        sigma = self._sigmas(batch)
        noised = x_student + expand_sigma(sigma, x_student) * self._noise(x_student)
        dsm_weight = expand_sigma((sigma**2 + sd**2) / (sigma * sd) ** 2, x_student)
        with self.autocast:
            denoised = self.fake(noised, sigma).float()
        fake_loss = (dsm_weight * (denoised - x_student) ** 2).mean()

        teacher_noised = x_teacher + expand_sigma(sigma, x_teacher) * self._noise(x_teacher)
        with self.autocast:
            ratio_loss, accuracy = self.ratio.loss(teacher_noised, noised, sigma)

        finite = self._apply(fake_loss, self.opt_fake, self.fake, clip=math.inf)
        finite &= self._apply(ratio_loss, self.opt_ratio, self.ratio, clip=math.inf)
        self._count_nonfinite(finite)
        return {
            "loss_fake_dsm": fake_loss.item(),
            "loss_ratio": ratio_loss.item(),
            "ratio_accuracy": float(accuracy),
        }

    def student_step(self) -> dict[str, float]:
        """One weighted distribution-matching update of the student (METHOD.md §3)."""
        train = self.cfg.train
        batch = train.batch_size
        with self.autocast:
            x = self.student(self._latents(batch, self.rng)).float()
        sigma = self._sigmas(batch)
        x_noised = x + expand_sigma(sigma, x) * self._noise(x)
        pixel_dims = tuple(range(1, x.ndim))

        diagnostics: dict[str, float] = {}
        with torch.no_grad():
            x_s = x_noised.detach()
            with self.autocast:
                denoised_teacher = self.teacher.denoise(x_s, sigma).float()
                denoised_fake = self.fake(x_s, sigma).float()
            normaliser = (x.detach() - denoised_teacher).abs().mean(dim=pixel_dims, keepdim=True)
            direction = (denoised_fake - denoised_teacher) / normaliser
            if train.force_unit_weight:
                grad = direction
            else:
                with self.autocast:
                    weight, diagnostics = self.ratio.weights(self.bregman, x_s, sigma)
                grad = expand_sigma(weight, direction) * direction
        loss_dm = 0.5 * ((x - (x.detach() - grad)) ** 2).sum(dim=pixel_dims).mean()
        loss = loss_dm
        if train.gan_weight > 0:
            # The student wants the ratio network to call its samples teacher-like (log r < 0).
            with self.autocast:
                loss_gan = F.softplus(self.ratio.log_ratio(x_noised, sigma)).mean()
            loss = loss + train.gan_weight * loss_gan
            diagnostics["loss_gan"] = loss_gan.item()
        if self.pairs is not None:
            latents, targets = self.pairs
            index = torch.randint(len(latents), (batch,), generator=self.rng, device=self.device)
            with self.autocast:
                fitted = self.student(latents[index]).float()
            loss_regression = 0.5 * ((fitted - targets[index]) ** 2).sum(dim=pixel_dims).mean()
            loss = loss + train.regression_weight * loss_regression
            diagnostics["loss_regression"] = loss_regression.item()

        finite = self._apply(loss, self.opt_student, self.student, clip=train.grad_clip)
        self._count_nonfinite(finite)
        if finite:
            # Decay min(ema_decay, t / (t + 1)) at update t = 0, 1, ...: until the cap, the EMA
            # is the plain mean of the iterates so far, so it never carries the initial weights
            # (with 0.99 over 300 steps they would still weigh 5 %).
            step = self.generator_step
            ema_update(self.student_ema, self.student,
                       min(self.cfg.train.ema_decay, step / (step + 1)))
        diagnostics["loss_dm"] = loss_dm.item()
        diagnostics["grad_norm"] = float(grad.flatten(1).norm(dim=1).mean())
        return diagnostics

    def step(self) -> dict[str, float]:
        """``critic_steps_per_generator_step`` critic updates, then one student update.

        Returns:
            Diagnostics of the last critic step and of the student step, plus non-finite counts.
            Sets ``status = "diverged"`` after ``train.max_nonfinite_steps`` consecutive
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

    # -- helpers --------------------------------------------------------------------------------

    def _apply(
        self, loss: Tensor, optimizer: torch.optim.Optimizer, module: torch.nn.Module, clip: float
    ) -> bool:
        """Backpropagate and step unless the gradient is non-finite; True if stepped.

        A non-finite loss gives a non-finite gradient norm, so one check (one host sync)
        covers both.
        """
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return False
        optimizer.step()
        return True

    def _count_nonfinite(self, finite: bool) -> None:
        if finite:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        if self.nonfinite_streak >= self.cfg.train.max_nonfinite_steps:
            self.status = DIVERGED

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; tensors and plain data only (``weights_only`` safe)."""
        return {
            "student": self.student.state_dict(),
            "student_ema": self.student_ema.state_dict(),
            "fake": self.fake.state_dict(),
            "ratio": self.ratio.state_dict(),
            "opt_student": self.opt_student.state_dict(),
            "opt_fake": self.opt_fake.state_dict(),
            "opt_ratio": self.opt_ratio.state_dict(),
            "rng": self.rng.get_state(),
            "generator_step": self.generator_step,
            "nonfinite_streak": self.nonfinite_streak,
            "nonfinite_total": self.nonfinite_total,
            "status": self.status,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("student", "student_ema", "fake", "ratio",
                     "opt_student", "opt_fake", "opt_ratio"):
            getattr(self, name).load_state_dict(state[name])
        self.rng.set_state(state["rng"].cpu())
        self.generator_step = state["generator_step"]
        self.nonfinite_streak = state["nonfinite_streak"]
        self.nonfinite_total = state["nonfinite_total"]
        self.status = state["status"]
