"""Validation of a resolved config: registry names, choices, ranges, and keys that do not apply.

This module sits above the registries (generators, ratio estimators, teachers, datasets), so it
imports them at the top: the config schema (:mod:`dibregman.config`) stays a leaf that imports
nothing of the package, and nothing imports in a circle.

A key that does not apply to the chosen teacher's kind is an error rather than a silent no-op
(a sweep over it would run identical trials): ``net.*`` (their student and fake score are
copies of the teacher's U-Net) and ``mixture.*`` for image teachers, ``image_teacher.*``,
``train.sigma_init`` and ``eval.fid_n`` for vector teachers. Such keys must keep their schema
defaults.
"""

from __future__ import annotations

import math
import os

from dibregman.bregman import get_generator
from dibregman.config import Config, ConfigError, MixtureConfig, flatten
from dibregman.data import dataset_names
from dibregman.methods import DMD, METHODS
from dibregman.ratio import ORACLE, estimator_names
from dibregman.teachers import TeacherKind, teacher_entry, teacher_names
from dibregman.teachers.mixture import MIXTURE_LAYOUTS

# Keys (or key prefixes ending in ".") that do not apply to a teacher kind, and why.
NOT_APPLICABLE: dict[TeacherKind, dict[str, str]] = {
    TeacherKind.VECTOR: {
        "image_teacher.": "the teacher is analytic, not a trained image network",
        "train.sigma_init": "vector students are MLPs, not G(z) = D(sigma_init z, sigma_init)",
        "eval.fid_n": "Inception FID measures images",
    },
    TeacherKind.IMAGE: {
        "net.": "image students and fake scores are copies of the teacher's U-Net",
        "mixture.": "the teacher is a trained image network, not an analytic Gaussian mixture",
    },
}


def check_applicable(cfg: Config, kind: TeacherKind) -> None:
    """Every key that does not apply to ``kind`` must hold its schema default.

    Raises:
        ConfigError: naming the key, its value, the teacher and the reason.
    """
    defaults = flatten(Config())
    for key, value in flatten(cfg).items():
        for pattern, reason in NOT_APPLICABLE[kind].items():
            matches = key.startswith(pattern) if pattern.endswith(".") else key == pattern
            if matches and value != defaults[key]:
                raise ConfigError(f"{key}={value!r} does not apply to teacher {cfg.teacher!r} "
                                  f"({kind} teacher: {reason}); leave it at "
                                  f"{defaults[key]!r}")


def validate(cfg: Config) -> None:
    """Check registry names, choices, ranges and applicability; raise :class:`ConfigError`."""
    try:
        get_generator(cfg.generator.name, cfg.generator.alpha)
    except ValueError as err:
        raise ConfigError(f"generator.name / generator.alpha: {err}") from None
    try:
        METHODS[cfg.method]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.method == DMD.name and cfg.generator.name != "reverse_kl":
        raise ConfigError(f"generator.name={cfg.generator.name!r} does not apply to method "
                          f"'dmd' (its weight is 1, reverse KL's); valid: method=di_bregman "
                          f"with any generator, or method=dmd with generator.name=reverse_kl")
    if cfg.method == DMD.name and cfg.ratio.estimator == ORACLE:
        raise ConfigError("ratio.estimator='oracle' does not apply to method 'dmd' (it reads "
                          "no ratio); valid: method=di_bregman, or a fitted ratio.estimator")
    if cfg.ratio.estimator not in estimator_names():
        raise ConfigError(f"unknown ratio.estimator {cfg.ratio.estimator!r}; "
                          f"valid: {', '.join(estimator_names())}")
    if cfg.teacher not in teacher_names():
        raise ConfigError(f"unknown teacher {cfg.teacher!r}; valid: {', '.join(teacher_names())}")
    entry = teacher_entry(cfg.teacher)
    kind = entry.kind
    if cfg.ratio.estimator == ORACLE and not entry.teacher_class.exact_density:
        exact = [name for name in teacher_names()
                 if teacher_entry(name).teacher_class.exact_density]
        raise ConfigError(f"ratio.estimator='oracle' needs a teacher with an exact density; "
                          f"{cfg.teacher!r} has none (valid: {', '.join(exact)})")
    choices = [("ratio.teacher_side", cfg.ratio.teacher_side, ("data", "teacher")),
               ("device", cfg.device, ("auto", "cpu", "cuda")),
               ("precision", cfg.precision, ("bf16", "fp32"))]
    for key, value, valid in choices:
        if value not in valid:
            raise ConfigError(f"bad {key} {value!r}; valid: {', '.join(valid)}")
    if kind is TeacherKind.IMAGE:
        dataset = cfg.image_teacher.dataset
        if dataset not in dataset_names() and not dataset.startswith("folder:"):
            raise ConfigError(f"unknown image_teacher.dataset {dataset!r}; valid: "
                              f"{', '.join(dataset_names())}, folder:PATH")
    check_applicable(cfg, kind)
    if not entry.teacher_class.text_conditional:
        defaults = flatten(Config())
        for key, value in flatten(cfg).items():
            if key.startswith("text.") and value != defaults[key]:
                raise ConfigError(f"{key}={value!r} does not apply to teacher {cfg.teacher!r} "
                                  f"(its conditions are no prompts); leave it at "
                                  f"{defaults[key]!r}")
    not_finite = [key for key, value in flatten(cfg).items()
                  if any(isinstance(v, float) and not math.isfinite(v)
                         for v in (value if isinstance(value, tuple) else (value,)))]
    if not_finite:
        raise ConfigError(f"{not_finite[0]} must be a finite number (not inf or nan)")
    for ok, message in [*_range_checks(cfg), *_mixture_checks(cfg.mixture)]:
        if not ok:
            raise ConfigError(message)


