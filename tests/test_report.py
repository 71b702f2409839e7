"""`bench report` on a real sweep's MLflow store: numbers, charts, pages, errors."""

import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.report import ReportError, build_report, recover_report
from bench.report.reading import SweepData
from bench.report.stats import bootstrap_ci
from bench.report.tables import (
    compare,
    comparison_table,
    fmt_ci,
    order_labels,
    paired_table,
    summarise,
    verdict_lines,
)
from dibregman.results import Direction, MetricSpec, Role


@pytest.fixture(scope="module")
def report(grid_sweep, tmp_path_factory) -> tuple[Path, str]:
    uri, _, _ = grid_sweep
    out = tmp_path_factory.mktemp("report") / "grid"
    return build_report("grid", uri, out), uri


# The diverging arm's name: its generator and every other key its grid entry sets.
DIVERGING = "forward_kl train.lr=1e+12 train.max_nonfinite_steps=2 train.generator_steps=40"


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
    assert DIVERGING not in set(summary.label)  # diverged runs are counted, not averaged


def test_markdown_table_shows_those_numbers_and_the_diverged_count(report):
    out, uri = report
    text = (out / "README.md").read_text()
    runs = independent_runs(uri)
    pearson = runs[(runs["params.generator.name"] == "pearson")]
    mean_fd = pearson["metrics.fd_n512"].mean()
    assert f"{mean_fd:.4g} ± " in text
    forward_row = next(line for line in text.splitlines() if line.startswith(f"| {DIVERGING}"))
    cells = [c.strip() for c in forward_row.strip("|").split("|")]
    assert cells[1] == "0"  # no finished seed
    assert cells[-3] == "2"  # diverged
    assert "FD (n=512) vs reverse_kl" in text
    assert "## At the last step: each arm against reverse_kl, paired by seed" in text
    assert text.index("## Are the students good enough to compare?") < text.index(
        "## Verdicts against reverse_kl, budget by budget") < text.index("## Final values")
    assert cells[-1] == "too few seeds"
    header = next(line for line in text.splitlines() if line.startswith("| generator | seeds"))
    assert "FD (n=512) 95 % CI" in header
    final = text[text.index("## Final values"):]
    pearson_row = next(line for line in final.splitlines() if line.startswith("| pearson |"))
    # 2 seeds: no 95 % interval is possible (one inside the range covers at most 50 %)
    assert "needs ≥ 6 seeds" in pearson_row and "no detectable difference" in pearson_row


def test_comparison_csv_pairs_pearson_with_reverse_kl_by_seed(report):
    out, uri = report
    comparison = pd.read_csv(out / "comparison.csv").set_index("label")
    runs = independent_runs(uri)
    finished = runs[runs["tags.status"] == "finished"]
    fd = {g: finished[finished["params.generator.name"] == g].set_index("params.seed")
          ["metrics.fd_n512"] for g in ("reverse_kl", "pearson")}
    log_ratios = np.log(fd["pearson"]) - np.log(fd["reverse_kl"].loc[fd["pearson"].index])
    pearson = comparison.loc["pearson"]
    assert pearson.reference == "reverse_kl" and pearson.metric == "fd_n512"
    assert pearson.scale == "log-ratio" and pearson.n_pairs == 2
    assert pearson.estimate == pytest.approx(np.exp(log_ratios.mean()), rel=1e-9)
    # 2 pairs: the exact sign-flip test's p is 0.5 (same signs) or 1; Holm never lowers it
    assert pearson.p_value in (0.5, 1.0) and pearson.p_holm >= pearson.p_value
    assert pearson.verdict == "no detectable difference"
    assert np.isnan(pearson.estimate_ci_low) and np.isnan(pearson.ci_low)  # < 6 seeds
    assert pearson["mean"] == pytest.approx(fd["pearson"].mean(), rel=1e-12)
    assert comparison.loc["reverse_kl", "verdict"] == "reference"
    forward = comparison.loc[DIVERGING]
    assert forward.n_pairs == 0 and forward.verdict == "too few seeds"
    assert np.isnan(forward.p_value) and np.isnan(forward.p_holm)


