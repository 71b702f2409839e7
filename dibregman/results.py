"""The result contract between the engine and everything that reads its numbers.

Declared once, read everywhere (benchopt declares statuses once; EDM2 keeps one table of metric
names): an evaluator declares each metric it produces as a :class:`MetricSpec` — its key (which
carries the sample count, e.g. ``fd_n10000``), a label for tables, the sample count, whether
lower or higher is better, its role and when it is measured — and :class:`Status` names how a
run ended. The run's provenance stores the declarations beside the numbers; the report, the
live progress line, ``bench list``, sweep specs and the MLflow tracker read them instead of
parsing metric names.

Every run ends with one final record (:func:`final_record`); its elapsed time is always
``wall_time_s`` (:data:`ELAPSED`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

ELAPSED = "wall_time_s"  # seconds of training and evaluation, summed over resumptions
# Carried by every record of a training step (step >= 1), never by a final record: what tells
# the two apart at the last step, where both are logged.
STEP_RECORD_KEY = "nonfinite_steps"


class NamedEnum(str, Enum):
    """A string-valued enum whose ``str`` and format are its value (``finished``), so it is
    written to JSON, MLflow tags and messages as the plain word."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Status(NamedEnum):
    """How a run (or a sweep trial) stands.

    ``diverged`` is a normal ending: ``train.max_nonfinite_steps`` consecutive non-finite
    updates. ``stopped``: ended early by a sweep's scheduler or time budget. ``failed``: raised.
    """

    RUNNING = "running"
    FINISHED = "finished"
    DIVERGED = "diverged"
    STOPPED = "stopped"
    FAILED = "failed"


class Direction(NamedEnum):
    """Which way a metric improves."""

    LOWER = "lower"
    HIGHER = "higher"

    @property
    def mode(self) -> str:
        """The optimiser's word for it: ``min`` or ``max`` (Ray Tune, Optuna)."""
        return "min" if self is Direction.LOWER else "max"


class Role(NamedEnum):
    """What a metric is for: the ``headline`` quality a comparison ranks by (one per evaluator),
    a ``diagnostic`` quality measure, or a ``cost``."""

    HEADLINE = "headline"
    DIAGNOSTIC = "diagnostic"
    COST = "cost"


class Stage(NamedEnum):
    """When a metric is measured: ``curve`` during training (``eval.every`` steps, on
    ``eval.n_curve`` samples: what a sweep can optimise) or ``final`` once at the end."""

    CURVE = "curve"
    FINAL = "final"


@dataclass(frozen=True)
class MetricSpec:
    """One metric a run reports.

    Attributes:
        key: the record and MLflow key; carries the sample count, e.g. ``fd_n10000``.
        name: the metric without its sample count (``fd``, ``precision``): what charts pick by.
        label: a table heading, e.g. ``FD (n=10000)``.
        n: samples it is measured on (None for costs).
        direction: lower or higher is better.
        role: headline, diagnostic or cost.
        stage: curve (during training) or final.
    """

    key: str
    name: str
    label: str
    n: int | None
    direction: Direction
    role: Role
    stage: Stage = Stage.FINAL

    def better(self, a: float, b: float) -> bool:
        """True if ``a`` is strictly better than ``b`` by this metric's direction."""
        return a < b if self.direction is Direction.LOWER else a > b

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (enums as their words) for JSON provenance."""
        return {k: (str(v) if isinstance(v, Enum) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(data["key"], data["name"], data["label"], data["n"],
                   Direction(data["direction"]), Role(data["role"]), Stage(data["stage"]))


COST_METRICS = (
    MetricSpec(ELAPSED, "wall_time", "run time s", None, Direction.LOWER, Role.COST),
    MetricSpec("steps_per_s", "steps_per_s", "steps/s", None, Direction.HIGHER, Role.COST),
)
# What a run has spent by each record (dibregman.distill.Distiller.evaluation_counts): network
# evaluations of one sample each, the budget axis beside generator steps and wall seconds.
BUDGET_COSTS = (
    MetricSpec("teacher_evaluations", "teacher_evaluations", "teacher evaluations", None,
               Direction.LOWER, Role.COST, Stage.CURVE),
    MetricSpec("critic_evaluations", "critic_evaluations", "critic evaluations", None,
               Direction.LOWER, Role.COST, Stage.CURVE),
)


# A step record's diagnostics (beside the declared metrics; not compared between arms), key to
# what it is. The weight pipeline's (dibregman.ratio.RatioEstimator.weights), per member and
# batch: the raw weight w = h''(r) r before the batch-mean division, and the ratio after
# clipping and per-bin normalisation.
WEIGHT_DIAGNOSTICS = {
    "weight_min": "smallest raw weight",
    "weight_mean": "mean raw weight",
    "weight_max": "largest raw weight",
    "ratio_q05": "ratio r, 5th percentile",
    "ratio_q50": "ratio r, median",
    "ratio_q95": "ratio r, 95th percentile",
    "ratio_clipped_fraction": "share of ratios clipped",
}
# The losses of a step (dibregman.distill.Distiller.step) and the ratio network's accuracy.
LOSS_DIAGNOSTICS = {
    "loss_fake_dsm": "fake score's denoising loss",
    "loss_ratio": "ratio network's fitting loss",
    "ratio_accuracy": "ratio network's accuracy (teacher vs student)",
    "loss_dm": "distribution-matching loss",
    "loss_gan": "GAN term",
    "loss_regression": "regression term",
    "grad_norm": "norm of the distribution-matching step",
}


# The live ratio check's summary (dibregman/ratio_check.py), logged at every evaluation of a run
# whose teacher has an exact density: over the check levels sigma <= sigma_data, the mean
# correlation of the estimated and true log r, and the mean accuracy the estimate's rule falls
# short of the true ratio's. The per-level rows go to the run's ratio_check.jsonl.
RATIO_CHECK_METRICS = (
    MetricSpec("ratio_check_correlation", "ratio_check_correlation",
               "ratio estimate's correlation with the truth", None, Direction.HIGHER,
               Role.DIAGNOSTIC, Stage.CURVE),
    MetricSpec("ratio_check_accuracy_gap", "ratio_check_accuracy_gap",
               "ratio estimate's accuracy short of the truth's", None, Direction.LOWER,
               Role.DIAGNOSTIC, Stage.CURVE),
)


def headline(specs: list[MetricSpec]) -> MetricSpec:
    """The final headline metric of a declaration list (the one a comparison ranks by)."""
    for spec in specs:
        if spec.role is Role.HEADLINE and spec.stage is Stage.FINAL:
            return spec
    raise ValueError("no final headline metric declared")


def final_record(status: Status, metrics: dict[str, float], generator_steps: int,
                 wall_time_s: float) -> dict[str, Any]:
    """The one record a run ends with: written to ``final_metrics.json`` and reported last.

    Args:
        status: how the run ended.
        metrics: the final quality metrics (empty for a diverged run).
        generator_steps: student updates done.
        wall_time_s: elapsed seconds, summed over resumptions.

    Returns:
        ``{"status", "generator_steps", "wall_time_s", "steps_per_s", "metrics"}``.
    """
    return {
        "status": str(status),
        "generator_steps": generator_steps,
        ELAPSED: wall_time_s,
        "steps_per_s": generator_steps / wall_time_s if wall_time_s > 0 else float("nan"),
        "metrics": metrics,
    }
