"""The report's pages and provenance: ``README.md`` (renders on GitHub), ``index.html``
(self-contained, images embedded) and ``provenance.json``.
"""

from __future__ import annotations

import base64
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
COMPARISON_HEADING = f"vs {REFERENCE} (paired by seed)"
RATIO_HEADING = "Is the ratio estimate good enough to compare generators?"
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
    """The pages' opening paragraph: the sweep, its runs by status, and how to read the table."""
    counts = data.runs.status.value_counts().to_dict()
    top = data.headline
    enough = min_seeds(1 - CONFIDENCE)
    return (f"Sweep `{data.name}` (spec `{prov['spec_path']}`, hash `{prov['spec_hash']}`): "
            f"{len(data.runs)} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
            f"preset `{data.parent.data.tags.get('sweep.preset')}`. "
            f"Each cell is the mean ± std over seeds of the finished runs; {top.label} {CI} is "
            f"the expanded-percentile bootstrap interval of its mean over seeds, shown from "
            f"{enough} seeds (below that no interval reaches {CONFIDENCE * 100:g} % coverage). "
            f"Rows are ordered by the mean of the headline metric, {top.label} "
            f"({top.direction} is better), and **bold** marks the best mean of its column: both "
            f"describe these seeds only. Which arms differ from {REFERENCE} is said by the last "
            f"column's verdict, from the paired comparison below.")


@dataclass(frozen=True)
class PageContent:
    """What both pages show.

    Attributes:
        data: the sweep.
        table: header, rows and best-in-column mask
            (:func:`bench.report.tables.comparison_table`).
        paired: the comparison with the reference (:func:`bench.report.tables.paired_table`).
        notes: the verdicts in words (:func:`bench.report.tables.verdict_lines`).
        method: how to read ``paired`` (:func:`bench.report.tables.method_note`).
        charts: the charts' PNG file names in the report directory, in page order.
        prov: the sweep's :func:`provenance`.
        ratio: the live ratio check per level (:func:`bench.report.tables.ratio_check_table`;
            no rows without checks).
        ratio_notes: whether the ratio estimate was good enough
            (:func:`bench.report.tables.ratio_check_lines`).
    """

    data: SweepData
    table: Table
    paired: Table
    notes: list[str]
    method: str
    charts: list[str]
    prov: dict[str, Any]
    ratio: Table
    ratio_notes: list[str]


def write_markdown(page: PageContent, out: Path) -> None:
    """Write ``README.md`` into ``out``: intro, table, the comparison with the reference
    (verdicts, table, method), charts, provenance links."""
    data, prov = page.data, page.prov
    parts = [f"# Report: {data.name}", _intro(data, prov), markdown_table(*page.table)]
    if page.ratio[1]:
        parts += [f"## {RATIO_HEADING}", "\n".join(f"- {line}" for line in page.ratio_notes),
                  markdown_table(*page.ratio)]
    parts += [f"## {COMPARISON_HEADING}", "\n".join(f"- {line}" for line in page.notes)]
    if page.paired[1]:
        parts += [markdown_table(*page.paired), page.method]
    parts += [f"## {CHART_CAPTIONS[c[:-4]]}\n\n![{CHART_CAPTIONS[c[:-4]]}]({c})"
              for c in page.charts]
    parts.append(f"Provenance: [provenance.json](provenance.json) · per-run numbers: "
                 f"[results.csv](results.csv) · summary: [summary.csv](summary.csv) · "
                 f"comparison: [comparison.csv](comparison.csv) · "
                 f"built {prov['built_at']} from `{prov['tracking_uri']}`.")
    (out / "README.md").write_text("\n\n".join(parts) + "\n")


def write_html(page: PageContent, out: Path) -> None:
    """Write ``index.html`` into ``out``: the Markdown page's content with the charts embedded
    as base64 PNGs and the provenance inline."""
    data, prov, table, paired = page.data, page.prov, page.table, page.paired
    notes, method, charts = page.notes, page.method, page.charts
    images = "".join(
        f"<h2>{CHART_CAPTIONS[c[:-4]]}</h2><img alt='{CHART_CAPTIONS[c[:-4]]}' "
        f"src='data:image/png;base64,{base64.b64encode((out / c).read_bytes()).decode()}'>"
        for c in charts)
    text = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Report: {html.escape(data.name)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}td:first-child{text-align:left}"
        ".best{font-weight:bold;background:#e6f4ea}img{max-width:100%}</style></head><body>"
        f"<h1>Report: {html.escape(data.name)}</h1><p>{html.escape(_intro(data, prov))}</p>"
        f"{html_table(*table)}"
        + (f"<h2>{html.escape(RATIO_HEADING)}</h2><ul>"
           + "".join(f"<li>{html.escape(line)}</li>" for line in page.ratio_notes)
           + f"</ul>{html_table(*page.ratio)}" if page.ratio[1] else "")
        + f"<h2>{html.escape(COMPARISON_HEADING)}</h2><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in notes)
        + "</ul>"
        + (f"{html_table(*paired)}<p>{html.escape(method)}</p>" if paired[1] else "")
        + f"{images}<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=2))}"
        "</pre></body></html>")
    (out / "index.html").write_text(text)
