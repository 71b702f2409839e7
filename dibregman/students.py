"""The networks a distillation trains, built for a teacher: student, fake score, ratio network;
and DMD's regression pairs drawn from the teacher's ODE."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from dibregman.config import Config
from dibregman.labels import balanced_labels
from dibregman.networks import (
    ConvEncoder,
    Denoiser,
    DenoiserStudent,
    MLPNet,
    OneStepGenerator,
    RatioNetwork,
    init_parameters,
)
from dibregman.teachers import Teacher, TeacherKind


def build_networks(
    cfg: Config, teacher: Teacher, init_rng: torch.Generator
) -> tuple[torch.nn.Module, Denoiser, RatioNetwork]:
    """Student, fake score and ratio network for ``teacher``, by its kind.

    Vector teachers (analytic mixtures have no network to copy): a residual MLP student, an
    MLP fake score starting at ``c_skip x`` and an MLP ratio network on Fourier features of its
    input, all seeded by ``init_rng``. Image teachers (DMD2): student
    ``G(z) = D(sigma_init z, sigma_init)`` and fake score both copied from the teacher's
    denoiser ``teacher.network``; the ratio network is a separate small CNN (not a head on the
    fake score's bottleneck) so its updates never move the fake score. For a class-conditional
    teacher all three take its labels: the copies inherit the teacher's label embedding, the
    ratio CNN gets one of its own.
    """
    sd = teacher.sigma_data
    if teacher.kind is TeacherKind.VECTOR:
        dim, net = teacher.shape[0], cfg.net
        student = OneStepGenerator(dim, net.hidden, net.depth, sd, net.fourier_features,
                                   net.fourier_scale)
        init_parameters(student, init_rng)
        fake = Denoiser(MLPNet(dim, dim, net.hidden, net.depth), sd)
        init_parameters(fake, init_rng, zero_last=True)
        ratio_net = RatioNetwork(MLPNet(dim, 1, net.hidden, net.depth,
                                        net.ratio_fourier_features, net.ratio_fourier_scale), sd)
    else:
        if teacher.network is None:
            raise ValueError(f"{type(teacher).__name__} is an image teacher without a network "
                             f"to start the student from")
        student = DenoiserStudent(copy.deepcopy(teacher.network).requires_grad_(True),
                                  cfg.train.sigma_init)
        fake = copy.deepcopy(teacher.network).requires_grad_(True)
        ratio_net = RatioNetwork(ConvEncoder(teacher.shape[0], label_dim=teacher.condition_dim),
                                 sd)
    init_parameters(ratio_net, init_rng, zero_last=True)
    return student.train(), fake.train(), ratio_net


@torch.no_grad()
def regression_pairs(
    teacher: Teacher, n: int, rng: torch.Generator, device: torch.device,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """DMD's regression set: ``n`` latents (and the labels of class-balanced condition ids, for a
    conditional teacher) and the teacher's ODE images of them.

    Args:
        teacher: the frozen teacher; ``x = teacher.sample_from(z, y)`` (35 evaluations each).
        n: number of pairs.
        rng: a CPU generator for the latents ``z ~ N(0, I)``, then the labels.
        device: where the pairs live.

    Returns:
        latents ``(n, *shape)``, labels (``teacher.condition`` of the ids) or None, and
        targets ``(n, *shape)``, all fp32 on ``device``.
    """
    latents = torch.randn(n, *teacher.shape, generator=rng).to(device)
    labels = None
    if teacher.num_classes:
        labels = teacher.condition(balanced_labels(n, teacher.num_classes, rng).to(device))
    targets = torch.cat([
        teacher.sample_from(latents[i:i + batch_size],
                            None if labels is None else labels[i:i + batch_size]).float()
        for i in range(0, n, batch_size)])
    return latents, labels, targets.to(device)
