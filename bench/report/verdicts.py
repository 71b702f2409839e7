"""Verdicts per budget: every arm against the reference, paired by seed, at every budget the
runs measured, with the family declared before the run adjusted by Holm.

A sweep's runs measure every final metric at each of ``eval.budgets`` and at their last step
(:mod:`dibregman.run`). For the headline metric this module builds, per arm and budget:

* the paired comparison with the reference (:func:`bench.report.stats.paired_comparison`:
  geometric-mean ratio or mean difference with its bootstrap interval, sign-flip p);
* whether it belongs to the *confirmatory* family the spec declared (its ``confirmatory``
  budgets, and time-to-target if declared): Holm adjusts over that family alone, and only its
  verdicts are claims; every other row is *exploratory* (Holm over the arms at that budget,
  shown as a description);
* the minimum detectable effect (:func:`bench.report.stats.minimum_detectable_effect`): the
  smallest true effect the test had 80 % power to flag at the seeds run, so "no detectable
  difference" says how large a difference would have been seen.

Time-to-target: the first budget at which a run's headline reaches ``target`` times the
reference arm's mean at the last budget (divided by it when higher is better); a run that never
reaches it is censored (shown as ``> last budget``). Arms are compared on the paired difference
of the budgets' indices, a censored run counting one index past the last: a sign-flip test of
whether one arm gets there earlier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.report import stats
from bench.report.reading import SweepData
from bench.report.tables import ALPHA, REFERENCE, Table, fmt, fmt_p
from dibregman.results import Direction
from dibregman.teachers import teacher_entry

POWER = 0.8
TIME_TO_TARGET = "time to target"


@dataclass(frozen=True)
class Family:
    """The confirmatory family: the headline at ``budgets``, and time-to-target if declared."""

    budgets: tuple[int, ...]
    time_to_target: bool
    target: float


def headline_by_budget(data: SweepData) -> pd.DataFrame:
    """The headline metric of every finished run at every budget: index (label, seed), one
    column per budget (generator step), from the runs' records and their final metrics."""
    key = data.headline.key
    rows = data.long[data.long.key == key][["label", "seed", "step", "value"]]
    finals = data.runs[data.runs.status == "finished"]
    final_rows = pd.DataFrame({"label": finals.label, "seed": finals.seed,
                               "step": finals.generator_steps, "value": finals[key]})
    table = pd.concat([rows, final_rows]).drop_duplicates(["label", "seed", "step"], keep="last")
    wide = table.pivot_table(index=["label", "seed"], columns="step", values="value")
    last = (int(finals.generator_steps.max()),) if len(finals) else ()
    budgets = sorted({*data.budgets, *last})
    return wide.reindex(columns=[b for b in budgets if b in wide.columns])


def _arm(table: pd.DataFrame | pd.Series, label: str) -> pd.DataFrame | pd.Series:
    """An arm's rows of a table indexed by (label, seed), indexed by seed. (Not
    ``table.loc[label, column]``: with integer seeds and budgets pandas may read the column
    as a seed.)"""
    return table.xs(label, level=0)


def time_to_target(wide: pd.DataFrame, reference: str, target: float,
                   direction: Direction) -> tuple[pd.Series, float]:
    """Per (label, seed): the index of the first budget reaching the target (``len(budgets)``
    when censored), and the target itself."""
    last = wide.columns[-1]
    ref = (_arm(wide, reference)[last] if reference in wide.index.get_level_values(0)
           else None)
    if ref is None or not len(ref.dropna()):
        return pd.Series(dtype=float), math.nan
    goal = float(ref.mean()) * target if direction is Direction.LOWER else \
        float(ref.mean()) / target
    reached = wide <= goal if direction is Direction.LOWER else wide >= goal
    index = reached.to_numpy().argmax(axis=1).astype(float)
    index[~reached.to_numpy().any(axis=1)] = len(wide.columns)
    index[wide.isna().all(axis=1).to_numpy()] = np.nan
    return pd.Series(index, index=wide.index), goal


