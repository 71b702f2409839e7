"""Ratio-estimator benchmark: every estimator against a known log-ratio, at the distiller's budget.

The Di-Bregman weight ``w(r) = h''(r) r`` can only tell generators apart where the ratio
estimate follows the true ``r_sigma = q_sigma / p_sigma``. Here the teacher ``p`` is a preset's
Gaussian mixture and the "student" ``q_t`` is a mixture too, so ``log r`` is exact at every
noise level. ``q_t`` moves the way a distilled student does: it starts as the blob an
untrained student draws (every component at the teacher's mean with the data's scale) and
travels to a final mixture ``q*`` that differs from the teacher in one way a student fails
(:data:`PAIRS`): its components' means and scales move as ``a_t = 1 - exp(-t / tau)`` with
``tau`` an eighth of the steps, and a broad off-mode component shrinks from 30 % of the mass
to its final share.

Every estimator is fitted exactly as the distiller fits it (``dibregman.ratio.RatioEstimator``,
the preset's network, learning rate and batch, ``fake_warmup_steps`` updates on ``q_0``, then
``critic_steps_per_generator_step`` updates per step on fresh draws of ``q_t``), and at each
budget it is checked at the centres of the estimator's noise bins
(:func:`dibregman.ratio_check.agreement`): correlation and mean absolute error of the clipped
``log r`` at noised student points, the estimate's accuracy against the true ratio's (the Bayes
accuracy), and the spread (coefficient of variation) of the weights each generator would get
from the estimate and from the truth.

    python benchmarks/ratio.py                         # gmm2d pairs, every estimator, 2 seeds
    python benchmarks/ratio.py --preset gmm16d --seeds 0
    python benchmarks/ratio.py --set net.ratio_fourier_features=0   # the plain MLP
    python benchmarks/ratio.py --live --seeds 0 1 2 3 4 5 6 7       # the real task, live check

``--live`` trains the preset's real distillation (reverse KL, one seed batch per estimator row)
and prints its live ratio check (:mod:`dibregman.ratio_check`: the true ratio's rule from the
teacher's exact density over a KDE of the live student): per level, the estimate's accuracy
shortfall and correlation averaged over seeds and the evaluations after step 0, and the worst
(step, level) cell; then the seconds per generator step of each recipe, timed side by side in
one process (training only, no evaluation).

Estimator rows: ``classifier``, ``ulsif``, ``kliep`` on the preset's ratio network,
``classifier-mlp``, the classifier on a plain MLP at the student's learning rate
(``net.ratio_fourier_features=0``, ``train.ratio_lr_scale=1``: the recipe before the Fourier
features), and, with ``--live`` only, ``oracle`` (the truth as far as it can be computed). Fits
run in a process pool (one torch thread each).
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from dibregman.bregman import get_generator
from dibregman.config import Config, with_overrides
from dibregman.device import adamw
from dibregman.distill import Distiller, apply_update
from dibregman.noise import karras_sigmas, sample_sigmas
from dibregman.presets import get_preset
from dibregman.ratio import RatioEstimator
from dibregman.ratio_check import agreement, check_sigmas, weight_spread
from dibregman.students import build_networks
from dibregman.teachers import GaussianMixtureTeacher, teacher_for

# The final student of each pair: the teacher with one change (final_student); only "off-mode"
# keeps OFF_MODE_FINAL of its mass in the broad component every q_t starts with.
PAIRS = ("modes-dropped", "weights-shifted", "means-moved", "modes-widened", "off-mode")
OFF_MODE_START, OFF_MODE_FINAL = 0.3, 0.05
# Estimator rows: name -> (ratio.estimator, config overrides).
ESTIMATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "classifier": ("classifier", {}),
    "ulsif": ("ulsif", {}),
    "kliep": ("kliep", {}),
    "classifier-mlp": ("classifier", {"net.ratio_fourier_features": 0,
                                      "train.ratio_lr_scale": 1.0}),
    "oracle": ("oracle", {}),
}
# Rows with a network to fit (the known-ratio fits); the oracle runs in --live only.
FITTED = [name for name, (estimator, _) in ESTIMATORS.items() if estimator != "oracle"]
GENERATORS = ("forward_kl", "pearson", "neyman", "jensen_shannon", "log_squared")
# The target of a default estimator: at sigma <= 1, from the first budget on, correlation
# >= 0.7 with the truth. The worst cell is taken over cells where the truth varies by at least
# MIN_SPREAD nats (std of the clipped log r): where it is nearly constant (a dropped mode's
# pair at small sigma, where every kept sample has the same r) a correlation measures noise.
TARGET_SIGMA, TARGET_CORRELATION, MIN_SPREAD = 1.0, 0.7, 0.1


@dataclass(frozen=True)
class Mixture:
    """An isotropic Gaussian mixture: means ``(K, d)``, stds ``(K,)``, weights ``(K,)``."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def teacher(self) -> GaussianMixtureTeacher:
        return GaussianMixtureTeacher(self.means, self.stds, self.weights / self.weights.sum())


