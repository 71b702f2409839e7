"""The report's numbers: per-generator summaries over seeds, the main table, the paired
comparison with the reference arm and its verdicts, the CSV files, and tables rendered as
Markdown or HTML.

The main table's cells are means ± standard deviations over seeds of the finished runs' final
metrics, plus a bootstrap interval of the headline metric's mean. Claims about arms — better or
worse than the reference — come only from :func:`compare`: per-seed paired tests with a Holm
adjustment (:mod:`bench.report.stats` has the methods and references).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import stats
from bench.report.reading import SweepData
from dibregman.results import (
    BUDGET_COSTS,
    ELAPSED,
    RATIO_CHECK_METRICS,
    Direction,
    MetricSpec,
    Role,
    Status,
)

REFERENCE = "reverse_kl"
ALPHA = 0.05  # family-wise error rate of the comparisons with the reference
CONFIDENCE = 0.95  # level of the bootstrap intervals
CI = f"{CONFIDENCE * 100:g} % CI"

Table = tuple[list[str], list[list[str]], list[list[bool]]]
"""Header, rows and a same-shaped "best in column" mask."""

# The ratio estimate is good enough to compare generators when, averaged over the checked levels
# and evaluations, its rule's accuracy is within this of the true ratio's (docs/ratio.md).
RATIO_GATE_GAP = 0.05


def ratio_check_window(data: SweepData) -> pd.DataFrame:
    """The live ratio check's rows that judge the estimate: fitted estimators only (not the
    oracle), the summarised levels (``sigma <= sigma_data``), every evaluation after step 0,
    with ``gap = truth_accuracy - accuracy``; empty without checks."""
    checks = data.ratio_checks
    if checks.empty:
        return checks
    window = checks[(checks.estimator != "oracle") & checks.summarised.astype(bool)
                    & (checks.step > 0)].copy()
    window["gap"] = window.truth_accuracy - window.accuracy
    return window


def ratio_check_lines(data: SweepData) -> list[str]:
    """Whether the ratio estimate was good enough to compare generators, in words: said
    before any verdict, since a flat estimate makes every generator train as reverse KL."""
    window = ratio_check_window(data)
    if window.empty:
        if (data.ratio_checks.estimator == "oracle").all():
            return ["Every run read its weights off the truth itself (the oracle estimator: the "
                    "teacher's exact noised density over a KDE of the live student's samples at "
                    "every step), so there is no estimate to check: the verdicts below are the "
                    "ceiling of what the generator can change on this task."]
        return []
    cells = window.groupby(["label", "step", "sigma"])[["gap", "correlation"]].mean()
    worst_label, worst_step, worst_sigma = cells.gap.idxmax()
    gap, correlation = float(cells.gap.mean()), float(cells.correlation.mean())
    control = float(window.control_error.max())
    verdict = (f"good enough to compare generators (mean shortfall ≤ {RATIO_GATE_GAP:g})"
               if gap <= RATIO_GATE_GAP else
               f"NOT good enough (mean shortfall > {RATIO_GATE_GAP:g}): its weights are flatter "
               f"than the true ratio's, so every verdict below compares generators through a "
               f"blurred ratio")
    return [f"Ratio estimate against the truth (the teacher's exact noised density over a KDE "
            f"of the live student; {window.run_id.nunique()} runs, levels σ ≤ "
            f"{window.sigma.max():.3g}, evaluations from step {int(window.step.min())}): its "
            f"rule's accuracy falls short of the true ratio's by {gap:.3f} on average (worst "
            f"cell, mean over seeds: {worst_label} at σ = {worst_sigma:.3g}, step "
            f"{int(worst_step)}: {cells.gap.max():.3f}); the log-ratios correlate at "
            f"{correlation:.2f} on average; the KDE truth's own error, the teacher's KDE "
            f"against its exact density, is at most {control:.2f} nats (95th percentile). "
            f"The estimate is {verdict}."]


def ratio_check_table(data: SweepData) -> Table:
    """Per checked level, over every fitted run and evaluation after step 0: the estimate's
    accuracy, the true ratio's, the shortfall, the correlation of the clipped log-ratios and
    the KDE control's error; every level, the summarised ones marked."""
    checks = data.ratio_checks
    header = ["σ", "accuracy", "true ratio's accuracy", "shortfall", "correlation",
              "truth spread (nats)", "KDE control error (nats)"]
    if checks.empty:
        return header, [], []
    rows_in = checks[(checks.estimator != "oracle") & (checks.step > 0)].copy()
    rows_in["gap"] = rows_in.truth_accuracy - rows_in.accuracy
    table = rows_in.groupby("sigma").agg(
        accuracy=("accuracy", "mean"), truth=("truth_accuracy", "mean"), gap=("gap", "mean"),
        correlation=("correlation", "mean"), spread=("truth_spread", "mean"),
        control=("control_error", "max"), summarised=("summarised", "first"))
    rows = [[f"{sigma:.3g}{'' if r.summarised else ' (not summarised)'}", f"{r.accuracy:.3f}",
             f"{r.truth:.3f}", f"{r.gap:+.3f}", fmt(r.correlation), f"{r.spread:.2f}",
             f"{r.control:.2f}"] for sigma, r in table.iterrows()]
    return header, rows, [[False] * len(header) for _ in rows]


