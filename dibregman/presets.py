"""Named presets: a config per teacher, each with a ``-tiny`` variant for tests.

``gmm2d`` and ``gmm16d`` distil analytic Gaussian mixtures with MLPs: two named ``mixture``
sections of the ``mixture`` teacher; ``digits``, ``mnist`` and ``cifar10`` distil EDM image
teachers trained by this package; ``cifar10-edm`` distils NVIDIA's imported EDM CIFAR-10
teacher. Every preset but ``cifar10-edm`` (an imported network cannot be shrunk) has a
``NAME-tiny`` variant that runs a critic and a student step on a CPU in well under a second
(FastGen's habit): tiny networks, a few steps, small evaluation sets.
"""

from __future__ import annotations

import math
from typing import Any

from dibregman.config import (
    Config,
    ConfigError,
    EvalConfig,
    ImageTeacherConfig,
    MixtureConfig,
    NetConfig,
    TrainConfig,
    with_overrides,
)
from dibregman.registry import Registry

# The -tiny variant of a preset: a few steps of everything, small evaluation sets.
_TINY_RUN: dict[str, Any] = {
    "train.generator_steps": 6,
    "train.critic_steps_per_generator_step": 2,
    "train.fake_warmup_steps": 4,
    "train.batch_size": 64,
    "train.regression_pairs": 64,
    "train.sigma_grid_size": 50,
    "eval.every": 3,
    "eval.n_curve": 256,
    "eval.n_final": 512,
    "eval.n_pr": 256,
    "eval.n_mmd": 256,
    "eval.fid_n": 0,
    "eval.ratio_check_n": 128,
    "log_every": 2,
    "checkpoint_every": 3,
    "device": "cpu",
    "precision": "fp32",
    "compile": False,
}
# ... plus small networks: MLPs for vector teachers, a small U-Net teacher for images.
_TINY_MLP: dict[str, Any] = {"net.hidden": 32, "net.depth": 2}
_TINY_UNET: dict[str, Any] = {
    "image_teacher.channels": 8,
    "image_teacher.steps": 20,
    "image_teacher.batch_size": 32,
    "image_teacher.log_every": 10,
    "image_teacher.checkpoint_every": 10,
    "image_teacher.sampler_steps": 4,
}


def _tiny(cfg: Config, networks: dict[str, Any]) -> Config:
    """The ``-tiny`` variant of ``cfg`` with the tiny ``networks`` of its teacher kind."""
    return with_overrides(cfg, {"preset": f"{cfg.preset}-tiny", **_TINY_RUN, **networks})


# The paper-scale recipe on NVIDIA's unconditional EDM CIFAR-10 teacher (DDPM++ VP, 55.7M
# parameters; FID 1.97 at 35 evaluations), imported with `bench teacher import edm
# edm-cifar10-32x32-uncond-vp.pkl --out teachers/edm-cifar10-32x32-uncond-vp`. f-distill's
# schedule (Xu et al. 2025): AdamW lr 1e-4 for all three networks, global batch 2048
# (`bench run --nproc-per-node 8`: 256 per GPU), 100k student steps, 5 critic steps per
# student step, GAN weight 1e-3, ratio clipped to [1/20, 10], 10 log-sigma bins (the
# defaults of `ratio`).
_CIFAR10_EDM = Config(
    preset="cifar10-edm",
    teacher="pretrained",
    image_teacher=ImageTeacherConfig(dataset="cifar10",
                                     path="teachers/edm-cifar10-32x32-uncond-vp"),
    train=TrainConfig(generator_steps=100_000, critic_steps_per_generator_step=5,
                      fake_warmup_steps=0, batch_size=2048, lr=1e-4, sigma_max=80.0,
                      ema_decay=0.999, gan_weight=1e-3),
    eval=EvalConfig(every=5000, n_curve=5000, n_final=50_000, n_pr=10_000, n_mmd=2000,
                    fid_n=50_000),
    log_every=100,
    checkpoint_every=1000,
    num_threads=0,
    device="auto",
    precision="bf16",
    compile=True,
)


