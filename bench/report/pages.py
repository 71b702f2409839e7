"""The report's pages and provenance: ``README.md`` (renders on GitHub), ``index.html``
(its charts the PNG files beside it) and ``provenance.json``.
"""

from __future__ import annotations

import html
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from bench.report.charts import CHART_CAPTIONS
from bench.report.reading import SweepData
from bench.report.stats import min_seeds
from bench.report.tables import CI, CONFIDENCE, REFERENCE, Table, html_table, markdown_table
from bench.tracking import EXPERIMENT_PATH_TAG
from dibregman.run import PROVENANCE_FILE, git_revision

FORMATS = ("md", "html")

PACKAGES = ("dibregman", "torch", "ray", "mlflow", "optuna", "pandas", "matplotlib", "clean-fid",
            "numpy")


def repo_relative(location: str | None) -> str | None:
    """A path (or ``sqlite:///`` URI) inside the source tree, relative to it: a committed report
    must not carry the paths of the machine it was made on. Others stay as they are."""
    if not location:
        return location
    prefix = "sqlite:///" if location.startswith("sqlite:///") else ""
    path = Path(location[len(prefix):])
    root = Path(__file__).resolve().parents[2]
    if path.is_absolute() and path.resolve().is_relative_to(root):
        return prefix + str(path.resolve().relative_to(root))
    return location


def provenance(data: SweepData, client: MlflowClient) -> dict[str, Any]:
    """Where the report's numbers come from: the sweep's spec, runs, store, code revisions,
    package versions and metric protocol (from the first run's provenance file)."""
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
        "spec_path": repo_relative(tags.get("sweep.spec_path")),
        "spec": spec_text,
        "parent_run_id": data.parent.info.run_id,
        "ray_experiment": repo_relative(tags.get(EXPERIMENT_PATH_TAG)),
        "tracking_uri": repo_relative(data.tracking_uri),
        "sweep_git_revision": tags.get("code.git_revision"),
        "report_git_revision": git_revision(),
        "python": platform.python_version(),
        "packages": versions,
        "metric_protocol": {**run_protocol,
                            "curve": f"{data.curve.key} every {first['eval.every']} generator "
                                     f"steps"},
        "declared_metrics": [c.to_dict() for c in [data.curve, *data.columns]],
        "runs": int(len(data.runs)),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_provenance(data: SweepData, client: MlflowClient, out: Path) -> dict[str, Any]:
    """Write ``provenance.json`` into ``out``; returns the :func:`provenance` written."""
    prov = provenance(data, client)
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    return prov


def _intro(data: SweepData, prov: dict[str, Any]) -> str:
    """The pages' opening paragraph: the sweep, its runs by status, and the reading order."""
    counts = data.runs.status.value_counts().to_dict()
    top = data.headline
    budgets = ", ".join(map(str, data.budgets)) or "the last step"
    return (f"Sweep `{data.name}` (spec `{prov['spec_path']}`, hash `{prov['spec_hash']}`): "
            f"{len(data.runs)} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
            f"preset `{data.parent.data.tags.get('sweep.preset')}`, arms compared with "
            f"{REFERENCE} by {top.label} ({top.direction} is better) at budgets {budgets} "
            f"(generator steps). Read it in order: whether the students are good enough to "
            f"compare, whether the ratio estimate is, then the verdicts (only the "
            f"confirmatory ones are claims), then the final values.")


def _final_note(data: SweepData) -> str:
    enough = min_seeds(1 - CONFIDENCE)
    top = data.headline
    return (f"Each cell is the mean ± std over seeds of the finished runs at the last step; "
            f"{top.label} {CI} is the expanded-percentile bootstrap interval of its mean over "
            f"seeds, shown from {enough} seeds (below that no interval reaches "
            f"{CONFIDENCE * 100:g} % coverage). Rows are ordered by that mean and **bold** "
            f"marks the best mean of its column: both describe these seeds only. The last "
            f"column is the verdict at the last step from the table above.")


