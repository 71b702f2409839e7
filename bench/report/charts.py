"""The report's charts (matplotlib, Agg backend), each saved as PNG and SVG, and their captions.

Every ``chart_*`` function draws one figure into the report directory and returns the PNG's
file name; :func:`draw_charts` draws all of a sweep's charts.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from bench.report.reading import SweepData  # noqa: E402
from bench.report.tables import RATIO_GATE_GAP, REFERENCE, fmt  # noqa: E402
from bench.report.verdicts import curve_bands, headline_by_budget, time_to_target  # noqa: E402
from dibregman.results import Status  # noqa: E402

CHART_CAPTIONS = {
    "curves": "A secondary curve over training (not the headline)",
    "final": "Final headline value per arm",
    "tradeoffs": "Trade-offs: precision vs recall, quality vs cost",
    "weights": "Weight and ratio diagnostics",
    "samples": "Samples per generator",
    "alpha": "Search: FD against α",
    "ratio_check": "Ratio estimate against the truth",
    "efficiency": "Sample efficiency: the headline against budget, with 95 % bands",
    "time_to_target": "Time to target",
    "agreement": "Image quality against prompt agreement (CLIP score), 95 % intervals",
}


def arm_colours(labels: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab20")
    return {label: cmap(i % 20) for i, label in enumerate(labels)}


def save_chart(fig: plt.Figure, out: Path, name: str) -> str:
    """``NAME.png`` and ``NAME.svg``, each the same bytes for the same figure on every build
    (no date in either, the SVG's element ids from a fixed salt), so a rebuilt report differs
    only where its numbers do."""
    fig.tight_layout()
    with plt.rc_context({"svg.hashsalt": "dibregman"}):
        fig.savefig(out / f"{name}.png", dpi=120, metadata={"Software": None})
        fig.savefig(out / f"{name}.svg", dpi=120, metadata={"Date": None})
    plt.close(fig)
    return f"{name}.png"


def chart_curves(data: SweepData, labels: list[str], out: Path) -> str:
    """The curve metric over generator steps: median over seeds, min-max band."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colours = arm_colours(labels)
    curves = data.histories[data.histories.key == data.curve.key]
    for label in labels:
        table = curves[curves.label == label].pivot_table(index="step", columns="seed",
                                                          values="value")
        if table.empty:
            continue
        ax.plot(table.index, table.median(axis=1), color=colours[label], label=label, lw=1.4,
                ls="-" if label == REFERENCE else "--" if "α" in label else "-")
        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1),
                        color=colours[label], alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("generator step")
    ax.set_ylabel(f"{data.curve.label} (median over seeds, band min–max)")
    ax.set_title(f"{data.curve.label} ({data.curve.direction} is better) during distillation")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    return save_chart(fig, out, "curves")


def chart_final(data: SweepData, summary: pd.DataFrame, labels: list[str], out: Path) -> str:
    """The final headline metric per generator, mean ± std over seeds, seeds as dots."""
    top = data.headline
    key = top.key
    stats = summary[summary.metric == key].set_index("label")
    shown = [label for label in labels if label in stats.index]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(shown) + 1.5))
    y = np.arange(len(shown))
    means = stats.loc[shown, "mean"].to_numpy()
    stds = np.nan_to_num(stats.loc[shown, "std"].to_numpy())
    colours = ["tab:red" if label == REFERENCE else "tab:blue" for label in shown]
    ax.barh(y, means, xerr=stds, color=colours, alpha=0.6, capsize=3)
    finished = data.runs[data.runs.status == Status.FINISHED]
    for i, label in enumerate(shown):
        values = finished[finished.label == label][key]
        ax.scatter(values, np.full(len(values), i), color="k", s=8, zorder=3)
    ax.set_yticks(y, shown, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"{top.label}: mean ± std over seeds (dots: seeds)")
    ax.set_title(f"Final {top.label} ({top.direction} is better; red: reverse KL = DMD)")
    return save_chart(fig, out, "final")


def chart_tradeoffs(data: SweepData, summary: pd.DataFrame, labels: list[str], out: Path) -> str:
    """Precision vs recall, and the headline metric vs run time, one point per generator
    (mean ± std); the precision panel is left empty when none is declared."""
    stats = summary.set_index(["label", "metric"])
    colours = arm_colours(labels)
    precision, recall = data.column("precision"), data.column("recall")
    time_ = data.column("wall_time")
    pairs = [(recall, precision), (time_, data.headline)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (x, y) in zip(axes, pairs, strict=True):
        if x is None or y is None:
            continue
        for label in labels:
            if (label, x.key) not in stats.index:
                continue
            ax.errorbar(stats["mean"][(label, x.key)], stats["mean"][(label, y.key)],
                        xerr=np.nan_to_num(stats["std"][(label, x.key)]),
                        yerr=np.nan_to_num(stats["std"][(label, y.key)]),
                        fmt="o", color=colours[label], label=label, capsize=2, ms=5)
        ax.set_xlabel(x.label)
        ax.set_ylabel(y.label)
    axes[0].set_title("Mode seeking vs covering: precision against recall")
    axes[1].set_title("Quality against cost")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7, ncol=2)
    return save_chart(fig, out, "tradeoffs")


