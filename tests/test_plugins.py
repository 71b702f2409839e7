"""A teacher shipped in a separate, pip-installed package (tests/plugin_teacher, entry point
``gauss2d`` of the ``dibregman.teachers`` group) is visible to ``bench list``, ``bench run`` and
``bench sweep``, whose Ray workers must find it too. Every command runs in a subprocess whose
only link to the plugin is ``PYTHONPATH``."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin_teacher"
BENCH = Path(sys.executable).with_name("bench")
COMMAND = [str(BENCH)] if BENCH.exists() else [sys.executable, "-m", "bench.cli"]
BUILT_IN = ("image", "mixture")


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that sees the plugin: it is installed with pip (no index,
    no build isolation) into a fresh target directory, which is prepended to ``PYTHONPATH``."""
    root = tmp_path_factory.mktemp("plugin")
    plugin_dir = root / "source"  # a copy, so the in-tree build leaves the repository clean
    shutil.copytree(PLUGIN_SOURCE, plugin_dir)
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target),
                    str(plugin_dir)], check=True, capture_output=True, text=True, timeout=120)
    assert (target / "gauss_plugin.py").exists()
    return {**base_env(), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def base_env() -> dict[str, str]:
    """This process's environment with a wide terminal, so rich tables keep a row on a line."""
    return {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}


def bench(args: list[str], env: dict[str, str], cwd: Path,
          timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def teacher_rows(output: str) -> dict[str, list[str]]:
    """``name -> cells`` of the rows of `bench list`'s teacher table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 4 and cells[1] in ("vector", "image"):
            rows[cells[0]] = cells
    return rows


def test_bench_list_shows_the_plugin_teacher_only_when_installed(plugin_env, tmp_path):
    with_plugin = bench(["list"], plugin_env, tmp_path)
    assert with_plugin.returncode == 0, with_plugin.stderr
    rows = teacher_rows(with_plugin.stdout)
    assert set(BUILT_IN) <= set(rows)
    assert rows["gauss2d"][:2] == ["gauss2d", "vector"]
    assert rows["gauss2d"][2] == "VectorEvaluator"
    assert rows["gauss2d"][3] == "gauss_plugin:CorrelatedGaussianTeacher"

    without = bench(["list"], base_env(), tmp_path)
    assert without.returncode == 0, without.stderr
    assert set(BUILT_IN) <= set(teacher_rows(without.stdout))
    assert "gauss2d" not in without.stdout


def test_bench_run_distils_the_plugin_teacher_with_the_vector_evaluator(plugin_env, tmp_path):
    out = tmp_path / "run"
    result = bench(["run", "--preset", "gmm2d-tiny", "--set", "teacher=gauss2d", "--out",
                    str(out)], plugin_env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "config.json").read_text())["teacher"] == "gauss2d"

    declared = json.loads((out / "provenance.json").read_text())["metrics"]
    final_keys = {m["key"] for m in declared if m["stage"] == "final" and m["role"] != "cost"}
    assert final_keys == {"fd_n512", "precision_k3_n256", "recall_k3_n256", "mmd_n256"}
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["status"] == "finished"
    assert set(final["metrics"]) == final_keys
    assert all(math.isfinite(v) for v in final["metrics"].values())
    no_density = {m["key"] for m in declared} | set(final["metrics"])
    assert not any(k.startswith(("nll_", "modes_covered_")) for k in no_density)


@pytest.mark.slow
def test_bench_sweep_ray_workers_load_the_plugin_teacher(plugin_env, tmp_path):
    spec = tmp_path / "plugin.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "plugin", "preset": "gmm2d-tiny", "set": {"teacher": "gauss2d"},
        "grid": {"generator": ["reverse_kl", "pearson"]}, "seeds": [0], "metric": "fd_n256",
    }, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = bench(["sweep", str(spec), "--tracking-uri", uri, "--storage",
                    str(tmp_path / "ray"), "--num-cpus", "2"], plugin_env, tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`mlflow.parentRunId` != ''")
    assert sorted(r.info.run_name for r in runs) == ["pearson-s0", "reverse_kl-s0"]
    for run in runs:
        assert run.data.tags["status"] == "finished", run.info.run_name
        assert run.data.params["teacher"] == "gauss2d"
        assert math.isfinite(run.data.metrics["fd_n512"])
        assert not any(k.startswith(("nll_", "modes_covered_")) for k in run.data.metrics)


def test_unknown_teacher_exits_2_naming_it_and_the_valid_ones(plugin_env, tmp_path):
    out = tmp_path / "run"
    result = bench(["run", "--preset", "gmm2d-tiny", "--set", "teacher=gauss3d", "--out",
                    str(out)], plugin_env, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "gauss3d" in lines[0]
    assert all(name in lines[0] for name in ("gauss2d", *BUILT_IN))
    assert not out.exists() and list(tmp_path.iterdir()) == []