def summarise(data: SweepData) -> pd.DataFrame:
    """Per label and column: mean, std (ddof=1) and n over the finished runs' seeds.

    Diverged and failed runs have no final metrics; they are counted, not averaged.
    """
    finished = data.runs[data.runs.status == Status.FINISHED]
    rows = []
    for label, group in finished.groupby("label", sort=False):
        for column in data.columns:
            values = group[column.key].dropna()
            rows.append({"label": label, "metric": column.key, "mean": values.mean(),
                         "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                         "n": len(values)})
    return pd.DataFrame(rows, columns=["label", "metric", "mean", "std", "n"])


def order_labels(data: SweepData, summary: pd.DataFrame) -> list[str]:
    """Labels ranked by the mean of the headline metric (best first, by its declared direction);
    labels with no finished run last."""
    top = data.headline
    means = summary[summary.metric == top.key].set_index("label")["mean"]
    sign = 1 if top.direction is Direction.LOWER else -1
    labels = list(dict.fromkeys(data.runs.label))
    return sorted(labels, key=lambda label: (sign * means.get(label, sign * math.inf), label))


def fmt(value: float) -> str:
    """A table cell's number: 4 significant digits, scientific when tiny or huge, ``–`` when
    missing or not finite."""
    if value is None or not np.isfinite(value):
        return "–"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4g}"


def per_seed(data: SweepData, label: str, key: str) -> pd.Series:
    """The finished runs' values of metric ``key`` for ``label``, one per seed (indexed by
    seed; runs that share a label and a seed — a grid over another setting — are averaged, so
    the seed stays the unit that is paired and resampled)."""
    runs = data.runs[(data.runs.status == Status.FINISHED) & (data.runs.label == label)]
    return runs.groupby("seed")[key].mean().dropna()


COMPARISON_COLUMNS = ["label", "metric", "reference", "scale", "n_seeds", "mean", "ci_low",
                      "ci_high", "n_pairs", "estimate", "estimate_ci_low", "estimate_ci_high",
                      "p_value", "p_holm", "verdict", "p_rank_first"]
"""``comparison.csv``: per label, the headline metric's mean over seeds with its bootstrap
interval (NaN below :func:`bench.report.stats.min_seeds` seeds), the paired comparison with the
reference (``estimate``: geometric-mean ratio or mean difference, by ``scale``; its interval;
raw and Holm-adjusted p), the verdict, and P(rank first)."""

REFERENCE_VERDICT = "reference"
NO_REFERENCE = "no reference arm"


def compare(data: SweepData, labels: list[str], reference: str = REFERENCE,
            alpha: float = ALPHA, confidence: float = CONFIDENCE,
            metric: MetricSpec | None = None) -> pd.DataFrame:
    """Every label against ``reference`` on the headline metric (or ``metric``), paired by seed.

    Per label: the mean over its finished seeds and its expanded-percentile bootstrap interval
    (:func:`bench.report.stats.bootstrap_ci`, withheld below ``min_seeds(1 - confidence)``
    seeds); the paired comparison with the reference
    (:func:`bench.report.stats.paired_comparison`) on log-ratios when every finished value of
    the metric in the sweep is > 0, else on differences (one scale for the whole table); the
    p-values Holm-adjusted over all labels with ≥ 2 paired seeds
    (:func:`bench.report.stats.holm`); the verdict by the metric's declared direction
    (:func:`bench.report.stats.verdict`; "too few seeds" below 2 pairs); and P(rank first) over
    all labels with ≥ 2 seeds (:func:`bench.report.stats.probability_of_rank_first`), withheld
    (NaN) unless each of them has ``min_seeds(1 - confidence)`` seeds.

    Args:
        data: the sweep.
        labels: the rows, in display order (:func:`order_labels`).
        reference: the arm the others are compared with.
        alpha: family-wise error rate of the verdicts.
        confidence: level of the intervals.
        metric: a declared final metric to compare on instead of the headline.

    Returns:
        One row per label with :data:`COMPARISON_COLUMNS`.
    """
    top = metric or data.headline
    values = {label: per_seed(data, label, top.key) for label in labels}
    finished = pd.concat([v for v in values.values() if len(v)] or [pd.Series(dtype=float)])
    scale = stats.LOG_RATIO if len(finished) and bool((finished > 0).all()) else \
        stats.DIFFERENCE
    has_reference = reference in values
    enough = stats.min_seeds(1 - confidence)
    shares = stats.probability_of_rank_first({k: v.to_numpy() for k, v in values.items()},
                                             top.direction)
    if any(2 <= len(v) < enough for v in values.values()):
        # resampled means of n < 6 seeds stay inside their range: the shares would look surer
        # than any rerun bears out, as the intervals would
        shares = dict.fromkeys(shares, np.nan)
    rows = []
    for label in labels:
        v = values[label]
        low, high = stats.bootstrap_ci(v.to_numpy(), confidence) if len(v) >= enough else \
            (np.nan, np.nan)
        row = {"label": label, "metric": top.key, "reference": reference if has_reference
               else "", "scale": scale if has_reference else "", "n_seeds": len(v),
               "mean": v.mean() if len(v) else np.nan, "ci_low": low, "ci_high": high,
               "n_pairs": 0, "estimate": np.nan, "estimate_ci_low": np.nan,
               "estimate_ci_high": np.nan, "p_value": np.nan, "p_holm": np.nan, "effect": np.nan,
               "verdict": NO_REFERENCE, "p_rank_first": shares[label]}
        if has_reference and label == reference:
            row.update(n_pairs=len(v))
        elif has_reference:
            pair = stats.paired_comparison(v, values[reference], scale=scale,
                                           confidence=confidence)
            row.update(n_pairs=pair.n_pairs, estimate=pair.estimate, effect=pair.effect,
                       p_value=pair.p_value)
            if pair.n_pairs >= enough:
                row.update(estimate_ci_low=pair.ci_low, estimate_ci_high=pair.ci_high)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*COMPARISON_COLUMNS, "effect"])
    if has_reference:
        frame["p_holm"] = stats.holm(frame["p_value"].to_numpy())
        frame["verdict"] = [
            REFERENCE_VERDICT if row.label == reference else
            stats.verdict(row.p_holm, row.effect, top.direction, alpha)
            for row in frame.itertuples()]
    return frame.drop(columns="effect")


