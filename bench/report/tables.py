"""The report's numbers: per-generator summaries over seeds, the comparison table, the ranking,
the CSV files, and the table rendered as Markdown or HTML.

Every number in the tables is a mean ± standard deviation over seeds of the finished runs'
final metrics.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.reading import SweepData
from dibregman.results import Direction, Role, Status

REFERENCE = "reverse_kl"

Table = tuple[list[str], list[list[str]], list[list[bool]]]
"""Header, rows and a same-shaped "best in column" mask."""


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


def comparison_table(data: SweepData, summary: pd.DataFrame) -> Table:
    """Header, rows and a same-shaped "best in column" mask of the main table."""
    stats = summary.set_index(["label", "metric"])
    counts = data.runs.groupby("label").status.value_counts().unstack(fill_value=0)
    reference = REFERENCE if REFERENCE in set(data.runs.label) else None
    top_key = data.headline.key
    ended = [str(Status.DIVERGED), str(Status.FAILED)]
    header = ["generator", "seeds", *[c.label for c in data.columns], *ended]
    if reference:
        header.append(f"{data.headline.label} / {reference}")
    labels = order_labels(data, summary)
    best = {}
    for column in data.columns:
        means = [stats["mean"].get((label, column.key), np.nan) for label in labels]
        finite = [m for m in means if np.isfinite(m)]
        best[column.key] = (min(finite) if column.direction is Direction.LOWER
                            else max(finite)) if finite else None
    rows, marks = [], []
    for label in labels:
        n = int(stats["n"].get((label, top_key), 0))
        row, mark = [label, str(n)], [False, False]
        for column in data.columns:
            mean = stats["mean"].get((label, column.key), np.nan)
            std = stats["std"].get((label, column.key), np.nan)
            row.append(fmt(mean) + (f" ± {fmt(std)}" if np.isfinite(std) else ""))
            mark.append(best[column.key] is not None and mean == best[column.key])
        row += [str(counts.get(status, {}).get(label, 0)) for status in ended]
        mark += [False, False]
        if reference:
            row.append(_relative(stats, label, reference, top_key))
            mark.append(False)
        rows.append(row)
        marks.append(mark)
    return header, rows, marks


def _relative(stats: pd.DataFrame, label: str, reference: str, key: str) -> str:
    """``mean / mean_ref``, starred when the gap exceeds the two seed spreads added."""
    mean, ref = stats["mean"].get((label, key), np.nan), stats["mean"].get((reference, key), np.nan)
    if not (np.isfinite(mean) and np.isfinite(ref)) or ref == 0:
        return "–"
    if label == reference:
        return "1"
    spread = np.nan_to_num(stats["std"].get((label, key), np.nan)) + np.nan_to_num(
        stats["std"].get((reference, key), np.nan))
    significant = abs(mean - ref) > spread and spread > 0
    return f"{mean / ref:.3g}" + (" *" if significant else "")


def ranking(data: SweepData, summary: pd.DataFrame) -> list[str]:
    """One line per quality column: the best and worst generator by mean."""
    lines = []
    stats = summary.pivot(index="label", columns="metric", values="mean")
    for column in data.columns:
        if column.role is Role.COST:
            continue
        if column.key not in stats or stats[column.key].dropna().empty:
            continue
        ranked = stats[column.key].dropna().sort_values(
            ascending=column.direction is Direction.LOWER)
        lines.append(f"{column.label}: best {ranked.index[0]} ({fmt(ranked.iloc[0])}), "
                     f"worst {ranked.index[-1]} ({fmt(ranked.iloc[-1])})")
    return lines


def write_csvs(data: SweepData, summary: pd.DataFrame, out: Path) -> None:
    """``summary.csv`` (per label and metric: mean, std, n) and ``results.csv`` (one row per
    run and metric that has a value) into ``out``."""
    summary.to_csv(out / "summary.csv", index=False)
    metric_keys = [c.key for c in data.columns]
    data.runs.melt(id_vars=["run_id", "run_name", "label", "generator", "alpha", "seed",
                            "status"], value_vars=metric_keys, var_name="metric",
                   value_name="value").dropna(subset=["value"]).to_csv(out / "results.csv",
                                                                        index=False)


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
