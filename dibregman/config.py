"""Experiment configuration schema: frozen dataclasses and typed, key-checked overrides.

A leaf module (it imports nothing of the package): presets live in :mod:`dibregman.presets`,
checks against the registries in :mod:`dibregman.validation`.

A config is a tree of frozen dataclasses. Every leaf has a dotted key (``train.lr``,
``generator.name``, ``ratio.clip_max``); :func:`with_overrides` replaces leaves by key and
rejects unknown keys with the list of valid ones, so the CLI, the sweep specs and the tests
all speak the same keys. :func:`to_dict` / :func:`from_dict` round-trip a config through JSON.

Defaults follow ``docs/method.md`` §5-§6 where the method fixes them; toy-scale choices (network
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
class ImageTeacherConfig:
    """An image teacher: data, U-Net size, EDM training and sampling (used by image presets).

    Attributes:
        dataset: ``digits``, ``mnist``, ``cifar10`` or ``folder:PATH`` (see :mod:`dibregman.data`).
        data_dir: where a downloadable dataset lives ("" = its default cache).
        channels, channel_mult: U-Net base width and per-level multipliers.
        steps, batch_size, lr, ema_decay: denoising-score-matching training.
        p_mean, p_std: ``ln sigma ~ N(p_mean, p_std^2)`` during training (EDM).
        sigma_data: data scale of the preconditioning (0.5 for images in [-1, 1]).
        sigma_min, sigma_max, sampler_steps: EDM's Heun sampler (18 steps = 35 evaluations).
        seed: initialisation and batches.
        log_every, checkpoint_every: training log and resumable checkpoints.
        path: an explicit teacher directory; "" uses the cache keyed by this config's hash.
        class_conditional: the teacher models ``p(x | y)`` over the dataset's classes, and
            students, fake scores and ratio networks take the class too
            (:mod:`dibregman.labels`); a pretrained teacher must be a class-conditional
            network to set it.
    """

    dataset: str = "digits"
    data_dir: str = ""
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    ema_decay: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sampler_steps: int = 18
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 500
    path: str = ""
    class_conditional: bool = False


@dataclass(frozen=True)
class TextConfig:
    """Text-to-image teachers: the prompt set, classifier-free guidance and the text encoder.

    Attributes:
        prompts: the prompt set, whose prompts are the teacher's conditions (ids ``0 .. C-1``,
            drawn class-balanced in training; evaluation sample ``i`` has prompt ``i mod C``):
            ``templates`` (the ``text_digits`` teacher's captions, :mod:`dibregman.text`),
            ``file:PATH`` (one prompt per non-empty line) or ``folder:PATH`` (captioned images:
            every image with a caption in a ``.txt`` file of the same stem).
        guidance_scale: ``w`` of classifier-free guidance (Ho & Salimans 2022, arXiv
            2207.12598): the teacher is ``D_w = D(x, sigma, "") + w (D(x, sigma, c) -
            D(x, sigma, ""))``; ``w = 1`` is the conditional denoiser alone (one evaluation).
        caption_dropout: share of training captions replaced by the empty prompt ``""``, the
            null condition of guidance (teachers this package trains).
        embed_dim: width of the ``text_digits`` teacher's tiny text encoder.
        encoder_steps: contrastive training steps of the tiny text encoder (a CLIP of its own).
        clip_model: the CLIP model of the CLIP score: a local folder in transformers'
            ``save_pretrained`` layout (:mod:`dibregman.metrics.clip`); "" uses the package's
            own tiny CLIP of the captioned data (``text_digits`` only, trained apart from the
            teacher's text encoder). An imported pipeline (``pretrained_text``) needs a folder.
    """

    prompts: str = "templates"
    guidance_scale: float = 1.0
    caption_dropout: float = 0.1
    embed_dim: int = 32
    encoder_steps: int = 300
    clip_model: str = ""


@dataclass(frozen=True)
class MixtureConfig:
    """The ``mixture`` teacher: isotropic Gaussians of one ``std``, defined by config alone.

    ``layout``: ``ring`` (2-D, angles ``2 pi k / modes`` from 0, radius ``scale``), ``grid`` (2-D,
    ``sqrt(modes)``-square, spacing ``scale``, centred), ``random`` (means ``scale * N(0, I_dim)``
    from ``torch.Generator(seed)``) or ``explicit`` (``means``: ``modes x dim``, row by row).
    ``weights``: one per mode, normalised; empty: ``w_k ∝ weight_decay^k`` (1 = equal).
    """

    layout: str = "ring"
    modes: int = 8
    dim: int = 2
    std: float = 0.2
    scale: float = 2.0
    weights: tuple[float, ...] = ()
    weight_decay: float = 1.0
    means: tuple[float, ...] = ()
    seed: int = 0
    sigma_max: float = 20.0


@dataclass(frozen=True)
class RatioConfig:
    """Density-ratio estimation ``r = q_student / p_teacher`` and weight hygiene
    (docs/method.md §5).

    Attributes:
        estimator: ``classifier`` (logistic, DMD2/f-distill), ``ulsif`` or ``kliep`` (Bregman
            ratio fitting, docs/method.md §8); see :mod:`dibregman.ratio`.
        log_ratio_clamp: ``|log r| = |logit|`` is clamped to this before anything else.
        clip_min, clip_max: ``r`` is clipped to ``[clip_min, clip_max]`` before the per-bin
            normalisation (f-distill clips ``p/q`` to [0.1, 20], i.e. ``q/p`` to [1/20, 10]);
            a generator with a bounded convex domain clips again to its ``ratio_max`` after it.
        noise_bins: number of log-sigma bins for the self-normalisation ``E_q[1/r] = 1``.
        bin_normalize: apply the per-bin self-normalisation.
        bin_ema: EMA decay of the per-bin means (0 uses each batch's own means).
        weight_normalize: divide the weights by their batch mean.
        teacher_side: source of positive-class samples: ``data`` (the training data, as DMD2
            and f-distill do; for an analytic mixture its exact samples) or ``teacher`` (the
            teacher's own samples: the Di-Bregman definition of ``p_sigma``; 35 network
            evaluations per sample for an image teacher).
        oracle_samples: the ``oracle`` estimator's fresh student samples per student step, the
            centres of its KDE of the student (:func:`dibregman.density.kde_log_ratio`).
    """

    estimator: str = "classifier"
    log_ratio_clamp: float = 10.0
    clip_min: float = 0.05
    clip_max: float = 10.0
    noise_bins: int = 10
    bin_normalize: bool = True
    bin_ema: float = 0.9
    weight_normalize: bool = True
    teacher_side: str = "data"
    oracle_samples: int = 2048


@dataclass(frozen=True)
class NetConfig:
    """MLP sizes for the student, the fake score and the ratio network (vector data), and
    random Fourier features (Tancik et al. 2020, arXiv 2006.10739;
    :class:`dibregman.networks.FourierFeatures`: ``m`` frequencies, projections of standard
    deviation ``scale`` for unit-scale inputs in any dimension; ``m = 0``: the plain MLP).

    Attributes:
        hidden, depth: every MLP's width and number of hidden layers.
        fourier_features, fourier_scale: the student's features of its latent, which let it
            map a low-dimensional latent onto well-separated modes.
        ratio_fourier_features, ratio_fourier_scale: the ratio network's features of its
            (``c_in``-scaled) input. Without them its MLP learns the ratio's edges around the
            modes too slowly to follow a moving student: on ``gmm2d`` at ``sigma <= 0.3`` its
            accuracy stayed at 0.49-0.64 while the true ratio's rule reached 0.67-0.88, and
            its log-ratio correlated with the truth at 0.06-0.23 (``benchmarks/ratio.py``,
            docs/ratio.md). Scale 5 tracked the truth on the 2-D ring and grid and in 16-D.
    """

    hidden: int = 128
    depth: int = 3
    fourier_features: int = 0
    fourier_scale: float = 1.0
    ratio_fourier_features: int = 64
    ratio_fourier_scale: float = 5.0


@dataclass(frozen=True)
class TrainConfig:
    """The two-time-scale Di-Bregman schedule (docs/method.md §6).

    Attributes:
        generator_steps: number of student updates; the critic (fake score + ratio network)
            takes ``critic_steps_per_generator_step`` updates before each of them.
        critic_steps_per_generator_step: DMD2/f-distill use 5.
        fake_warmup_steps: critic-only steps before the first student update. The fake score of
            an analytic teacher cannot be initialised from the teacher (docs/method.md §1), so
            it is first fitted to the initial student.
        batch_size: samples per step for every network.
        lr, betas, weight_decay: AdamW for all three networks.
        fake_lr_scale: the fake score's learning rate is ``lr`` times this: a second
            time-scale besides the critic steps, so the fake score keeps up with the student.
        ratio_lr_scale: the ratio network's learning rate is ``lr`` times this, so the ratio
            estimate keeps up with the student too.
        grad_clip: max gradient norm of the student.
        ema_decay: EMA of the student used for evaluation; the decay ramps up as
            ``min(ema_decay, t / (t + 1))`` so the initial weights never linger in it.
        gan_weight: weight of the optional adversarial term ``softplus(log r(x_s))`` (0 = off).
        regression_weight: weight of DMD's regression term ``0.5 ||G(z_i) - y_i||^2`` on
            ``regression_pairs`` fixed pairs of latents ``z_i`` and the teacher's ODE images
            ``y_i`` (0 = off; DMD, arXiv 2311.18828, §3.3). The same term for every generator.
        sigma_min, sigma_max, rho, sigma_grid_size, sigma_quantile_low, sigma_quantile_high: the
            Karras grid of noise levels; indices are drawn uniformly in the quantile range.
            Toy teachers use ``sigma_max`` ~ 10x the data scale instead of EDM's 80.
        max_nonfinite_steps: that many consecutive non-finite steps end the run as ``diverged``.
        sigma_init: image students are ``G(z) = D(sigma_init z, sigma_init)`` (DMD2: 80).
    """

    generator_steps: int = 600
    critic_steps_per_generator_step: int = 5
    fake_warmup_steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    fake_lr_scale: float = 1.0
    ratio_lr_scale: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    ema_decay: float = 0.95
    gan_weight: float = 0.0
    regression_weight: float = 0.0
    regression_pairs: int = 2048
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    rho: float = 7.0
    sigma_grid_size: int = 1000
    sigma_quantile_low: float = 0.02
    sigma_quantile_high: float = 0.98
    max_nonfinite_steps: int = 10
    sigma_init: float = 80.0


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
        fid_n: image teachers: samples for Inception FID (clean-fid "clean" mode) against the
            training set; 0 skips it (Inception on a CPU is slow).
        budgets: generator steps at which the run also measures its final metrics (on
            ``n_final`` samples of the evaluation latents, as at the end; those the evaluator
            measures at budgets, ``Evaluator.budget``: all but the costliest), so that a sweep
            can compare arms at every budget; the last step is always measured in full.
            Empty: the last step only.
        ratio_check_n: teachers with an exact density: live-student samples for the KDE of the
            live ratio check at every evaluation (:mod:`dibregman.ratio_check`), which checks
            a quarter as many points of each side (student and teacher) at every level; 0
            skips it. Per run the numbers are noisy (250 points a side: accuracy within about
            +-0.03); the report averages them over seeds.
    """

    every: int = 50
    n_curve: int = 2000
    n_final: int = 10000
    n_pr: int = 5000
    pr_k: int = 3
    n_mmd: int = 2000
    seed: int = 1234
    fid_n: int = 0
    budgets: tuple[int, ...] = ()
    ratio_check_n: int = 1000


@dataclass(frozen=True)
class Config:
    """One distillation run.

    Attributes:
        preset: the preset this config started from (provenance only).
        teacher: teacher registry name (``mixture``: the Gaussian mixture of ``mixture``;
            ``image``; or a plugin's; see :mod:`dibregman.teachers.registry`).
        seed: repetition seed: networks, latents and noise all derive from it.
        method: the distillation method (:mod:`dibregman.methods`): ``di_bregman`` (weights
            ``h''(r) r`` of ``generator``) or ``dmd`` (unit weights; ``generator`` must stay
            ``reverse_kl``, the generator whose weight is 1).
        seed_stream: which random streams a seed draws (0: the default). Two runs with the
            same seed and different streams share no random number: a sweep's A/A control is
            the reference method on stream 1, paired with the reference by seed but on
            independent randomness (its own initialisation, latents and noise), so it
            measures the false-positive rate of the comparison. The evaluation latents
            (``eval.seed``) are the same for every stream.
        log_every: write a diagnostics record every this many generator steps.
        checkpoint_every: save a resumable checkpoint every this many generator steps.
        num_threads: torch intra-op threads during the run (0 keeps torch's setting). The toy
            MLPs run about twice as fast on one thread as on two: the work per op is too
            small to split.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
        precision: ``fp32``, or ``bf16`` autocast for network evaluations on a GPU (the ratio
            and weight arithmetic stays fp32; DMD2 found fp16 diverged).
        compile: ``torch.compile`` the student, fake score, ratio network and teacher network
            (in place): fuses the normalisation and elementwise work around the convolutions
            on a GPU, after a compilation of a minute or two at the first step.
    """

    preset: str = "gmm2d"
    teacher: str = "mixture"
    seed: int = 0
    seed_stream: int = 0
    method: str = "di_bregman"
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    image_teacher: ImageTeacherConfig = field(default_factory=ImageTeacherConfig)
    text: TextConfig = field(default_factory=TextConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ratio: RatioConfig = field(default_factory=RatioConfig)
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log_every: int = 10
    checkpoint_every: int = 100
    num_threads: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False


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
    if origin is tuple:  # "a,b", [a, b]; tuple[X, ...] also takes "", [] or () for ()
        items = (value.split(",") if value.strip() else []) if isinstance(value, str) else value
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * (len(items) if isinstance(items, (list, tuple)) else 0)
        if not isinstance(items, (list, tuple)) or len(items) != len(args):
            raise bad
        return tuple(coerce_value(key, v, a) for v, a in zip(items, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        raise bad
    raise bad


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        count = "list (maybe empty)" if args[-1] is Ellipsis else f"{len(args)}-tuple"
        return f"a comma-separated {count} of {_type_name(args[0])}"
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
    leaf = (_replace_leaf(child, path[1:], value, key) if len(path) > 1
            else coerce_value(key, value, typing.get_type_hints(type(node))[head]))
    return replace(node, **{head: leaf})


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
