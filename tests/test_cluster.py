"""`bench sweep --address` against a Ray cluster of two nodes on this machine's loopback
(``ray.cluster_utils.Cluster``, torn down through its own handle)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from bench.sweep.runtime import LOOPBACK_SETTING, keep_loopback


@pytest.fixture
def cluster(monkeypatch):
    """A head of 2 CPUs and a second node of 1, both on 127.0.0.1 (Ray's cluster mode off, as
    for a private runtime, so they bind loopback)."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv(LOOPBACK_SETTING, "0")
    keep_loopback()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def sweep(tmp_path: Path, address: str, spec: dict) -> subprocess.CompletedProcess:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return subprocess.run([sys.executable, "-m", "bench.cli", "sweep", str(path), "--address",
                           address, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                           "--storage", str(tmp_path / "ray")], cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)


@pytest.mark.slow
def test_a_sweep_runs_on_a_two_node_loopback_cluster_through_address(cluster, tmp_path):
    """Three one-process trials, then a two-worker trial (2 x 1 CPU for its ranks and 0.1 for
    its relay: more than any node holds, so its processes span both nodes): every trial
    finishes, every MLflow run is complete, and the two-worker run trained on 2 processes."""
    address = cluster.address
    assert address.startswith("127.0.0.1:")
    started = time.monotonic()
    grid = sweep(tmp_path, address, {
        "name": "cluster", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0, 1, 2],
        "grid": {"generator": ["pearson"]}})
    assert grid.returncode == 0, grid.stdout + grid.stderr
    workers = sweep(tmp_path, address, {
        "name": "cluster-workers", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0],
        "grid": {"generator": ["pearson"]}, "workers_per_trial": 2, "resources": {"cpu": 1}})
    assert workers.returncode == 0, workers.stdout + workers.stderr
    assert time.monotonic() - started < 600

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for name, runs in (("cluster", 3), ("cluster-workers", 1)):
        experiment = client.get_experiment_by_name(name)
        found = client.search_runs([experiment.experiment_id])
        children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == runs and len(found) == runs + 1
        assert all(r.info.status == "FINISHED" for r in found)
        assert all("fd_n256" in r.data.metrics for r in children)
    (provenance,) = (tmp_path / "ray").glob("cluster-workers-*/runs/*/s0/provenance.json")
    assert json.loads(provenance.read_text())["world_size"] == 2


def test_an_address_nobody_answers_at_is_refused_in_seconds(tmp_path):
    """A closed port: exit 2 and one line naming the address and how to start a cluster, in
    seconds rather than Ray's minutes of retries."""
    started = time.monotonic()
    done = sweep(tmp_path, "127.0.0.1:9", {
        "name": "nobody", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0],
        "grid": {"generator": ["pearson"]}})
    assert done.returncode == 2
    assert "no Ray cluster answers at 127.0.0.1:9" in done.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()
