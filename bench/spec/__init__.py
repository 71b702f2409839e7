"""Sweep specs: a YAML file in ``sweeps/`` -> a validated :class:`SweepSpec`.

Everything is checked before Ray starts: an unknown key, a bad type, an unknown generator,
preset or config key, or an empty grid raises :class:`SpecError` naming the file, the key path
and the valid choices.

A spec::

    name: divergences              # letters, digits, '-' and '_'
    preset: gmm2d                  # see `bench list`
    set: {train.lr: 1.0e-3}        # base overrides (config keys)
    grid:                          # a mapping (cartesian product) or a list of them (union)
      - generator: [reverse_kl, pearson]
      - generator: [alpha]
        generator.alpha: [0.5, 2.0]
    controls:                      # grid only: validity controls the report checks
      aa: {generator: reverse_kl, seed_stream: 1}   # the reference on independent randomness
      positive: {generator: reverse_kl, train.lr: 7.0e-4}   # known to be slightly worse
    budgets: [50, 100, 200, 400]   # generator steps at which every final metric is measured
    confirmatory:                  # declared before the run: the family of verdicts
      budgets: [100, 400]          # the headline at these budgets, every arm vs reverse_kl
      time_to_target: true         # and the budget at which each arm first reaches the target
    target: 1.1                    # within 10 % of the reference's value at the last budget
    seeds: [0, 1, 2]               # repetitions, not hyper-parameters
    seed_batch: 3                  # optional: seeds trained together in one trial (default 1)
    workers_per_trial: 1           # optional: processes one trial's run trains on (default 1)
    search:                        # instead of grid: Optuna over a space (one seed)
      num_samples: 12
      sampler_seed: 0
      space: {generator.alpha: {uniform: [-1, 3]}, train.lr: {loguniform: [3.0e-4, 3.0e-3]}}
    scheduler: {type: asha, grace_period: 100, reduction_factor: 2}
    metric: fd_n2000               # a metric reported during training
    headline: off_mode_n10000      # optional: the final metric the report compares arms by
    mode: min                      # optional: the metric's declared direction
    resources: {cpu: 1, gpu: 0}
    max_concurrent: 2
    time_budget_s: 900

``seed_batch: K`` makes each trial train ``K`` seeds of its arm in one process, their networks
stacked (:mod:`dibregman.members`); every seed is still its own run and MLflow child run.
``workers_per_trial: N`` (N > 1) trains each trial's run data-parallel on N worker processes
(Ray Train's ``TorchTrainer``, :mod:`dibregman.distributed`; gloo on CPU, NCCL on GPU), each
worker holding ``resources`` (so one trial takes N times them, e.g. N GPUs); the global
``train.batch_size`` must be a multiple of N. A run on several processes trains one seed, so it
excludes ``seed_batch > 1``, and it excludes a ``scheduler``; with N > 1 ``resources.gpu`` is 0
or a whole number (two ranks must not share a GPU).
``budgets`` sets ``eval.budgets`` of every trial (the last step is always a budget). The
``confirmatory`` family is what the report's Holm adjustment covers: the headline metric of
every arm (controls included) against the reference at each of its ``budgets`` (default: the
last step), plus, with ``time_to_target``, the paired budgets at which they first reach
``target`` times the reference's mean at the last budget (divided by it for a higher-is-better
headline). Every other comparison the report prints is labelled exploratory. The A/A control
must be the reference's method (``reverse_kl`` or an equivalent generator) on another
``seed_stream``: paired with the reference by seed but on independent randomness, so it
measures the comparison's false-positive rate.
``generator`` is shorthand for ``generator.name`` wherever a config key is expected.
Grid arms that train identically (weights equal up to a constant under batch-mean weight
normalisation, :mod:`dibregman.equivalence`) are kept but recorded in ``SweepSpec.warnings``.
"""

from bench.spec.model import (
    CONTROL_ROLES,
    REFERENCE,
    ConfirmatorySpec,
    Domain,
    SchedulerSpec,
    SearchSpec,
    SpecError,
    SweepSpec,
)
from bench.spec.naming import arm_name, batch_name, trial_name
from bench.spec.parse import load_spec, parse_spec

__all__ = ["CONTROL_ROLES", "REFERENCE", "ConfirmatorySpec", "Domain", "SchedulerSpec",
           "SearchSpec", "SpecError", "SweepSpec", "arm_name", "batch_name", "load_spec",
           "parse_spec", "trial_name"]
