"""`bench report` on a real sweep's MLflow store: numbers, charts, pages, errors."""

import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.report import ReportError, build_report


@pytest.fixture(scope="module")
def report(grid_sweep, tmp_path_factory) -> tuple[Path, str]:
    uri, _, _ = grid_sweep
    out = tmp_path_factory.mktemp("report") / "grid"
    return build_report("grid", uri, out), uri


def independent_runs(uri: str) -> pd.DataFrame:
    """The sweep's child runs straight from MLflow, without the report's code."""
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["grid"])
    return runs[runs["tags.mlflow.parentRunId"].notna()]


def test_summary_numbers_equal_the_runs_metrics(report):
    out, uri = report
    runs = independent_runs(uri)
    finished = runs[runs["tags.status"] == "finished"]
    summary = pd.read_csv(out / "summary.csv")
    checked = 0
    for generator in ("reverse_kl", "pearson"):
        group = finished[finished["params.generator.name"] == generator]
        assert len(group) == 2
        for metric in ("fd_n512", "nll_n512", "modes_covered_n512", "precision_k3_n256",
                       "recall_k3_n256", "mmd_n256", "wall_time_s"):
            values = group[f"metrics.{metric}"].to_numpy()
            row = summary[(summary.label == generator) & (summary.metric == metric)].iloc[0]
            assert row["mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert row["std"] == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-15)
            assert row["n"] == 2
            checked += 1
    assert checked == 14
    assert "forward_kl" not in set(summary.label)  # diverged runs are counted, not averaged


def test_markdown_table_shows_those_numbers_and_the_diverged_count(report):
    out, uri = report
    text = (out / "README.md").read_text()
    runs = independent_runs(uri)
    pearson = runs[(runs["params.generator.name"] == "pearson")]
    mean_fd = pearson["metrics.fd_n512"].mean()
    assert f"{mean_fd:.4g} ± " in text
    forward_row = next(line for line in text.splitlines() if line.startswith("| forward_kl"))
    cells = [c.strip() for c in forward_row.strip("|").split("|")]
    assert cells[1] == "0"  # no finished seed
    assert cells[-3] == "2"  # diverged
    assert "FD (n=512) / reverse_kl" in text and "## Ranking" in text


def test_results_csv_has_one_row_per_run_and_metric(report):
    out, uri = report
    results = pd.read_csv(out / "results.csv")
    runs = independent_runs(uri)
    for row in results.itertuples():
        run = runs[runs.run_id == row.run_id].iloc[0]
        assert run[f"metrics.{row.metric}"] == pytest.approx(row.value, rel=1e-12)
    assert results.groupby(["run_id", "metric"]).size().max() == 1
    assert set(results.run_id) == set(runs.run_id)


def test_every_chart_is_a_valid_non_blank_image(report):
    out, _ = report
    for name in ("curves", "final_fd", "tradeoffs", "weights", "samples"):
        image = plt.imread(out / f"{name}.png")
        assert image.ndim == 3 and min(image.shape[:2]) > 100
        assert np.std(image[..., :3]) > 0.02, f"{name}.png looks blank"
        svg = (out / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.sources += [value for key, value in attrs if key in ("src", "href") and value]


def test_pages_reference_only_existing_files(report):
    out, _ = report
    parser = Links()
    parser.feed((out / "index.html").read_text())
    assert len(parser.sources) == 5
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    markdown = (out / "README.md").read_text()
    for target in [part.split(")")[0] for part in markdown.split("](")[1:]]:
        assert (out / target).exists(), target
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["sweep"] == "grid" and provenance["packages"]["torch"]
    assert "exact moments" in provenance["metric_protocol"]["fd"]
    assert provenance["metric_protocol"]["n_final"] == 512


def test_unknown_sweep_lists_the_sweeps_and_exits_2(grid_sweep, tmp_path):
    uri, _, _ = grid_sweep
    with pytest.raises(ReportError, match="no sweep named 'nope'; sweeps in the store: grid"):
        build_report("nope", uri, tmp_path / "x")
    result = CliRunner().invoke(app, ["report", "nope", "--tracking-uri", uri, "--out",
                                      str(tmp_path / "y")])
    assert result.exit_code == 2 and "sweeps in the store: grid" in result.output
    assert not (tmp_path / "y").exists()


def test_missing_store_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 2 and "no MLflow store" in result.output
    assert list(tmp_path.iterdir()) == []


def test_image_sweep_report_has_image_columns_and_sample_grids(tmp_path):
    """A digits-tiny sweep: the table speaks of classifier FD and class coverage, and the
    samples chart is made of the runs' sample grids."""
    import os

    import yaml

    from bench.spec import load_spec
    from bench.sweep import run_sweep

    spec_path = tmp_path / "digits_tiny.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "digits_tiny", "preset": "digits-tiny", "metric": "fd_cls_n256",
        "grid": {"generator": ["reverse_kl", "pearson"]}, "seeds": [0]}, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    os.environ["DIBREGMAN_CACHE"] = str(tmp_path / "cache")
    try:
        summary = run_sweep(load_spec(spec_path), tracking_uri=uri, storage=tmp_path / "ray",
                            num_cpus=2)
        out = build_report("digits_tiny", uri, tmp_path / "report")
    finally:
        del os.environ["DIBREGMAN_CACHE"]
    assert summary.counts["finished"] == 2
    text = (out / "README.md").read_text()
    assert "FD classifier (n=512)" in text and "class coverage" in text
    image = plt.imread(out / "samples.png")
    assert np.std(image[..., :3]) > 0.02
