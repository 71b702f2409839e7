"""Sweep benchmark: wall time, process-tree memory and parallel efficiency of `bench sweep`,
and the wall time of the `bench report` that follows it.

Runs `bench sweep SPEC` in a fresh working directory (its own MLflow store and Ray storage),
samples the memory of the whole process tree (the driver, Ray's processes and its trial workers)
from /proc every 2 s (reading /proc costs CPU the sweep itself needs), reads the trials' run
times back from MLflow, then renders the sweep's report:

    parallel efficiency = sum of trial run times / (CPUs x sweep wall time)

A run's time is `wall_time_s` as `run_seed_batch` measured it (training and evaluation; not
the worker's start-up); a member of a seed batch records its share of the batch's time, so the
runs of a trial sum to the trial's time. Memory is reported as the peak of the summed RSS
(counts shared library pages once per process, so it overstates) and of the summed PSS (shares
them out).

    python benchmarks/sweep.py sweeps/divergences.yaml --cpus 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += children.get(pid, [])
    return tree


def tree_memory_mib(root: int) -> tuple[float, float]:
    """Summed (RSS, PSS) of the process tree in MiB, from /proc/PID/smaps_rollup."""
    rss = pss = 0
    for pid in process_tree(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    spec = args.spec.resolve()
    with tempfile.TemporaryDirectory() as workdir:
        uri = f"sqlite:///{workdir}/mlflow.db"
        command = [sys.executable, "-m", "bench.cli", "sweep", str(spec), "--tracking-uri", uri,
                   "--storage", f"{workdir}/ray", "--num-cpus", str(args.cpus)]
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir)
        peak_rss = peak_pss = 0.0
        while process.poll() is None:
            rss, pss = tree_memory_mib(process.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(2.0)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            sys.exit(f"bench sweep exited {process.returncode}")

        import mlflow

        from dibregman.results import ELAPSED

        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.`mlflow.parentRunId` != ''", max_results=10_000)
        run_time = sum(r.data.metrics.get(ELAPSED, 0.0) for r in runs)
        trials = {r.data.tags.get("ray.trial_id", r.info.run_id) for r in runs}
        statuses = [r.data.tags.get("status") for r in runs]
        started_report = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench.cli", "report", "--tracking-uri", uri,
                        "--out", f"{workdir}/report"], cwd=workdir, check=True)
        report_wall = time.perf_counter() - started_report
    print("\n| spec | runs | trials | statuses | sweep wall s | report wall s | sweep + report s "
          "| s per seed-arm (run time) | s per seed-arm (wall x CPUs) | CPUs "
          "| parallel efficiency | peak tree RSS MiB | peak tree PSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses), key=str))
    print(f"| {args.spec} | {len(runs)} | {len(trials)} | {counts} | {wall:.0f} "
          f"| {report_wall:.0f} | {wall + report_wall:.0f} | {run_time / len(runs):.2f} "
          f"| {wall * args.cpus / len(runs):.2f} | {args.cpus} "
          f"| {run_time / (args.cpus * wall):.1%} | {peak_rss:.0f} | {peak_pss:.0f} |")


if __name__ == "__main__":
    main()
