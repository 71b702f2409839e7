"""Verdicts per budget on synthetic sweeps with known effects: the declared family and its Holm
adjustment, controls that can fail, time-to-target, what a comparison could have seen, bands,
and the quality gate said first."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.report import stats
from bench.report.reading import SweepData
from bench.report.tables import summarise
from bench.report.verdicts import (
    TIME_TO_TARGET,
    Family,
    compare_budgets,
    control_budget_lines,
    curve_bands,
    quality_lines,
    time_to_target,
    verdict_table,
)
from dibregman.results import Direction, MetricSpec, Role

OFF = MetricSpec("off_mode_n512", "off_mode", "off-mode share (n=512)", 512, Direction.LOWER,
                 Role.HEADLINE)
BUDGETS = (50, 100, 200)


def budget_sweep(factors: dict[str, tuple[float, ...]], seeds: int = 12, noise: float = 0.05,
                 controls: dict[str, str] | None = None, rng_seed: int = 0,
                 copies: dict[str, str] | None = None) -> SweepData:
    """A sweep whose headline at budget b of (arm, seed) is level_seed(b) * factor(b) *
    exp(N(0, noise)): every arm shares each seed's level (pairing helps), and ``copies`` maps
    an arm to another whose values it repeats exactly."""
    rng = np.random.default_rng(rng_seed)
    level = {(seed, b): math.exp(rng.normal(0, 0.3)) * 0.2 / (1 + i)
             for seed in range(seeds) for i, b in enumerate(BUDGETS)}
    records, runs = [], []
    for label, per_budget in factors.items():
        for seed in range(seeds):
            values = {b: level[(seed, b)] * f * math.exp(rng.normal(0, noise))
                      for b, f in zip(BUDGETS, per_budget, strict=True)}
            run_id = f"{label}-{seed}"
            runs.append({"run_id": run_id, "label": label, "seed": seed, "status": "finished",
                         "generator_steps": BUDGETS[-1], "teacher": "mixture",
                         OFF.key: values[BUDGETS[-1]]})
            records += [(run_id, label, seed, b, OFF.key, v) for b, v in values.items()
                        if b != BUDGETS[-1]]
    long = pd.DataFrame(records, columns=["run_id", "label", "seed", "step", "key", "value"])
    runs = pd.DataFrame(runs)
    for arm, source in (copies or {}).items():
        for frame in (runs, long):
            mine, theirs = frame.label == arm, frame.label == source
            column = OFF.key if frame is runs else "value"
            frame.loc[mine, column] = frame.loc[theirs, column].to_numpy()
    return SweepData("synthetic", None, runs, pd.DataFrame(), [OFF], OFF, "", controls or {},
                     long=long, budgets=BUDGETS)


def test_confirmatory_budgets_share_one_holm_family_and_the_rest_are_exploratory():
    data = budget_sweep({"reverse_kl": (1, 1, 1), "pearson": (0.7, 0.7, 0.7),
                         "neyman": (1.5, 1.5, 1.5)})
    frame = compare_budgets(data, ["reverse_kl", "pearson", "neyman"],
                            Family((100, 200), False, 1.1))
    steps = frame[frame.budget != TIME_TO_TARGET]
    confirmatory = steps[steps.confirmatory]
    assert set(confirmatory.budget) == {100, 200}
    assert (confirmatory.family_size == 4).all()
    np.testing.assert_allclose(confirmatory.p_holm, stats.holm(confirmatory.p))
    exploratory = steps[~steps.confirmatory]
    assert set(exploratory.budget) == {50} and (exploratory.family_size == 2).all()
    at = steps.set_index(["label", "budget"])
    assert at.loc[("pearson", 200), "verdict"] == stats.BETTER
    assert at.loc[("neyman", 100), "verdict"] == stats.WORSE
    assert at.loc[("pearson", 200), "estimate"] == pytest.approx(0.7, rel=0.05)
    header, rows, marks = verdict_table(frame, ["reverse_kl", "pearson", "neyman"])
    assert header[:4] == ["arm", "step 50", "step 100", "step 200"]
    assert "exploratory" in rows[0][1] and marks[0][2]


def test_an_independent_aa_arm_is_not_flagged_and_a_small_real_effect_is():
    """The A/A control: the reference's method on other randomness (same distribution, its
    own noise) is flagged nowhere; the positive control, 20 % worse at every budget, is flagged
    in the confirmatory family. Both lines say so."""
    controls = {"aa": "reverse_kl seed_stream=1", "positive": "reverse_kl train.lr=0.0007"}
    data = budget_sweep({"reverse_kl": (1, 1, 1), "reverse_kl seed_stream=1": (1, 1, 1),
                         "reverse_kl train.lr=0.0007": (1.2, 1.2, 1.2)}, seeds=16,
                        controls=controls)
    frame = compare_budgets(data, list(data.runs.label.unique()), Family((200,), True, 1.1))
    aa = frame[frame.label == "reverse_kl seed_stream=1"]
    assert (aa.verdict == stats.NO_DIFFERENCE).all()
    lines = control_budget_lines(data, frame)
    assert "flagged in 0 of 4 comparisons" in lines[0] and lines[0].endswith("behaved.")
    assert "behaved (flagged in the confirmatory family)" in lines[1]


def test_controls_that_misbehave_say_so():
    """An A/A arm that is in fact different, and a positive control that is the reference
    itself (a copy: no effect at all), both fail their checks in the report's words."""
    controls = {"aa": "aa", "positive": "positive"}
    data = budget_sweep({"reverse_kl": (1, 1, 1), "aa": (1.5, 1.5, 1.5), "positive": (1, 1, 1)},
                        seeds=16, controls=controls, copies={"positive": "reverse_kl"})
    frame = compare_budgets(data, ["reverse_kl", "aa", "positive"], Family((200,), False, 1.1))
    lines = control_budget_lines(data, frame)
    assert "MISBEHAVED" in lines[0]
    assert "NOT flagged in the confirmatory family" in lines[1]