def fmt_p(p: float) -> str:
    """A p-value: 2 significant digits, ``–`` when there is none."""
    return f"{p:.2g}" if p is not None and np.isfinite(p) else "–"


def fmt_ci(low: float, high: float) -> str:
    """``[low, high]``, or ``–`` when the interval is withheld."""
    return f"[{fmt(low)}, {fmt(high)}]" if np.isfinite(low) and np.isfinite(high) else "–"


TEACHER_ROW = "teacher (its own Heun samples)"


def comparison_table(data: SweepData, summary: pd.DataFrame, comparison: pd.DataFrame,
                     teacher: dict[str, float] | None = None) -> Table:
    """Header, rows and a same-shaped "best in column" mask of the main table: mean ± std of
    every declared column, the headline's bootstrap interval beside it, run counts by ending,
    and (with a reference arm) the verdict against it from ``comparison`` (:func:`compare`);
    the teacher's own values first when given (not ranked, never marked best)."""
    summary_stats = summary.set_index(["label", "metric"])
    compared = comparison.set_index("label")
    counts = data.runs.groupby("label").status.value_counts().unstack(fill_value=0)
    reference = REFERENCE if REFERENCE in set(data.runs.label) else None
    top = data.headline
    ended = [str(Status.DIVERGED), str(Status.FAILED)]
    header = ["generator", "seeds"]
    for column in data.columns:
        header.append(column.label)
        if column is top:
            header.append(f"{top.label} {CI}")
    header += ended
    if reference:
        header.append(f"{top.label} vs {reference}")
    labels = order_labels(data, summary)
    best = {}
    for column in data.columns:
        means = [summary_stats["mean"].get((label, column.key), np.nan) for label in labels]
        finite = [m for m in means if np.isfinite(m)]
        best[column.key] = (min(finite) if column.direction is Direction.LOWER
                            else max(finite)) if finite else None
    enough = stats.min_seeds(1 - CONFIDENCE)
    rows, marks = [], []
    if teacher:
        row = [TEACHER_ROW, "–"]
        for column in data.columns:
            row.append(fmt(teacher.get(column.key, np.nan)) if column.role is not Role.COST
                       else "–")
            if column is top:
                row.append("–")
        row += ["–"] * (len(header) - len(row))
        rows.append(row)
        marks.append([False] * len(header))
    for label in labels:
        n = int(summary_stats["n"].get((label, top.key), 0))
        row, mark = [label, str(n)], [False, False]
        for column in data.columns:
            mean = summary_stats["mean"].get((label, column.key), np.nan)
            std = summary_stats["std"].get((label, column.key), np.nan)
            row.append(fmt(mean) + (f" ± {fmt(std)}" if np.isfinite(std) else ""))
            mark.append(best[column.key] is not None and mean == best[column.key])
            if column is top:
                seeds = int(compared.n_seeds.get(label, 0))
                row.append(fmt_ci(compared.ci_low.get(label, np.nan),
                                  compared.ci_high.get(label, np.nan))
                           if seeds >= enough or seeds == 0 else f"needs ≥ {enough} seeds")
                mark.append(False)
        row += [str(counts.get(status, {}).get(label, 0)) for status in ended]
        mark += [False, False]
        if reference:
            row.append(str(compared.verdict.get(label, stats.TOO_FEW)))
            mark.append(False)
        rows.append(row)
        marks.append(mark)
    return header, rows, marks


