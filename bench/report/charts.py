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
from bench.report.tables import RATIO_GATE_GAP, REFERENCE  # noqa: E402
from dibregman.results import Status  # noqa: E402

CHART_CAPTIONS = {
    "curves": "FD to the teacher over training",
    "final_fd": "Final FD per generator",
    "tradeoffs": "Trade-offs: precision vs recall, quality vs cost",
    "weights": "Weight and ratio diagnostics",
    "samples": "Samples per generator",
    "alpha": "Search: FD against α",
    "ratio_check": "Ratio estimate against the truth",
}


def _colours(labels: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab20")
    return {label: cmap(i % 20) for i, label in enumerate(labels)}


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(out / f"{name}.{suffix}", dpi=120)
    plt.close(fig)
    return f"{name}.png"


def chart_curves(data: SweepData, labels: list[str], out: Path) -> str:
    """The curve metric over generator steps: median over seeds, min-max band."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colours = _colours(labels)
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
    return _save(fig, out, "curves")


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
    return _save(fig, out, "final_fd")


def chart_tradeoffs(data: SweepData, summary: pd.DataFrame, labels: list[str], out: Path) -> str:
    """Precision vs recall, and the headline metric vs run time, one point per generator
    (mean ± std); the precision panel is left empty when none is declared."""
    stats = summary.set_index(["label", "metric"])
    colours = _colours(labels)
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
    return _save(fig, out, "tradeoffs")


def chart_weights(data: SweepData, labels: list[str], out: Path) -> str:
    """Weight and ratio diagnostics over training (median over seeds)."""
    panels = [("weight_max", "max w / mean w", "weight_mean"),
              ("weight_min", "min w / mean w", "weight_mean"),
              ("ratio_q95", "r, 95th percentile", None),
              ("ratio_q05", "r, 5th percentile", None)]
    colours = _colours(labels)
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
    return _save(fig, out, "weights")


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
                pictures.append((f"{label} (seed {row.seed}, {row.status})", plt.imread(path)))
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
    return _save(fig, out, "samples")


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
    return _save(fig, out, "ratio_check")


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
    return _save(fig, out, "alpha")


def draw_charts(data: SweepData, summary: pd.DataFrame, labels: list[str], client: MlflowClient,
                out: Path) -> list[str]:
    """Every chart of the sweep into ``out`` (the alpha chart only for a search sweep).

    Args:
        data: the sweep.
        summary: its per-label summary (:func:`bench.report.tables.summarise`).
        labels: the labels in display order (:func:`bench.report.tables.order_labels`).
        client: the MLflow client, for the runs' samples pictures.
        out: the report directory.

    Returns:
        The charts' PNG file names, in page order.
    """
    charts = [chart_curves(data, labels, out), chart_final(data, summary, labels, out),
              chart_tradeoffs(data, summary, labels, out), chart_weights(data, labels, out),
              chart_samples(data, client, labels, out)]
    if not data.ratio_checks.empty:
        charts.insert(0, chart_ratio_check(data, out))
    if data.is_search:
        charts.append(chart_search(data, out))
    return charts
