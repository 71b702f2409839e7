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

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dibregman.bregman import generator_names
from dibregman.config import Config, ConfigError, config_keys, with_overrides
from dibregman.equivalence import (
    arm_label,
    equivalence_classes,
    normalize_arm,
    same_method_groups,
)
from dibregman.evaluate import curve_metrics, declared_metrics
from dibregman.presets import get_preset, preset_names, tuning_warnings
from dibregman.results import Stage
from dibregman.validation import validate

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


def trial_name(overrides: dict[str, Any]) -> str:
    """A readable trial name from its overrides, e.g. ``alpha-a0.5-s1`` or ``pearson-s0``.

    It names the trial's directory too, so characters a file name cannot hold (``/`` in a
    ``folder:PATH`` dataset) become ``_`` and it is cut to 120 characters before the seed."""
    parts = []
    for key, value in overrides.items():
        if key == "seed":
            continue
        if key == "generator.name":
            parts.insert(0, str(value))
        else:
            label = {"generator.alpha": "a"}.get(key, key.rsplit(".", 1)[-1] + "=")
            parts.append(f"{label}{value:.4g}" if isinstance(value, float) else f"{label}{value}")
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", "-".join(parts))[:120]
    return f"{name}-s{overrides.get('seed', 0)}" if parts else f"s{overrides.get('seed', 0)}"


def batch_name(overrides: dict[str, Any], seeds: list[int]) -> str:
    """A trial's name: :func:`trial_name` with its seeds, e.g. ``pearson-s0`` or
    ``pearson-s0-9`` for a batch of the seeds 0 to 9 (first and last)."""
    label = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    return trial_name({**overrides, "seed": label})