def chart_weights(data: SweepData, labels: list[str], out: Path) -> str:
    """Weight and ratio diagnostics over training (median over seeds)."""
    panels = [("weight_max", "max w / mean w", "weight_mean"),
              ("weight_min", "min w / mean w", "weight_mean"),
              ("ratio_q95", "r, 95th percentile", None),
              ("ratio_q05", "r, 5th percentile", None)]
    colours = arm_colours(labels)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    hist = data.histories
    for ax, (key, title, divide_by) in zip(axes.ravel(), panels, strict=True):
        for label in labels:
            part = hist[(hist.label == label) & (hist.key == key)]
            if part.empty:
                continue
            table = part.pivot_table(index="step", columns="seed", values="value")
            if divide_by:
                denominator = hist[(hist.label == label) & (hist.key == divide_by)].pivot_table(
                    index="step", columns="seed", values="value")
                table = table / denominator
            ax.plot(table.index, table.median(axis=1), color=colours[label], label=label, lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("generator step")
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.suptitle("Di-Bregman weights w = h''(r) r before batch normalisation, and the ratio r")
    return save_chart(fig, out, "weights")


def chart_samples(data: SweepData, client: MlflowClient, labels: list[str], out: Path) -> str:
    """Each generator's samples picture (its lowest seed): scatter over the teacher's density
    for mixture teachers, a sample grid for image teachers."""
    pictures = []
    with tempfile.TemporaryDirectory() as downloads:
        for label in labels:
            runs = data.runs[data.runs.label == label].sort_values("seed")
            for row in runs.itertuples():
                try:
                    path = client.download_artifacts(row.run_id, "samples.png", downloads)
                except Exception:  # noqa: BLE001 - a run without its picture is skipped
                    continue
                # the picture names its arm, seed and step; the panel only the arm and status
                pictures.append((label if row.status == Status.FINISHED
                                 else f"{label} ({row.status})", plt.imread(path)))
                break
    columns = min(5, max(1, len(pictures)))
    rows = max(1, math.ceil(len(pictures) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image) in zip(axes.ravel(), pictures, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    fig.suptitle("Student samples (one seed per generator)")
    return save_chart(fig, out, "samples")


def chart_efficiency(data: SweepData, bands: pd.DataFrame, labels: list[str],
                     teacher: dict[str, float], out: Path) -> str:
    """The headline against budget per arm: the mean over seeds and its stratified bootstrap
    95 % band (:func:`bench.report.verdicts.curve_bands`), the teacher's own value dashed."""
    top = data.headline
    colours = arm_colours(labels)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label in labels:
        part = bands[bands.label == label]
        if part.empty:
            continue
        width = 2.4 if label == REFERENCE else 1.3
        ax.plot(part.budget, part["mean"], marker="o", ms=3, lw=width, color=colours[label],
                label=label)
        ax.fill_between(part.budget, part.low, part.high, color=colours[label], alpha=0.15,
                        lw=0)
    if top.key in teacher:
        ax.axhline(teacher[top.key], color="k", ls="--", lw=1, label="teacher (Heun)")
    if len(bands) and (bands[["mean", "low", "high"]] > 0).all().all():
        ax.set_yscale("log")
    ax.set_xlabel("budget (generator steps)")
    ax.set_ylabel(f"{top.label}: mean over seeds, 95 % band")
    ax.set_title(f"Sample efficiency: {top.label} ({top.direction} is better) against budget")
    ax.legend(fontsize=7, ncol=2)
    return save_chart(fig, out, "efficiency")


def chart_time_to_target(data: SweepData, frame: pd.DataFrame, reached: pd.Series,
                         budgets: list[int], labels: list[str], out: Path) -> str:
    """Per arm, every run's first budget reaching the target (dots; censored runs at the
    right, beyond the last budget) and the median (a bar)."""
    shown = [label for label in labels if label in set(reached.index.get_level_values(0))]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(shown) + 1.6))
    positions = [*budgets, budgets[-1] * 1.25]
    for i, label in enumerate(shown):
        values = reached.loc[label].dropna().astype(int).to_numpy()
        x = np.array([positions[v] for v in values], dtype=float)
        jitter = (np.arange(len(x)) % 5 - 2) * 0.06
        ax.scatter(x, i + jitter, s=10, color="tab:red" if label == REFERENCE else "tab:blue")
        if len(x):
            ax.plot([np.median(x)] * 2, [i - 0.3, i + 0.3], color="k", lw=2)
    ax.axvline(budgets[-1] * 1.12, color="grey", lw=0.8, ls=":")
    ax.set_xticks(positions, [*map(str, budgets), "never"])
    ax.set_yticks(range(len(shown)), shown, fontsize=8)
    ax.invert_yaxis()
    target = frame[frame.budget == "time to target"].target
    goal = f" ({fmt(target.iloc[0])})" if len(target) else ""
    ax.set_xlabel(f"first budget at which {data.headline.label} reaches the target{goal}")
    ax.set_title("Time to target (dots: seeds; bar: median)")
    return save_chart(fig, out, "time_to_target")


def chart_ratio_check(data: SweepData, out: Path) -> str:
    """The live ratio check over training, pooled over the fitted arms' runs: per noise level,
    the estimate's accuracy shortfall against the true ratio's rule, and the correlation of the
    clipped log-ratios (means over runs)."""
    checks = data.ratio_checks[data.ratio_checks.estimator != "oracle"].copy()
    checks["gap"] = checks.truth_accuracy - checks.accuracy
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    levels = sorted(checks.sigma.unique())
    for i, sigma in enumerate(levels):
        at = checks[checks.sigma == sigma].groupby("step")[["gap", "correlation"]].mean()
        colour = cmap(i / max(1, len(levels) - 1))
        for ax, column in zip(axes, ("gap", "correlation"), strict=True):
            ax.plot(at.index, at[column], color=colour, lw=1.3, label=f"σ = {sigma:.3g}")
    axes[0].axhline(RATIO_GATE_GAP, color="k", ls=":", lw=1, label="good-enough bound")
    axes[0].set_ylabel("true ratio's accuracy − estimate's")
    axes[1].set_ylabel("correlation of clipped log r")
    for ax in axes:
        ax.set_xlabel("generator step")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Ratio estimate against the truth (mean over runs)")
    return save_chart(fig, out, "ratio_check")


def chart_search(data: SweepData, out: Path) -> str:
    """A search sweep's final headline metric against the sampled alpha (colour: learning
    rate)."""
    finished = data.runs[data.runs.status == Status.FINISHED]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    points = ax.scatter(finished.alpha, finished[data.headline.key], c=np.log10(finished.lr),
                        cmap="viridis", s=40)
    fig.colorbar(points, label="log10 learning rate")
    ax.set_yscale("log")
    ax.set_xlabel("α (Amari α-divergence generator)")
    ax.set_ylabel(data.headline.label)
    ax.set_title(f"Search: final {data.headline.label} against α")
    return save_chart(fig, out, "alpha")


def draw_charts(data: SweepData, summary: pd.DataFrame, labels: list[str], client: MlflowClient,
                out: Path, budgets: pd.DataFrame, teacher: dict[str, float]) -> list[str]:
    """Every chart of the sweep into ``out`` (the alpha chart only for a search sweep).

    Args:
        data: the sweep.
        summary: its per-label summary (:func:`bench.report.tables.summarise`).
        labels: the labels in display order (:func:`bench.report.tables.order_labels`).
        client: the MLflow client, for the runs' samples pictures.
        out: the report directory.
        budgets: the comparisons per budget (:func:`bench.report.verdicts.compare_budgets`).
        teacher: the teacher's own final metrics (empty when unavailable).

    Returns:
        The charts' PNG file names, in page order: the headline's (against budget, final,
        time to target) first.
    """
    charts = [chart_efficiency(data, curve_bands(data, labels), labels, teacher, out),
              chart_final(data, summary, labels, out)]
    wide = headline_by_budget(data)
    if len(wide.columns) >= 2 and REFERENCE in wide.index.get_level_values(0):
        reached, _ = time_to_target(wide, REFERENCE, data.target, data.headline.direction)
        charts.append(chart_time_to_target(data, budgets, reached, list(wide.columns), labels,
                                           out))
    if not data.ratio_checks.empty and (data.ratio_checks.estimator != "oracle").any():
        charts.append(chart_ratio_check(data, out))
    charts += [chart_curves(data, labels, out), chart_tradeoffs(data, summary, labels, out),
               chart_weights(data, labels, out), chart_samples(data, client, labels, out)]
    if data.is_search:
        charts.append(chart_search(data, out))
    return charts
