"""Validation and expansion of a spec's sections (grid, controls, budgets, search, scheduler,
workers, resources): each returns the parsed value or calls ``fail`` with the key path and the
valid choices; config values go through the config's own coercion (``with_overrides``)."""

from __future__ import annotations

import itertools
from typing import Any

from bench.spec.model import (
    CONTROL_ROLES,
    DOMAINS,
    KEY_ALIASES,
    REFERENCE,
    ConfirmatorySpec,
    Domain,
    SchedulerSpec,
    SearchSpec,
)
from bench.spec.naming import arm_name
from dibregman.bregman import generator_names
from dibregman.config import Config, ConfigError, config_keys, with_overrides
from dibregman.equivalence import (
    arm_label,
    equivalence_classes,
    normalize_arm,
    same_method_groups,
)
from dibregman.validation import validate


def parse_budgets(value: Any, configs: list[Config], fail) -> tuple[int, ...]:
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


def parse_confirmatory(value: Any, budgets: tuple[int, ...], fail) -> ConfirmatorySpec:
    """``confirmatory: {budgets: [...], time_to_target: bool}``; its budgets among the
    spec's (default: the last step, which every run measures)."""
    check_mapping(value, "confirmatory", ("budgets", "time_to_target"), fail)
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


def parse_controls(value: Any, grid: list[dict[str, Any]], fail,
                    check: Any) -> dict[str, dict[str, Any]]:
    """``controls: {aa: {...}, positive: {...}}``: each a mapping of config overrides, like a
    grid point, whose arm name differs from every grid arm's (the report tells arms apart by
    name)."""
    check_mapping(value, "controls", tuple(CONTROL_ROLES), fail)
    names = {arm_name(point) for point in grid}
    controls = {}
    for role, point in value.items():
        point = config_mapping(point, f"controls.{role}", fail)
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
        if role == "aa" and not is_reference_method(point):
            raise fail("controls.aa", f"{arm_name(point)!r} must be the reference's method, "
                                      f"{REFERENCE} (or a generator equal to it up to a "
                                      f"constant), on another random stream (seed_stream >= "
                                      f"1) and nothing else changed: an A/A arm that differs "
                                      f"measures a difference, not the false-positive rate")
        names.add(arm_name(point))
        controls[role] = point
    return controls


def is_reference_method(point: dict[str, Any]) -> bool:
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


def duplicate_warnings(base: Config, grid: list[dict[str, Any]], n_seeds: int) -> list[str]:
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


def config_mapping(value: Any, where: str, fail) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, f"must be a mapping of config keys to values, got {value!r}")
    return {canonical_key(k, where, fail): v for k, v in value.items()}


def expand_grid(value: Any, fail) -> list[dict[str, Any]]:
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


def check_mapping(value: Any, where: str, allowed: tuple[str, ...], fail) -> None:
    """``value`` must be a mapping whose keys are all in ``allowed``."""
    if not isinstance(value, dict):
        raise fail(where, f"must be a mapping with keys {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            raise fail(f"{where}.{key}", f"unknown key; valid: {', '.join(allowed)}")


def parse_search(value: Any, fail) -> SearchSpec:
    check_mapping(value, "search", ("num_samples", "space", "sampler_seed"), fail)
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


def check_search_bounds(base: Config, search: SearchSpec, fail) -> None:
    """Every bound and choice of the space must give a valid config."""
    for key, domain in search.space.items():
        for value in domain.args:
            try:
                validate(with_overrides(base, {key: value}))
            except ConfigError as err:
                raise fail(f"search.space.{key}", f"value {value!r}: {err}") from None


def parse_scheduler(value: Any, fail) -> SchedulerSpec:
    check_mapping(value, "scheduler", ("type", "grace_period", "reduction_factor"), fail)
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


def parse_workers(value: Any, seed_batch: int, scheduler: SchedulerSpec | None,
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


def parse_resources(value: Any, fail) -> dict[str, float]:
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


FAMILY_ALPHA = 0.05  # the family-wise level of the report's confirmatory verdicts


def family_floor_warnings(grid: list[dict[str, Any]], confirmatory: ConfirmatorySpec,
                          n_seeds: int) -> list[str]:
    """A warning when no confirmatory verdict can be significant whatever the data.

    With ``n`` paired seeds the exact two-sided sign-flip test's smallest p is ``2 / 2^n``
    (every difference of one sign); Holm multiplies the family's smallest p by its size ``m``
    (every arm but the reference, controls included, at each confirmatory budget, plus time to
    target). When ``m 2 / 2^n >= FAMILY_ALPHA`` the family can only say "no detectable
    difference"; the warning names the seeds that would let it decide.
    """
    arms = sum(1 for point in grid if arm_name(point) != REFERENCE)
    family = arms * (len(confirmatory.budgets) + confirmatory.time_to_target)
    if not family or family * 2 / 2**n_seeds < FAMILY_ALPHA:
        return []
    needed = next(n for n in itertools.count(n_seeds) if family * 2 / 2**n < FAMILY_ALPHA)
    return [f"the confirmatory family cannot reach significance: with {n_seeds} paired seeds "
            f"the sign-flip test's smallest p is 2/2^{n_seeds} = {2 / 2**n_seeds:.2g}, and Holm "
            f"over the family's {family} tests makes it {family * 2 / 2**n_seeds:.2g} >= "
            f"{FAMILY_ALPHA}; use at least {needed} seeds, or declare a smaller family"]
