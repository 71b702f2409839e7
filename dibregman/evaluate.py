"""What a run of a config measures, read from the declarations (no teacher is built).

The teacher registry says which teacher class a config names; that class says which evaluator
measures its students (:mod:`dibregman.evaluators`); the evaluator declares its metrics for the
config's ``eval`` section. Add the live ratio check's summary (teachers with an exact density)
and the run's costs (:data:`dibregman.results.COST_METRICS`, and the network evaluations
spent by each record, :data:`dibregman.results.BUDGET_COSTS`) and you
have everything a run of the config reports: :func:`declared_metrics`. Sweep specs, the report,
``bench list`` and the live progress line all read this list.
"""

from __future__ import annotations

from dibregman.config import Config
from dibregman.results import (
    BUDGET_COSTS,
    COST_METRICS,
    RATIO_CHECK_METRICS,
    MetricSpec,
    Role,
    Stage,
)
from dibregman.teachers import teacher_entry


def declared_metrics(cfg: Config) -> list[MetricSpec]:
    """Every metric a run of ``cfg`` reports: its evaluator's, then the costs.

    Raises:
        ValueError: ``cfg.teacher`` is not registered.
    """
    teacher_class = teacher_entry(cfg.teacher).teacher_class
    checked = teacher_class.exact_density and cfg.eval.ratio_check_n > 0
    return [*teacher_class.evaluator.metrics(cfg.eval, teacher_class.class_conditional(cfg)),
            *(RATIO_CHECK_METRICS if checked else ()), *COST_METRICS, *BUDGET_COSTS]


def curve_metrics(cfg: Config) -> list[MetricSpec]:
    """The measurements reported during training (what a sweep can optimise; not the costs)."""
    return [spec for spec in declared_metrics(cfg)
            if spec.stage is Stage.CURVE and spec.role is not Role.COST]


def teacher_reference(cfg: Config) -> dict[str, float]:
    """Every final metric of the teacher's own samples, as a run of ``cfg`` measures its
    student: ``eval.n_final`` samples of the teacher's Heun sampler (35 evaluations each) from
    the evaluation latents (``torch.Generator(eval.seed)``; class-balanced labels for a
    class-conditional teacher). What a one-step student is held against."""
    import torch

    from dibregman.labels import evaluation_labels
    from dibregman.teachers import teacher_for

    teacher = teacher_for(cfg)
    evaluator = teacher.build_evaluator(cfg)
    n = cfg.eval.n_final
    latents = torch.randn(n, *teacher.shape, generator=torch.Generator().manual_seed(cfg.eval.seed))
    labels = evaluation_labels(n, teacher.num_classes) if teacher.num_classes else None
    y = None if labels is None else teacher.condition(labels)
    samples = torch.cat([teacher.sample_from(latents[i:i + 1024],
                                             None if y is None else y[i:i + 1024]).float().cpu()
                         for i in range(0, n, 1024)])
    return evaluator.final(samples, labels)
