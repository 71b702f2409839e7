"""Teachers: the ``Teacher`` seam and a registry of named teachers."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dibregman.config import Config
from dibregman.teachers.base import Teacher, expand_sigma
from dibregman.teachers.mixture import GaussianMixtureTeacher, random_mixture, ring_mixture

TEACHERS: dict[str, Callable[[], Teacher]] = {
    "gmm2d": ring_mixture,
    "gmm16d": random_mixture,
}


def teacher_names() -> list[str]:
    """Sorted names of the registered teachers."""
    return sorted(TEACHERS)


def build_teacher(name: str) -> Teacher:
    """Construct a registered analytic teacher; an unknown name raises ``ValueError`` listing
    the valid ones. Image teachers are trained or loaded by :func:`teacher_for`."""
    try:
        factory = TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; valid: {', '.join(teacher_names())}") from None
    return factory()


def teacher_for(cfg: Config, device: str | torch.device = "cpu") -> Teacher:
    """The teacher a run config names: an analytic mixture, or (``teacher = "image"``) the
    cached image teacher of ``cfg.image_teacher``, trained first if missing."""
    if cfg.teacher == "image":
        from dibregman.teachers.image import load_teacher

        return load_teacher(cfg.image_teacher, device=str(device))
    return build_teacher(cfg.teacher)


__all__ = [
    "GaussianMixtureTeacher",
    "TEACHERS",
    "Teacher",
    "build_teacher",
    "expand_sigma",
    "random_mixture",
    "ring_mixture",
    "teacher_for",
    "teacher_names",
]