def paired_table(comparison: pd.DataFrame) -> Table:
    """The comparison with the reference as a table: per label the paired seeds, the
    geometric-mean ratio (or mean difference) with its interval, raw and Holm-adjusted p, the
    verdict, and P(rank first). No mask: nothing is bold. No rows without a reference arm."""
    reference = next((r for r in comparison.reference if r), REFERENCE)
    ratio = (comparison.scale == stats.LOG_RATIO).any()
    effect = f"ratio to {reference}" if ratio else f"difference to {reference}"
    header = ["generator", "paired seeds", effect, CI, "p", "p (Holm)", "verdict",
              "P(rank first)"]
    if not (comparison.verdict != NO_REFERENCE).any():
        return header, [], []
    rows = []
    for row in comparison.itertuples():
        is_reference = row.label == reference
        rows.append([row.label, str(row.n_pairs),
                     ("1" if ratio else "0") if is_reference else fmt(row.estimate),
                     "–" if is_reference else fmt_ci(row.estimate_ci_low, row.estimate_ci_high),
                     fmt_p(row.p_value), fmt_p(row.p_holm), row.verdict,
                     f"{row.p_rank_first:.2f}" if np.isfinite(row.p_rank_first) else "–"])
    return header, rows, [[False] * len(header) for _ in rows]


