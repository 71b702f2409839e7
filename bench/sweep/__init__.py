"""Sweeps on Ray Tune (grid, or Optuna search with optional ASHA), tracked in MLflow.

A trial is one arm at a batch of seeds (``seed_batch`` in the spec; one seed by default). The
trainable :func:`distill_trainable` calls :func:`dibregman.run.run_seed_batch` with one run
directory per seed and forwards every record to ``tune.report`` (with the checkpoints when they
were written), so a retried or restored trial resumes from its checkpoints. A run that ends
``diverged`` is a finished run with that status.

With ``workers_per_trial: N > 1`` a trial's run trains data-parallel on N worker processes:
the trainable starts a Ray Train V2 ``TorchTrainer`` (this Ray's Train API: a trainer is launched
from inside a Tune function trainable, not handed to Tune) whose workers join one process group
(gloo on CPU, NCCL on GPU; :mod:`dibregman.distributed`) and call ``run_seed_batch`` with the
trial's one seed and run directory. Rank 0 alone writes the run directory and sends its records
through a Ray queue to the trainable, which reports them (and stages the checkpoints) exactly as
for a one-process trial, so tracking, retries and ``--resume`` are unchanged. Each worker holds
the spec's ``resources``; the trial's own actor holds :data:`TRIAL_DRIVER_CPU` CPU. Ray Train
schedules the workers outside Tune's accounting, so such trials run at most as many at once as
the runtime's CPUs and GPUs fit (:func:`trial_capacity`).

By default the sweep starts a private local Ray runtime on loopback and shuts it down at the
end; ``--address`` / ``RAY_ADDRESS`` joins an existing cluster instead (then ``--storage`` must
be shared by every node).
"""

from bench.sweep.driver import SweepSummary, expanded_trials, run_sweep
from bench.sweep.resume import latest_experiment, new_experiment_dir
from bench.sweep.runtime import (
    ClusterUnreachable,
    exposed_listeners,
    start_ray,
    trial_footprint,
)
from bench.sweep.trial import TRIAL_DRIVER_CPU, last_values

__all__ = ["TRIAL_DRIVER_CPU", "ClusterUnreachable", "SweepSummary", "expanded_trials",
           "exposed_listeners", "last_values", "latest_experiment", "new_experiment_dir",
           "run_sweep", "start_ray", "trial_footprint"]
