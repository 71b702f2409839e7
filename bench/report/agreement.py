"""Quality against prompt agreement: the report's section for text-to-image sweeps.

A text-to-image student is judged on two axes that guidance trades against each other: image
quality (the headline, an FD) and agreement with its prompt (the CLIP score, and the share of
samples a domain classifier reads as the digit the prompt names). For every arm the section
gives each with its bootstrap interval over seeds, and the CLIP score's paired comparison with
the reference (Holm over the arms, as the headline's); the chart puts every arm in the plane of
the two, with the teacher's own point, so a generator that buys quality with agreement (or an
arm at another guidance scale) shows where it sits.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.report.charts import arm_colours, save_chart
from bench.report.reading import SweepData
from bench.report.tables import CI, NO_REFERENCE, REFERENCE, Table, compare, fmt, fmt_ci, fmt_p
from dibregman.results import MetricSpec

AGREEMENT = "clip_score"  # the metric that declares a text-to-image sweep
ACCURACY = "class_accuracy"


def agreement_columns(data: SweepData) -> list[MetricSpec]:
    """The declared prompt-agreement metrics (CLIP score, then class accuracy); empty for a
    sweep that is not text-to-image."""
    clip = data.column(AGREEMENT)
    if clip is None:
        return []
    accuracy = data.column(ACCURACY)
    return [clip, *([accuracy] if accuracy is not None else [])]


def agreement_comparisons(data: SweepData, labels: list[str]) -> dict[str, pd.DataFrame]:
    """Per metric key (the headline and each agreement metric): every arm's mean with its
    interval and its paired comparison with the reference (:func:`bench.report.tables.compare`)."""
    metrics = [data.headline, *agreement_columns(data)]
    return {m.key: compare(data, labels, metric=m) for m in metrics}


def agreement_table(data: SweepData, comparisons: dict[str, pd.DataFrame]) -> Table:
    """Arm rows: the headline's and each agreement metric's mean with its interval, and the
    CLIP score's ratio to the reference with its interval, Holm-adjusted p and verdict."""
    metrics = [data.headline, *agreement_columns(data)]
    clip = agreement_columns(data)[0]
    header = ["generator", "seeds"]
    for m in metrics:
        header += [m.label, CI]
    header += [f"{clip.label} vs {REFERENCE}", CI, "p (Holm)", "verdict"]
    frames = {key: frame.set_index("label") for key, frame in comparisons.items()}
    rows = []
    for label in comparisons[data.headline.key].label:
        row = [label, str(int(frames[data.headline.key].n_seeds[label]))]
        for m in metrics:
            r = frames[m.key].loc[label]
            row += [fmt(r["mean"]), fmt_ci(r.ci_low, r.ci_high)]
        c = frames[clip.key].loc[label]
        compared = c.verdict not in (NO_REFERENCE, "reference")
        row += [fmt(c.estimate) if compared else "–",
                fmt_ci(c.estimate_ci_low, c.estimate_ci_high) if compared else "–",
                fmt_p(c.p_holm) if compared else "–", c.verdict]
        rows.append(row)
    return header, rows, [[False] * len(header) for _ in rows]


def agreement_lines(data: SweepData, comparisons: dict[str, pd.DataFrame],
                    teacher: dict[str, float]) -> list[str]:
    """The section's words: what the axes are, the teacher's own values, and which arms differ
    from the reference in prompt agreement (Holm-adjusted), or that none does."""
    clip = agreement_columns(data)[0]
    lines = [f"Image quality ({data.headline.label}, {data.headline.direction} is better) "
             f"against prompt agreement ({clip.label}, higher is better): guidance buys "
             f"agreement, past a point at the price of quality. Each value is the mean over "
             f"seeds with its bootstrap {CI}; the CLIP score's comparison with {REFERENCE} is "
             f"paired by seed, Holm-adjusted over the arms."]
    if clip.key in teacher and data.headline.key in teacher:
        lines.append(f"The teacher's own samples: {data.headline.label} "
                     f"{fmt(teacher[data.headline.key])}, {clip.label} "
                     f"{fmt(teacher[clip.key])}.")
    frame = comparisons[clip.key]
    differ = frame[frame.verdict.isin(["better", "worse"])]
    if (frame.verdict == NO_REFERENCE).all():
        lines.append(f"No {REFERENCE} arm: nothing is compared.")
    elif differ.empty:
        lines.append(f"No arm differs detectably from {REFERENCE} in {clip.label}.")
    else:
        lines.append(f"{clip.label} differs from {REFERENCE}: " + "; ".join(
            f"{row.label} {row.verdict} (×{fmt(row.estimate)}, p {fmt_p(row.p_holm)})"
            for row in differ.itertuples()) + ".")
    return lines


def chart_agreement(data: SweepData, comparisons: dict[str, pd.DataFrame], labels: list[str],
                    teacher: dict[str, float], out: Path) -> str:
    """Every arm at (CLIP score, headline) with both bootstrap intervals as error bars, the
    teacher as a star."""
    clip = agreement_columns(data)[0]
    quality = comparisons[data.headline.key].set_index("label")
    agreement = comparisons[clip.key].set_index("label")
    colours = arm_colours(labels)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for label in labels:
        x, y = agreement.loc[label], quality.loc[label]
        if not (np.isfinite(x["mean"]) and np.isfinite(y["mean"])):
            continue
        xerr = [[max(x["mean"] - x.ci_low, 0)], [max(x.ci_high - x["mean"], 0)]] \
            if np.isfinite(x.ci_low) else None
        yerr = [[max(y["mean"] - y.ci_low, 0)], [max(y.ci_high - y["mean"], 0)]] \
            if np.isfinite(y.ci_low) else None
        ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=2,
                    color=colours[label], label=label)
    if clip.key in teacher and data.headline.key in teacher:
        ax.plot(teacher[clip.key], teacher[data.headline.key], "*", ms=14, color="black",
                label="teacher")
    ax.set_xlabel(f"{clip.label} (higher is better)")
    ax.set_ylabel(f"{data.headline.label} ({data.headline.direction} is better)")
    ax.set_title(f"Quality against prompt agreement (means, {CI})")
    ax.legend(fontsize=7, ncol=2)
    return save_chart(fig, out, "agreement")
