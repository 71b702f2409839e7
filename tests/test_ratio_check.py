"""The truth a ratio estimate is held against: KDE densities of noised samples, the agreement
numbers, the live check of a run, the oracle estimator and the estimator benchmark's tiny case."""

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dibregman.bregman import get_generator
from dibregman.config import ConfigError, with_overrides
from dibregman.density import (
    ORACLE_BANDWIDTH_POINTS,
    kde_log_density,
    kde_log_ratio,
    loo_bandwidth,
)
from dibregman.distill import Distiller
from dibregman.presets import get_preset
from dibregman.ratio_check import CHECK_FIELDS, LiveRatioCheck, agreement, weight_spread
from dibregman.results import RATIO_CHECK_METRICS
from dibregman.run import RATIO_CHECK_FILE, read_jsonl, run_experiment
from dibregman.teachers import teacher_for
from dibregman.validation import validate

ROOT = Path(__file__).resolve().parent.parent


def gaussian_log_density(x: torch.Tensor, variance: float) -> torch.Tensor:
    d = x.shape[1]
    return -0.5 * (x.double() ** 2).sum(1) / variance - 0.5 * d * math.log(2 * math.pi * variance)


def test_kde_of_standard_normal_samples_is_the_normal_widened_by_its_kernel():
    """The KDE of N(0, I) samples with kernel variance v estimates N(0, (1 + v) I). At points of
    [-1, 1]^2 and v >= 0.1, 20,000 samples give a relative standard error of at most ~0.02
    (about N p 4 pi v >= 2,500 effective samples), so every error is below 0.1 nats."""
    rng = torch.Generator().manual_seed(0)
    samples = torch.randn(20_000, 2, generator=rng)
    points = torch.rand(200, 2, generator=rng) * 2 - 1
    for variance in (0.1, 1.0):
        error = kde_log_density(points, samples, variance) - gaussian_log_density(points,
                                                                                  1 + variance)
        assert float(error.abs().max()) < 0.1, variance


def test_leave_one_out_bandwidth_follows_the_scale_of_the_modes():
    """Tight modes far apart get a bandwidth near their own width, far below the data's
    spread; a constant sample gets 0."""
    rng = torch.Generator().manual_seed(1)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    tight = centres[torch.randint(2, (2000,), generator=rng)] + 0.05 * torch.randn(
        2000, 2, generator=rng)
    bandwidth = loo_bandwidth(tight)
    assert 0.005 < bandwidth < 0.1  # the data's per-coordinate spread is about 2.1
    assert loo_bandwidth(torch.ones(100, 2)) == 0.0


def test_a_teacher_against_its_own_kde_has_a_log_ratio_near_zero():
    """The control of the live check: the teacher's KDE over its exact density. At sigma = 0.3
    on gmm2d the median |log r| of 1000 noised teacher points is below 0.1 nats."""
    teacher = teacher_for(get_preset("gmm2d"))
    rng = torch.Generator().manual_seed(2)
    kde, points = teacher.sample(4000, rng), teacher.sample(1000, rng)
    noised = points + 0.3 * torch.randn(points.shape, generator=rng)
    log_r = kde_log_ratio(noised, 0.3, kde, loo_bandwidth(kde), teacher.log_prob)
    assert float(log_r.abs().median()) < 0.1


def test_agreement_of_an_exact_estimate_and_of_its_opposite():
    truth_student = torch.linspace(-1, 3, 100)  # 75 of 100 above 0 (none exactly 0)
    truth_teacher = torch.linspace(-3, 1, 100)  # 75 of 100 below 0
    exact = agreement(truth_student, truth_teacher, truth_student, truth_teacher, 0.05, 10.0)
    assert exact["correlation"] == pytest.approx(1.0)
    assert exact["abs_error"] == 0.0
    assert exact["accuracy"] == exact["truth_accuracy"] == pytest.approx(0.75)
    flipped = agreement(truth_student, truth_teacher, -truth_student, -truth_teacher, 0.05, 10)
    assert flipped["correlation"] < -0.99  # not -1: the clip bends the flipped ends
    assert flipped["accuracy"] == pytest.approx(0.25)
    flat = agreement(truth_student, truth_teacher, torch.zeros(100), torch.zeros(100), 0.05, 10)
    assert math.isnan(flat["correlation"])
    assert flat["accuracy"] == 0.5  # "teacher" for every point: right on the teacher half


def test_agreement_compares_log_ratios_inside_the_clip_only():
    """Beyond the clip every weight is the clip's, so a far-off estimate there is no error."""
    truth = torch.tensor([-8.0, 0.0, 8.0])
    estimate = torch.tensor([-30.0, 0.0, 30.0])
    row = agreement(truth, -truth, estimate, -estimate, 0.05, 10.0)
    assert row["abs_error"] == 0.0 and row["correlation"] == pytest.approx(1.0)