def arm_name(overrides: dict[str, Any]) -> str:
    """The report's name of a grid arm: the generator (:func:`dibregman.equivalence.arm_label`)
    and every other key the arm sets but the seed, e.g. ``pearson``, ``alpha α=0.5`` or
    ``reverse_kl train.lr=0.0003``."""
    name = overrides.get("generator.name")
    named = ("seed", "generator.name", "generator.alpha") if name else ("seed",)
    parts = [arm_label(str(name), overrides.get("generator.alpha"))] if name else []
    parts += [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
              for key, value in overrides.items() if key not in named]
    return " ".join(parts)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file.

    Raises:
        SpecError: for anything wrong, naming ``path`` and the key path.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep spec file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML{_yaml_problem(err)}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a sweep spec") from None
    _check_plain(data, str(path), "")
    return parse_spec(data, path)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error on one line: `` at line L, column C: problem (context)``."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    context = getattr(err, "context", None)
    return f"{where}: {problem}" + (f" ({context})" if context else "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last would win) and a
    key that is a list or a mapping (``? [a, b]``: no spec field is named so)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain name, not a list or a mapping",
                    key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_DEPTH = 8  # a spec nests at most: grid list > mapping > values list
INT_LIMIT = 2**63


def _check_plain(value: Any, where: str, key: str, depth: int = 0) -> None:
    """Refuse what no spec field takes, before any field is read: nesting deeper than
    ``MAX_DEPTH``, integers outside ``(-2^63, 2^63)`` and non-finite floats."""
    label = f"{where}: {key or 'the spec'}"
    if depth > MAX_DEPTH:
        raise SpecError(f"{label}: nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, where, f"{key}.{k}" if key else str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, where, f"{key}[{i}]", depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
        raise SpecError(f"{label}: {value} is outside the 64-bit integer range")
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{label}: {value!r} must be a finite number")


def parse_spec(data: Any, path: Path) -> SweepSpec:
    """Validate already-loaded YAML ``data`` (see :func:`load_spec`)."""
    where = str(path)

    def fail(key: str, message: str) -> SpecError:
        # One line, whatever the spec holds: a key with a line break or a control character
        # is shown quoted.
        key = key if key.isprintable() else repr(key)
        return SpecError(f"{where}: {key}: {message}")

    if not isinstance(data, dict):
        raise SpecError(f"{where}: a sweep spec is a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise fail(str(key), f"unknown key; valid: {', '.join(TOP_LEVEL_KEYS)}")
    for key in ("name", "preset", "metric"):
        if key not in data:
            raise fail(key, "missing (required: name, preset, metric)")

    name = data["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", name):
        raise fail("name", f"{name!r} must be 1 to 100 letters, digits, '-' or '_'")
    preset = data["preset"]
    if preset not in preset_names():
        raise fail("preset", f"unknown preset {preset!r}; valid: {', '.join(preset_names())}")
    base = get_preset(preset)

    overrides = _config_mapping(data.get("set", {}), "set", fail)
    try:
        base = with_overrides(base, overrides)
    except ConfigError as err:
        raise fail("set", str(err)) from None

    seeds = data.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise fail("seeds", f"{seeds!r} must be a non-empty list of integers, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise fail("seeds", f"{seeds!r} repeats a seed")

    seed_batch = data.get("seed_batch", 1)
    if (not isinstance(seed_batch, int) or isinstance(seed_batch, bool)
            or not 1 <= seed_batch <= len(seeds)):
        raise fail("seed_batch", f"{seed_batch!r} must be an integer from 1 to the number of "
                                 f"seeds ({len(seeds)})")
    search = _parse_search(data.get("search"), fail) if "search" in data else None
    if search is not None:
        if "grid" in data:
            raise fail("grid", "a spec has either grid or search, not both")
        if len(seeds) != 1:
            raise fail("seeds", "a search sweep takes one seed (the search samples the points; "
                                "repeat the best ones over seeds in a grid sweep)")
        grid: list[dict[str, Any]] = [{}]
    else:
        if "grid" not in data:
            raise fail("grid", "missing: a spec needs a grid or a search")
        grid = _expand_grid(data["grid"], fail)
    where_in_spec = [f"grid[{i}]" if len(grid) > 1 else "grid" for i in range(len(grid))]

    def check(points: list[dict[str, Any]], where: list[str]) -> None:
        """Every point at every seed a valid config (before anything reads its values)."""
        for point, place in zip(points, where, strict=True):
            for seed in seeds:
                try:
                    validate(with_overrides(base, {**point, "seed": seed}))
                except ConfigError as err:
                    raise fail(place, f"{trial_name({**point, 'seed': seed})}: {err}") from None

    check(grid, where_in_spec)
    controls = {}
    if "controls" in data:
        if search is not None:
            raise fail("controls", "controls belong to a grid sweep, not a search")
        for role, point in _parse_controls(data["controls"], grid, fail, check).items():
            controls[role] = arm_name(point)
            grid.append(point)
            where_in_spec.append(f"controls.{role}")
    if search is not None and ("budgets" in data or "confirmatory" in data):
        raise fail("budgets" if "budgets" in data else "confirmatory",
                   "budgets and a confirmatory family belong to a grid sweep, not a search")
    budgets = _parse_budgets(data.get("budgets"), [with_overrides(base, p) for p in grid], fail)
    if budgets:
        overrides["eval.budgets"] = budgets
        base = with_overrides(base, {"eval.budgets": budgets})
    confirmatory = _parse_confirmatory(data.get("confirmatory", {}), budgets, fail)
    target = data.get("target", 1.1)
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not target >= 1:
        raise fail("target", f"{target!r} must be a number >= 1 (1.1: within 10 % of the "
                             f"reference's value at the last budget)")
    if search is not None:
        _check_search_bounds(base, search, fail)

    declared = {spec.key: spec for spec in curve_metrics(base)}
    metric = data["metric"]
    if not isinstance(metric, str) or metric not in declared:
        raise fail("metric", f"{metric!r} is not reported during training; valid for preset "
                             f"{preset} (eval.n_curve={base.eval.n_curve}): "
                             f"{', '.join(declared)}")
    direction = declared[metric].direction
    mode = data.get("mode", direction.mode)
    if not isinstance(mode, str) or mode not in MODES:
        raise fail("mode", f"{mode!r}; valid: {', '.join(MODES)}")
    if mode != direction.mode:
        raise fail("mode", f"{mode!r} optimises {metric} the wrong way: {direction} is better "
                           f"(mode: {direction.mode}, or leave mode out)")

    finals = [m.key for m in declared_metrics(base) if m.stage is Stage.FINAL]
    top = data.get("headline")
    if top is not None and (not isinstance(top, str) or top not in finals):
        raise fail("headline", f"{top!r} is not a final metric of preset {preset}; valid: "
                               f"{', '.join(finals)}")
    scheduler = _parse_scheduler(data.get("scheduler"), fail) if "scheduler" in data else None
    if scheduler is not None and seed_batch > 1:
        raise fail("seed_batch", "a scheduler stops trials by their reports; with seed_batch > 1 "
                                 "a trial reports for several seeds: use one or the other")
    resources = _parse_resources(data.get("resources", {}), fail)
    workers = _parse_workers(data.get("workers_per_trial", 1), seed_batch, scheduler, resources,
                             [with_overrides(base, point) for point in grid], search, fail)
    max_concurrent = data.get("max_concurrent")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1
                                       or isinstance(max_concurrent, bool)):
        raise fail("max_concurrent", f"{max_concurrent!r} must be a positive integer")
    budget = data.get("time_budget_s")
    if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool)
                               or budget <= 0):
        raise fail("time_budget_s", f"{budget!r} must be a positive number of seconds")

    canonical = json.dumps(data, sort_keys=True, default=str)
    return SweepSpec(
        path=path, name=name, preset=preset, overrides=overrides, grid=grid, seeds=seeds,
        search=search, scheduler=scheduler, metric=metric, mode=mode, resources=resources,
        max_concurrent=max_concurrent, time_budget_s=float(budget) if budget else None,
        spec_hash=hashlib.sha256(canonical.encode()).hexdigest()[:12],
        warnings=[*(_duplicate_warnings(base, grid[:len(grid) - len(controls)], len(seeds))
                    if search is None else []),
                  *dict.fromkeys(w for point in grid
                                 for w in tuning_warnings(with_overrides(base, point)))],
        controls=controls, headline=top, seed_batch=seed_batch, workers_per_trial=workers,
        budgets=budgets, confirmatory=confirmatory, target=float(target),
    )


def _parse_budgets(value: Any, configs: list[Config], fail) -> tuple[int, ...]:
    """``budgets``: increasing generator steps within every arm's training (empty: none)."""
    if value is None:
        return ()
    steps = min(cfg.train.generator_steps for cfg in configs)
    if (not isinstance(value, list) or not value
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in value)
            or not all(0 < b <= steps for b in value) or value != sorted(set(value))):
        raise fail("budgets", f"{value!r} must be increasing generator steps from 1 to "
                              f"{steps} (every arm's train.generator_steps), e.g. [50, 100, "
                              f"{steps}]")
    return tuple(value)


