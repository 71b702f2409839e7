"""Sweeps on a real local Ray runtime with a real sqlite MLflow store in a temporary directory."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.spec import load_spec
from bench.sweep import run_sweep
from bench.tracking import open_store
from dibregman.config import flatten, with_overrides
from dibregman.presets import get_preset

REPO = Path(__file__).resolve().parent.parent


def write_spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def logged_step(client: mlflow.MlflowClient, run) -> int:
    """The last generator step whose record reached ``run`` in MLflow (0: none yet)."""
    return max((m.step for m in client.get_metric_history(run.info.run_id, "weight_mean")),
               default=0)


def children(client: mlflow.MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_grid_sweep_tracks_one_parent_and_a_child_per_trial(grid_sweep):
    """Two generators finish; a third trial forced to diverge is a finished, diverged run."""
    uri, summary, _ = grid_sweep
    assert summary.counts == {"finished": 4, "diverged": 2, "stopped": 0, "failed": 0}
    assert not summary.interrupted

    client = mlflow.MlflowClient(uri)
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.name"] == "grid"
    runs = {r.info.run_name: r for r in children(client, summary.parent_run_id)}
    diverging = "forward_kl-lr=1e+12-max_nonfinite_steps=2-generator_steps=40"
    assert set(runs) == {f"{g}-s{s}" for g in ("reverse_kl", "pearson", diverging)
                         for s in (0, 1)}
    assert all(r.info.status == "FINISHED" for r in runs.values())

    pearson = runs["pearson-s0"]
    expected = flatten(with_overrides(get_preset("gmm2d-tiny"), {"generator.name": "pearson"}))
    assert pearson.data.params == {
        k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in expected.items()}
    assert pearson.data.tags["status"] == "finished" and pearson.data.tags["seed"] == "0"
    assert {"fd_n512", "nll_n512", "modes_covered_n512", "precision_k3_n256", "recall_k3_n256",
            "mmd_n256", "weight_mean", "ratio_q50", "ratio_accuracy"} <= set(pearson.data.metrics)
    history = client.get_metric_history(pearson.info.run_id, "weight_max")
    # a record every log_every = 2 generator steps and at every evaluation (eval.every = 3)
    assert sorted(m.step for m in history) == [2, 3, 4, 6]
    # a curve holds real evaluations only: its history is the evaluation schedule, although
    # every report to Tune repeats the latest value
    for key in ("fd_n256", "nll_n256"):
        assert [m.step for m in client.get_metric_history(pearson.info.run_id, key)] == [0, 3, 6]
    assert {"config.json", "samples.png", "metrics.jsonl", "final_metrics.json"} <= {
        a.path for a in client.list_artifacts(pearson.info.run_id)}

    diverged = runs[f"{diverging}-s1"]
    assert diverged.data.tags["status"] == "diverged"
    assert "fd_n512" not in diverged.data.metrics


@pytest.mark.slow
def test_optuna_search_runs_its_samples_with_asha(tmp_path):
    """Optuna samples the space; ASHA (rungs at 1, 2, 4, 8 reports, halving) stops the trials
    that trail at a rung: they end ``stopped`` with fewer logged steps than the finished ones.

    One trial at a time, so the samples, the order trials reach each rung and hence ASHA's
    decisions are a deterministic function of the seeds; the curve metric is measured at every
    step so that each rung compares fresh values.
    """
    steps, samples = 8, 5
    spec = load_spec(write_spec(tmp_path, {
        "name": "search", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0],
        "set": {"generator": "alpha", "train.generator_steps": steps, "log_every": 1,
                "eval.every": 1},
        "search": {"num_samples": samples, "sampler_seed": 3,
                   "space": {"generator.alpha": {"uniform": [-1.0, 2.0]},
                             "train.lr": {"loguniform": [1e-4, 1e-2]}}},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent": 1,
    }))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = run_sweep(spec, tracking_uri=uri, storage=tmp_path / "ray", num_cpus=2)
    client = mlflow.MlflowClient(uri)
    runs = children(client, summary.parent_run_id)
    assert len(runs) == samples and sum(summary.counts.values()) == samples
    alphas = {float(r.data.params["generator.alpha"]) for r in runs}
    assert len(alphas) == samples and all(-1.0 <= a <= 2.0 for a in alphas)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert client.get_run(summary.parent_run_id).data.tags["sweep.kind"] == "search"

    by_status = {"finished": [], "stopped": []}
    for run in runs:
        logged = {m.step for m in client.get_metric_history(run.info.run_id, "loss_dm")}
        by_status[run.data.tags["status"]].append((run, logged))
    stopped, finished = by_status["stopped"], by_status["finished"]
    assert len(stopped) >= 1 and len(finished) >= 1, summary.counts
    assert summary.counts == {"finished": len(finished), "diverged": 0,
                              "stopped": len(stopped), "failed": 0}
    assert all(logged == set(range(1, steps + 1)) for _, logged in finished)
    assert all(logged and max(logged) < steps for _, logged in stopped)  # ended at a rung
    assert all("fd_n512" in r.data.metrics for r, _ in finished)
    assert not any("fd_n512" in r.data.metrics for r, _ in stopped)  # no final evaluation


def test_spec_typo_exits_2_naming_the_key_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, {"name": "typo", "preset": "gmm2d-tiny", "metric": "fd_n256",
                                 "grid": {"generator": ["reverse_kl"], "trian.lr": [1e-3]}})
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2
    assert f"{path}: grid.trian.lr: unknown config key" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]  # no store, no storage


def test_dry_run_lists_trials_without_starting_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(REPO / "sweeps" / "divergences.yaml"),
                                      "--dry-run"])
    assert result.exit_code == 0
    assert "160 runs in 10 trials" in result.output
    assert "reverse_kl-seed_stream=1-s0-15" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 85 s: the fast suite's longest test; `nox -s slow` runs it
def test_interrupted_sweep_resumes_and_runs_every_trial_once(tmp_path):
    """Ctrl-C once two trials have finished and another is early in its run: the sweep exits
    130 with one child run per started trial, the ended ones FINISHED and the others KILLED
    (the early one mid-run, never final); ``--resume`` continues those same child runs, runs
    the trials not started, leaves the finished ones alone: every trial ends once, each step
    logged once."""
    steps = 150
    expected = sorted(f"{g}-s{s}" for g in ("reverse_kl", "pearson") for s in range(3))
    spec = write_spec(tmp_path, {
        "name": "resume", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0, 1, 2],
        "set": {"train.generator_steps": steps, "log_every": 10, "checkpoint_every": 30,
                "eval.every": 10},
        "grid": {"generator": ["reverse_kl", "pearson"]},
    })
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "-m", "bench.cli", "sweep", str(spec), "--tracking-uri", uri,
               "--storage", str(tmp_path / "ray"), "--num-cpus", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    client = mlflow.MlflowClient(uri)

    try:
        deadline = time.monotonic() + 180
        finished_before: dict[str, int] = {}
        early = []  # running trials with most of their steps ahead: they cannot end in time
        while time.monotonic() < deadline and (len(finished_before) < 2 or not early):
            time.sleep(0.5)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      "tags.`mlflow.parentRunId` != ''")
            finished_before = {r.info.run_name: r.info.end_time for r in runs
                               if r.info.status == "FINISHED"}
            early = [r.info.run_name for r in runs
                     if r.info.status == "RUNNING" and logged_step(client, r) <= steps // 3]
        if len(finished_before) < 2 or not early:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            pytest.fail(f"not in time: finished {sorted(finished_before)}, early {early}:\n"
                        f"{first.communicate(timeout=30)[0]}")
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, output
    assert "--resume" in output

    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, "tags.`sweep.parent` = 'true'")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    interrupted = client.search_runs(experiments, "tags.`mlflow.parentRunId` != ''")
    names = [r.info.run_name for r in interrupted]
    assert len(set(names)) == len(names) and set(names) <= set(expected)  # one run per trial
    finished = {r.info.run_name: r for r in interrupted if r.info.status == "FINISHED"}
    killed = {r.info.run_name: r for r in interrupted if r.info.status == "KILLED"}
    assert len(finished) + len(killed) == len(interrupted)  # nothing left RUNNING
    assert set(finished_before) <= set(finished) and len(finished) < len(expected)
    assert set(early) <= set(killed)
    for name, run in finished.items():
        assert run.data.tags["status"] == "finished" and logged_step(client, run) == steps, name
    for name, run in killed.items():
        mid_run = (run.data.tags["status"] == "running" and logged_step(client, run) < steps
                   and "fd_n512" not in run.data.metrics)
        # A trial can report its final record just as the interrupt lands, before Tune ends it.
        just_ended = name not in early and run.data.tags["status"] == "finished" and (
            logged_step(client, run) == steps and "fd_n512" in run.data.metrics)
        assert mid_run or just_ended, (name, run.data.tags["status"], logged_step(client, run))
    assert f"sweep resume: {len(finished)} finished in" in " ".join(output.split())

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"sweep resume: {len(expected)} finished in" in " ".join(resumed.stdout.split())
    runs = client.search_runs(experiments, "tags.`mlflow.parentRunId` != ''")
    assert sorted(r.info.run_name for r in runs) == expected
    assert all(r.info.status == "FINISHED" and r.data.tags["status"] == "finished" for r in runs)
    run_ids = {r.info.run_name: r.info.run_id for r in runs}
    for run in interrupted:  # killed trials continued in their own child run
        assert run_ids[run.info.run_name] == run.info.run_id, run.info.run_name
    for run in runs:
        if run.info.run_name in finished:  # finished trials were not run again
            assert run.info.end_time == finished[run.info.run_name].info.end_time
        history = client.get_metric_history(run.info.run_id, "weight_mean")
        steps_logged = [m.step for m in history]
        assert sorted(steps_logged) == list(range(10, steps + 1, 10)), run.info.run_name
    parent = client.get_run(parents[0].info.run_id)
    assert parent.info.status == "FINISHED"
    assert len(client.search_runs(experiments, "tags.`sweep.parent` = 'true'")) == 1


@pytest.mark.slow
def test_alpha_search_spec_end_to_end(tmp_path):
    spec = load_spec(REPO / "sweeps" / "alpha_search.yaml")
    summary = run_sweep(spec, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        storage=tmp_path / "ray", num_cpus=2)
    assert sum(summary.counts.values()) == spec.search.num_samples
    assert summary.arms and all(n == 1 for _, _, n in summary.arms)  # one seed per sample


def test_validity_controls_on_a_tiny_sweep_of_seed_batches(tmp_path):
    """A real sweep with both controls, 7 seeds trained as one seed batch per arm, measured at
    two budgets: the A/A arm (reverse_kl on random stream 1) draws other numbers than
    reverse_kl at every seed, yet is paired with it by seed; the positive arm (stopped after 1
    of 40 student steps) is flagged worse. 7 seeds is the fewest at which the sign-flip test
    can pass Holm over these 2 comparisons (p = 2 / 2^7). Every seed of a batch is its own
    MLflow child run, and the budgets' values are MLflow curves ending at the final value."""
    from bench.report import build_report
    from bench.report.reading import find_parent, load_sweep

    seeds = list(range(7))
    path = write_spec(tmp_path, {
        "name": "controls", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": seeds,
        "seed_batch": 7,
        "set": {"train.generator_steps": 40, "eval.every": 40, "checkpoint_every": 40,
                "log_every": 20},
        "grid": {"generator": ["reverse_kl"]},
        "budgets": [20, 40],
        "controls": {"aa": {"generator": "reverse_kl", "seed_stream": 1},
                     "positive": {"generator": "reverse_kl", "train.lr": 1e-12}},
    })
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = run_sweep(load_spec(path), tracking_uri=uri, storage=tmp_path / "ray", num_cpus=2)
    assert summary.counts["finished"] == 21
    out = build_report("controls", uri, tmp_path / "report")
    client = mlflow.MlflowClient(uri)
    child_runs = children(client, summary.parent_run_id)
    assert len(child_runs) == 21 and len({r.data.tags["ray.trial_id"] for r in child_runs}) == 3
    assert sorted(r.info.run_name for r in child_runs if r.data.tags["arm"] == "reverse_kl") == [
        f"reverse_kl-s{seed}" for seed in seeds]
    assert all(r.info.status == "FINISHED" and r.data.tags["seed_batch"] == str(seeds)
               and "fd_n512" in r.data.metrics for r in child_runs)
    for run in child_runs:  # the headline at each budget, the last one the final value
        history = client.get_metric_history(run.info.run_id, "off_mode_n512")
        assert [m.step for m in history] == [20, 40]
        assert history[-1].value == run.data.metrics["off_mode_n512"]
    runs = load_sweep(client, find_parent(client, "controls"), uri).runs
    fd = {label: runs[runs.label == label].set_index("seed").fd_n512.sort_index()
          for label in ("reverse_kl", "reverse_kl seed_stream=1", "reverse_kl train.lr=1e-12")}
    assert (fd["reverse_kl seed_stream=1"] != fd["reverse_kl"]).all()  # independent randomness
    assert (fd["reverse_kl train.lr=1e-12"] > fd["reverse_kl"]).all()
    text = (out / "README.md").read_text()
    assert "A/A control reverse_kl seed_stream=1 (the reference's method on independent " \
           "randomness): flagged in " in text
    assert ("Positive control reverse_kl train.lr=1e-12 (known to differ slightly): flagged "
            "at ") in text and "step 20 (worse), step 40 (worse)" in text
    long = (out / "results_long.csv").read_text().splitlines()
    assert long[0] == "trial,seed,arm,budget,metric,value"


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from /proc (to stop a killed driver's Ray by process id)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], list(children.get(root, []))
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier += children.get(pid, [])
    return found


def command_line(pid: int) -> str:
    """The process's command line; a Ray trial worker's reads ``ray::ImplicitFunc.train``."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


KILL_SPEC = {
    "name": "killed", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0, 1, 2],
    # The curve metric every 50 steps, checkpoints every 30, records every 10: a trial restored
    # from its step-30 checkpoint reports steps 40 before it evaluates again.
    "set": {"train.generator_steps": 150, "log_every": 10, "checkpoint_every": 30,
            "eval.every": 50},
    "grid": {"generator": ["reverse_kl", "pearson"]},
}


def kill_spec(seed_batch: int) -> dict:
    """KILL_SPEC in seed batches; with batches, twice as many trials as CPUs, so that some end
    while others run."""
    seeds = KILL_SPEC["seeds"] if seed_batch == 1 else list(range(4 * seed_batch // 2))
    return {**KILL_SPEC, "seeds": seeds, "seed_batch": seed_batch}


def uninterrupted_final(tmp_path: Path, name: str, seed_batch: int) -> dict:
    """The final metrics of run ``name`` (e.g. ``pearson-s1``) run without interruption, alone
    or in its seed batch (members match runs alone only up to float rounding)."""
    from dibregman.run import run_seed_batch

    generator, seed = name.rsplit("-s", 1)
    seeds = kill_spec(seed_batch)["seeds"]
    batch = next(b for b in (seeds[i:i + seed_batch] for i in range(0, len(seeds), seed_batch))
                 if int(seed) in b)
    cfg = with_overrides(get_preset("gmm2d-tiny"), {**KILL_SPEC["set"],
                                                     "generator.name": generator})
    dirs = [tmp_path / "reference" / f"{generator}-s{s}" for s in batch]
    results = run_seed_batch(cfg, batch, dirs)  # stored results when already run
    return results[batch.index(int(seed))].metrics


def assert_every_trial_finished_once(client, tmp_path, finished_before: dict[str, int],
                                     seed_batch: int):
    """One FINISHED child per run, nothing RUNNING, each record step logged once, finished
    runs' end times untouched, and final metrics equal to uninterrupted runs'."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, "tags.`sweep.parent` = 'true'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = client.search_runs(experiments, "tags.`mlflow.parentRunId` != ''")
    expected = sorted(f"{g}-s{s}" for g in ("reverse_kl", "pearson")
                      for s in kill_spec(seed_batch)["seeds"])
    assert sorted(r.info.run_name for r in runs) == expected
    assert all(r.info.status == "FINISHED" and r.data.tags["status"] == "finished" for r in runs)
    for run in runs:
        name = run.info.run_name
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "weight_mean")]
        assert sorted(steps) == list(range(10, 151, 10)), name
        if name in finished_before:
            assert run.info.end_time == finished_before[name], name
        reference = uninterrupted_final(tmp_path, name, seed_batch)
        assert run.data.metrics["fd_n512"] == reference["fd_n512"], name


