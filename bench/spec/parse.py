"""Reading a spec: YAML (unique keys, plain values only) to a validated :class:`SweepSpec`."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from bench.spec.checks import (
    check_search_bounds,
    config_mapping,
    duplicate_warnings,
    expand_grid,
    family_floor_warnings,
    parse_budgets,
    parse_confirmatory,
    parse_controls,
    parse_resources,
    parse_scheduler,
    parse_search,
    parse_workers,
)
from bench.spec.model import (
    MODES,
    TOP_LEVEL_KEYS,
    SpecError,
    SweepSpec,
)
from bench.spec.naming import arm_name, trial_name
from dibregman.config import ConfigError, with_overrides
from dibregman.evaluate import curve_metrics, declared_metrics
from dibregman.presets import get_preset, preset_names, tuning_warnings
from dibregman.results import Stage
from dibregman.validation import validate


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
    check_plain(data, str(path), "")
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


def check_plain(value: Any, where: str, key: str, depth: int = 0) -> None:
    """Refuse what no spec field takes, before any field is read: nesting deeper than
    ``MAX_DEPTH``, integers outside ``(-2^63, 2^63)`` and non-finite floats."""
    shown = key if key.isprintable() else repr(key)  # one line, whatever the key holds
    label = f"{where}: {shown or 'the spec'}"
    if depth > MAX_DEPTH:
        raise SpecError(f"{label}: nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(value, dict):
        for k, v in value.items():
            check_plain(v, where, f"{key}.{k}" if key else str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_plain(v, where, f"{key}[{i}]", depth + 1)
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

    overrides = config_mapping(data.get("set", {}), "set", fail)
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
    search = parse_search(data.get("search"), fail) if "search" in data else None
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
        grid = expand_grid(data["grid"], fail)
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
        for role, point in parse_controls(data["controls"], grid, fail, check).items():
            controls[role] = arm_name(point)
            grid.append(point)
            where_in_spec.append(f"controls.{role}")
    if search is not None and ("budgets" in data or "confirmatory" in data):
        raise fail("budgets" if "budgets" in data else "confirmatory",
                   "budgets and a confirmatory family belong to a grid sweep, not a search")
    budgets = parse_budgets(data.get("budgets"), [with_overrides(base, p) for p in grid], fail)
    if budgets:
        overrides["eval.budgets"] = budgets
        base = with_overrides(base, {"eval.budgets": budgets})
    confirmatory = parse_confirmatory(data.get("confirmatory", {}), budgets, fail)
    target = data.get("target", 1.1)
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not target >= 1:
        raise fail("target", f"{target!r} must be a number >= 1 (1.1: within 10 % of the "
                             f"reference's value at the last budget)")
    if search is not None:
        check_search_bounds(base, search, fail)

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
    scheduler = parse_scheduler(data.get("scheduler"), fail) if "scheduler" in data else None
    if scheduler is not None and seed_batch > 1:
        raise fail("seed_batch", "a scheduler stops trials by their reports; with seed_batch > 1 "
                                 "a trial reports for several seeds: use one or the other")
    resources = parse_resources(data.get("resources", {}), fail)
    workers = parse_workers(data.get("workers_per_trial", 1), seed_batch, scheduler, resources,
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
        warnings=[*(duplicate_warnings(base, grid[:len(grid) - len(controls)], len(seeds))
                    if search is None else []),
                  *dict.fromkeys(w for point in grid
                                 for w in tuning_warnings(with_overrides(base, point))),
                  *(family_floor_warnings(grid, confirmatory, len(seeds))
                    if search is None else [])],
        controls=controls, headline=top, seed_batch=seed_batch, workers_per_trial=workers,
        budgets=budgets, confirmatory=confirmatory, target=float(target),
    )