def test_pages_state_only_what_the_verdicts_support(report):
    out, _ = report
    text = (out / "README.md").read_text()
    assert ("No arm differs detectably from reverse_kl on FD (n=512) (two-sided sign-flip "
            "permutation test on per-seed log-ratios, Holm over 1 arm, α = 0.05, 2 paired "
            "seeds).") in text
    assert "smallest attainable p is 0.5: no difference could have been detected" in text
    assert f"Too few seeds paired with reverse_kl for a verdict: {DIVERGING} (0 paired)." in text
    assert "| generator | paired seeds | ratio to reverse_kl | 95 % CI | p | p (Holm) | " \
           "verdict | P(rank first) |" in text
    assert ": best " not in text and " * |" not in text  # no ranking by means, no star rule
    page = (out / "index.html").read_text()
    assert "No arm differs detectably from reverse_kl" in page and "too few seeds" in page


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
    for name in ("efficiency", "final", "ratio_check", "curves", "tradeoffs", "weights",
                 "samples"):
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
    charts = ["efficiency.png", "final.png", "ratio_check.png", "curves.png",
              "tradeoffs.png", "weights.png", "samples.png"]
    assert parser.sources == charts  # the PNG files beside the page, not inlined
    assert all((out / src).exists() for src in parser.sources)
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