# The default task, chosen by benchmarks/tasks.py (docs/tasks.md): 8 modes on
# a ring with weights 40 % ... 1 %, where generators differ by more than their seed noise.
# The student reads random Fourier features of its latent (off-mode mass 14 % -> 5 %); small
# networks, batch 128 and 2 critic steps per student step keep a run near 10 s on one core.
# One critic step per student step was 20 % faster but left modes uncovered (7.7 of 8 over
# 10 seeds); 50 warm-up steps instead of 100 and MMD on 1000 samples instead of 2000 cost
# nothing measurable (off-mode share 0.069 vs 0.066, precision 0.898 vs 0.896) and 15 % of
# the time (reverse KL, seeds 0-9 as one seed batch). The ratio network learns at 3x the
# rate (train.ratio_lr_scale) on 64 Fourier features of its input (NetConfig's default):
# its accuracy then stays within about 0.035 of the true ratio's rule on average at
# sigma <= 1 (benchmarks/ratio.py and the live check, docs/ratio.md).
_GMM2D = Config(
    preset="gmm2d",
    teacher="mixture",
    mixture=MixtureConfig(layout="ring", modes=8, dim=2, std=0.2, scale=2.0,
                          weights=(0.4, 0.2, 0.12, 0.1, 0.08, 0.05, 0.04, 0.01)),
    net=NetConfig(hidden=64, depth=3, fourier_features=64,
                  fourier_scale=2.0 * math.sqrt(2)),
    train=TrainConfig(generator_steps=400, critic_steps_per_generator_step=2,
                      fake_warmup_steps=50, batch_size=128, ratio_lr_scale=3.0),
    eval=EvalConfig(n_mmd=1000),
)