@dataclass(frozen=True)
class Section:
    """One titled part of a page: bullet lines, then tables (each with an optional note)."""

    title: str
    lines: list[str]
    tables: list[tuple[Table, str]]


@dataclass(frozen=True)
class PageContent:
    """What both pages show.

    Attributes:
        data: the sweep.
        table: header, rows and best-in-column mask of the final values
            (:func:`bench.report.tables.comparison_table`).
        sections: the parts before the final values, in order: whether the students are good,
            whether the ratio estimate is, the verdicts per budget.
        after: the parts after the final values (the paired comparisons at the last step).
        charts: the charts' PNG file names in the report directory, in page order.
        prov: the sweep's :func:`provenance`.
    """

    data: SweepData
    table: Table
    sections: list[Section]
    after: list[Section]
    charts: list[str]
    prov: dict[str, Any]


FINAL_HEADING = "Final values (mean ± std over seeds)"


def _markdown_section(section: Section) -> list[str]:
    parts = [f"## {section.title}"]
    if section.lines:
        parts.append("\n".join(f"- {line}" for line in section.lines))
    for table, note in section.tables:
        if table[1]:
            parts.append(markdown_table(*table))
            if note:
                parts.append(note)
    return parts


def write_markdown(page: PageContent, out: Path) -> None:
    """Write ``README.md`` into ``out``: intro, the sections (students, ratio estimate,
    verdicts), the final values, the paired comparison, charts, provenance links."""
    data, prov = page.data, page.prov
    parts = [f"# Report: {data.name}", _intro(data, prov)]
    for section in page.sections:
        parts += _markdown_section(section)
    parts += [f"## {FINAL_HEADING}", _final_note(data), markdown_table(*page.table)]
    for section in page.after:
        parts += _markdown_section(section)
    parts += [f"## {CHART_CAPTIONS[c[:-4]]}\n\n![{CHART_CAPTIONS[c[:-4]]}]({c})"
              for c in page.charts]
    parts.append(f"Provenance: [provenance.json](provenance.json) · per-run numbers: "
                 f"[results.csv](results.csv) · every number at every budget: "
                 f"[results_long.csv](results_long.csv) · summary: [summary.csv](summary.csv) "
                 f"· comparisons: [comparison.csv](comparison.csv), "
                 f"[budgets.csv](budgets.csv) · built {prov['built_at']} from "
                 f"`{prov['tracking_uri']}`.")
    (out / "README.md").write_text("\n\n".join(parts) + "\n")


def _html_section(section: Section) -> str:
    text = f"<h2>{html.escape(section.title)}</h2>"
    if section.lines:
        text += "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in section.lines)
        text += "</ul>"
    for table, note in section.tables:
        if table[1]:
            text += html_table(*table) + (f"<p>{html.escape(note)}</p>" if note else "")
    return text


def write_html(page: PageContent, out: Path) -> None:
    """Write ``index.html`` into ``out``: the Markdown page's content, its charts as the PNG
    files beside it (the page stays small), and the provenance inline."""
    data, prov = page.data, page.prov
    images = "".join(f"<h2>{CHART_CAPTIONS[c[:-4]]}</h2><img alt='{CHART_CAPTIONS[c[:-4]]}' "
                     f"src='{html.escape(c)}'>" for c in page.charts)
    text = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Report: {html.escape(data.name)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}td:first-child{text-align:left}"
        ".best{font-weight:bold;background:#e6f4ea}img{max-width:100%}</style></head><body>"
        f"<h1>Report: {html.escape(data.name)}</h1><p>{html.escape(_intro(data, prov))}</p>"
        + "".join(_html_section(section) for section in page.sections)
        + f"<h2>{html.escape(FINAL_HEADING)}</h2><p>{html.escape(_final_note(data))}</p>"
        + html_table(*page.table)
        + "".join(_html_section(section) for section in page.after)
        + f"{images}<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=2))}"
        "</pre></body></html>")
    (out / "index.html").write_text(text)
