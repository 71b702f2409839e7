"""A validated sweep spec: its dataclasses, the spec's constants and its one error type
(the format: :mod:`bench.spec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dibregman.config import Config, with_overrides
from dibregman.presets import get_preset

KEY_ALIASES = {"generator": "generator.name"}
TOP_LEVEL_KEYS = ("name", "preset", "set", "grid", "controls", "budgets", "confirmatory",
                  "target", "seeds", "seed_batch", "workers_per_trial", "search", "scheduler",
                  "metric", "headline", "mode", "resources", "max_concurrent", "time_budget_s")
REFERENCE = "reverse_kl"  # the arm every other arm is compared with
# Validity controls of a grid sweep: an A/A arm (the reference's method under another name: the
# report must never flag it) and a positive arm (known to differ: the report must flag it).
CONTROL_ROLES = {"aa": "A/A control", "positive": "positive control"}
DOMAINS = ("loguniform", "uniform", "int", "choice")
MODES = ("min", "max")


class SpecError(ValueError):
    """A spec a person got wrong; the message names the file, the key path and valid choices."""


@dataclass(frozen=True)
class Domain:
    """One search dimension: ``kind`` in :data:`DOMAINS`; ``args`` its bounds or choices."""

    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class SearchSpec:
    """Optuna search: ``num_samples`` points of ``space``, TPE seeded by ``sampler_seed``."""

    num_samples: int
    space: dict[str, Domain]
    sampler_seed: int = 0


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA early stopping on the sweep metric; milestones in reported records."""

    type: str = "asha"
    grace_period: int = 10
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class ConfirmatorySpec:
    """The verdicts a sweep declares before it runs: the headline at ``budgets`` and, with
    ``time_to_target``, the time to reach the target; the report adjusts over these only."""

    budgets: tuple[int, ...]
    time_to_target: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"budgets": list(self.budgets), "time_to_target": self.time_to_target}


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep.

    Attributes:
        path: the YAML file.
        name: sweep name (the MLflow experiment and the Ray experiment directory prefix).
        preset: the base preset.
        overrides: base config overrides (canonical keys).
        grid: the expanded grid points, each an override dict (without the seed).
        seeds: repetition seeds.
        seed_batch: seeds one trial trains together (:meth:`seed_batches`).
        search: Optuna search, if any (then ``grid`` is ``[{}]``).
        scheduler: ASHA settings, if any.
        metric, mode: what the search and scheduler optimise.
        resources: per-trial ``{"cpu": ..., "gpu": ...}`` (per worker with
            ``workers_per_trial > 1``).
        workers_per_trial: processes one trial's run trains on, data-parallel (Ray Train).
        max_concurrent: concurrent trials (None: as many as resources allow).
        time_budget_s: stop the sweep after this many seconds (None: no limit).
        spec_hash: hash of the canonical spec content (provenance).
        warnings: grid arms that duplicate others, and mixtures much harder than the preset
            was tuned on (:func:`dibregman.presets.tuning_warnings`); the spec stays valid,
            ``bench sweep`` prints them (``--dry-run`` too).
        controls: role (``aa``, ``positive``) -> the control arm's name (:func:`arm_name`);
            the control arms are the last points of ``grid``.
        headline: the final metric the report ranks and compares arms by (None: the one the
            evaluator declares), e.g. the metric with the best signal-to-noise on the task.
        budgets: the generator steps every final metric is measured at, the last included.
        confirmatory: the family of verdicts declared before the run
            (:class:`ConfirmatorySpec`).
        target: time-to-target's factor on the reference's value at the last budget.
    """

    path: Path
    name: str
    preset: str
    overrides: dict[str, Any]
    grid: list[dict[str, Any]]
    seeds: list[int]
    search: SearchSpec | None
    scheduler: SchedulerSpec | None
    metric: str
    mode: str
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    spec_hash: str = ""
    warnings: list[str] = field(default_factory=list)
    controls: dict[str, str] = field(default_factory=dict)
    headline: str | None = None
    seed_batch: int = 1
    workers_per_trial: int = 1
    budgets: tuple[int, ...] = ()
    confirmatory: ConfirmatorySpec = field(default_factory=lambda: ConfirmatorySpec(()))
    target: float = 1.1

    def base_config(self) -> Config:
        """The preset with the spec's base overrides applied."""
        return with_overrides(get_preset(self.preset), self.overrides)

    def trials(self) -> list[dict[str, Any]]:
        """Every grid run as an override dict, seeds innermost (``seed`` included)."""
        return [{**point, "seed": seed} for point in self.grid for seed in self.seeds]

    def seed_batches(self) -> list[list[int]]:
        """The seeds cut into the batches one trial trains together (``seed_batch`` each, the
        last may hold fewer); a grid sweep runs every point at every batch."""
        step = self.seed_batch
        return [self.seeds[i:i + step] for i in range(0, len(self.seeds), step)]
