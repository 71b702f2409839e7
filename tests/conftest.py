"""Shared fixtures: a cache root of the session's own, and one real grid sweep (local Ray,
sqlite MLflow) reused by sweep and report tests, since starting Ray costs seconds."""

from pathlib import Path

import pytest
import yaml

from bench.spec import load_spec
from bench.sweep import SweepSummary, run_sweep

SMOKE_GRID = {
    "name": "grid", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0, 1],
    "grid": [{"generator": ["reverse_kl", "pearson"]},
             {"generator": ["forward_kl"], "train.lr": [1e12],
              "train.max_nonfinite_steps": [2], "train.generator_steps": [40]}],
}


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Teachers, domain classifiers and statistics of the whole session go to a cache root of
    its own (``DIBREGMAN_CACHE``, inherited by the Ray workers and subprocesses tests start):
    tests never read or fill the user's ``~/.cache/dibregman``, and share what they build."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIBREGMAN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def grid_sweep(tmp_path_factory) -> tuple[str, SweepSummary, Path]:
    """(tracking URI, summary, directory) of a finished sweep: reverse_kl and pearson finish,
    forward_kl with lr=1e12 diverges; two seeds each."""
    directory = tmp_path_factory.mktemp("grid_sweep")
    path = directory / "grid.yaml"
    path.write_text(yaml.safe_dump(SMOKE_GRID, sort_keys=False))
    uri = f"sqlite:///{directory}/mlflow.db"
    summary = run_sweep(load_spec(path), tracking_uri=uri, storage=directory / "ray",
                        num_cpus=2)
    return uri, summary, directory
