"""The ``Teacher`` seam: every teacher is a denoiser ``D(x, sigma)`` (EDM convention).

A noised sample is ``x_sigma = x + sigma * n`` with ``n ~ N(0, I)``; the denoiser predicts the
clean ``x``, and the score of the noised marginal follows from Tweedie's formula:
``s(x, sigma) = (D(x, sigma) - x) / sigma**2``.

A conditional teacher has ``num_classes = C > 0`` discrete *conditions*, ids ``0 .. C-1``: the
classes of a class-conditional teacher, or the prompts of a text-to-image teacher's prompt set.
It models ``p(x | y)``; :meth:`Teacher.condition` turns condition ids ``(B,)`` into what its
networks take, the *labels* ``y``: one-hot rows ``(B, C)`` for classes
(:mod:`dibregman.labels`), text-encoder embeddings of the prompts for a text-to-image teacher
(``(B, E)`` pooled, or ``(B, L, E)`` token states for a cross-attention U-Net). ``denoise``,
``sample``, ``sample_from`` and ``sample_data`` take those labels. An unconditional teacher
(``num_classes = 0``) is always called with ``labels=None``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from dibregman.config import Config
from dibregman.evaluators import Evaluator, VectorEvaluator
from dibregman.labels import one_hot
from dibregman.noise import expand_sigma
from dibregman.results import NamedEnum
from dibregman.sampling import heun_sample


class TeacherKind(NamedEnum):
    """What a teacher's samples are, which decides the student's architecture.

    ``vector``: ``(d,)`` samples; student, fake score and ratio network are MLPs trained from
    scratch. ``image``: ``(C, H, W)`` samples from a teacher with a denoiser ``network``;
    student and fake score start as copies of it (DMD2), the ratio network is a small CNN.
    """

    VECTOR = "vector"
    IMAGE = "image"


class Teacher(ABC):
    """A frozen diffusion teacher.

    A subclass says what it is in two class attributes: ``kind`` (a :class:`TeacherKind`) and
    ``evaluator`` (the :class:`dibregman.evaluators.Evaluator` class that measures students of
    it). Register it under a name with :func:`dibregman.teachers.register_teacher`, or from
    another package through the ``dibregman.teachers`` entry-point group.

    Attributes:
        kind: vector or image (class attribute).
        evaluator: the evaluator class (class attribute).
        network: the denoiser network students and fake scores start from (image teachers);
            None for analytic teachers.
        sigma_min, sigma_max: the noise range the teacher is defined and trained on.
        sigma_data: the data's standard deviation (EDM preconditioning of students and critics).
        shape: the shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        sampler_steps: Heun steps of :meth:`sample_from` (18 = EDM's 35 evaluations).
        num_classes: ``C``, the number of conditions (classes, or prompts of a text-to-image
            teacher's prompt set); 0 for an unconditional teacher.
        exact_density: whether :meth:`log_prob` gives the exact noised log-density (class
            attribute): what the live ratio check (:mod:`dibregman.ratio_check`) and the
            ``oracle`` ratio estimator need.
        exact_sampler: whether :meth:`sample` draws the distribution exactly, without the
            denoiser (class attribute); otherwise it runs the Heun sampler, and each sample
            costs :attr:`sampler_evaluations` teacher evaluations.
        text_conditional: whether the conditions are prompts (class attribute): a text-to-image
            teacher reads the ``text.*`` config keys, every other teacher must leave them at
            their defaults.
    """

    kind: ClassVar[TeacherKind] = TeacherKind.VECTOR
    evaluator: ClassVar[type[Evaluator]] = VectorEvaluator
    exact_density: ClassVar[bool] = False
    exact_sampler: ClassVar[bool] = False
    text_conditional: ClassVar[bool] = False
    network: nn.Module | None = None
    sigma_min: float
    sigma_max: float
    sigma_data: float
    shape: tuple[int, ...]
    sampler_steps: int = 18
    num_classes: int = 0

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> Teacher:
        """The teacher a run config asks for, on ``device``. The default takes no arguments:
        ``cls()``; a teacher that reads its own config section overrides this."""
        return cls()

    @classmethod
    def class_conditional(cls, cfg: Config) -> bool:
        """Whether the teacher ``cfg`` asks for is class-conditional, read from the config alone
        (what a run measures is declared before any teacher is built). Default: no."""
        return False

    def to(self, device: str | torch.device) -> Teacher:
        """Move to ``device`` (nothing to move by default); returns ``self``."""
        return self

    @property
    def condition_dim(self) -> int:
        """Width ``E`` of the labels' last axis, what a network built for this teacher (the
        ratio network's label embedding) takes: ``C`` for one-hot classes (the default), the
        text embedding's width for a text-to-image teacher; 0 when unconditional."""
        return self.num_classes

    def condition(self, ids: Tensor) -> Tensor:
        """The labels of condition ids ``(B,)`` int64 in ``[0, C)``, on ``ids``' device.

        Default: one-hot class rows ``(B, C)`` float32. A text-to-image teacher returns its
        text encoder's embeddings of ``prompts[ids]``.
        """
        return one_hot(ids, self.num_classes)

    def build_evaluator(self, cfg: Config) -> Evaluator:
        """An instance of :attr:`evaluator` for this teacher under ``cfg.eval``."""
        return self.evaluator(self, cfg.eval)

    @abstractmethod
    def denoise(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """``D(x, sigma, y)``: the posterior mean ``E[x_0 | x_sigma = x, y]``.

        Args:
            x: ``(B, *shape)`` noised samples.
            sigma: scalar or ``(B,)`` noise levels.
            labels: ``(B, C)`` one-hot classes of a class-conditional teacher; None otherwise.

        Returns:
            ``(B, *shape)``.
        """

    @property
    def sampler_evaluations(self) -> int:
        """Denoiser evaluations per sample of :meth:`sample_from` (EDM's Heun sampler)."""
        return 2 * self.sampler_steps - 1

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """``log p_sigma(x)`` of ``x: (B, *shape)`` at scalar or ``(B,)`` levels, ``(B,)``; only
        for teachers that declare ``exact_density``.

        Raises:
            NotImplementedError: the teacher has no exact density.
        """
        raise NotImplementedError(f"{type(self).__name__} has no exact density "
                                  f"(exact_density is False)")

    def score(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """``grad_x log p_sigma(x | y) = (D(x, sigma, y) - x) / sigma**2``, shape of ``x``."""
        return (self.denoise(x, sigma, labels) - x) / expand_sigma(sigma, x) ** 2

    @torch.no_grad()
    def sample_from(self, latents: Tensor, labels: Tensor | None = None) -> Tensor:
        """The probability-flow ODE's image of standard-normal ``latents: (B, *shape)`` (of
        classes ``labels: (B, C)`` for a class-conditional teacher).

        EDM's Heun sampler from ``sigma_max * latents`` (``2 * sampler_steps - 1`` evaluations):
        a deterministic noise-to-sample map, the pairing DMD's regression term fits.
        """
        return heun_sample(lambda x, sigma: self.denoise(x, sigma, labels), latents,
                           self.sampler_steps, self.sigma_min, self.sigma_max)

    @abstractmethod
    def sample(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """``n`` clean samples of the teacher's distribution (of classes ``labels: (n, C)``),
        ``(n, *shape)``."""

    def sample_data(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """``n`` samples of the data the teacher models (of classes ``labels: (n, C)``),
        ``(n, *shape)``.

        An analytic teacher's distribution is its data, so by default this is :meth:`sample`;
        a trained teacher draws from its training set.
        """
        return self.sample(n, rng, labels)


def guided_denoise(network: nn.Module, x: Tensor, sigma: Tensor, labels: Tensor, null: Tensor,
                   guidance_scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598) of a text-conditional
    denoiser: ``D_w = D(x, sigma, u) + w (D(x, sigma, c) - D(x, sigma, u))``.

    Args:
        network: ``D(x, sigma, labels)``, unguided.
        x: ``(B, *shape)``; sigma: ``(B,)``.
        labels: the prompts' embeddings ``c``, ``(B, E)`` or ``(B, L, E)``.
        null: the empty prompt's ``u``, broadcastable to ``labels``.
        guidance_scale: ``w``; 1 evaluates ``D(x, sigma, c)`` alone, otherwise both conditions
            go through the network in one batch.
    """
    if guidance_scale == 1:
        return network(x, sigma, labels)
    null = null.to(labels.dtype).expand_as(labels)
    unconditional, conditional = network(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                         torch.cat([null, labels])).chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)