def _parse_confirmatory(value: Any, budgets: tuple[int, ...], fail) -> ConfirmatorySpec:
    """``confirmatory: {budgets: [...], time_to_target: bool}``; its budgets among the
    spec's (default: the last step, which every run measures)."""
    _check_mapping(value, "confirmatory", ("budgets", "time_to_target"), fail)
    chosen = value.get("budgets", [budgets[-1]] if budgets else [])
    if (not isinstance(chosen, list)
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in chosen)
            or len(set(chosen)) != len(chosen) or not set(chosen) <= set(budgets)):
        raise fail("confirmatory.budgets", f"{chosen!r} must be distinct steps among budgets "
                                           f"{list(budgets) or '(none declared)'}")
    time_to_target = value.get("time_to_target", False)
    if not isinstance(time_to_target, bool):
        raise fail("confirmatory.time_to_target", f"{time_to_target!r} must be true or false")
    if time_to_target and len(budgets) < 2:
        raise fail("confirmatory.time_to_target", "needs at least two budgets to reach a "
                                                  "target at")
    return ConfirmatorySpec(tuple(sorted(chosen)), time_to_target)


def _parse_controls(value: Any, grid: list[dict[str, Any]], fail,
                    check: Any) -> dict[str, dict[str, Any]]:
    """``controls: {aa: {...}, positive: {...}}``: each a mapping of config overrides, like a
    grid point, whose arm name differs from every grid arm's (the report tells arms apart by
    name)."""
    _check_mapping(value, "controls", tuple(CONTROL_ROLES), fail)
    names = {arm_name(point) for point in grid}
    controls = {}
    for role, point in value.items():
        point = _config_mapping(point, f"controls.{role}", fail)
        name = point.get("generator.name")
        if name is not None and name not in generator_names():
            raise fail(f"controls.{role}.generator", f"unknown Bregman generator {name!r}; "
                                                     f"valid: {', '.join(generator_names())}")
        if not point:
            raise fail(f"controls.{role}", "needs at least one config key, e.g. "
                                           "{generator: reverse_kl, seed_stream: 1}")
        check([point], [f"controls.{role}"])  # valid values before any is read
        if arm_name(point) in names:
            raise fail(f"controls.{role}", f"{arm_name(point)!r} is already a grid arm; a "
                                           f"control needs its own name (e.g. reverse KL on "
                                           f"another random stream, seed_stream: 1)")
        if role == "aa" and not _is_reference_method(point):
            raise fail("controls.aa", f"{arm_name(point)!r} must be the reference's method, "
                                      f"{REFERENCE} (or a generator equal to it up to a "
                                      f"constant), on another random stream (seed_stream >= "
                                      f"1) and nothing else changed: an A/A arm that differs "
                                      f"measures a difference, not the false-positive rate")
        names.add(arm_name(point))
        controls[role] = point
    return controls


