"""``bench report``: a sweep's runs from MLflow -> tables, charts and pages in ``reports/<sweep>/``.

The sweep's child runs are read with ``mlflow.search_runs`` and their metric histories with
``MlflowClient.get_metric_history`` into tidy pandas frames; every number in the tables is a
mean ± standard deviation over seeds of those runs' final metrics.

Files written: ``README.md`` (renders on GitHub), ``index.html`` (self-contained, images
embedded), ``summary.csv`` (per generator and metric: mean, std, n), ``results.csv`` (one row per
run and metric), ``provenance.json``, and each chart as PNG and SVG.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from bench.tracking import EXPERIMENT_PATH_TAG, PARENT_TAG, child_runs, open_store  # noqa: E402

# Artifact downloads here are single small files: no progress bar per file.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from dibregman.bregman import is_parametric  # noqa: E402
from dibregman.run import PROVENANCE_FILE, git_revision  # noqa: E402

REFERENCE = "reverse_kl"
FORMATS = ("md", "html")
PACKAGES = ("dibregman", "torch", "ray", "mlflow", "optuna", "pandas", "matplotlib", "clean-fid",
            "numpy")


class ReportError(ValueError):
    """No such sweep, or nothing to report; the message lists the sweeps in the store."""


@dataclass(frozen=True)
class Column:
    """A table column: display name, MLflow metric key, which direction is better, and its role
    in the charts (``fd``, ``precision``, ``recall``, ``time``, or ``""``)."""

    name: str
    key: str
    better: str  # "min" or "max"
    role: str = ""


@dataclass
class SweepData:
    """A sweep read back from MLflow.

    Attributes:
        name: sweep name; parent: the parent run; runs: one row per child run (label,
        generator, alpha, seed, status, final metrics); histories: tidy (run_id, label, seed,
        key, step, value); columns: the quality and cost columns; curve_key: the metric logged
        over training; tracking_uri: the store.
    """

    name: str
    parent: Any
    runs: pd.DataFrame
    histories: pd.DataFrame
    columns: list[Column]
    curve_key: str
    tracking_uri: str

    @property
    def is_search(self) -> bool:
        return self.parent.data.tags.get("sweep.kind") == "search"


# -- reading ----------------------------------------------------------------------------------


def sweep_parents(client: MlflowClient) -> list[Any]:
    """Every sweep parent run in the store, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return client.search_runs(experiments, f"tags.`{PARENT_TAG}` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=10_000)


def find_parent(client: MlflowClient, sweep: str | None) -> Any:
    """The newest parent run of ``sweep`` (of any sweep when None) that has child runs."""
    parents = sweep_parents(client)
    names = sorted({p.data.tags.get("sweep.name", "") for p in parents})
    listing = f"sweeps in the store: {', '.join(names)}" if names else "the store has no sweeps"
    matching = [p for p in parents if sweep is None or p.data.tags.get("sweep.name") == sweep]
    if not matching:
        raise ReportError(f"no sweep named {sweep!r}; {listing}")
    for parent in matching:
        if child_runs(client, parent):
            return parent
    raise ReportError(f"sweep {sweep or matching[0].data.tags.get('sweep.name')!r} has no "
                      f"trials yet; {listing}")


def generator_label(generator: str, alpha: str | float) -> str:
    """``pearson``; ``alpha α=0.5`` for the parametric families."""
    return f"{generator} α={float(alpha):g}" if is_parametric(generator) else generator


def _columns(params: dict[str, str]) -> tuple[list[Column], str]:
    """The table's columns and the curve metric for a sweep's teacher kind (from its params)."""
    n_final, n_curve = params["eval.n_final"], params["eval.n_curve"]
    k, n_pr, n_mmd = params["eval.pr_k"], params["eval.n_pr"], params["eval.n_mmd"]
    cost = [Column("run time s", "run_time_s", "min", "time"),
            Column("steps/s", "steps_per_s", "max")]
    if params["teacher"] == "image":
        n_pr = min(int(n_pr), int(n_final))
        fid_n = min(int(params["eval.fid_n"]), int(n_final))
        fid = [Column(f"FID (n={fid_n})", f"fid_n{fid_n}", "min")] if fid_n else []
        return [
            Column(f"FD classifier (n={n_final})", f"fd_cls_n{n_final}", "min", "fd"),
            *fid,
            Column(f"precision (k={k}, n={n_pr})", f"precision_cls_k{k}_n{n_pr}", "max",
                   "precision"),
            Column(f"recall (k={k}, n={n_pr})", f"recall_cls_k{k}_n{n_pr}", "max", "recall"),
            Column("class coverage", f"class_coverage_n{n_final}", "max"),
            *cost,
        ], f"fd_cls_n{n_curve}"
    return [
        Column(f"FD (n={n_final})", f"fd_n{n_final}", "min", "fd"),
        Column(f"NLL (n={n_final})", f"nll_n{n_final}", "min"),
        Column("modes covered", f"modes_covered_n{n_final}", "max"),
        Column(f"precision (k={k}, n={n_pr})", f"precision_k{k}_n{n_pr}", "max", "precision"),
        Column(f"recall (k={k}, n={n_pr})", f"recall_k{k}_n{n_pr}", "max", "recall"),
        Column(f"MMD² (n={n_mmd})", f"mmd_n{n_mmd}", "min"),
        *cost,
    ], f"fd_n{n_curve}"


def load_sweep(client: MlflowClient, parent: Any, tracking_uri: str) -> SweepData:
    """Children of ``parent`` as a frame, plus their metric histories."""
    runs = child_runs(client, parent)
    rows = []
    for run in runs:
        params, tags = run.data.params, run.data.tags
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "generator": params["generator.name"],
            "alpha": float(params["generator.alpha"]),
            "lr": float(params["train.lr"]),
            "seed": int(params["seed"]),
            "status": tags.get("status", "running"),
            "mlflow_status": run.info.status,
            "generator_steps": int(params["train.generator_steps"]),
            **run.data.metrics,
        })
    frame = pd.DataFrame(rows)
    if parent.data.tags.get("sweep.kind") == "search":
        frame["label"] = frame["run_name"].str.replace(r"-s\d+$", "", regex=True)
    else:
        frame["label"] = [generator_label(g, a) for g, a in zip(frame.generator, frame.alpha,
                                                                strict=True)]
    frame["steps_per_s"] = frame["generator_steps"] / frame.get("run_time_s", np.nan)

    columns, curve_key = _columns(runs[0].data.params)
    history_keys = (curve_key, "weight_mean", "weight_max", "weight_min", "ratio_q05",
                    "ratio_q50", "ratio_q95", "ratio_accuracy")
    history_rows = []
    for row in frame.itertuples():
        for key in history_keys:
            for m in client.get_metric_history(row.run_id, key):
                history_rows.append((row.run_id, row.label, row.seed, key, m.step, m.value))
    histories = pd.DataFrame(history_rows,
                             columns=["run_id", "label", "seed", "key", "step", "value"])
    for column in columns:
        if column.key not in frame:
            frame[column.key] = np.nan
    return SweepData(parent.data.tags.get("sweep.name", ""), parent, frame, histories, columns,
                     curve_key, tracking_uri)


