"""dibregman: one-step diffusion distillation by Bregman density-ratio matching (Di-Bregman).

A pure-torch engine (no ray, mlflow or typer): Bregman generators (:mod:`dibregman.bregman`),
density-ratio estimators and weight hygiene (:mod:`dibregman.ratio`), teachers
(:mod:`dibregman.teachers`), the distillation loop (:mod:`dibregman.distill`), metrics
(:mod:`dibregman.metrics`), configs (:mod:`dibregman.config`) and the one entry point
:func:`dibregman.run.run_experiment`.
"""

__version__ = "0.1.0"
