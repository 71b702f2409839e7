"""Task-suite benchmark: which (teacher, metric) pairs can tell Bregman generators apart?

For each candidate task it trains the generators that theory says differ (mode-seeking
``pearson``, mode-covering ``forward_kl``, and ``reverse_kl``, i.e. DMD) on the same seeds, then
measures, for every final metric, the paired effect between each pair of generators against the
seed noise: the paired effect size

    d_z = mean_i(a_i - b_i) / sd_i(a_i - b_i)      (same seed i = same initialisation, latents)

on log values for metrics that are positive errors (FD, MMD², the NLL's excess is not, so it is
compared raw), and the seeds needed for a two-sided paired test at alpha = 0.05 / 12 (Holm's
first step over the default sweep's 12 comparisons) with power 0.8, ``n ~ ((z_a + z_b) / d_z)^2 +
2``. A metric whose best pair needs few seeds discriminates; one needing hundreds does not. It
also prints the best arm's quality next to the teacher's own 35-step Heun samples, because a
comparison of students that all fail says nothing about the generators.

    python benchmarks/tasks.py --seeds 6 --workers 2 --out tasks.csv

Runs are independent processes (one torch thread each) in a process pool.
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

# Candidate tasks: a preset and the overrides that make the teacher.
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "ring": ("gmm2d", {}),
    "ring-3%": ("gmm2d", {"mixture.weights": (0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.07, 0.03)}),
    "grid5x5": ("gmm2d-grid", {}),
    "gmm16d-close": ("gmm16d", {"mixture.scale": 1.0}),
}
GENERATORS = ("reverse_kl", "forward_kl", "pearson")
# Metrics compared on the log scale (positive errors spread over orders of magnitude).
LOG_METRICS = ("fd_", "mmd_")
Z_ALPHA = 3.03  # two-sided, alpha = 0.05 / 12
Z_POWER = 0.84  # power 0.8


def run_one(job: tuple[str, str, int, dict[str, Any]]) -> dict[str, Any]:
    """Train one (task, generator, seed) and return its final metrics."""
    import torch

    from dibregman.config import with_overrides
    from dibregman.presets import get_preset
    from dibregman.run import run_experiment

    task, generator, seed, common = job
    preset, overrides = TASKS[task]
    torch.set_num_threads(1)
    cfg = with_overrides(get_preset(preset), {**overrides, **common, "generator.name": generator,
                                              "seed": seed, "num_threads": 1})
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        result = run_experiment(cfg, run_dir)
        wall = time.perf_counter() - started
    return {"task": task, "generator": generator, "seed": seed, "wall_s": wall,
            **result.metrics}


def teacher_reference(task: str, n: int = 10_000) -> dict[str, float]:
    """Mode coverage and off-mode share of the teacher's own Heun samples of ``n`` latents."""
    import torch

    from dibregman.config import with_overrides
    from dibregman.metrics.mixture import mode_stats
    from dibregman.presets import get_preset
    from dibregman.teachers import teacher_for

    preset, overrides = TASKS[task]
    teacher = teacher_for(with_overrides(get_preset(preset), overrides), torch.device("cpu"))
    latents = torch.randn(n, *teacher.shape, generator=torch.Generator().manual_seed(0))
    stats = mode_stats(teacher.sample_from(latents).float(), teacher.means.float(),
                       teacher.stds.float(), teacher.weights.float())
    return {"modes": stats.covered, "off_mode": stats.off_mode_fraction}


def seeds_needed(d_z: float) -> float:
    """Seeds for a paired two-sided test at alpha 0.05/12 with power 0.8 (normal approx.)."""
    return math.inf if d_z == 0 else ((Z_ALPHA + Z_POWER) / abs(d_z)) ** 2 + 2


def discrimination(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task and metric: the pair of generators with the largest paired |d_z|."""
    metrics = [c for c in frame.columns
               if c not in ("task", "generator", "seed", "wall_s") and frame[c].notna().all()]
    rows = []
    for (task, sub), metric in itertools.product(frame.groupby("task"), metrics):
        table = sub.pivot(index="seed", columns="generator", values=metric)
        if metric.startswith(LOG_METRICS) and (table > 0).all().all():
            table = np.log(table)
        best = (0.0, "", "")
        for a, b in itertools.combinations(table.columns, 2):
            diff = (table[a] - table[b]).dropna()
            sd = diff.std(ddof=1)
            d_z = diff.mean() / sd if sd > 0 else 0.0
            if abs(d_z) > abs(best[0]):
                best = (float(d_z), a, b)
        noise = float(table.std(ddof=1).mean())
        rows.append({"task": task, "metric": metric, "pair": f"{best[1]} vs {best[2]}",
                     "d_z": best[0], "seed_sd": noise, "seeds_needed": seeds_needed(best[0])})
    return pd.DataFrame(rows).sort_values(["task", "seeds_needed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS))
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every run, e.g. train.generator_steps=400")
    parser.add_argument("--out", default="tasks.csv")
    args = parser.parse_args()
    common = dict(item.split("=", 1) for item in args.set)
    jobs = [(t, g, s, common) for t in args.tasks for g in args.generators
            for s in range(args.seeds)]
    records = []
    with ProcessPoolExecutor(args.workers) as pool:
        for i, record in enumerate(pool.map(run_one, jobs), 1):
            records.append(record)
            print(f"[{i}/{len(jobs)}] {record['task']} {record['generator']} "
                  f"seed {record['seed']}: {record['wall_s']:.0f} s", flush=True)
    frame = pd.DataFrame(records)
    frame.to_csv(args.out, index=False)
    table = discrimination(frame)
    print("\n| task | metric | most distinct pair | paired d_z | mean seed sd | seeds needed |")
    print("|---|---|---|---|---|---|")
    for row in table.itertuples():
        print(f"| {row.task} | {row.metric} | {row.pair} | {row.d_z:+.2f} | {row.seed_sd:.3g} "
              f"| {row.seeds_needed:.0f} |")
    quality = frame.groupby(["task", "generator"]).mean(numeric_only=True)
    print("\n| task | generator | modes covered | off-mode | precision | recall | s/run | "
          "teacher Heun modes | teacher off-mode |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (task, generator), row in quality.iterrows():
        ref = teacher_reference(task)
        col = {key.split("_n")[0]: value for key, value in row.items()}
        print(f"| {task} | {generator} | {col.get('modes_covered', math.nan):.1f} "
              f"| {col.get('off_mode', math.nan):.3f} | {col.get('precision_k3', math.nan):.3f} "
              f"| {col.get('recall_k3', math.nan):.3f} | {row['wall_s']:.0f} | {ref['modes']} "
              f"| {ref['off_mode']:.4f} |")


if __name__ == "__main__":
    main()