@pytest.mark.slow
def test_a_sweep_without_a_finished_run_gets_a_complete_report_saying_so(tmp_path):
    """Every run diverged (lr 1e12): the report is written whole, its tables count the
    diverged runs, it says that nothing can be compared, and it draws no chart."""
    from bench.spec import load_spec
    from bench.sweep import run_sweep

    path = tmp_path / "diverged.yaml"
    path.write_text(yaml.safe_dump({
        "name": "diverged", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0, 1],
        "set": {"train.lr": 1e12, "train.max_nonfinite_steps": 2},
        "grid": {"generator": ["reverse_kl"]}}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_sweep(load_spec(path), tracking_uri=uri, storage=tmp_path / "ray", num_cpus=2)
    result = CliRunner().invoke(app, ["report", "diverged", "--tracking-uri", uri, "--out",
                                      str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report" / "README.md").read_text()
    assert "No run of this sweep finished (2 diverged)" in text
    assert not list((tmp_path / "report").glob("*.png"))
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {
        "README.md", "index.html", "summary.csv", "results.csv", "comparison.csv",
        "provenance.json"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report-")] == []


def test_missing_store_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 2 and "no MLflow store" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_image_sweep_report_has_image_columns_and_sample_grids(tmp_path):
    """A digits-tiny sweep: the table speaks of classifier FD and class coverage, and the
    samples chart is made of the runs' sample grids."""
    import yaml

    from bench.spec import load_spec
    from bench.sweep import run_sweep

    spec_path = tmp_path / "digits_tiny.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "digits_tiny", "preset": "digits-tiny", "metric": "fd_cls_n256",
        "grid": {"generator": ["reverse_kl", "pearson"]}, "seeds": [0]}, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = run_sweep(load_spec(spec_path), tracking_uri=uri, storage=tmp_path / "ray",
                        num_cpus=2)
    out = build_report("digits_tiny", uri, tmp_path / "report")
    assert summary.counts["finished"] == 2
    text = (out / "README.md").read_text()
    assert "FD classifier (n=512)" in text and "class coverage" in text
    image = plt.imread(out / "samples.png")
    assert np.std(image[..., :3]) > 0.02


FD = MetricSpec("fd_n512", "fd", "FD (n=512)", 512, Direction.LOWER, Role.HEADLINE)
RECALL = MetricSpec("recall_k3_n256", "recall", "recall", 256, Direction.HIGHER,
                    Role.DIAGNOSTIC)


def synthetic_sweep(factors: dict[str, float], seeds: int = 8, headline=FD,
                    controls: dict[str, str] | None = None) -> SweepData:
    """A sweep without Ray or MLflow: per arm, a seed's value is a shared per-seed level times
    the arm's factor, with 3 % noise; ``nan`` factors diverge."""
    rng = np.random.default_rng(0)
    level = rng.lognormal(0.0, 0.5, seeds)
    rows = []
    for label, factor in factors.items():
        for seed in range(seeds):
            finished = np.isfinite(factor)
            value = level[seed] * factor * np.exp(rng.normal(0, 0.03)) if finished else np.nan
            rows.append({"run_id": f"{label}-{seed}", "label": label, "seed": seed,
                         "status": "finished" if finished else "diverged",
                         headline.key: value})
    return SweepData("synthetic", None, pd.DataFrame(rows), pd.DataFrame(), [headline],
                     headline, "", controls or {})


def test_eight_seeds_give_intervals_verdicts_both_ways_and_rank_shares():
    data = synthetic_sweep({"reverse_kl": 1.0, "pearson": 0.5, "neyman": 2.0, "forward_kl": np.nan})
    summary = summarise(data)
    comparison = compare(data, order_labels(data, summary)).set_index("label")
    assert comparison.loc["pearson", "verdict"] == "better"
    assert comparison.loc["neyman", "verdict"] == "worse"
    assert comparison.loc["forward_kl", "verdict"] == "too few seeds"
    assert comparison.loc["pearson", "p_value"] == pytest.approx(2 / 2**8)
    assert comparison.loc["pearson", "p_holm"] == pytest.approx(2 * 2 / 2**8)  # Holm, m = 2
    pearson = comparison.loc["pearson"]
    assert 0.45 < pearson.estimate_ci_low < pearson.estimate < pearson.estimate_ci_high < 0.55
    assert comparison.loc["pearson", "p_rank_first"] > 0.95
    assert comparison.p_rank_first.sum() == pytest.approx(1.0)

    header, rows, _ = comparison_table(data, summary, comparison.reset_index())
    assert header[:4] == ["generator", "seeds", "FD (n=512)", "FD (n=512) 95 % CI"]
    row = dict(zip(header, next(r for r in rows if r[0] == "pearson"), strict=True))
    values = data.runs[data.runs.label == "pearson"].fd_n512.to_numpy()
    assert row["FD (n=512) 95 % CI"] == fmt_ci(*bootstrap_ci(values))
    assert row["FD (n=512) vs reverse_kl"] == "better"
    lines = verdict_lines(data, comparison.reset_index())
    assert lines[0].startswith("Detectably better than reverse_kl on FD (n=512) (lower is "
                               "better; two-sided sign-flip permutation test on per-seed "
                               "log-ratios, Holm over 2 arms, α = 0.05, 8 paired seeds): "
                               "pearson (ratio 0.5")
    assert lines[1].startswith("Detectably worse than reverse_kl") and "neyman" in lines[1]
    assert not any("smallest attainable" in line for line in lines)


def test_verdicts_use_the_declared_direction_and_differences_when_values_can_be_negative():
    """A higher-is-better headline that can be negative: compared on differences; the arm with
    the larger values is the better one."""
    score = MetricSpec("score", "score", "score", None, Direction.HIGHER, Role.HEADLINE)
    data = synthetic_sweep({"reverse_kl": 1.0, "pearson": 2.0, "jeffreys": -1.0}, headline=score)
    summary = summarise(data)
    comparison = compare(data, order_labels(data, summary)).set_index("label")
    assert set(comparison.scale) == {"difference"}
    assert comparison.loc["pearson", "verdict"] == "better"
    assert comparison.loc["jeffreys", "verdict"] == "worse"
    assert paired_table(comparison.reset_index())[0][2] == "difference to reverse_kl"


def test_no_detectable_difference_between_arms_that_differ_only_by_noise():
    data = synthetic_sweep({"reverse_kl": 1.0, "jensen_shannon": 1.0}, seeds=10)
    summary = summarise(data)
    comparison = compare(data, order_labels(data, summary))
    assert list(comparison.verdict) in (["reference", "no detectable difference"],
                                        ["no detectable difference", "reference"])
    lines = verdict_lines(data, comparison)
    assert lines[0] == ("No arm differs detectably from reverse_kl on FD (n=512) (two-sided "
                        "sign-flip permutation test on per-seed log-ratios, Holm over 1 arm, "
                        "α = 0.05, 10 paired seeds).")
    assert "not evidence that arms are equal" in lines[-1]


def test_without_a_reference_arm_nothing_is_claimed():
    data = synthetic_sweep({"pearson": 1.0, "neyman": 2.0})
    summary = summarise(data)
    comparison = compare(data, order_labels(data, summary))
    assert verdict_lines(data, comparison) == [
        "No reverse_kl arm in this sweep: arms are not compared on FD (n=512)."]
    assert paired_table(comparison)[1] == []
    assert "vs reverse_kl" not in " ".join(comparison_table(data, summary, comparison)[0])



def test_provenance_paths_inside_the_repo_are_relative_to_it():
    from bench.report.pages import repo_relative

    root = Path(__file__).resolve().parents[1]
    assert repo_relative(str(root / "ray_results" / "x")) == "ray_results/x"
    assert repo_relative(f"sqlite:///{root}/mlflow.db") == "sqlite:///mlflow.db"
    assert repo_relative("/elsewhere/mlflow.db") == "/elsewhere/mlflow.db"
    assert repo_relative("sweeps/divergences.yaml") == "sweeps/divergences.yaml"


def test_a_sweep_headline_leads_the_columns_and_the_declared_one_stays_a_column():
    from bench.report.reading import columns_for

    params = {"teacher": "mixture", "eval.n_final": "512"}
    declared, _ = columns_for(params)
    chosen, _ = columns_for(params, "off_mode_n512")
    assert declared[0].key == "fd_n512" and chosen[0].key == "off_mode_n512"
    assert sorted(c.key for c in chosen) == sorted(c.key for c in declared)


def test_a_swap_cut_between_its_renames_gets_the_previous_report_back(tmp_path):
    """A report moves in by two renames; killed between them, ``out`` is missing and the
    previous report waits whole beside it: recovery moves it back. Killed after both, the
    leftover previous copy goes and the new report stays."""
    out = tmp_path / "report"
    previous = tmp_path / ".report.previous"
    previous.mkdir()
    (previous / "README.md").write_text("old report")
    recover_report(out)
    assert (out / "README.md").read_text() == "old report" and not previous.exists()

    previous.mkdir()
    (previous / "README.md").write_text("older report")
    recover_report(out)
    assert (out / "README.md").read_text() == "old report" and not previous.exists()


def test_staging_folders_of_killed_builds_go_and_a_live_builds_stays(tmp_path):
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    dead = tmp_path / f".report-{gone}-abc12345"
    live = tmp_path / f".report-{os.getpid()}-def45678"
    other = tmp_path / f".report-2-{gone}-abc12345"  # report "report-2"'s staging: not ours
    for staging in (dead, live, other):
        staging.mkdir()
        (staging / "README.md").write_text("half-written")
    recover_report(tmp_path / "report")
    assert not dead.exists() and live.exists() and other.exists()


def test_rebuilding_a_report_replaces_it_whole(report):
    """A second build over an existing report leaves one report holding the new files only:
    no file of the old one, no previous copy or staging folder beside it."""
    out, uri = report
    (out / "stale.txt").write_text("from an older report")
    assert build_report("grid", uri, out) == out
    assert not (out / "stale.txt").exists() and (out / "README.md").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