def _is_reference_method(point: dict[str, Any]) -> bool:
    """Whether a control point is the reference on another random stream: ``seed_stream >=
    1``, a generator that trains as :data:`REFERENCE` (:mod:`dibregman.equivalence`), and no
    other key."""
    stream = point.get("seed_stream", 0)
    others = set(point) - {"seed_stream", "generator.name", "generator.alpha"}
    if others or not isinstance(stream, int) or isinstance(stream, bool) or stream < 1:
        return False
    name = str(point.get("generator.name", REFERENCE))
    alpha = point.get("generator.alpha", 0.5)
    if name not in generator_names() or not isinstance(alpha, (int, float)):
        return False
    return len(equivalence_classes([(name, float(alpha)), (REFERENCE, 0.5)])) == 1


def _duplicate_warnings(base: Config, grid: list[dict[str, Any]], n_seeds: int) -> list[str]:
    """One warning per set of grid arms that train identically (equivalent generators, or one
    generator at alphas it ignores), with how many of the trials duplicate others."""
    configs = [with_overrides(base, point) for point in grid]
    duplicates: dict[tuple[str, ...], int] = {}
    for group in same_method_groups(configs):
        arms = [normalize_arm(configs[i].generator.name, configs[i].generator.alpha)
                for i in group]
        labels = tuple(dict.fromkeys(arm_label(*arm) for arm in arms))
        duplicates[labels] = duplicates.get(labels, 0) + (len(group) - 1) * n_seeds
    total, warnings = len(grid) * n_seeds, []
    for labels, count in duplicates.items():
        what = (f"{', '.join(labels[:-1])} and {labels[-1]} are the same method under batch-mean "
                f"weight normalisation (weights equal up to a constant)" if len(labels) > 1 else
                f"{labels[0]} is the same run at several points (equal up to generator.alpha, "
                f"which only alpha and power use)")
        warnings.append(f"grid: {what}: {count} of {total} trials duplicate others")
    return warnings


def canonical_key(key: Any, where: str, fail) -> str:
    """Resolve aliases and check that ``key`` is a config key (``seed`` belongs to ``seeds``)."""
    if not isinstance(key, str):
        raise fail(where, f"{key!r} is not a config key")
    key = KEY_ALIASES.get(key, key)
    if key == "seed":
        raise fail(f"{where}.seed", "seeds are repetitions: list them under the top-level 'seeds'")
    if key not in config_keys():
        raise fail(f"{where}.{key}", f"unknown config key; valid: generator, "
                                     f"{', '.join(config_keys())}")
    return key


def _config_mapping(value: Any, where: str, fail) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, f"must be a mapping of config keys to values, got {value!r}")
    return {canonical_key(k, where, fail): v for k, v in value.items()}