def final_student(pair: str, p: GaussianMixtureTeacher) -> tuple[Mixture, float]:
    """``q*`` of a pair, and the share of its mass off-mode."""
    means, stds, weights = p.means.clone(), p.stds.clone(), p.weights.clone()
    if pair == "modes-dropped":  # the smallest modes holding <= 10 % of the mass are gone
        order = torch.argsort(weights)
        dropped = order[torch.cumsum(weights[order], 0) <= 0.1]
        weights[dropped] = 0.0
    elif pair == "weights-shifted":  # equal weights
        weights = torch.full_like(weights, 1 / len(weights))
    elif pair == "means-moved":  # every mean 10 % closer to the centre
        centre = (p.weights[:, None] * p.means).sum(0)
        means = centre + 0.9 * (means - centre)
    elif pair == "modes-widened":
        stds = 1.5 * stds
    elif pair != "off-mode":
        raise ValueError(f"unknown pair {pair!r}; valid: {', '.join(PAIRS)}")
    keep = weights > 0
    off_mode = OFF_MODE_FINAL if pair == "off-mode" else 0.0
    return Mixture(means[keep], stds[keep], weights[keep]), off_mode


def student_at(t: float, steps: int, final: Mixture, off_mode: float,
               p: GaussianMixtureTeacher) -> GaussianMixtureTeacher:
    """``q_t``: ``final``'s components travelling from the teacher's mean and data scale (``a_t
    = 1 - exp(-8 t / steps)``) plus a broad component at the mean whose share falls from
    ``OFF_MODE_START`` to ``off_mode``."""
    a = 1 - math.exp(-8 * t / steps)
    centre = (p.weights[:, None] * p.means).sum(0)
    sd = p.sigma_data
    means = centre + a * (final.means - centre)
    stds = a * final.stds + (1 - a) * sd
    broad = off_mode + (OFF_MODE_START - off_mode) * (1 - a)
    weights = torch.cat([(1 - broad) * final.weights / final.weights.sum(),
                         torch.tensor([broad], dtype=torch.float64)])
    means = torch.cat([means, centre[None]])
    stds = torch.cat([stds, torch.tensor([sd], dtype=torch.float64)])
    keep = weights > 0
    return Mixture(means[keep], stds[keep], weights[keep]).teacher()


