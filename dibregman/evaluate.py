"""What a run of a config measures, read from the declarations (no teacher is built).

The teacher registry says which teacher class a config names; that class says which evaluator
measures its students (:mod:`dibregman.evaluators`); the evaluator declares its metrics for the
config's ``eval`` section. Add the live ratio check's summary (teachers with an exact density)
and the run's costs (:data:`dibregman.results.COST_METRICS`) and you
have everything a run of the config reports: :func:`declared_metrics`. Sweep specs, the report,
``bench list`` and the live progress line all read this list.
"""

from __future__ import annotations

from dibregman.config import Config
from dibregman.results import COST_METRICS, RATIO_CHECK_METRICS, MetricSpec, Stage
from dibregman.teachers import teacher_entry


def declared_metrics(cfg: Config) -> list[MetricSpec]:
    """Every metric a run of ``cfg`` reports: its evaluator's, then the costs.

    Raises:
        ValueError: ``cfg.teacher`` is not registered.
    """
    teacher_class = teacher_entry(cfg.teacher).teacher_class
    checked = teacher_class.exact_density and cfg.eval.ratio_check_n > 0
    return [*teacher_class.evaluator.metrics(cfg.eval, teacher_class.class_conditional(cfg)),
            *(RATIO_CHECK_METRICS if checked else ()), *COST_METRICS]


def curve_metrics(cfg: Config) -> list[MetricSpec]:
    """The metrics reported during training (what a sweep can optimise)."""
    return [spec for spec in declared_metrics(cfg) if spec.stage is Stage.CURVE]