def _expand_grid(value: Any, fail) -> list[dict[str, Any]]:
    blocks = value if isinstance(value, list) else [value]
    if not blocks:
        raise fail("grid", "is empty; give at least one key with a non-empty list of values")
    points: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"grid[{index}]" if isinstance(value, list) else "grid"
        if not isinstance(block, dict) or not block:
            raise fail(where, "must be a non-empty mapping of config keys to lists of values")
        keys, lists = [], []
        for key, values in block.items():
            canonical = canonical_key(key, where, fail)
            if not isinstance(values, list) or not values:
                raise fail(f"{where}.{key}", f"must be a non-empty list of values, got {values!r}")
            keys.append(canonical)
            lists.append(values)
        points += [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
    return points


def _check_mapping(value: Any, where: str, allowed: tuple[str, ...], fail) -> None:
    """``value`` must be a mapping whose keys are all in ``allowed``."""
    if not isinstance(value, dict):
        raise fail(where, f"must be a mapping with keys {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            raise fail(f"{where}.{key}", f"unknown key; valid: {', '.join(allowed)}")


def _parse_search(value: Any, fail) -> SearchSpec:
    _check_mapping(value, "search", ("num_samples", "space", "sampler_seed"), fail)
    num_samples = value.get("num_samples")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise fail("search.num_samples", f"{num_samples!r} must be a positive integer")
    sampler_seed = value.get("sampler_seed", 0)
    if (not isinstance(sampler_seed, int) or isinstance(sampler_seed, bool)
            or not 0 <= sampler_seed < 2**32):
        raise fail("search.sampler_seed", f"{sampler_seed!r} must be an integer in [0, 2^32)")
    space_data = value.get("space")
    if not isinstance(space_data, dict) or not space_data:
        raise fail("search.space", "must be a non-empty mapping of config keys to domains")
    space: dict[str, Domain] = {}
    for key, domain in space_data.items():
        canonical = canonical_key(key, "search.space", fail)
        where = f"search.space.{key}"
        if not isinstance(domain, dict) or len(domain) != 1:
            raise fail(where, f"must be one of {{{': [...], '.join(DOMAINS)}: [...]}}")
        kind, args = next(iter(domain.items()))
        if kind not in DOMAINS:
            raise fail(where, f"unknown domain {kind!r}; valid: {', '.join(DOMAINS)}")
        if not isinstance(args, list) or not args:
            raise fail(f"{where}.{kind}", f"must be a non-empty list, got {args!r}")
        if kind != "choice":
            numeric = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
            if len(args) != 2 or not numeric or not args[0] < args[1]:
                raise fail(f"{where}.{kind}", f"needs [low, high] with low < high, got {args!r}")
            if kind == "loguniform" and args[0] <= 0:
                raise fail(f"{where}.{kind}", f"needs low > 0, got {args!r}")
            if kind == "int" and not all(isinstance(a, int) for a in args):
                raise fail(f"{where}.{kind}", f"needs integer bounds, got {args!r}")
        space[canonical] = Domain(kind, tuple(args))
    return SearchSpec(num_samples=num_samples, space=space, sampler_seed=sampler_seed)


def _check_search_bounds(base: Config, search: SearchSpec, fail) -> None:
    """Every bound and choice of the space must give a valid config."""
    for key, domain in search.space.items():
        for value in domain.args:
            try:
                validate(with_overrides(base, {key: value}))
            except ConfigError as err:
                raise fail(f"search.space.{key}", f"value {value!r}: {err}") from None


def _parse_scheduler(value: Any, fail) -> SchedulerSpec:
    _check_mapping(value, "scheduler", ("type", "grace_period", "reduction_factor"), fail)
    kind = value.get("type", "asha")
    if kind != "asha":
        raise fail("scheduler.type", f"{kind!r}; valid: asha")
    grace = value.get("grace_period", 10)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 1:
        raise fail("scheduler.grace_period", f"{grace!r} must be a positive integer")
    factor = value.get("reduction_factor", 2)
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
        raise fail("scheduler.reduction_factor", f"{factor!r} must be a number > 1")
    return SchedulerSpec(type=kind, grace_period=grace, reduction_factor=float(factor))


def _parse_workers(value: Any, seed_batch: int, scheduler: SchedulerSpec | None,
                   resources: dict[str, float], configs: list[Config],
                   search: SearchSpec | None, fail) -> int:
    """``workers_per_trial``: an integer >= 1; above 1, a run split over that many processes
    (one seed per trial, no scheduler, whole GPUs, a global batch the workers divide)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise fail("workers_per_trial", f"{value!r} must be an integer >= 1")
    if value == 1:
        return value
    if seed_batch > 1:
        raise fail("workers_per_trial", f"{value} workers split one run; with seed_batch > 1 a "
                                        f"trial trains several seeds in one process: use one "
                                        f"or the other")
    if scheduler is not None:
        raise fail("workers_per_trial", f"{value} workers train one run data-parallel; a "
                                        f"scheduler is not supported with it: drop scheduler "
                                        f"or set workers_per_trial: 1")
    if resources["gpu"] != int(resources["gpu"]):
        raise fail("resources.gpu", f"{resources['gpu']:g}: with workers_per_trial: {value} each "
                                    f"worker needs whole GPUs (ranks must not share one)")
    if search is not None and "train.batch_size" in search.space:
        raise fail("search.space.train.batch_size", f"cannot be searched with "
                                                    f"workers_per_trial: {value} (the global "
                                                    f"batch must stay a multiple of it)")
    for cfg in configs:
        if cfg.train.batch_size % value:
            raise fail("workers_per_trial", f"train.batch_size={cfg.train.batch_size} is not "
                                            f"divisible by the {value} workers (use a multiple "
                                            f"of {value})")
    return value


def _parse_resources(value: Any, fail) -> dict[str, float]:
    if not isinstance(value, dict):
        raise fail("resources", "must be a mapping like {cpu: 1, gpu: 0}")
    resources = {"cpu": 1.0, "gpu": 0.0}
    for key, amount in value.items():
        if key not in resources:
            raise fail(f"resources.{key}", "unknown resource; valid: cpu, gpu")
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount < 0:
            raise fail(f"resources.{key}", f"{amount!r} must be a number >= 0")
        resources[key] = float(amount)
    if resources["cpu"] <= 0:
        raise fail("resources.cpu", "must be > 0")
    return resources