def test_time_to_target_counts_budgets_and_censors_runs_that_never_get_there():
    """The target is 1.1 x the reference's mean at the last budget; an arm 3x worse at every
    budget never reaches it (censored: one index past the last budget) and is flagged as
    slower; the reference itself reaches it at the last budget."""
    data = budget_sweep({"reverse_kl": (1, 1, 1), "slow": (3, 3, 3)}, seeds=12, noise=0.01)
    wide = data.long.pivot_table(index=["label", "seed"], columns="step", values="value")
    wide[200] = data.runs.set_index(["label", "seed"])[OFF.key]
    reached, goal = time_to_target(wide, "reverse_kl", 1.1, Direction.LOWER)
    reference_last = data.runs[data.runs.label == "reverse_kl"][OFF.key].mean()
    assert goal == pytest.approx(1.1 * reference_last)
    assert (reached.loc["slow"] == len(BUDGETS)).all()  # censored
    frame = compare_budgets(data, ["reverse_kl", "slow"], Family((200,), True, 1.1))
    ttt = frame[frame.budget == TIME_TO_TARGET].iloc[0]
    assert ttt.censored == 12 and math.isinf(ttt.median_budget)
    assert ttt.verdict == stats.WORSE and ttt.confirmatory


def test_the_minimum_detectable_effect_shrinks_with_seeds_and_needs_enough_of_them():
    assert math.isinf(stats.minimum_detectable_effect(0.1, 4, 0.05))  # 2^-3 > 0.05
    at_8 = stats.minimum_detectable_effect(0.1, 8, 0.05)
    at_32 = stats.minimum_detectable_effect(0.1, 32, 0.05)
    assert at_32 == pytest.approx(at_8 / 2)  # 1 / sqrt(n)
    assert stats.minimum_detectable_effect(0.1, 8, 0.05, log_scale=True) == pytest.approx(
        math.exp(at_8))
    assert stats.power(at_8, 0.1, 8, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert stats.seeds_for_power(at_8, 0.1, 0.05) == 8


def test_curve_bands_cover_each_arms_mean_and_narrow_with_more_seeds():
    few = curve_bands(budget_sweep({"reverse_kl": (1, 1, 1)}, seeds=6), ["reverse_kl"])
    many = curve_bands(budget_sweep({"reverse_kl": (1, 1, 1)}, seeds=48), ["reverse_kl"])
    assert list(few.budget) == list(BUDGETS)
    assert ((few.low <= few["mean"]) & (few["mean"] <= few.high)).all()
    assert ((many.high - many.low) < (few.high - few.low)).all()


def test_failed_students_are_said_to_fail_before_any_verdict():
    """Students that cover 2 of 8 modes with 70 % of samples off-mode fail the mixture's gate,
    and the first line says every verdict compares failed students."""
    runs = pd.DataFrame([{"run_id": f"{arm}-{s}", "label": arm, "seed": s, "status": "finished",
                          "generator_steps": 400, "teacher": "mixture",
                          "modes_covered_n512": 2.0, "off_mode_n512": 0.7}
                         for arm in ("reverse_kl", "pearson") for s in range(3)])
    covered = MetricSpec("modes_covered_n512", "modes_covered", "modes covered", 512,
                         Direction.HIGHER, Role.DIAGNOSTIC)
    data = SweepData("failed", None, runs, pd.DataFrame(), [OFF, covered], OFF, "")
    teacher = {"modes_covered_n512": 8.0, "off_mode_n512": 0.002}
    lines = quality_lines(data, summarise(data), ["pearson", "reverse_kl"], teacher, "")
    assert lines[0].startswith("NO ARM PASSES THE QUALITY GATE")
    assert "FAILS" in lines[1] and "0 of 2 arms pass" in lines[-1]
    good = runs.assign(modes_covered_n512=8.0, off_mode_n512=0.05)
    data = SweepData("good", None, good, pd.DataFrame(), [OFF, covered], OFF, "")
    lines = quality_lines(data, summarise(data), ["pearson", "reverse_kl"], teacher, "")
    assert lines[0].startswith("Quality gate, best arm pearson") and "passes" in lines[0]