def _seeds_text(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low} paired seeds" if low == high else f"{low}–{high} paired seeds"


def verdict_lines(data: SweepData, comparison: pd.DataFrame, alpha: float = ALPHA) -> list[str]:
    """The report's claims about arms, in words: only what the verdicts of ``comparison``
    (:func:`compare`) support, with the test, the adjustment, α and the number of seeds, and
    what the seed count could have detected at all."""
    top = data.headline
    if not (comparison.verdict != NO_REFERENCE).any():
        return [f"No {REFERENCE} arm in this sweep: arms are not compared on {top.label}."]
    arms = comparison[comparison.verdict != REFERENCE_VERDICT]
    tested = arms[arms.p_holm.notna()]
    too_few = arms[arms.p_holm.isna()]
    lines = []
    if tested.empty:
        lines.append(f"No arm has 2 or more seeds paired with {REFERENCE}: no arm is compared "
                     f"on {top.label}.")
    else:
        scale = tested.scale.iloc[0]
        how = (f"two-sided sign-flip permutation test on per-seed "
               f"{'log-ratios' if scale == stats.LOG_RATIO else 'differences'}, Holm over "
               f"{len(tested)} arm{'s' if len(tested) > 1 else ''}, α = {alpha:g}, "
               f"{_seeds_text(list(tested.n_pairs))}")
        better = tested[tested.verdict == stats.BETTER]
        worse = tested[tested.verdict == stats.WORSE]
        if better.empty and worse.empty:
            lines.append(f"No arm differs detectably from {REFERENCE} on {top.label} ({how}).")
        else:
            unit = "ratio" if scale == stats.LOG_RATIO else "difference"
            for word, part in ((stats.BETTER, better), (stats.WORSE, worse)):
                if len(part):
                    names = ", ".join(f"{r.label} ({unit} {fmt(r.estimate)}, p (Holm) = "
                                      f"{fmt_p(r.p_holm)})" for r in part.itertuples())
                    lines.append(f"Detectably {word} than {REFERENCE} on {top.label} "
                                 f"({top.direction} is better; {how}): {names}.")
            rest = tested[tested.verdict == stats.NO_DIFFERENCE]
            if len(rest):
                lines.append(f"No detectable difference from {REFERENCE}: "
                             f"{', '.join(rest.label)}.")
        needed = stats.min_seeds(alpha, len(tested))
        most = int(tested.n_pairs.max())
        if most < needed:
            lines.append(f"With {most} paired seeds the smallest attainable p is "
                         f"{2.0 ** (1 - most):.2g}: no difference could have been detected; "
                         f"Holm over {len(tested)} arm{'s' if len(tested) > 1 else ''} at "
                         f"α = {alpha:g} needs ≥ {needed} paired seeds.")
        if (tested.verdict == stats.NO_DIFFERENCE).any():
            lines.append("“No detectable difference” is not evidence that arms are equal.")
    if len(too_few):
        names = ", ".join(f"{r.label} ({r.n_pairs} paired)" for r in too_few.itertuples())
        lines.append(f"Too few seeds paired with {REFERENCE} for a verdict: {names}.")
    return lines


def method_note(comparison: pd.DataFrame, alpha: float = ALPHA) -> str:
    """How to read :func:`paired_table`: the statistics behind each column."""
    ratio = (comparison.scale == stats.LOG_RATIO).any()
    enough = stats.min_seeds(1 - CONFIDENCE)
    effect = ("Ratio: geometric mean over paired seeds of the arm's value / the reference's"
              if ratio else "Difference: mean over paired seeds of the arm's value minus the "
              "reference's")
    return (f"Runs with the same seed share initialisation and latents, so arms are compared "
            f"seed by seed. {effect}, with its {CONFIDENCE * 100:g} % expanded-percentile "
            f"bootstrap interval (shown from {enough} pairs). p: two-sided sign-flip "
            f"permutation test (exact up to 13 pairs); p (Holm): adjusted as in the verdicts "
            f"table (over the confirmatory family when the last step is in it, else over the "
            f"arms compared); verdict at α = {alpha:g} by the metric's declared direction. "
            f"P(rank first): share of {stats.N_BOOTSTRAP:,} bootstrap resamples of each arm's "
            f"seeds in which its mean is the best — how settled the order is, not a test; "
            f"shown when every arm has ≥ {enough} seeds.")