@pytest.mark.slow
@pytest.mark.parametrize("seed_batch", [1, 3])
def test_sweep_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, seed_batch):
    """SIGKILL the driver (then its Ray processes, by process id) once two trials have finished
    and another is past its first checkpoint: MLflow is left with RUNNING runs; ``--resume``
    ends every trial once, with the finished trials untouched and every final metric equal to
    an uninterrupted run's."""
    spec = write_spec(tmp_path, kill_spec(seed_batch))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "-m", "bench.cli", "sweep", str(spec), "--tracking-uri", uri,
               "--storage", str(tmp_path / "ray"), "--num-cpus", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    client = open_store(uri)  # the test reads the store while the sweep writes it
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    finished_before: dict[str, int] = {}
    past_checkpoint: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and (len(finished_before) < 2 or not past_checkpoint):
            time.sleep(0.3)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      "tags.`mlflow.parentRunId` != ''")
            finished_before = {r.info.run_name: r.info.end_time for r in runs
                               if r.info.status == "FINISHED"}
            past_checkpoint = [r.info.run_name for r in runs
                               if r.info.status == "RUNNING" and 40 <= logged_step(client, r) < 150]
        ray_processes = descendants(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        for pid in ray_processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert len(finished_before) >= 2 and past_checkpoint, "the sweep was not killed in time"
    experiments = [e.experiment_id for e in client.search_experiments()]
    left = client.search_runs(experiments, "attributes.status = 'RUNNING'")
    assert left  # a SIGKILLed driver closes nothing: the resume must

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_every_trial_finished_once(client, tmp_path, finished_before, seed_batch)


@pytest.mark.slow
@pytest.mark.parametrize("seed_batch", [1, 3])
def test_a_worker_killed_mid_trial_is_retried_from_its_checkpoint(tmp_path, seed_batch):
    """SIGKILL the Ray worker running a trial past its first checkpoint: Tune retries the trial
    from that checkpoint; the sweep exits 0 and every trial ends once with the uninterrupted
    result, the retried one tagged ``retries``."""
    spec = write_spec(tmp_path, kill_spec(seed_batch))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "-m", "bench.cli", "sweep", str(spec), "--tracking-uri", uri,
               "--storage", str(tmp_path / "ray"), "--num-cpus", "2"]
    client = open_store(uri)
    sweep = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.3)
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      "attributes.status = 'RUNNING' and "
                                      "tags.`mlflow.parentRunId` != ''")
            ready = [r for r in runs if 40 <= logged_step(client, r) < 130]
            workers = [pid for pid in descendants(sweep.pid)
                       if command_line(pid).startswith("ray::ImplicitFunc")]
            if ready and workers:
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
        output, _ = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert killed is not None, "no trial worker was found in time"
    assert sweep.returncode == 0, output
    assert_every_trial_finished_once(client, tmp_path, {}, seed_batch)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`mlflow.parentRunId` != ''")
    assert sum(int(r.data.tags.get("retries", "0")) for r in runs) >= 1