def fit_and_check(job: tuple[str, str, str, int, int, list[int], dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Fit one estimator along one pair's moving student; one row per (budget, level)."""
    preset, pair, row_name, seed, steps, budgets, common = job
    torch.set_num_threads(1)
    estimator, overrides = ESTIMATORS[row_name]
    cfg: Config = with_overrides(get_preset(preset), {
        **common, **overrides, "ratio.estimator": estimator, "seed": seed})
    p = teacher_for(cfg)
    final, off_mode = final_student(pair, p)
    rng = torch.Generator().manual_seed(2 * seed + 1)
    _, _, network = build_networks(cfg, p, torch.Generator().manual_seed(2 * seed))
    ratio = RatioEstimator(network, cfg.ratio, cfg.train.sigma_min, cfg.train.sigma_max)
    train = cfg.train
    optimizer = adamw(ratio, train.lr * train.ratio_lr_scale, train.betas, train.weight_decay,
                      torch.device("cpu"))
    grid = karras_sigmas(train.sigma_grid_size, train.sigma_min, train.sigma_max, train.rho)
    levels = check_sigmas(train.sigma_min, train.sigma_max, cfg.ratio.noise_bins)
    generators = {name: get_generator(name) for name in GENERATORS}
    check_rng = torch.Generator().manual_seed(10_000 + seed)

    def update(q: GaussianMixtureTeacher) -> None:
        n = train.batch_size
        x_p, x_q = p.sample(n, rng), q.sample(n, rng)
        sigma = sample_sigmas(n, grid, train.sigma_quantile_low, train.sigma_quantile_high, rng)
        noised_p = x_p + sigma[:, None] * torch.randn(x_p.shape, generator=rng)
        noised_q = x_q + sigma[:, None] * torch.randn(x_q.shape, generator=rng)
        loss, _ = ratio.loss(noised_p, noised_q, sigma)
        apply_update(loss, optimizer, ratio, math.inf)

    def check(step: int, q: GaussianMixtureTeacher, n: int = 1000) -> list[dict[str, Any]]:
        rows = []
        x_q, x_p = q.sample(n, check_rng), p.sample(n, check_rng)
        for sigma in levels:
            noised_q = x_q + sigma * torch.randn(x_q.shape, generator=check_rng)
            noised_p = x_p + sigma * torch.randn(x_p.shape, generator=check_rng)
            truth_q = q.log_prob(noised_q.double(), sigma) - p.log_prob(noised_q.double(), sigma)
            truth_p = q.log_prob(noised_p.double(), sigma) - p.log_prob(noised_p.double(), sigma)
            with torch.no_grad():
                est_q = ratio.log_ratio(noised_q, torch.full((n,), sigma))
                est_p = ratio.log_ratio(noised_p, torch.full((n,), sigma))
            clip = (cfg.ratio.clip_min, cfg.ratio.clip_max)
            row = {"pair": pair, "estimator": row_name, "seed": seed, "step": step,
                   "sigma": sigma, **agreement(truth_q, truth_p, est_q, est_p, *clip)}
            for name, h in generators.items():
                row[f"cv_{name}"] = weight_spread(h, est_q, *clip)
                row[f"cv_{name}_truth"] = weight_spread(h, truth_q, *clip)
            rows.append(row)
        return rows

    started = time.perf_counter()
    q0 = student_at(0, steps, final, off_mode, p)
    for _ in range(train.fake_warmup_steps):
        update(q0)
    rows = []
    for step in range(1, steps + 1):
        q = student_at(step, steps, final, off_mode, p)
        for _ in range(train.critic_steps_per_generator_step):
            update(q)
        if step in budgets:
            rows += check(step, q)
    seconds = time.perf_counter() - started
    for row in rows:
        row["fit_s"] = seconds
    return rows


def run(preset: str, estimators: list[str], pairs: list[str], seeds: list[int], steps: int,
        budgets: list[int], common: dict[str, Any], workers: int) -> pd.DataFrame:
    """Every (pair, estimator, seed) fit, as one long table of check rows."""
    jobs = [(preset, pair, name, seed, steps, budgets, common)
            for pair in pairs for name in estimators for seed in seeds]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(fit_and_check, jobs), 1):
            rows += result
            print(f"[{i}/{len(jobs)}] {result[0]['pair']} {result[0]['estimator']} "
                  f"seed {result[0]['seed']}: {result[0]['fit_s']:.1f} s", flush=True)
    return pd.DataFrame(rows)


def level_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per estimator and level: the check's numbers averaged over pairs, seeds and budgets."""
    columns = ["correlation", "abs_error", "accuracy", "truth_accuracy",
               *[c for c in frame.columns if c.startswith("cv_")]]
    return frame.groupby(["estimator", "sigma"])[columns].mean().reset_index()


def target_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per estimator and budget, over the levels ``sigma <= TARGET_SIGMA``: the correlation
    averaged over seeds, its mean over (pair, level) cells, and its worst cell among those
    whose truth spreads by at least ``MIN_SPREAD``."""
    kept = frame[frame["sigma"] <= TARGET_SIGMA]
    cells = kept.groupby(["estimator", "step", "pair", "sigma"])[
        ["correlation", "truth_spread"]].mean().reset_index()
    grouped = cells.groupby(["estimator", "step"])
    varying = cells[cells["truth_spread"] >= MIN_SPREAD].groupby(["estimator", "step"])
    return pd.DataFrame({"mean": grouped["correlation"].mean(),
                         "worst": varying["correlation"].min()}).reset_index()


def print_tables(frame: pd.DataFrame) -> None:
    levels = level_table(frame)
    print("\nPer noise level (means over pairs, seeds and budgets); cv: the weights' "
          "coefficient of variation from the estimate / from the truth")
    cv_names = [g for g in GENERATORS]
    header = ["estimator", "sigma", "corr", "|err|", "acc / Bayes",
              *[f"cv {g}" for g in cv_names]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in levels.itertuples(index=False):
        values = row._asdict()
        cvs = [f"{values[f'cv_{g}']:.2f} / {values[f'cv_{g}_truth']:.2f}" for g in cv_names]
        print(f"| {row.estimator} | {row.sigma:.3g} | {row.correlation:.2f} | "
              f"{row.abs_error:.2f} | {row.accuracy:.3f} / {row.truth_accuracy:.3f} | "
              + " | ".join(cvs) + " |")
    targets = target_table(frame)
    print(f"\nCorrelation with the true log r at sigma <= {TARGET_SIGMA:g} (target >= "
          f"{TARGET_CORRELATION}): mean over pairs and levels; worst (pair, level) where the "
          f"truth spreads by >= {MIN_SPREAD} nats")
    budgets = sorted(targets["step"].unique())
    print("| estimator | " + " | ".join(f"step {b}" for b in budgets) + " | meets target |")
    print("|---|" + "---|" * (len(budgets) + 1))
    for name, sub in targets.groupby("estimator", sort=False):
        cells = [f"{r.mean:.2f} (worst {r.worst:.2f})" for r in sub.itertuples()]
        ok = bool((sub["mean"] >= TARGET_CORRELATION).all()
                  and (sub["worst"].fillna(1.0) >= TARGET_CORRELATION).all())
        print(f"| {name} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    fits = frame.groupby("estimator")["fit_s"].mean()
    print("\nSeconds per fit (mean): " + ", ".join(f"{k} {v:.1f}" for k, v in fits.items()))


def live(preset: str, estimators: list[str], seeds: list[int], common: dict[str, Any],
         timed_steps: int = 100) -> None:
    """The live check of the real task per estimator row, and each recipe's training cost."""
    import tempfile
    from pathlib import Path

    from dibregman.run import RATIO_CHECK_FILE, read_jsonl, run_seed_batch

    torch.set_num_threads(1)
    configs = {}
    for name in estimators:
        estimator, overrides = ESTIMATORS[name]
        configs[name] = with_overrides(get_preset(preset), {
            **common, **overrides, "ratio.estimator": estimator})
    print("| estimator | sigma | shortfall | correlation | true ratio's accuracy | "
          "KDE control error |")
    print("|---|---|---|---|---|---|")
    worst = {}
    for name, cfg in configs.items():
        with tempfile.TemporaryDirectory() as directory:
            dirs = [Path(directory) / f"s{seed}" for seed in seeds]
            run_seed_batch(cfg, seeds, dirs)
            rows = pd.DataFrame([r for d in dirs for r in read_jsonl(d / RATIO_CHECK_FILE)])
        rows = rows[rows.step > 0]
        rows["gap"] = rows.truth_accuracy - rows.accuracy
        cells = rows.groupby(["step", "sigma"])[["gap", "correlation"]].mean()
        summarised = cells[cells.index.get_level_values("sigma") <= TARGET_SIGMA]
        worst[name] = (summarised.gap.max(), summarised.gap.idxmax(), summarised.gap.mean(),
                       summarised.correlation.mean())
        for sigma, at in rows.groupby("sigma"):
            print(f"| {name} | {sigma:.3g} | {at.gap.mean():+.3f} | {at.correlation.mean():.2f} "
                  f"| {at.truth_accuracy.mean():.3f} | {at.control_error.max():.2f} |")
    print(f"\nAt sigma <= {TARGET_SIGMA:g}, evaluations after step 0 (means over seeds per "
          f"cell): mean shortfall, worst cell (step, sigma), mean correlation")
    for name, (gap, (step, sigma), mean_gap, correlation) in worst.items():
        print(f"- {name}: mean {mean_gap:.3f}, worst {gap:.3f} at step {step}, sigma "
              f"{sigma:.3g}; correlation {correlation:.2f}")
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    distillers = {}
    for name, cfg in configs.items():
        distillers[name] = Distiller(cfg, teacher_for(cfg), seeds)
        distillers[name].warmup()
    for _ in range(timed_steps // 10):  # interleaved blocks, so load on the machine hits all
        for name, d in distillers.items():
            started = time.perf_counter()
            for _ in range(10):
                d.step()
            seconds[name].append((time.perf_counter() - started) / 10)
    base = estimators[0]
    print(f"\nSeconds per generator step (a seed batch of {len(seeds)}; median of "
          f"{timed_steps // 10} interleaved blocks of 10 steps)")
    for name, values in seconds.items():
        median = float(pd.Series(values).median())
        print(f"- {name}: {median:.4f} s ({median / float(pd.Series(seconds[base]).median()):.2f}"
              f"x {base})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gmm2d")
    parser.add_argument("--estimators", nargs="+", default=None, choices=list(ESTIMATORS),
                        help="default: every fitted row (and the oracle with --live)")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--budgets", nargs="+", type=int, default=None,
                        help="generator steps to check at (default: 50, 100, 200, the last)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every fit, e.g. net.ratio_fourier_scale=3")
    parser.add_argument("--out", default=None, help="CSV of every check row")
    parser.add_argument("--live", action="store_true",
                        help="the preset's real task with the live check (fitted estimators)")
    args = parser.parse_args()
    common = dict(item.split("=", 1) for item in args.set)
    if args.live:
        live(args.preset, args.estimators or list(ESTIMATORS), args.seeds, common)
        return
    if args.estimators and "oracle" in args.estimators:
        parser.error("the oracle fits nothing: it runs with --live only")
    steps = with_overrides(get_preset(args.preset), common).train.generator_steps
    budgets = args.budgets or sorted({b for b in (50, 100, 200, steps) if b <= steps})
    frame = run(args.preset, args.estimators or FITTED, args.pairs, args.seeds, steps, budgets,
                common, args.workers)
    if args.out:
        frame.to_csv(args.out, index=False)
    print_tables(frame)


if __name__ == "__main__":
    main()