def test_weight_spread_is_zero_for_reverse_kl_and_grows_with_the_ratio_spread():
    log_r = torch.linspace(-1, 1, 50)
    assert weight_spread(get_generator("reverse_kl"), log_r, 0.05, 10.0) == 0.0
    narrow = weight_spread(get_generator("forward_kl"), 0.1 * log_r, 0.05, 10.0)
    wide = weight_spread(get_generator("forward_kl"), log_r, 0.05, 10.0)
    assert 0 < narrow < wide
    assert math.isnan(weight_spread(get_generator("log_squared"), torch.full((5,), 2.0),
                                    0.05, 10.0))  # every r >= e: every weight is 0


def test_live_check_of_a_perfect_student_finds_no_difference_to_detect():
    """A student that draws the teacher's distribution: the true ratio's rule is a coin flip
    at every level, and a flat estimate is as good as the truth."""
    cfg = get_preset("gmm2d")
    teacher = teacher_for(cfg)
    check = LiveRatioCheck.for_run(cfg, teacher.log_prob, teacher.sample, teacher.sigma_data)
    rng = torch.Generator().manual_seed(3)
    rows = check.measure(lambda x, sigma: torch.zeros(len(x)), teacher.sample(2000, rng),
                         teacher.sample(500, rng), seed=5)
    assert [row["sigma"] for row in rows] == pytest.approx(list(check.sigmas))
    assert len(rows) == cfg.ratio.noise_bins
    for row in rows:
        assert set(CHECK_FIELDS) <= set(row)
        assert abs(row["truth_accuracy"] - 0.5) < 0.1
        assert row["accuracy"] == 0.5
        assert row["summarised"] == (row["sigma"] <= teacher.sigma_data)
    summary = check.summary(rows)
    assert set(summary) == {spec.key for spec in RATIO_CHECK_METRICS}
    assert abs(summary["ratio_check_accuracy_gap"]) < 0.1


def test_a_run_records_the_live_check_at_every_evaluation(tmp_path):
    cfg = get_preset("gmm2d-tiny")
    run_experiment(cfg, tmp_path)
    rows = read_jsonl(tmp_path / RATIO_CHECK_FILE)
    evaluations = [0, 3, 6]  # eval.every 3 over 6 steps
    assert sorted({row["step"] for row in rows}) == evaluations
    assert len(rows) == len(evaluations) * cfg.ratio.noise_bins
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    checked = {r["step"] for r in records if "ratio_check_accuracy_gap" in r}
    assert {0, 6} <= checked <= set(evaluations)  # the summary only where the check ran


def test_oracle_weights_come_from_the_exact_density_over_a_kde_of_the_student():
    cfg = with_overrides(get_preset("gmm2d-tiny"), {"ratio.estimator": "oracle",
                                                    "generator.name": "forward_kl",
                                                    "ratio.oracle_samples": 256})
    d = Distiller(cfg, teacher_for(cfg))
    critic = d.critic_step()[0]
    assert "loss_ratio" not in critic and "loss_fake_dsm" in critic  # nothing is fitted
    x = d.teacher.sample(64, torch.Generator().manual_seed(4))
    sigma = torch.full((64,), 0.2)
    batch = d.student_batch()  # its oracle latents: the fresh student draw of this step
    oracle = d.method.log_ratio(x, replace(batch, sigma=sigma, labels=None))
    with torch.no_grad():
        student = d.student(batch.oracle_latents)
    bandwidth = loo_bandwidth(student, points=ORACLE_BANDWIDTH_POINTS)
    expected = kde_log_ratio(x, sigma, student, bandwidth, d.teacher.log_prob)
    torch.testing.assert_close(oracle, expected.float())
    weights = d.student_step()[0]
    assert weights["weight_max"] > weights["weight_min"]  # forward KL reweights by 1/r


def test_the_oracle_needs_a_teacher_with_an_exact_density():
    with pytest.raises(ConfigError, match="needs a teacher with an exact density.*valid: "
                                          "mixture"):
        validate(with_overrides(get_preset("digits-tiny"), {"ratio.estimator": "oracle"}))
    with pytest.raises(ConfigError, match="train.gan_weight"):
        validate(with_overrides(get_preset("gmm2d-tiny"), {"ratio.estimator": "oracle",
                                                           "train.gan_weight": 0.1}))


def test_the_estimator_benchmark_sees_the_ratio_the_plain_mlp_misses():
    """benchmarks/ratio.py's tiny case: 60 steps of the moving off-mode student. The default
    ratio network (Fourier features) tracks the exact log-ratio at sigma <= 0.13 (correlation
    >= 0.7, accuracy within 0.05 of the Bayes rule's); a plain MLP does not (< 0.5)."""
    spec = importlib.util.spec_from_file_location("ratio_bench", ROOT / "benchmarks/ratio.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, low in (("classifier", True), ("classifier-mlp", False)):
        rows = bench.fit_and_check(("gmm2d", "off-mode", name, 0, 60, [60], {}))
        small = [r for r in rows if r["sigma"] <= 0.13]
        assert len(small) == 5 and all(r["step"] == 60 for r in small)
        for row in small:
            if low:
                assert row["correlation"] >= 0.7, row
                assert row["truth_accuracy"] - row["accuracy"] <= 0.05, row
            else:
                assert row["correlation"] < 0.5, row