_BASE_PRESETS: dict[str, tuple[Config, dict[str, Any] | None]] = {
    "gmm2d": (_GMM2D, _TINY_MLP),
    # The scenario ladder (docs/tasks.md): gmm2d with one change each where theory says the
    # generator should matter more, or less. A student without Fourier features of its latent
    # (an MLP's spectral bias: it cannot jump cleanly between modes, 14 % of samples off-mode
    # for reverse KL); the ratio estimate before the Fourier features (a plain MLP at the
    # student's rate: nearly flat weights, docs/ratio.md); a teacher whose smallest mode holds
    # 0.5 % of the mass (dropping it is the failure); and the oracle ratio (the teacher's exact
    # density over a KDE of the student: the ceiling of how much h can matter here).
    "gmm2d-small-student": (with_overrides(_GMM2D, {
        "preset": "gmm2d-small-student", "net.fourier_features": 0}), _TINY_MLP),
    "gmm2d-weak-ratio": (with_overrides(_GMM2D, {
        "preset": "gmm2d-weak-ratio", "net.ratio_fourier_features": 0,
        "train.ratio_lr_scale": 1.0}), _TINY_MLP),
    "gmm2d-imbalanced": (with_overrides(_GMM2D, {
        "preset": "gmm2d-imbalanced",
        "mixture.weights": (0.55, 0.2, 0.1, 0.07, 0.04, 0.02, 0.015, 0.005)}), _TINY_MLP),
    "gmm2d-oracle": (with_overrides(_GMM2D, {
        "preset": "gmm2d-oracle", "ratio.estimator": "oracle"}), _TINY_MLP),
    # The 5x5 grid of equal modes (std 0.05, spacing 1): a one-step map must jump between 25
    # tight modes, which distribution matching alone does not learn in a few thousand steps
    # (40 % of samples between modes after 1500 steps). DMD's regression term on teacher ODE
    # pairs, weighted 100, with 128 Fourier features at scale 12 and 3000 steps brings reverse
    # KL to ~20 % (benchmarks/tasks.py, docs/tasks.md); the regression term is the
    # same for every generator, so the generators still differ only in their weights.
    "gmm2d-grid": (Config(
        preset="gmm2d-grid",
        teacher="mixture",
        mixture=MixtureConfig(layout="grid", modes=25, dim=2, std=0.05, scale=1.0),
        net=NetConfig(hidden=128, depth=3, fourier_features=128,
                      fourier_scale=12.0 * math.sqrt(2)),
        train=TrainConfig(generator_steps=3000, critic_steps_per_generator_step=2,
                          fake_warmup_steps=50, batch_size=128, regression_weight=100.0,
                          regression_pairs=32768, ratio_lr_scale=3.0),
        eval=EvalConfig(n_mmd=1000),
    ), _TINY_MLP),
    "gmm16d": (Config(
        preset="gmm16d",
        teacher="mixture",
        # 10 modes at fixed random positions in 16-D, weights 0.75^k normalised (smallest 2.2 %).
        mixture=MixtureConfig(layout="random", modes=10, dim=16, std=0.25, scale=2.0,
                              weight_decay=0.75, seed=0),
        net=NetConfig(hidden=256, depth=3),
        train=TrainConfig(generator_steps=900, critic_steps_per_generator_step=3,
                          ratio_lr_scale=3.0),
    ), _TINY_MLP),
    # Image teachers: students and fake scores start from the teacher (DMD2), lr 1e-4 for all
    # three networks (f-distill at CIFAR scale), EDM's noise range, sigma_init 80.
    "digits": (_DIGITS := Config(
        preset="digits",
        teacher="image",
        # 2500 steps with EMA 0.995 matched 4000 steps with EMA 0.999 (domain FD of 1797
        # Heun samples 0.273 vs 0.264) in 150 s instead of 252 s on 2 cores.
        image_teacher=ImageTeacherConfig(dataset="digits", channels=32, steps=2500,
                                         ema_decay=0.995),
        # Student: fake score at 4x the lr, batch 128, EMA 0.99, sigma_init 2.5 (SiD), and DMD's
        # regression term on 8192 teacher ODE pairs, which lets lr rise to 8e-4. Final domain FD
        # (reverse KL, seed 0, n=1797, evaluation latents): 1.01 (lr 1e-4, batch 64, EMA 0.95,
        # sigma_init 80) -> 0.65 (lr 2e-4, 300 steps) -> 0.31 (this); distribution matching
        # alone at lr 8e-4 scored 0.75, the regression term alone (weight 100) 0.74.
        train=TrainConfig(generator_steps=600, critic_steps_per_generator_step=3,
                          fake_warmup_steps=50, batch_size=128, lr=8e-4, fake_lr_scale=4.0,
                          sigma_max=80.0, ema_decay=0.99, sigma_init=2.5,
                          regression_weight=1.0, regression_pairs=8192),
        eval=EvalConfig(every=50, n_curve=500, n_final=1797, n_pr=1000, n_mmd=500),
        log_every=10,
        checkpoint_every=50,
        num_threads=0,
    ), _TINY_UNET),
    # Text-to-image on CPU: the digits teacher conditioned on captions ("a handwritten three",
    # "3", ...) through a tiny CLIP's text tower, with classifier-free guidance at w = 2 (teacher:
    # domain FD 0.39, CLIP score 69.0, prompt accuracy 1.00; unguided 0.08, 67.2, 0.98). The
    # `digits` schedule at a third of its cost, so a sweep of 48 runs fits an hour on 2 cores:
    # batch 64, 2 critic steps, 200 student steps, 1024 regression pairs (reverse KL, seed 0,
    # 300 steps and 2048 pairs: FD 0.98, 2.5 x the teacher's, CLIP score 68.9).
    "digits-t2i": (with_overrides(_DIGITS, {
        "preset": "digits-t2i",
        "teacher": "text_digits",
        "text.guidance_scale": 2.0,
        "train.batch_size": 64,
        "train.critic_steps_per_generator_step": 2,
        "train.generator_steps": 200,
        "train.regression_pairs": 1024,
        "num_threads": 1,
    }), {**_TINY_UNET, "text.encoder_steps": 30}),
    "mnist": (Config(
        preset="mnist",
        teacher="image",
        image_teacher=ImageTeacherConfig(dataset="mnist", channels=64, steps=20000,
                                         batch_size=128, lr=5e-4),
        train=TrainConfig(generator_steps=2000, critic_steps_per_generator_step=5,
                          fake_warmup_steps=200, batch_size=128, lr=1e-4, sigma_max=80.0,
                          ema_decay=0.99),
        eval=EvalConfig(every=200, n_curve=1000, n_final=5000, n_pr=2000, n_mmd=1000,
                        fid_n=5000),
        log_every=20,
        checkpoint_every=200,
        num_threads=0,
        device="auto",
        precision="bf16",
    ), _TINY_UNET),
    "cifar10": (Config(
        preset="cifar10",
        teacher="image",
        image_teacher=ImageTeacherConfig(dataset="cifar10", channels=192,
                                         channel_mult=(1, 2, 2, 2), steps=200_000,
                                         batch_size=256,
                                         lr=2e-4, ema_decay=0.9999),
        # Batch 512 under torch.compile: 33.6 % MFU on an H200 (256: 28.9 %; eager 23.7 % and
        # 20.4 %), measured by benchmarks/perf.py --mfu --compile.
        train=TrainConfig(generator_steps=20_000, critic_steps_per_generator_step=5,
                          fake_warmup_steps=0, batch_size=512, lr=1e-4, sigma_max=80.0,
                          ema_decay=0.999),
        eval=EvalConfig(every=1000, n_curve=5000, n_final=50_000, n_pr=10_000, n_mmd=2000,
                        fid_n=50_000),
        log_every=50,
        checkpoint_every=1000,
        num_threads=0,
        device="auto",
        precision="bf16",
        compile=True,
    ), _TINY_UNET),
    # An imported network cannot be shrunk: the presets below have no -tiny variants.
    "cifar10-edm": (_CIFAR10_EDM, None),
    # The paper's experiment (Di-Bregman, arXiv 2510.16983, §5): the same schedule on EDM's
    # class-conditional CIFAR-10 teacher (FID 1.79 at 35 evaluations), imported with `bench
    # teacher import edm edm-cifar10-32x32-cond-vp.pkl --out teachers/edm-cifar10-32x32-cond-vp`;
    # class-balanced labels through student, fake score and ratio network.
    "cifar10-paper": (with_overrides(_CIFAR10_EDM, {
        "preset": "cifar10-paper",
        "image_teacher.path": "teachers/edm-cifar10-32x32-cond-vp",
        "image_teacher.class_conditional": True,
    }), None),
    # FastGen's f-distill recipe on Stable Diffusion 1.5 (fastgen/configs/experiments, SD15
    # f-distill), teacher `pretrained_text`, imported with `bench teacher import diffusers
    # stable-diffusion-v1-5 --out teachers/stable-diffusion-v1-5` (docs/teachers.md). Captioned
    # 512x512 images in data/sd15-captioned (image + same-stem .txt caption) are the prompt set
    # and, as VAE latents, the ratio estimator's teacher side (FastGen trains on real images).
    # Guidance 1.75; AdamW lr 1e-5 for student, fake score and ratio network; bf16; global
    # batch 2048; GAN weight 1e-3 (FastGen's discriminator on teacher features is our ratio
    # network). FastGen's student_update_freq 10 updates the student on every 10th of its
    # 100,000 iterations and the critic on the other 9: 10,000 student steps of 9 critic steps
    # each. Its fake score predicts x0, as ours does (an EDM denoiser). Its t ~ U(0.001, 0.999)
    # is the step tau = 1000 t of the 1000-step table, uniform in [1, 999]: sigma from
    # sigma_1 = 0.0413 to sigma_999 = 14.61. Our levels are a Karras grid drawn uniformly by
    # index: with that range exactly, rho = 4 is the closest grid (Kolmogorov-Smirnov distance
    # 0.11 between the two laws of sigma; medians 2.09 against 1.62, deciles 0.13 / 10.6 against
    # 0.35 / 8.3: a little more weight at both ends). The student starts at sigma_init = 14.61
    # (FastGen's max_t). EMA 0.999 and the evaluation sizes are ours.
    "sd15-fdistill": (with_overrides(Config(), {
        "preset": "sd15-fdistill",
        "teacher": "pretrained_text",
        "image_teacher.path": "teachers/stable-diffusion-v1-5",
        "text.prompts": "folder:data/sd15-captioned",
        "text.guidance_scale": 1.75,
        # The CLIP score's model: `huggingface-cli download openai/clip-vit-large-patch14 --include
        # '*.json' '*.txt' '*.safetensors' --local-dir models/clip-vit-large-patch14`
        "text.clip_model": "models/clip-vit-large-patch14",
        "ratio.teacher_side": "data",
        "train.generator_steps": 10_000,
        "train.critic_steps_per_generator_step": 9,
        "train.fake_warmup_steps": 0,
        "train.batch_size": 2048,
        "train.lr": 1e-5,
        "train.gan_weight": 1e-3,
        "train.ema_decay": 0.999,
        "train.sigma_min": 0.0413,
        "train.sigma_max": 14.61,
        "train.rho": 4.0,
        "train.sigma_grid_size": 1000,
        "train.sigma_quantile_low": 0.0,
        "train.sigma_quantile_high": 1.0,
        "train.sigma_init": 14.61,
        "eval.every": 1000,
        "eval.n_curve": 1000,
        "eval.n_final": 5000,
        "log_every": 100,
        "checkpoint_every": 1000,
        "num_threads": 0,
        "device": "auto",
        "precision": "bf16",
    }), None),
}