FP32_MAX = 3.4e38  # the largest learning rate the fp32 optimiser state can hold
MAX_THREADS = os.cpu_count() or 1


def _range_checks(cfg: Config) -> list[tuple[bool, str]]:
    """``(holds, message)`` for every single- and cross-field range rule."""
    train, ratio, ev = cfg.train, cfg.ratio, cfg.eval
    return [
        (train.generator_steps >= 1, "train.generator_steps must be >= 1"),
        (train.critic_steps_per_generator_step >= 1,
         "train.critic_steps_per_generator_step must be >= 1"),
        (train.fake_warmup_steps >= 0, "train.fake_warmup_steps must be >= 0"),
        (train.batch_size >= 2, "train.batch_size must be >= 2"),
        (0 < train.lr <= FP32_MAX, f"train.lr must be > 0 and <= {FP32_MAX:g} (fp32)"),
        (train.grad_clip > 0, "train.grad_clip must be > 0 (the largest gradient norm)"),
        (train.rho > 0, "train.rho must be > 0 (the Karras schedule's exponent)"),
        (all(0 <= b < 1 for b in train.betas), "train.betas must both be in [0, 1)"),
        (train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (train.sigma_grid_size >= 2, "train.sigma_grid_size must be >= 2"),
        (0 <= cfg.seed < 2**32, "seed must be in [0, 2^32)"),
        (0 <= cfg.seed_stream < 1024, "seed_stream must be in [0, 1024)"),
        (all(0 < b <= train.generator_steps for b in ev.budgets),
         f"eval.budgets must lie in [1, train.generator_steps={train.generator_steps}], got "
         f"{','.join(str(b) for b in ev.budgets)}"),
        (list(ev.budgets) == sorted(set(ev.budgets)),
         "eval.budgets must be increasing, without repeats"),
        (train.fake_lr_scale > 0, "train.fake_lr_scale must be > 0"),
        (train.ratio_lr_scale > 0, "train.ratio_lr_scale must be > 0"),
        (0 <= train.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
        (train.gan_weight >= 0, "train.gan_weight must be >= 0"),
        (train.regression_weight >= 0, "train.regression_weight must be >= 0"),
        (train.regression_pairs >= 1, "train.regression_pairs must be >= 1"),
        (0 < train.sigma_min < train.sigma_max, "need 0 < train.sigma_min < train.sigma_max"),
        (0 <= train.sigma_quantile_low < train.sigma_quantile_high <= 1,
         "need 0 <= train.sigma_quantile_low < train.sigma_quantile_high <= 1"),
        (train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
        (0 < ratio.clip_min < ratio.clip_max, "need 0 < ratio.clip_min < ratio.clip_max"),
        (ratio.log_ratio_clamp > 0, "ratio.log_ratio_clamp must be > 0"),
        (ratio.noise_bins >= 1, "ratio.noise_bins must be >= 1"),
        (ratio.oracle_samples >= 16, "ratio.oracle_samples must be >= 16"),
        (ratio.estimator != "oracle" or train.gan_weight == 0,
         "train.gan_weight > 0 reads the fitted ratio network; the oracle estimator fits none "
         "(valid: train.gan_weight=0, or a fitted ratio.estimator)"),
        (ev.ratio_check_n == 0 or ev.ratio_check_n >= 32,
         "eval.ratio_check_n must be 0 (no live ratio check) or >= 32"),
        (0 <= ratio.bin_ema < 1, "ratio.bin_ema must be in [0, 1)"),
        (cfg.net.hidden >= 1 and cfg.net.depth >= 1, "net.hidden and net.depth must be >= 1"),
        (cfg.net.fourier_features >= 0, "net.fourier_features must be >= 0 (0: none)"),
        (0 < cfg.net.fourier_scale < math.inf, "net.fourier_scale must be > 0 and finite"),
        (cfg.net.ratio_fourier_features >= 0, "net.ratio_fourier_features must be >= 0 (0: none)"),
        (0 < cfg.net.ratio_fourier_scale < math.inf,
         "net.ratio_fourier_scale must be > 0 and finite"),
        (ev.every >= 1 and cfg.log_every >= 1 and cfg.checkpoint_every >= 1,
         "eval.every, log_every and checkpoint_every must be >= 1"),
        (min(ev.n_curve, ev.n_final, ev.n_pr, ev.n_mmd) >= 16,
         "eval sample counts must be >= 16"),
        (ev.pr_k >= 1, "eval.pr_k must be >= 1"),
        (0 <= cfg.num_threads <= MAX_THREADS,
         f"num_threads must be in [0, {MAX_THREADS}], the machine's CPUs (0 keeps torch's "
         f"setting)"),
        (len(cfg.image_teacher.channel_mult) >= 1,
         "image_teacher.channel_mult must list at least one level multiplier, e.g. 1,2"),
        (cfg.text.guidance_scale >= 0, "text.guidance_scale must be >= 0 (1: no guidance)"),
        (0 <= cfg.text.caption_dropout < 1, "text.caption_dropout must lie in [0, 1)"),
        (cfg.text.embed_dim >= 1, "text.embed_dim must be >= 1"),
        (cfg.text.encoder_steps >= 1, "text.encoder_steps must be >= 1"),
    ]


def _mixture_checks(mix: MixtureConfig) -> list[tuple[bool, str]]:
    """``(holds, message)`` for the ``mixture`` section (every teacher: defaults pass)."""
    k, d, layout = mix.modes, mix.dim, mix.layout
    return [
        (layout in MIXTURE_LAYOUTS,
         f"bad mixture.layout {layout!r}; valid: {', '.join(MIXTURE_LAYOUTS)}"),
        (k >= 1, f"mixture.modes={k} must be >= 1"),
        (d >= 1, f"mixture.dim={d} must be >= 1"),
        (layout not in ("ring", "grid") or d == 2,
         f"mixture.dim={d} with mixture.layout={layout!r}: ring and grid are 2-D; "
         f"valid: mixture.dim=2, or layout random or explicit"),
        (layout != "grid" or math.isqrt(max(k, 0)) ** 2 == k,
         f"mixture.modes={k} with mixture.layout='grid' must be a perfect square "
         f"(4, 9, 16, 25, ...)"),
        (mix.std > 0, f"mixture.std={mix.std!r} must be > 0"),
        (layout == "explicit" or mix.scale > 0,
         f"mixture.scale={mix.scale!r} must be > 0 (ring radius, grid spacing, random spread)"),
        (mix.weight_decay > 0, f"mixture.weight_decay={mix.weight_decay!r} must be > 0"),
        (not mix.weights or len(mix.weights) == k,
         f"mixture.weights={_listed(mix.weights)} has {len(mix.weights)} values; valid: one "
         f"per mode ({k}), or empty (mixture.weights=) for weights weight_decay^k"),
        (all(w > 0 for w in mix.weights),
         f"mixture.weights={_listed(mix.weights)} must all be > 0"),
        (layout != "explicit" or len(mix.means) == k * d,
         f"mixture.means has {len(mix.means)} values; mixture.layout='explicit' needs "
         f"modes x dim = {k} x {d} = {k * d}, flattened row by row"),
        (layout == "explicit" or not mix.means,
         f"mixture.means={_listed(mix.means)} applies only to mixture.layout='explicit' (not "
         f"{layout!r}); leave it empty"),
        (mix.sigma_max > 0, f"mixture.sigma_max={mix.sigma_max!r} must be > 0"),
    ]


def _listed(values: tuple[float, ...]) -> str:
    """``0.5,0.5`` (the ``--set`` spelling), shortened after 8 values."""
    shown = ",".join(f"{v:g}" for v in values[:8])
    return shown + (f",... ({len(values)} values)" if len(values) > 8 else "")
