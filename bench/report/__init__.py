"""``bench report``: a sweep's runs from MLflow -> tables, charts and pages in
``runs/reports/<sweep>/`` (an ignored folder: the repository's committed example report,
``reports/divergences/``, changes only when it is regenerated on purpose with ``--out``).

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

import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from bench.report.agreement import (
    agreement_columns,
    agreement_comparisons,
    agreement_lines,
    agreement_table,
    chart_agreement,
)
from bench.report.charts import draw_charts
from bench.report.pages import (
    FORMATS,
    PageContent,
    Section,
    write_html,
    write_markdown,
    write_provenance,
)
from bench.report.reading import ReportError, SweepData, find_parent, load_sweep, teacher_values
from bench.report.tables import (
    REFERENCE,
    compare,
    comparison_table,
    method_note,
    order_labels,
    paired_table,
    ratio_check_lines,
    ratio_check_table,
    ratio_check_window,
    summarise,
    verdict_lines,
    write_csvs,
)
from bench.report.verdicts import (
    TIME_TO_TARGET,
    compare_budgets,
    control_budget_lines,
    family_from,
    family_lines,
    quality_lines,
    sensitivity_lines,
    verdict_table,
)
from bench.tracking import StoreError, open_store, resolve_tracking_uri
from dibregman.results import Status

__all__ = ["DEFAULT_REPORTS", "FORMATS", "ReportError", "build_report", "recover_report"]
# Where reports go by default: beside the runs, ignored by git.
DEFAULT_REPORTS = Path("runs") / "reports"


def build_report(sweep: str | None = None, tracking_uri: str | None = None,
                 out: str | Path | None = None, formats: tuple[str, ...] = FORMATS) -> Path:
    """Read a sweep from MLflow and write its report; returns the report directory.

    Args:
        sweep: sweep name (None: the most recent sweep in the store).
        tracking_uri: MLflow store (None: as ``bench sweep`` resolves it).
        out: output directory (None: :data:`DEFAULT_REPORTS` ``/<sweep>``).
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
    try:
        client = open_store(uri)
    except StoreError as err:
        raise ReportError(str(err)) from None
    data = load_sweep(client, find_parent(client, sweep), uri)
    out = Path(out) if out else DEFAULT_REPORTS / data.name
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_report(out)
    # Written into a temporary folder beside ``out`` and swapped in at the end, so that a
    # failure or a kill never leaves a half-written report (see recover_report).
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-{os.getpid()}-", dir=out.parent))
    try:
        _write_report(data, client, staging, formats)
        staging.chmod(0o755)  # mkdtemp makes it private
        previous = _previous(out)
        if out.exists():
            out.rename(previous)
        staging.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _previous(out: Path) -> Path:
    """Where the report being replaced waits while the new one moves in."""
    return out.with_name(f".{out.name}.previous")


def recover_report(out: Path) -> None:
    """Undo what a killed build left: the new report moves in by two renames (``out`` to
    ``.NAME.previous``, the staged report to ``out``); a kill between them leaves no ``out``
    but the previous report whole beside it, which this moves back. Staging folders
    (``.NAME-PID-*``) of builds whose process is gone are removed. Called before every report
    is written; a reader may call it too."""
    previous = _previous(out)
    if previous.exists() and not out.exists():
        previous.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    pattern = re.compile(rf"\.{re.escape(out.name)}-(\d+)-[a-z0-9_]{{8}}")  # mkdtemp's names
    for staging in out.parent.glob(f".{out.name}-*"):  # of builds killed before the swap
        found = pattern.fullmatch(staging.name)
        if found and not _alive(int(found.group(1))):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a staging folder of a live build is left alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_report(data: SweepData, client: MlflowClient, out: Path,
                  formats: tuple[str, ...]) -> None:
    """Every file of the report of ``data`` into the (empty) directory ``out``. A sweep with
    no finished run gets its tables and the reason, without charts."""
    summary = summarise(data)
    labels = order_labels(data, summary)
    comparison = compare(data, labels)
    family = family_from(data)
    budgets = compare_budgets(data, labels, family)
    adopt_last_budget(comparison, budgets)
    finished = (data.runs.status == Status.FINISHED).any()
    teacher, teacher_note = teacher_values(client, data.parent) if finished else ({}, "")
    charts = draw_charts(data, summary, labels, client, out, budgets, teacher) if finished \
        else []
    write_csvs(data, summary, comparison, out, budgets)
    prov = write_provenance(data, client, out)
    verdicts = [*family_lines(data, budgets, family), *control_budget_lines(data, budgets)]
    if not finished:
        counts = ", ".join(f"{n} {s}" for s, n in data.runs.status.value_counts().items())
        verdicts = [f"No run of this sweep finished ({counts}): there is nothing to chart or "
                    f"compare; each run's error and last records are in its MLflow run."]
    sections = [Section("Are the students good enough to compare?",
                        quality_lines(data, summary, labels, teacher, teacher_note), [])]
    if not data.ratio_checks.empty:
        fitted = not ratio_check_window(data).empty  # the oracle's truth needs no table
        sections.append(Section("Is the ratio estimate good enough to compare generators?",
                                ratio_check_lines(data),
                                [(ratio_check_table(data), "")] if fitted else []))
    legend = ("Each cell: the verdict against the reference, the effect (the geometric-mean "
              "ratio ×, or the mean difference, paired by seed; for time to target, how many "
              "budgets later (+) or earlier (−) the arm gets there) and its Holm-adjusted p. "
              "Bold cells form the confirmatory family; the rest are exploratory.")
    sections.append(Section(f"Verdicts against {REFERENCE}, budget by budget",
                            [*verdicts, *sensitivity_lines(budgets, data.controls.get("aa"))],
                            [(verdict_table(budgets, labels), legend)] if len(budgets) else []))
    # With a budget family the verdict table says it all; without budgets (an older sweep, or
    # a search) these lines are the verdicts in words.
    words = [] if data.budgets else verdict_lines(data, comparison)
    if agreement_columns(data) and finished:
        agreement = agreement_comparisons(data, labels)
        charts.append(chart_agreement(data, agreement, labels, teacher, out))
        sections.append(Section("Image quality against prompt agreement",
                                agreement_lines(data, agreement, teacher),
                                [(agreement_table(data, agreement), "")]))
    after = [Section(f"At the last step: each arm against {REFERENCE}, paired by seed", words,
                     [(paired_table(comparison), method_note(comparison))])]
    page = PageContent(data, comparison_table(data, summary, comparison, teacher), sections,
                       after, charts, prov)
    if "md" in formats:
        write_markdown(page, out)
    if "html" in formats:
        write_html(page, out)


def adopt_last_budget(comparison: pd.DataFrame, budgets: pd.DataFrame) -> None:
    """The last-step comparison's adjusted p and verdict from the budget comparisons (in
    place): one comparison, one adjustment, wherever the report shows it (the family's Holm
    when the last step is confirmatory, else the arms' Holm at that step)."""
    if budgets.empty:
        return
    steps = [b for b in budgets.budget.unique() if b != TIME_TO_TARGET]
    last = budgets[budgets.budget == max(steps)].set_index("label")
    for column in ("p_holm", "verdict"):
        found = comparison.label.map(last[column])
        comparison[column] = found.where(found.notna(), comparison[column])
