"""``bench report``: a sweep's runs from MLflow -> tables, charts and pages in ``reports/<sweep>/``.

The sweep is read back from MLflow (:mod:`bench.report.reading`), summarised over seeds and
compared with the reference arm (:mod:`bench.report.tables`, with the statistics of
:mod:`bench.report.stats`), drawn (:mod:`bench.report.charts`) and written out as pages
(:mod:`bench.report.pages`); :func:`build_report` runs those steps in order.

Files written: ``README.md`` (renders on GitHub), ``index.html`` (self-contained, images
embedded), ``summary.csv`` (per generator and metric: mean, std, n), ``results.csv`` (one row per
run and metric), ``comparison.csv`` (per generator: the headline metric's bootstrap interval and
its comparison with the reference arm, paired by seed: ratio or difference, p, Holm-adjusted p,
verdict, P(rank first); see :mod:`bench.report.stats`), ``provenance.json``, and each chart as
PNG and SVG.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from bench.report.charts import draw_charts
from bench.report.pages import FORMATS, PageContent, write_html, write_markdown, write_provenance
from bench.report.reading import ReportError, SweepData, find_parent, load_sweep
from bench.report.tables import (
    compare,
    comparison_table,
    method_note,
    order_labels,
    paired_table,
    ratio_check_lines,
    ratio_check_table,
    summarise,
    verdict_lines,
    write_csvs,
)
from bench.tracking import open_store, resolve_tracking_uri
from dibregman.results import Status

__all__ = ["FORMATS", "ReportError", "build_report"]


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
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ReportError(f"unknown format {bad[0]!r}; valid: {', '.join(FORMATS)}")
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri}; run `bench sweep` first or pass "
                          f"--tracking-uri")
    client = open_store(uri)
    data = load_sweep(client, find_parent(client, sweep), uri)
    out = Path(out) if out else Path("reports") / data.name
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written into a temporary folder beside ``out`` and moved into place at the end, so that
    # a failure never leaves a half-written report.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_report(data, client, staging, formats)
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_report(data: SweepData, client: MlflowClient, out: Path,
                  formats: tuple[str, ...]) -> None:
    """Every file of the report of ``data`` into the (empty) directory ``out``. A sweep with
    no finished run gets its tables and the reason, without charts."""
    summary = summarise(data)
    labels = order_labels(data, summary)
    comparison = compare(data, labels)
    finished = (data.runs.status == Status.FINISHED).any()
    charts = draw_charts(data, summary, labels, client, out) if finished else []
    write_csvs(data, summary, comparison, out)
    prov = write_provenance(data, client, out)
    notes = verdict_lines(data, comparison)
    if not finished:
        counts = ", ".join(f"{n} {s}" for s, n in data.runs.status.value_counts().items())
        notes = [f"No run of this sweep finished ({counts}): there is nothing to chart or "
                 f"compare; each run's error and last records are in its MLflow run."]
    page = PageContent(data, comparison_table(data, summary, comparison),
                       paired_table(comparison), notes, method_note(comparison), charts, prov,
                       ratio_check_table(data), ratio_check_lines(data))
    if "md" in formats:
        write_markdown(page, out)
    if "html" in formats:
        write_html(page, out)