def test_last_values_skip_a_line_a_kill_cut_short(tmp_path):
    from bench.sweep import last_values

    path = tmp_path / "metrics.jsonl"
    assert last_values(path, {"fd_n256"}) == {}
    path.write_text('{"step": 10, "fd_n256": 0.5, "loss": 1}\n{"step": 20, "loss": 2}\n'
                    '{"step": 30, "fd_n256": 0.25}\n{"step": 40, "fd_n2')
    assert last_values(path, {"fd_n256"}) == {"fd_n256": 0.25}


@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_take_turns(tmp_path):
    """Four processes open the same new sqlite store at the same moment: without the lock in
    open_store, MLflow's migrations collide (duplicate column name); with it, all succeed."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = ("import sys, time; from bench.tracking import open_store; "
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); open_store(sys.argv[1])")
    start = time.time() + 8  # after every interpreter has imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(start)],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert open_store(uri).search_experiments()  # one store, migrated, with its Default


def test_sweeps_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    import datetime

    import bench.sweep

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 27, 12, 0, 0)

    monkeypatch.setattr(bench.sweep.resume, "datetime", Frozen)
    made = [bench.sweep.new_experiment_dir(tmp_path, "s") for _ in range(3)]
    assert [p.name for p in made] == ["s-20261127-120000", "s-20261127-120000-2",
                                      "s-20261127-120000-3"]
    assert all(p.is_dir() for p in made)


def test_a_trial_asking_for_a_missing_gpu_exits_2_instead_of_waiting(tmp_path, monkeypatch):
    """Tune would keep such a trial pending forever; the sweep refuses it up front, having
    written nothing (no store, no Ray experiment directory)."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, {"name": "gpu", "preset": "gmm2d-tiny", "metric": "fd_n256",
                                 "grid": {"generator": ["reverse_kl"]},
                                 "resources": {"cpu": 1, "gpu": 1}})
    result = CliRunner().invoke(app, ["sweep", str(spec), "--tracking-uri",
                                      f"sqlite:///{tmp_path}/mlflow.db", "--storage",
                                      str(tmp_path / "ray"), "--num-cpus", "1"])
    assert result.exit_code == 2, result.output
    assert "resources.gpu: a trial asks for 1 GPUs but the Ray runtime has 0" in " ".join(
        result.output.split())
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