PRESETS: Registry[Config] = Registry("preset", {
    **{name: cfg for name, (cfg, _) in _BASE_PRESETS.items()},
    **{f"{name}-tiny": _tiny(cfg, tiny) for name, (cfg, tiny) in _BASE_PRESETS.items()
       if tiny is not None},
}, error=ConfigError)


def preset_names() -> list[str]:
    """Sorted preset names, ``-tiny`` variants included."""
    return PRESETS.names()


def get_preset(name: str) -> Config:
    """Look up a preset; an unknown name raises :class:`ConfigError` listing the valid ones."""
    return PRESETS[name]



def tuning_warnings(cfg: Config) -> list[str]:
    """Warnings for a mixture teacher much harder than the one ``cfg``'s preset was tuned on:
    more than twice the modes, less than half the standard deviation, or more dimensions. Its
    students may fail on that schedule (a 16-mode mixture of small modes on ``gmm2d``'s left
    75 % of samples off-mode); say so before anything runs."""
    tuned = PRESETS.get(cfg.preset)
    if tuned is None or cfg.teacher != "mixture" or tuned.teacher != "mixture":
        return []
    mine, base = cfg.mixture, tuned.mixture
    harder = [f"{what} ({mine_value} against {base_value})" for what, mine_value, base_value, hard
              in (("modes", mine.modes, base.modes, mine.modes > 2 * base.modes),
                  ("std", mine.std, base.std, mine.std < 0.5 * base.std),
                  ("dim", mine.dim, base.dim, mine.dim > base.dim)) if hard]
    if not harder:
        return []
    return [f"the mixture is harder than preset {cfg.preset}'s, whose schedule "
            f"({cfg.train.generator_steps} student steps) was tuned on it: "
            f"{', '.join(harder)}; scale the budget (--set train.generator_steps=N, and a "
            f"sweep's budgets) and read the report's quality gate before its verdicts"]