# -- tables -----------------------------------------------------------------------------------


def summarise(data: SweepData) -> pd.DataFrame:
    """Per label and column: mean, std (ddof=1) and n over the finished runs' seeds.

    Diverged and failed runs have no final metrics; they are counted, not averaged.
    """
    finished = data.runs[data.runs.status == "finished"]
    rows = []
    for label, group in finished.groupby("label", sort=False):
        for column in data.columns:
            values = group[column.key].dropna()
            rows.append({"label": label, "metric": column.key, "mean": values.mean(),
                         "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                         "n": len(values)})
    return pd.DataFrame(rows, columns=["label", "metric", "mean", "std", "n"])


def order_labels(data: SweepData, summary: pd.DataFrame) -> list[str]:
    """Labels ranked by mean final FD (best first); labels with no finished run last."""
    fd = summary[summary.metric == data.columns[0].key].set_index("label")["mean"]
    labels = list(dict.fromkeys(data.runs.label))
    return sorted(labels, key=lambda label: (fd.get(label, math.inf), label))


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4g}"


def comparison_table(data: SweepData, summary: pd.DataFrame) -> tuple[list[str], list[list[str]],
                                                                      list[list[bool]]]:
    """Header, rows and a same-shaped "best in column" mask of the main table."""
    stats = summary.set_index(["label", "metric"])
    counts = data.runs.groupby("label").status.value_counts().unstack(fill_value=0)
    reference = REFERENCE if REFERENCE in set(data.runs.label) else None
    fd_key = data.columns[0].key
    header = ["generator", "seeds", *[c.name for c in data.columns], "diverged", "failed"]
    if reference:
        header.append(f"FD / {reference}")
    labels = order_labels(data, summary)
    best = {}
    for column in data.columns:
        means = [stats["mean"].get((label, column.key), np.nan) for label in labels]
        finite = [m for m in means if np.isfinite(m)]
        best[column.key] = (min(finite) if column.better == "min" else max(finite)) if finite \
            else None
    rows, marks = [], []
    for label in labels:
        n = int(stats["n"].get((label, fd_key), 0))
        row, mark = [label, str(n)], [False, False]
        for column in data.columns:
            mean = stats["mean"].get((label, column.key), np.nan)
            std = stats["std"].get((label, column.key), np.nan)
            row.append(_fmt(mean) + (f" ± {_fmt(std)}" if np.isfinite(std) else ""))
            mark.append(best[column.key] is not None and mean == best[column.key])
        row += [str(counts.get("diverged", {}).get(label, 0)),
                str(counts.get("failed", {}).get(label, 0))]
        mark += [False, False]
        if reference:
            row.append(_relative(stats, label, reference, fd_key))
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
        if column.key in ("run_time_s", "steps_per_s"):
            continue
        if column.key not in stats or stats[column.key].dropna().empty:
            continue
        ranked = stats[column.key].dropna().sort_values(ascending=column.better == "min")
        lines.append(f"{column.name}: best {ranked.index[0]} ({_fmt(ranked.iloc[0])}), "
                     f"worst {ranked.index[-1]} ({_fmt(ranked.iloc[-1])})")
    return lines


# -- charts -----------------------------------------------------------------------------------


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
    curves = data.histories[data.histories.key == data.curve_key]
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
    ax.set_ylabel(f"{data.curve_key} (median over seeds, band min–max)")
    ax.set_title("Fréchet distance to the teacher during distillation")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    return _save(fig, out, "curves")


def chart_final(data: SweepData, summary: pd.DataFrame, labels: list[str], out: Path) -> str:
    """Final FD per generator, mean ± std over seeds, seeds as dots."""
    key = data.columns[0].key
    stats = summary[summary.metric == key].set_index("label")
    shown = [label for label in labels if label in stats.index]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(shown) + 1.5))
    y = np.arange(len(shown))
    means = stats.loc[shown, "mean"].to_numpy()
    stds = np.nan_to_num(stats.loc[shown, "std"].to_numpy())
    colours = ["tab:red" if label == REFERENCE else "tab:blue" for label in shown]
    ax.barh(y, means, xerr=stds, color=colours, alpha=0.6, capsize=3)
    finished = data.runs[data.runs.status == "finished"]
    for i, label in enumerate(shown):
        values = finished[finished.label == label][key]
        ax.scatter(values, np.full(len(values), i), color="k", s=8, zorder=3)
    ax.set_yticks(y, shown, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"{data.columns[0].name}: mean ± std over seeds (dots: seeds)")
    ax.set_title("Final Fréchet distance (lower is better; red: reverse KL = DMD)")
    return _save(fig, out, "final_fd")


