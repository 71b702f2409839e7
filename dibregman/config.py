"""Experiment configuration: frozen dataclasses, named presets and validated overrides.

A config is a tree of frozen dataclasses. Every leaf has a dotted key (``train.lr``,
``generator.name``, ``ratio.clip_max``); :func:`with_overrides` replaces leaves by key and
rejects unknown keys with the list of valid ones, so the CLI, the sweep specs and the tests
all speak the same keys. :func:`to_dict` / :func:`from_dict` round-trip a config through JSON.

Defaults follow ``METHOD.md`` §5-§6 where the method fixes them; toy-scale choices (network
width, noise range, step counts) are documented on the field that carries them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any


class ConfigError(ValueError):
    """A config key or value a person got wrong; the message names it and the valid choices."""


@dataclass(frozen=True)
class GeneratorConfig:
    """The Bregman generator ``h`` (see :mod:`dibregman.bregman`).

    Attributes:
        name: registry name, e.g. ``reverse_kl`` (DMD), ``pearson``, ``alpha``.
        alpha: parameter of the ``alpha`` (Amari) and ``power`` (Basu) families; ignored by the
            others.
    """

    name: str = "reverse_kl"
    alpha: float = 0.5


@dataclass(frozen=True)
class RatioConfig:
    """Density-ratio estimation ``r = q_student / p_teacher`` and weight hygiene (METHOD.md §5).

    Attributes:
        estimator: ``classifier`` (logistic, DMD2/f-distill), ``ulsif`` or ``kliep`` (Bregman
            ratio fitting, METHOD.md §8); see :mod:`dibregman.ratio`.
        log_ratio_clamp: ``|log r| = |logit|`` is clamped to this before anything else.
        clip_min, clip_max: ``r`` is clipped to ``[clip_min, clip_max]`` (f-distill clips
            ``p/q`` to [0.1, 20], i.e. ``q/p`` to [1/20, 10]); a generator with a bounded convex
            domain lowers ``clip_max`` to its ``ratio_max``.
        noise_bins: number of log-sigma bins for the self-normalisation ``E_q[1/r] = 1``.
        bin_normalize: apply the per-bin self-normalisation.
        bin_ema: EMA decay of the per-bin means (0 uses each batch's own means).
        weight_normalize: divide the weights by their batch mean.
        teacher_side: source of positive-class samples: ``teacher`` draws the teacher's own
            samples (exact for an analytic mixture; the Di-Bregman definition of ``p_sigma``).
    """

    estimator: str = "classifier"
    log_ratio_clamp: float = 10.0
    clip_min: float = 0.05
    clip_max: float = 10.0
    noise_bins: int = 10
    bin_normalize: bool = True
    bin_ema: float = 0.9
    weight_normalize: bool = True
    teacher_side: str = "teacher"


@dataclass(frozen=True)
class NetConfig:
    """MLP sizes for the student, the fake score and the ratio network (vector data)."""

    hidden: int = 128
    depth: int = 3


@dataclass(frozen=True)
class TrainConfig:
    """The two-time-scale Di-Bregman schedule (METHOD.md §6).

    Attributes:
        generator_steps: number of student updates; the critic (fake score + ratio network)
            takes ``critic_steps_per_generator_step`` updates before each of them.
        critic_steps_per_generator_step: DMD2/f-distill use 5.
        fake_warmup_steps: critic-only steps before the first student update. The fake score of
            an analytic teacher cannot be initialised from the teacher (METHOD.md §1), so it is
            first fitted to the initial student.
        batch_size: samples per step for every network.
        lr, betas, weight_decay: AdamW for all three networks.
        grad_clip: max gradient norm of the student.
        ema_decay: EMA of the student used for evaluation.
        gan_weight: weight of the optional adversarial term ``softplus(log r(x_s))`` (0 = off).
        sigma_min, sigma_max, rho, sigma_grid_size, sigma_quantile_low, sigma_quantile_high: the
            Karras grid of noise levels; indices are drawn uniformly in the quantile range.
            Toy teachers use ``sigma_max`` ~ 10x the data scale instead of EDM's 80.
        max_nonfinite_steps: that many consecutive non-finite steps end the run as ``diverged``.
        force_unit_weight: skip the ratio weight (``w = 1``): a plain DMD step, for benchmarks and
            the reverse-KL identity test.
    """

    generator_steps: int = 600
    critic_steps_per_generator_step: int = 5
    fake_warmup_steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    ema_decay: float = 0.95
    gan_weight: float = 0.0
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    rho: float = 7.0
    sigma_grid_size: int = 1000
    sigma_quantile_low: float = 0.02
    sigma_quantile_high: float = 0.98
    max_nonfinite_steps: int = 10
    force_unit_weight: bool = False


@dataclass(frozen=True)
class EvalConfig:
    """When and how often quality is measured (metric names carry the sample counts).

    Attributes:
        every: evaluate every this many generator steps (and at step 0 and the end).
        n_curve: samples for the cheap metrics logged over training.
        n_final: samples for the final FD, NLL and mode statistics.
        n_pr: samples per side for precision / recall (k-NN manifolds, O(n^2)).
        pr_k: the k of the k-NN manifolds.
        n_mmd: samples per side for the MMD.
        seed: seed of the evaluation latents and reference draws (fixed across runs, so every
            run is measured on the same reference set).
    """

    every: int = 50
    n_curve: int = 2000
    n_final: int = 10000
    n_pr: int = 5000
    pr_k: int = 3
    n_mmd: int = 2000
    seed: int = 1234


@dataclass(frozen=True)
class Config:
    """One distillation run.

    Attributes:
        preset: the preset this config started from (provenance only).
        teacher: teacher registry name (``gmm2d``, ``gmm16d``).
        seed: repetition seed: networks, latents and noise all derive from it.
        log_every: write a diagnostics record every this many generator steps.
        checkpoint_every: save a resumable checkpoint every this many generator steps.
        num_threads: torch intra-op threads during the run (0 keeps torch's setting). The toy
            MLPs run about twice as fast on one thread as on two: the work per op is too
            small to split.
    """

    preset: str = "gmm2d"
    teacher: str = "gmm2d"
    seed: int = 0
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ratio: RatioConfig = field(default_factory=RatioConfig)
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log_every: int = 10
    checkpoint_every: int = 100
    num_threads: int = 1


def config_keys(cfg: Config | type[Config] = Config) -> list[str]:
    """Every dotted leaf key of a config, in declaration order."""
    keys: list[str] = []
    for f in fields(cfg):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        nested = getattr(cfg, f.name) if not isinstance(cfg, type) else value
        if is_dataclass(nested):
            keys += [f"{f.name}.{k}" for k in config_keys(nested)]
        else:
            keys.append(f.name)
    return keys


def _field_type(cfg: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(cfg))
    return hints[name]


def coerce_value(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (possibly a string from the command line) to the field's type.

    Raises:
        ConfigError: naming the key, the value and the expected type.
    """
    origin = typing.get_origin(annotation)
    bad = ConfigError(f"bad value {value!r} for {key}: expected {_type_name(annotation)}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise bad
    if annotation is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if annotation is float:
        if isinstance(value, bool):
            raise bad
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if math.isnan(result):
            raise bad
        return result
    if annotation is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        args = typing.get_args(annotation)
        if not isinstance(items, (list, tuple)) or len(items) != len(args):
            raise bad
        return tuple(coerce_value(key, v, a) for v, a in zip(items, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        raise bad
    raise bad


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        return "a comma-separated pair of " + _type_name(typing.get_args(annotation)[0])
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, str(annotation)
    )


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Return ``cfg`` with dotted-key leaves replaced, values coerced to the field types.

    Args:
        cfg: the config to start from.
        overrides: ``{"train.lr": 2e-4, "generator.name": "pearson"}``; string values (from a
            command line) are parsed by the field's type.

    Raises:
        ConfigError: for an unknown key (the message lists every valid key) or a value that
            does not fit the field's type.
    """
    for key, value in overrides.items():
        cfg = _replace_leaf(cfg, key.split("."), value, key)
    return cfg


def _replace_leaf(node: Any, path: list[str], value: Any, key: str) -> Any:
    names = {f.name for f in fields(node)}
    head = path[0]
    child = getattr(node, head, None) if head in names else None
    if head not in names or (len(path) > 1) != is_dataclass(child):
        raise ConfigError(f"unknown config key {key!r}; valid: {', '.join(config_keys(Config))}")
    if len(path) > 1:
        return replace(node, **{head: _replace_leaf(child, path[1:], value, key)})
    return replace(node, **{head: coerce_value(key, value, _field_type(node, head))})


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"train.lr": 1e-3, ...}`` for every leaf (tuples kept as tuples)."""
    flat: dict[str, Any] = {}
    for key in config_keys(cfg):
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        flat[key] = node
    return flat


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain-data form of a config (JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Inverse of :func:`to_dict`; unknown or malformed keys raise :class:`ConfigError`."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if isinstance(value, Mapping):
                walk(f"{key}.", value)
            else:
                flat[key] = value

    walk("", data)
    return with_overrides(Config(), flat)


def _tiny(cfg: Config) -> Config:
    """The ``-tiny`` variant: a few steps of everything, for tests (well under a second/step)."""
    return with_overrides(
        cfg,
        {
            "preset": f"{cfg.preset}-tiny",
            "net.hidden": 32,
            "net.depth": 2,
            "train.generator_steps": 6,
            "train.critic_steps_per_generator_step": 2,
            "train.fake_warmup_steps": 4,
            "train.batch_size": 64,
            "eval.every": 3,
            "eval.n_curve": 256,
            "eval.n_final": 512,
            "eval.n_pr": 256,
            "eval.n_mmd": 256,
            "log_every": 2,
            "checkpoint_every": 3,
        },
    )


_BASE_PRESETS: dict[str, Config] = {
    # Toy teachers: 3 critic steps per student step instead of DMD2's 5, and 900 student
    # steps. On gmm2d (seed 0) this beat 5 x 600 at equal wall time for every generator tried
    # (e.g. reverse KL: FD 0.0041 -> 0.0020, precision 0.82 -> 0.87).
    "gmm2d": Config(
        preset="gmm2d",
        teacher="gmm2d",
        train=TrainConfig(generator_steps=900, critic_steps_per_generator_step=3),
    ),
    "gmm16d": Config(
        preset="gmm16d",
        teacher="gmm16d",
        net=NetConfig(hidden=256, depth=3),
        train=TrainConfig(generator_steps=900, critic_steps_per_generator_step=3),
    ),
}

PRESETS: dict[str, Config] = {
    **_BASE_PRESETS,
    **{f"{name}-tiny": _tiny(cfg) for name, cfg in _BASE_PRESETS.items()},
}


def preset_names() -> list[str]:
    """Sorted preset names, ``-tiny`` variants included."""
    return sorted(PRESETS)


def get_preset(name: str) -> Config:
    """Look up a preset; an unknown name raises :class:`ConfigError` listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; valid: {', '.join(preset_names())}"
        ) from None


def validate(cfg: Config) -> None:
    """Check cross-field constraints and registry names; raise :class:`ConfigError` if broken."""
    from dibregman.bregman import get_generator
    from dibregman.ratio import estimator_names
    from dibregman.teachers import teacher_names

    try:
        get_generator(cfg.generator.name, cfg.generator.alpha)
    except ValueError as err:
        raise ConfigError(f"generator.name / generator.alpha: {err}") from None
    if cfg.ratio.estimator not in estimator_names():
        raise ConfigError(
            f"unknown ratio.estimator {cfg.ratio.estimator!r}; "
            f"valid: {', '.join(estimator_names())}"
        )
    if cfg.teacher not in teacher_names():
        raise ConfigError(f"unknown teacher {cfg.teacher!r}; valid: {', '.join(teacher_names())}")
    if cfg.ratio.teacher_side != "teacher":
        raise ConfigError(
            f"bad ratio.teacher_side {cfg.ratio.teacher_side!r} for teacher {cfg.teacher!r};"
            " valid: teacher"
        )
    checks = [
        (cfg.train.generator_steps >= 1, "train.generator_steps must be >= 1"),
        (cfg.train.critic_steps_per_generator_step >= 1,
         "train.critic_steps_per_generator_step must be >= 1"),
        (cfg.train.fake_warmup_steps >= 0, "train.fake_warmup_steps must be >= 0"),
        (cfg.train.batch_size >= 2, "train.batch_size must be >= 2"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (0 <= cfg.train.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
        (0 < cfg.train.sigma_min < cfg.train.sigma_max,
         "need 0 < train.sigma_min < train.sigma_max"),
        (0 <= cfg.train.sigma_quantile_low < cfg.train.sigma_quantile_high <= 1,
         "need 0 <= train.sigma_quantile_low < train.sigma_quantile_high <= 1"),
        (cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
        (0 < cfg.ratio.clip_min < cfg.ratio.clip_max, "need 0 < ratio.clip_min < ratio.clip_max"),
        (cfg.ratio.log_ratio_clamp > 0, "ratio.log_ratio_clamp must be > 0"),
        (cfg.ratio.noise_bins >= 1, "ratio.noise_bins must be >= 1"),
        (0 <= cfg.ratio.bin_ema < 1, "ratio.bin_ema must be in [0, 1)"),
        (cfg.net.hidden >= 1 and cfg.net.depth >= 1, "net.hidden and net.depth must be >= 1"),
        (cfg.eval.every >= 1 and cfg.log_every >= 1 and cfg.checkpoint_every >= 1,
         "eval.every, log_every and checkpoint_every must be >= 1"),
        (min(cfg.eval.n_curve, cfg.eval.n_final, cfg.eval.n_pr, cfg.eval.n_mmd) >= 16,
         "eval sample counts must be >= 16"),
        (cfg.eval.pr_k >= 1, "eval.pr_k must be >= 1"),
        (cfg.num_threads >= 0, "num_threads must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