def test_a_private_runtime_listens_on_loopback_only():
    """Every listening socket of the private runtime bench sweep starts (GCS, raylet, driver,
    workers, the runtime-env agent) is on a loopback address: no other host can submit work."""
    import psutil
    import ray

    from bench.sweep import exposed_listeners, start_ray

    start_ray(None, 1)
    try:
        me = psutil.Process()
        pids = {me.pid, *(child.pid for child in me.children(recursive=True))}
        listening = [c for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert len(listening) >= 3  # the runtime's servers were found
        assert exposed_listeners() == []
    finally:
        ray.shutdown()


def test_a_store_that_cannot_be_created_stops_the_sweep_before_anything_is_written(tmp_path):
    """The store's folder is a file: one line naming the store and why, exit 2, no Ray storage
    and no store file written (the store opens before anything is written)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "nostore", "preset": "gmm2d-tiny",
                                    "metric": "fd_n256", "seeds": [0],
                                    "grid": {"generator": ["pearson"]}}))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--tracking-uri",
                                      f"sqlite:///{blocker}/mlflow.db", "--storage",
                                      str(tmp_path / "ray")])
    assert result.exit_code == 2
    assert f"cannot open the MLflow store sqlite:///{blocker}/mlflow.db" in result.output
    assert not (tmp_path / "ray").exists()
    assert blocker.read_text().startswith("a file")