def compare_budgets(data: SweepData, labels: list[str], family: Family,
                    reference: str = REFERENCE, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (arm, budget) and, with at least two budgets, per arm for time-to-target:
    ``label``, ``budget`` (a step, or :data:`TIME_TO_TARGET`), ``confirmatory``, ``n_pairs``,
    ``scale``, ``estimate``, ``ci_low``, ``ci_high``, ``p``, ``p_holm`` (over the confirmatory
    family, or over the arms at that budget for exploratory rows), ``verdict``, ``mde`` (the
    minimum detectable effect on the estimate's scale, at the row's adjustment) and, for
    time-to-target, each arm's median budget reached (``median_budget``, inf: censored) and
    its censored runs."""
    wide = headline_by_budget(data)
    direction = data.headline.direction
    arms = [label for label in labels if label != reference]
    if reference not in wide.index.get_level_values(0) or wide.empty:
        return pd.DataFrame()
    values = wide.to_numpy(dtype=float)
    positive = bool(np.all(values[np.isfinite(values)] > 0))
    scale = stats.LOG_RATIO if positive else stats.DIFFERENCE
    rows = []
    for budget in wide.columns:
        ref = _arm(wide, reference)[budget]
        for label in arms:
            if label not in wide.index.get_level_values(0):
                continue
            mine = _arm(wide, label)[budget]
            comparison = stats.paired_comparison(mine, ref, scale=scale)
            differences = _differences(mine, ref, scale)
            rows.append({"label": label, "budget": int(budget), "scale": scale,
                         "confirmatory": int(budget) in family.budgets,
                         "n_pairs": comparison.n_pairs, "estimate": comparison.estimate,
                         "effect": comparison.effect, "ci_low": comparison.ci_low,
                         "ci_high": comparison.ci_high, "p": comparison.p_value,
                         "sd": float(np.std(differences, ddof=1)) if len(differences) > 1
                         else math.nan})
    if len(wide.columns) >= 2:
        reached, goal = time_to_target(wide, reference, family.target, direction)
        budgets = list(wide.columns)
        for label in arms:
            if label not in reached.index.get_level_values(0):
                continue
            mine, ref = _arm(reached, label), _arm(reached, reference)
            comparison = stats.paired_comparison(mine, ref, scale=stats.DIFFERENCE)
            differences = _differences(mine, ref, stats.DIFFERENCE)
            rows.append({"label": label, "budget": TIME_TO_TARGET, "scale": "budget index",
                         "confirmatory": family.time_to_target, "n_pairs": comparison.n_pairs,
                         "estimate": comparison.estimate, "effect": comparison.effect,
                         "ci_low": comparison.ci_low, "ci_high": comparison.ci_high,
                         "p": comparison.p_value, "target": goal,
                         "median_budget": _median_budget(mine, budgets),
                         "censored": int((mine == len(budgets)).sum()),
                         "sd": float(np.std(differences, ddof=1)) if len(differences) > 1
                         else math.nan})
    frame = pd.DataFrame(rows)
    frame["family_size"] = 0
    confirmatory = frame.confirmatory
    frame.loc[confirmatory, "p_holm"] = stats.holm(frame.loc[confirmatory, "p"])
    frame.loc[confirmatory, "family_size"] = int(frame.loc[confirmatory, "p"].notna().sum())
    for _, rows_at in frame[~confirmatory].groupby("budget", sort=False):
        frame.loc[rows_at.index, "p_holm"] = stats.holm(rows_at.p)
        frame.loc[rows_at.index, "family_size"] = int(rows_at.p.notna().sum())
    frame["verdict"] = [
        stats.verdict(r.p_holm, r.effect,
                      direction if r.budget != TIME_TO_TARGET else Direction.LOWER, alpha)
        for r in frame.itertuples()]
    frame["mde"] = [stats.minimum_detectable_effect(
        r.sd, r.n_pairs, alpha / max(1, r.family_size), POWER, log_scale=r.scale == stats.LOG_RATIO)
        for r in frame.itertuples()]
    frame["power"] = [stats.power(r.effect, r.sd, r.n_pairs, alpha / max(1, r.family_size))
                      for r in frame.itertuples()]
    return frame


def _differences(arm: pd.Series, ref: pd.Series, scale: str) -> np.ndarray:
    joined = pd.concat([arm.rename("a"), ref.rename("r")], axis=1, join="inner").dropna()
    if scale == stats.LOG_RATIO:
        return np.log(joined.a.to_numpy()) - np.log(joined.r.to_numpy())
    return joined.a.to_numpy() - joined.r.to_numpy()


def _median_budget(indices: pd.Series, budgets: list[int]) -> float:
    """The median budget reached (inf when more than half the runs are censored)."""
    finite = indices.dropna()
    if finite.empty:
        return math.nan
    median_index = float(np.median(finite))
    if median_index >= len(budgets):
        return math.inf
    return float(budgets[int(math.floor(median_index))])


def aa_false_positive_rate(frame: pd.DataFrame, aa_label: str | None) -> tuple[int, int]:
    """How many of the A/A control's comparisons (every budget and time-to-target) were
    flagged, out of how many were tested."""
    if aa_label is None or frame.empty:
        return 0, 0
    rows = frame[(frame.label == aa_label) & frame.p_holm.notna()]
    return int(rows.verdict.isin([stats.BETTER, stats.WORSE]).sum()), len(rows)


def curve_bands(data: SweepData, labels: list[str], confidence: float = 0.95,
                n_resamples: int = 2000, rng_seed: int = 0) -> pd.DataFrame:
    """Per arm and budget: the headline's mean over seeds and its stratified bootstrap band
    (seeds resampled with replacement within the arm, rliable's protocol; the percentile
    interval of the resampled means). Columns label, budget, mean, low, high, n."""
    wide = headline_by_budget(data)
    rng = np.random.default_rng(rng_seed)
    rows = []
    for label in labels:
        if label not in wide.index.get_level_values(0):
            continue
        values = _arm(wide, label)
        for budget in wide.columns:
            x = values[budget].dropna().to_numpy()
            if not len(x):
                continue
            means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
            low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
            rows.append({"label": label, "budget": int(budget), "mean": float(x.mean()),
                         "low": float(low), "high": float(high), "n": len(x)})
    return pd.DataFrame(rows)


def family_from(data: SweepData) -> Family:
    """The confirmatory family the sweep declared (default: the headline at the last step)."""
    declared = data.confirmatory or {}
    last = int(data.runs.generator_steps.max()) if len(data.runs) else 0
    budgets = tuple(declared.get("budgets") or ([data.budgets[-1]] if data.budgets else [last]))
    return Family(budgets, bool(declared.get("time_to_target", False)), data.target)


def _budget_name(budget: object) -> str:
    return str(budget) if budget == TIME_TO_TARGET else f"step {budget}"


def _cell(row: pd.Series, budget: object) -> str:
    """A verdict cell: the verdict, the effect and the p-value (Holm over its family)."""
    if row.scale == stats.LOG_RATIO:
        effect = f"×{fmt(row.estimate)}"
    elif budget == TIME_TO_TARGET:
        effect = f"{row.estimate:+.2f} budgets"
    else:
        effect = f"{row.estimate:+.3g}"
    mark = "" if row.confirmatory else " (exploratory)"
    return f"{row.verdict}{mark}: {effect}, p {fmt_p(row.p_holm)}"


def verdict_table(frame: pd.DataFrame, labels: list[str]) -> Table:
    """Arm x budget: each cell the verdict against the reference with its effect and
    Holm-adjusted p; confirmatory cells in bold, exploratory ones marked."""
    budgets = list(dict.fromkeys(frame.budget))
    header = ["arm", *[_budget_name(b) for b in budgets]]
    rows, marks = [], []
    for label in [x for x in labels if x in set(frame.label)]:
        at = frame[frame.label == label].set_index("budget")
        cells = [_cell(at.loc[b], b) if b in at.index else "–" for b in budgets]
        rows.append([label, *cells])
        marks.append([False, *[b in at.index and bool(at.loc[b].confirmatory)
                               for b in budgets]])
    return header, rows, marks


def family_lines(data: SweepData, frame: pd.DataFrame, family: Family) -> list[str]:
    """How the verdicts were made: the family declared before the run, its size, the test."""
    if frame.empty:
        return [f"No {REFERENCE} arm with finished runs: arms are not compared."]
    top = data.headline
    size = int(frame[frame.confirmatory].p.notna().sum())
    parts = [f"{top.label} at {', '.join(f'step {b}' for b in family.budgets)}"]
    ttt = frame[frame.budget == TIME_TO_TARGET]
    if family.time_to_target and len(ttt):
        parts.append(f"the budget at which it first reaches {fmt(ttt.target.iloc[0])} "
                     f"(×{family.target:g} the {REFERENCE} mean at the last budget)")
    return [f"Confirmatory family, declared in the sweep spec before the run: {' and '.join(parts)}"
            f", every arm (controls included) against {REFERENCE}, paired by seed: {size} "
            f"two-sided sign-flip tests, Holm-adjusted together at α = {ALPHA:g}. Every other "
            f"cell is exploratory (Holm over the arms at its budget only): a description, not "
            f"a claim."]


def control_budget_lines(data: SweepData, frame: pd.DataFrame) -> list[str]:
    """The validity controls at every budget: the A/A arm must never be flagged (its flags
    are the observed false-positive rate), the positive control must be."""
    lines = []
    aa, positive = data.controls.get("aa"), data.controls.get("positive")
    if aa is not None:
        flagged, tested = aa_false_positive_rate(frame, aa)
        confirmatory = frame[(frame.label == aa) & frame.confirmatory & frame.p_holm.notna()]
        wrong = confirmatory.verdict.isin([stats.BETTER, stats.WORSE]).sum()
        lines.append(f"A/A control {aa} (the reference's method on independent randomness): "
                     f"flagged in {flagged} of {tested} comparisons ({wrong} of "
                     f"{len(confirmatory)} confirmatory): observed false-positive rate "
                     f"{flagged / tested if tested else math.nan:.2g}; "
                     + ("behaved." if flagged == 0 else
                        "MISBEHAVED: treat every verdict as suspect."))
    if positive is not None:
        rows = frame[(frame.label == positive) & frame.p_holm.notna()]
        flagged = rows[rows.verdict.isin([stats.BETTER, stats.WORSE])]
        confirmatory = rows[rows.confirmatory]
        hit = confirmatory.verdict.isin([stats.BETTER, stats.WORSE])
        where = ", ".join(f"{_budget_name(r.budget)} ({r.verdict})" for r in flagged.itertuples())
        lines.append(f"Positive control {positive} (known to differ slightly): flagged at "
                     f"{len(flagged)} of {len(rows)} comparisons{': ' + where if where else ''}; "
                     + ("behaved (flagged in the confirmatory family)." if hit.any() else
                        "NOT flagged in the confirmatory family: the suite could not see an "
                        "effect of this size at these seeds."))
    return lines


def sensitivity_lines(frame: pd.DataFrame, aa: str | None = None) -> list[str]:
    """What each budget's comparisons could have seen: the median minimum detectable effect
    over arms (80 % power, at the row's adjustment), and the confirmatory tests' power for
    the effects observed (not the A/A control's, ``aa``: its true effect is 0)."""
    if frame.empty:
        return []
    parts = []
    for budget, rows in frame.groupby("budget", sort=False):
        mde = rows.mde.replace(math.inf, np.nan).dropna()
        if mde.empty:
            parts.append(f"{_budget_name(budget)}: none (too few seeds)")
            continue
        value = float(mde.median())
        if rows.scale.iloc[0] == stats.LOG_RATIO:
            shown = f"×{value:.3g} either way"
        elif budget == TIME_TO_TARGET:
            shown = f"{value:.2g} budgets"
        else:
            shown = f"{value:.3g}"
        parts.append(f"{_budget_name(budget)}: {shown}")
    lines = ["Smallest difference each comparison could have detected (80 % power, median over "
             "arms): " + "; ".join(parts) + ". “No detectable difference” means no larger "
             "difference than this, not equality."]
    confirmatory = frame[frame.confirmatory & frame.p_holm.notna() & (frame.label != aa)]
    if len(confirmatory):
        weak = confirmatory[confirmatory.power < POWER]
        listed = "; ".join(f"{r.label} at {_budget_name(r.budget)}: {r.power:.2f}"
                           for r in weak.itertuples())
        lines.append(f"Power of the confirmatory tests for the effects they observed (normal "
                     f"approximation; the A/A control's true effect is 0): median "
                     f"{confirmatory.power.median():.2f}; {len(weak)} of {len(confirmatory)} "
                     f"below {POWER:g}" + (f" ({listed})" if listed else "") + ".")
    return lines


def quality_lines(data: SweepData, summary: pd.DataFrame, labels: list[str],
                  teacher: dict[str, float], note: str) -> list[str]:
    """Whether the students are good enough to be compared, said first: the best arm by the
    headline (and the reference) against the evaluator's declared quality gate
    (``Evaluator.quality_gate``), with the teacher's own values. When no arm passes, every
    verdict below compares failed students, and the lines say so."""
    if not teacher:
        return [note] if note else []
    evaluator = teacher_entry(data.runs_teacher).teacher_class.evaluator
    means = summary.pivot_table(index="label", columns="metric", values="mean")
    checked = [label for label in labels if label in means.index][:1]
    if REFERENCE in means.index and REFERENCE not in checked:
        checked.append(REFERENCE)
    if not checked:
        return ["No arm finished: the students cannot be judged."]
    results = {label: evaluator.quality_gate(means.loc[label].dropna().to_dict(), teacher)
               for label in checked}
    passing = [label for label in means.index
               if evaluator.quality_gate(means.loc[label].dropna().to_dict(), teacher)[0]]
    best = checked[0]
    lines = []
    if not passing:
        lines.append("NO ARM PASSES THE QUALITY GATE: every verdict below compares students "
                     "that failed to learn the teacher, i.e. ways of failing, not "
                     "generators. Train longer or scale the budget "
                     "(`--set train.generator_steps=...`) before reading them.")
    for label, (passes, rule) in results.items():
        role = "best arm" if label == best else "reference"
        lines.append(f"Quality gate, {role} {label} (means over seeds): "
                     f"{'passes' if passes else 'FAILS'}: {rule}.")
    lines.append(f"{len(passing)} of {len(means.index)} arms pass the gate. The teacher's own "
                 f"values (its Heun sampler, the same evaluation latents and sample counts) are "
                 f"the first row of the final values.")
    return lines