def write_csvs(data: SweepData, summary: pd.DataFrame, comparison: pd.DataFrame,
               out: Path, budgets: pd.DataFrame | None = None) -> None:
    """``summary.csv`` (per label and metric: mean, std, n), ``results.csv`` (one row per
    run and metric that has a value), ``comparison.csv`` (:data:`COMPARISON_COLUMNS`),
    ``results_long.csv`` (every declared measurement of every ended run, and what it had spent
    by then, in long form: trial, seed, arm, budget, metric, value; the final metrics at the
    last step) and ``budgets.csv`` (the comparisons per budget,
    :func:`bench.report.verdicts.compare_budgets`) into ``out``."""
    summary.to_csv(out / "summary.csv", index=False)
    runs = data.runs.set_index("run_id")
    finals = data.runs.melt(id_vars=["run_id", "generator_steps"],
                            value_vars=[c.key for c in data.columns], var_name="key",
                            value_name="value").dropna(subset=["value"])
    finals = finals.rename(columns={"generator_steps": "step"})
    # The declared measurements, and what was spent by the steps they were measured at (not
    # every diagnostic of every record: those stay in each run's metrics.jsonl and in MLflow).
    measured = {c.key for c in data.columns if c.role is not Role.COST} | {data.curve.key} | {
        spec.key for spec in RATIO_CHECK_METRICS}
    costs = {ELAPSED} | {spec.key for spec in BUDGET_COSTS}
    values = data.long[data.long.key.isin(measured)]
    at = set(zip(values.run_id, values.step, strict=True))
    spent = data.long[data.long.key.isin(costs)]
    spent = spent[[(r, step) in at for r, step in zip(spent.run_id, spent.step, strict=True)]]
    long = pd.concat([values[["run_id", "step", "key", "value"]],
                      spent[["run_id", "step", "key", "value"]], finals])
    long = long.drop_duplicates(["run_id", "step", "key"], keep="last")
    pd.DataFrame({"trial": runs.trial.reindex(long.run_id).to_numpy(),
                  "seed": runs.seed.reindex(long.run_id).to_numpy(),
                  "arm": runs.label.reindex(long.run_id).to_numpy(),
                  "budget": long.step.astype(int).to_numpy(), "metric": long.key.to_numpy(),
                  "value": long.value.to_numpy()}).sort_values(
        ["arm", "seed", "budget", "metric"]).to_csv(out / "results_long.csv", index=False)
    if budgets is not None:
        budgets.to_csv(out / "budgets.csv", index=False)
    metric_keys = [c.key for c in data.columns]
    data.runs.melt(id_vars=["run_id", "run_name", "label", "generator", "alpha", "seed",
                            "status"], value_vars=metric_keys, var_name="metric",
                   value_name="value").dropna(subset=["value"]).to_csv(out / "results.csv",
                                                                        index=False)
    comparison.to_csv(out / "comparison.csv", index=False)


def markdown_table(header: list[str], rows: list[list[str]], marks: list[list[bool]]) -> str:
    """The table in GitHub Markdown; marked cells in bold."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, mark in zip(rows, marks, strict=True):
        cells = [f"**{c}**" if m else c for c, m in zip(row, mark, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]], marks: list[list[bool]]) -> str:
    """The table in HTML, cells escaped; marked cells have the class ``best``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class='best'>{html.escape(c)}</td>" if m else
                         f"<td>{html.escape(c)}</td>" for c, m in zip(row, mark, strict=True))
        + "</tr>" for row, mark in zip(rows, marks, strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
