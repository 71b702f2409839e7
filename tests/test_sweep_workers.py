"""A sweep trial whose run trains on two Ray Train workers (``workers_per_trial: 2``): gloo on
a private local Ray, rank 0 alone writing the run directory and reporting to Tune and MLflow."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from bench.spec import load_spec
from bench.sweep import TRIAL_DRIVER_CPU, run_sweep, trial_footprint
from dibregman.config import with_overrides
from dibregman.presets import get_preset
from dibregman.results import ELAPSED
from dibregman.run import run_experiment

ARM = {"generator.name": "pearson"}


def files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 65 s on this 2-core machine (Ray, Ray Train's worker group, a reference run)
def test_a_trial_on_two_workers_is_one_run_like_a_one_process_trial(tmp_path):
    """The trial finishes; one MLflow child run holds rank 0's records and the final metrics;
    its run directory holds a one-process run's files, with the same records and metrics up to
    float rounding (2 ranks at 32 rows follow 1 process at 64), and says world_size 2."""
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump({
        "name": "workers", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0],
        "grid": {"generator": ["pearson"]}, "workers_per_trial": 2,
    }))
    spec = load_spec(path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = run_sweep(spec, tracking_uri=uri, storage=tmp_path / "ray", num_cpus=3)
    assert summary.counts == {"finished": 1, "diverged": 0, "stopped": 0, "failed": 0}
    assert not summary.interrupted

    from ray.tune import ExperimentAnalysis

    (trial,) = ExperimentAnalysis(summary.experiment_path).trials
    assert trial.status == "TERMINATED"  # Tune's "finished"
    run_dir = Path(summary.experiment_path) / "runs" / trial.trial_id / "s0"

    reference = tmp_path / "one-process"
    cfg = with_overrides(get_preset("gmm2d-tiny"), {**ARM, "seed": 0})
    run_experiment(cfg, reference)
    assert files_of(run_dir) == files_of(reference) == {
        "config.json", "provenance.json", "metrics.jsonl", "final_metrics.json", "samples.png",
        "ratio_check.jsonl", "checkpoint/state.pt"}
    assert json.loads((run_dir / "provenance.json").read_text())["world_size"] == 2
    assert json.loads((reference / "provenance.json").read_text())["world_size"] == 1
    assert [r["step"] for r in records(run_dir)] == [r["step"] for r in records(reference)]
    for two, one in zip(records(run_dir), records(reference), strict=True):
        assert set(two) == set(one)
        assert {k: v for k, v in two.items() if k != ELAPSED} == pytest.approx(
            {k: v for k, v in one.items() if k != ELAPSED}, rel=1e-3, abs=1e-5)
    final = json.loads((run_dir / "final_metrics.json").read_text())
    final_one = json.loads((reference / "final_metrics.json").read_text())
    assert final["status"] == "finished"
    assert final["metrics"] == pytest.approx(final_one["metrics"], rel=1e-3, abs=1e-5)

    client = mlflow.MlflowClient(uri)
    parent = client.get_run(summary.parent_run_id)
    (child,) = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert child.info.status == "FINISHED" and child.info.run_name == "pearson-s0"
    assert child.data.tags["status"] == "finished" and child.data.tags["ray.trial_id"] == \
        trial.trial_id
    for key, value in final["metrics"].items():
        assert child.data.metrics[key] == pytest.approx(value), key
    # rank 0's records alone: each logged step once (two ranks reporting would repeat them)
    history = client.get_metric_history(child.info.run_id, "weight_max")
    logged = [r["step"] for r in records(run_dir) if "weight_max" in r]
    assert sorted(m.step for m in history) == logged == sorted(set(logged))
    assert {"provenance.json", "final_metrics.json"} <= {
        a.path for a in client.list_artifacts(child.info.run_id)}


def test_a_trial_on_workers_holds_their_resources_and_its_own_cpu(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "name": "w", "preset": "gmm2d-tiny", "metric": "fd_n256", "grid": {"generator":
                                                                          ["pearson"]},
        "workers_per_trial": 4, "resources": {"cpu": 2, "gpu": 1}}))
    assert trial_footprint(load_spec(path)) == {"cpu": 8 + TRIAL_DRIVER_CPU, "gpu": 4}
