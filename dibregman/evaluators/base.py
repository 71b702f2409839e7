"""The evaluator seam: declared metrics, curve and final measurements, a picture."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dibregman.config import EvalConfig
from dibregman.results import Direction, MetricSpec, Role, Stage


def metric(name: str, label: str, n: int, direction: Direction,
           role: Role = Role.DIAGNOSTIC, stage: Stage = Stage.FINAL,
           key: str | None = None) -> MetricSpec:
    """A :class:`MetricSpec` whose key is ``{name}_n{n}`` (or ``key``) and label ``label (n=N)``."""
    return MetricSpec(key or f"{name}_n{n}", name, f"{label} (n={n})", n, direction, role, stage)


class Evaluator(ABC):
    """Measures student samples against one teacher.

    Args:
        teacher: the teacher (a :class:`dibregman.teachers.Teacher`).
        cfg: sample counts, k-NN k, the evaluation seed.

    Attributes:
        protocol: how each metric is measured, stored in every run's provenance.
    """

    protocol: dict[str, Any]

    def __init__(self, teacher: Any, cfg: EvalConfig) -> None:
        self.teacher = teacher
        self.cfg = cfg

    @classmethod
    @abstractmethod
    def metrics(cls, cfg: EvalConfig, class_conditional: bool = False) -> list[MetricSpec]:
        """Every metric this evaluator reports under ``cfg``: the curve metrics (on
        ``n_curve`` samples) and the final ones (on ``n_final``), exactly one final headline;
        ``class_conditional``: of a class-conditional teacher's students."""

    @abstractmethod
    def curve(self, samples: Tensor) -> dict[str, float]:
        """The cheap metrics logged during training, keyed as declared (``Stage.CURVE``)."""

    @abstractmethod
    def final(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Every final metric (``Stage.FINAL``); only the curve ones, NaN, when ``samples`` hold
        a non-finite value. ``labels``: ``(N,)`` int64 class of each sample of a
        class-conditional teacher's student; None otherwise."""

    def budget(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """The final metrics measured at a budget short of the end (``eval.budgets``): by
        default all of them (:meth:`final`); an evaluator whose final metrics include costly
        ones may leave those to the end."""
        return self.final(samples, labels)

    @abstractmethod
    def plot(self, samples: Tensor, path: Path, title: str) -> Path:
        """A picture of ``samples`` written to ``path`` (PNG); returns ``path``."""

    @classmethod
    @abstractmethod
    def quality_gate(cls, student: dict[str, float],
                     teacher: dict[str, float]) -> tuple[bool, str]:
        """Whether a student is good enough to be compared, from its final metrics (means over
        seeds, keyed as declared) and the teacher's own on the same number of its samples:
        ``(passes, the rule with the numbers)``. A comparison of students that all fail it
        compares ways of failing, and the report says so first."""


def nan_if_not_finite(samples: Tensor, keys: list[str]) -> dict[str, float] | None:
    """``{key: nan}`` for every key if ``samples`` hold a non-finite value, else None."""
    if torch.isfinite(samples).all():
        return None
    return {key: float("nan") for key in keys}