def chart_tradeoffs(data: SweepData, summary: pd.DataFrame, labels: list[str], out: Path) -> str:
    """Precision vs recall, and FD vs run time, one point per generator (mean ± std)."""
    stats = summary.set_index(["label", "metric"])
    colours = _colours(labels)
    role = {c.role: c for c in data.columns}
    fd, precision, recall, time_ = role["fd"], role["precision"], role["recall"], role["time"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (x, y) in zip(axes, [(recall, precision), (time_, fd)], strict=True):
        for label in labels:
            if (label, x.key) not in stats.index:
                continue
            ax.errorbar(stats["mean"][(label, x.key)], stats["mean"][(label, y.key)],
                        xerr=np.nan_to_num(stats["std"][(label, x.key)]),
                        yerr=np.nan_to_num(stats["std"][(label, y.key)]),
                        fmt="o", color=colours[label], label=label, capsize=2, ms=5)
        ax.set_xlabel(x.name)
        ax.set_ylabel(y.name)
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


def chart_search(data: SweepData, out: Path) -> str:
    """A search sweep's final FD against the sampled alpha (colour: learning rate)."""
    finished = data.runs[data.runs.status == "finished"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    points = ax.scatter(finished.alpha, finished[data.columns[0].key], c=np.log10(finished.lr),
                        cmap="viridis", s=40)
    fig.colorbar(points, label="log10 learning rate")
    ax.set_yscale("log")
    ax.set_xlabel("α (Amari α-divergence generator)")
    ax.set_ylabel(data.columns[0].name)
    ax.set_title("Search: final FD against α")
    return _save(fig, out, "alpha")


# -- pages ------------------------------------------------------------------------------------


def provenance(data: SweepData, client: MlflowClient) -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    tags = data.parent.data.tags
    first = client.get_run(data.runs.run_id.iloc[0]).data.params
    spec_text = Path(client.download_artifacts(data.parent.info.run_id, "spec.yaml")).read_text()
    run_provenance = client.download_artifacts(data.runs.run_id.iloc[0], PROVENANCE_FILE)
    run_protocol = json.loads(Path(run_provenance).read_text())["metric_protocol"]
    return {
        "sweep": data.name,
        "spec_hash": tags.get("sweep.spec_hash"),
        "spec_path": tags.get("sweep.spec_path"),
        "spec": spec_text,
        "parent_run_id": data.parent.info.run_id,
        "ray_experiment": tags.get(EXPERIMENT_PATH_TAG),
        "tracking_uri": data.tracking_uri,
        "sweep_git_revision": tags.get("code.git_revision"),
        "report_git_revision": git_revision(),
        "python": platform.python_version(),
        "packages": versions,
        "metric_protocol": {**run_protocol,
                            "curve": f"{data.curve_key} every {first['eval.every']} generator "
                                     f"steps"},
        "runs": int(len(data.runs)),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _markdown_table(header: list[str], rows: list[list[str]], marks: list[list[bool]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, mark in zip(rows, marks, strict=True):
        cells = [f"**{c}**" if m else c for c, m in zip(row, mark, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], marks: list[list[bool]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class='best'>{html.escape(c)}</td>" if m else
                         f"<td>{html.escape(c)}</td>" for c, m in zip(row, mark, strict=True))
        + "</tr>" for row, mark in zip(rows, marks, strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CHART_CAPTIONS = {
    "curves": "FD to the teacher over training",
    "final_fd": "Final FD per generator",
    "tradeoffs": "Trade-offs: precision vs recall, quality vs cost",
    "weights": "Weight and ratio diagnostics",
    "samples": "Samples per generator",
    "alpha": "Search: FD against α",
}


def build_report(sweep: str | None = None, tracking_uri: str | None = None,
                 out: str | Path | None = None, formats: tuple[str, ...] = FORMATS) -> Path:
    """Read a sweep from MLflow and write its report; returns the report directory.

    Args:
        sweep: sweep name (None: the most recent sweep in the store).
        tracking_uri: MLflow store (None: as ``bench sweep`` resolves it).
        out: output directory (None: ``reports/<sweep>``).
        formats: pages to write, from ``md`` and ``html``.

    Raises:
        ReportError: unknown or empty sweep, or an unknown format.
    """
    from bench.tracking import resolve_tracking_uri

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ReportError(f"unknown format {bad[0]!r}; valid: {', '.join(FORMATS)}")
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri}; run `bench sweep` first or pass "
                          f"--tracking-uri")
    client = open_store(uri)
    parent = find_parent(client, sweep)
    data = load_sweep(client, parent, uri)
    out = Path(out) if out else Path("reports") / data.name
    out.mkdir(parents=True, exist_ok=True)

    summary = summarise(data)
    labels = order_labels(data, summary)
    header, rows, marks = comparison_table(data, summary)
    charts = [chart_curves(data, labels, out), chart_final(data, summary, labels, out),
              chart_tradeoffs(data, summary, labels, out), chart_weights(data, labels, out),
              chart_samples(data, client, labels, out)]
    if data.is_search:
        charts.append(chart_search(data, out))

    summary.to_csv(out / "summary.csv", index=False)
    metric_keys = [c.key for c in data.columns]
    data.runs.melt(id_vars=["run_id", "run_name", "label", "generator", "alpha", "seed",
                            "status"], value_vars=metric_keys, var_name="metric",
                   value_name="value").dropna(subset=["value"]).to_csv(out / "results.csv",
                                                                        index=False)
    prov = provenance(data, client)
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")

    counts = data.runs.status.value_counts().to_dict()
    intro = (f"Sweep `{data.name}` (spec `{prov['spec_path']}`, hash `{prov['spec_hash']}`): "
             f"{len(data.runs)} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
             f"preset `{parent.data.tags.get('sweep.preset')}`. "
             f"Each cell is the mean ± std over seeds of the finished runs; **bold** is the best "
             f"of its column. FD / reverse_kl is the ratio of mean FDs, starred (*) when the gap "
             f"exceeds the two seed spreads added.")
    notes = ranking(data, summary)
    if "md" in formats:
        parts = [f"# Report: {data.name}", intro, _markdown_table(header, rows, marks),
                 "## Ranking", "\n".join(f"- {line}" for line in notes)]
        parts += [f"## {CHART_CAPTIONS[c[:-4]]}\n\n![{CHART_CAPTIONS[c[:-4]]}]({c})"
                  for c in charts]
        parts.append(f"Provenance: [provenance.json](provenance.json) · per-run numbers: "
                     f"[results.csv](results.csv) · summary: [summary.csv](summary.csv) · "
                     f"built {prov['built_at']} from `{prov['tracking_uri']}`.")
        (out / "README.md").write_text("\n\n".join(parts) + "\n")
    if "html" in formats:
        images = "".join(
            f"<h2>{CHART_CAPTIONS[c[:-4]]}</h2><img alt='{CHART_CAPTIONS[c[:-4]]}' "
            f"src='data:image/png;base64,{base64.b64encode((out / c).read_bytes()).decode()}'>"
            for c in charts)
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>Report: {html.escape(data.name)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
            "padding:3px 6px;text-align:right}td:first-child{text-align:left}"
            ".best{font-weight:bold;background:#e6f4ea}img{max-width:100%}</style></head><body>"
            f"<h1>Report: {html.escape(data.name)}</h1><p>{html.escape(intro)}</p>"
            f"{_html_table(header, rows, marks)}<h2>Ranking</h2><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in notes)
            + f"</ul>{images}<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=2))}"
            "</pre></body></html>")
        (out / "index.html").write_text(page)
    return out
