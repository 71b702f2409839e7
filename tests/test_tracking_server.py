"""A team's store: sweeps tracked into a real MLflow tracking server backed by PostgreSQL.

PostgreSQL comes from the ``pgserver`` package (its own binaries, a private data directory,
reachable only through a Unix socket); the MLflow server listens on 127.0.0.1. Both are
stopped by their own handles.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
import yaml

from bench.spec import load_spec
from bench.sweep import run_sweep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited {server.returncode}:\n"
                               f"{server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy in {seconds} s")


@pytest.mark.slow
def test_a_sweep_tracks_into_an_mlflow_server_backed_by_postgresql(tmp_path):
    pgserver = pytest.importorskip("pgserver")
    database = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The psycopg2 driver named explicitly (SQLAlchemy's default for postgresql:// varies).
    backend = database.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_healthy(url, server)
        spec_path = tmp_path / "team.yaml"
        spec_path.write_text(yaml.safe_dump({
            "name": "team", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0, 1],
            "seed_batch": 2, "grid": {"generator": ["reverse_kl", "pearson"]}}))
        summary = run_sweep(load_spec(spec_path), tracking_uri=url, storage=tmp_path / "ray",
                            num_cpus=2)
        assert summary.counts["finished"] == 4 and summary.tracking_uri == url

        client = mlflow.MlflowClient(url)
        parent = client.get_run(summary.parent_run_id)
        assert parent.info.status == "FINISHED"
        runs = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{summary.parent_run_id}'")
        assert sorted(r.info.run_name for r in runs) == [
            "pearson-s0", "pearson-s1", "reverse_kl-s0", "reverse_kl-s1"]
        for run in runs:
            assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
            assert "fd_n512" in run.data.metrics
            assert {"config.json", "samples.png"} <= {
                a.path for a in client.list_artifacts(run.info.run_id)}
        assert (tmp_path / "artifacts").is_dir()  # artifacts went through the server
    finally:
        with_group = server.poll() is None
        if with_group:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        database.cleanup()
