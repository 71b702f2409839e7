"""`bench ui` opens on the runs: sweep experiments are tagged as model training, the address it
prints asks for MLflow's model-training view, and (slow) headless Chromium sees the runs table
there."""

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from bench.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    PARENT_TAG,
    runs_url,
    tag_sweep_experiments,
)


def untagged_sweep_store(tmp_path: Path) -> tuple[str, str]:
    """A store as a sweep before the tag wrote it: an experiment holding a parent run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("old-sweep")
    client.create_run(experiment, run_name="old-sweep-1", tags={PARENT_TAG: "true"})
    client.create_experiment("not-a-sweep")
    return uri, experiment


def test_existing_sweep_experiments_get_the_model_training_tag(tmp_path):
    uri, experiment = untagged_sweep_store(tmp_path)
    client = mlflow.MlflowClient(uri)
    assert tag_sweep_experiments(client) == 1
    assert client.get_experiment(experiment).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    other = client.get_experiment_by_name("not-a-sweep")
    assert EXPERIMENT_KIND_TAG not in other.tags  # only sweeps
    assert tag_sweep_experiments(client) == 0  # once
    assert runs_url(client, 5000) == (f"http://127.0.0.1:5000/#/experiments/{experiment}"
                                      f"?workflowType=machine_learning")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_headless_chromium_opens_the_printed_address_on_the_runs_table(tmp_path):
    uri, _ = untagged_sweep_store(tmp_path)
    server = subprocess.Popen([sys.executable, "-m", "bench.cli", "ui", "--tracking-uri", uri,
                               "--port", "5137"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        url = re.search(r"http://\S+workflowType=machine_learning", server.stdout.readline())
        assert url, "bench ui printed no runs address"
        for _ in range(90):
            try:
                urllib.request.urlopen("http://127.0.0.1:5137/", timeout=2)
                break
            except OSError:
                time.sleep(1)
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
             "--window-size=1400,900", "--virtual-time-budget=20000", "--dump-dom",
             url.group(0)], capture_output=True, text=True, timeout=120).stdout
        assert "Run Name" in dom and "old-sweep-1" in dom  # the runs table, with the run
        assert "No data available for the selected time range" not in dom  # not GenAI's view
    finally:
        server.terminate()  # by its own handle
        server.wait(timeout=30)
