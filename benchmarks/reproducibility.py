"""Reproducibility benchmark: does the default sweep give the same answer on other seeds?

Runs a sweep spec twice, on two disjoint seed sets (the spec's seeds, then as many seeds
following its largest), each with its own MLflow store and Ray storage, through the same
``bench sweep`` a user types, and compares the two reports' verdicts (Holm over the spec's
declared confirmatory family), budget by budget and for time to target:

* verdict agreement (better / worse / no detectable difference the same in both sets);
* the number of significant verdicts in each set, how many replicate (significant in both,
  same sign) and how many flip sign;
* the A/A control's and the positive control's verdicts in each set;
* the Spearman rank correlation of the arms' headline means at the last budget.

    python benchmarks/reproducibility.py sweeps/divergences.yaml --cpus 2 --out repro

``--out`` keeps both stores and writes both reports under it; without it they go to a
temporary directory. ``--reuse`` reads the stores already under ``--out`` instead of sweeping
again (to re-analyse after a change to the report).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from scipy.stats import spearmanr


def run_seed_set(spec_path: Path, seeds: list[int], workdir: Path, cpus: int) -> tuple[Path, float]:
    """``bench sweep`` on ``seeds`` in ``workdir`` (its own store); returns (store, wall s).
    The spec's own seeds run the spec file itself (its report then names it); other seeds a
    copy of it in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(spec_path.read_text())
    spec = spec_path
    if seeds != data.get("seeds", [0]):
        data["seeds"] = seeds
        spec = workdir / spec_path.name
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
    store = workdir / "mlflow.db"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.cli", "sweep", str(spec), "--tracking-uri",
                    f"sqlite:///{store}", "--storage", str(workdir / "ray"), "--num-cpus",
                    str(cpus)], cwd=workdir, check=True)
    return store, time.perf_counter() - started


def read_verdicts(store: Path, name: str, out: Path):
    """The report of sweep ``name`` in ``store``, written to ``out``; returns its data and its
    comparisons per budget (:func:`bench.report.verdicts.compare_budgets`)."""
    from bench.report import build_report
    from bench.report.reading import find_parent, load_sweep
    from bench.report.tables import order_labels, summarise
    from bench.report.verdicts import compare_budgets, family_from
    from bench.tracking import open_store

    uri = f"sqlite:///{store}"
    build_report(name, uri, out)
    client = open_store(uri)
    data = load_sweep(client, find_parent(client, name), uri)
    labels = order_labels(data, summarise(data))
    return data, compare_budgets(data, labels, family_from(data)), summarise(data)


FLAGGED = ("better", "worse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="analyse the stores under --out")
    args = parser.parse_args()
    if args.reuse and args.out is None:
        parser.error("--reuse needs --out")
    spec_path = args.spec.resolve()
    data = yaml.safe_load(spec_path.read_text())
    first = list(data.get("seeds", [0]))
    second = list(range(max(first) + 1, max(first) + 1 + len(first)))
    root = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="repro-"))

    results = []
    for label, seeds in (("A", first), ("B", second)):
        workdir = root / f"seeds-{label}"
        store, wall = ((workdir / "mlflow.db", float("nan")) if args.reuse
                       else run_seed_set(spec_path, seeds, workdir, args.cpus))
        sweep, frame, summary = read_verdicts(store, data["name"], root / f"report-{label}")
        results.append((label, seeds, wall, sweep, frame, summary))

    (_, _, _, sweep, a, summary_a), (_, _, _, _, b, summary_b) = results
    keyed_a = a.set_index(["label", "budget"])
    keyed_b = b.set_index(["label", "budget"])
    cells = [key for key in keyed_a.index if key in keyed_b.index]
    controls = sweep.controls
    arms = {label for label, _ in cells} - set(controls.values())
    print(f"\nreproducibility of {args.spec} ({sweep.headline.label}; reports under {root})\n")
    print("| seed set | seeds | wall s |")
    print("|---|---|---|")
    for label, seeds, wall, *_ in results:
        print(f"| {label} | {seeds[0]}–{seeds[-1]} ({len(seeds)}) | {wall:.0f} |")
    print("\n| budget | family | verdicts agree | significant A | significant B | replicate "
          "(both, same sign) | flip sign | A/A flagged (A, B) | positive control (A, B) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for budget in dict.fromkeys(budget for _, budget in cells):
        here = [cell for cell in cells if cell[1] == budget and cell[0] in arms]
        va = {cell: keyed_a.loc[cell, "verdict"] for cell in here}
        vb = {cell: keyed_b.loc[cell, "verdict"] for cell in here}
        agree = sum(va[c] == vb[c] for c in here)
        sig_a = [c for c in here if va[c] in FLAGGED]
        sig_b = [c for c in here if vb[c] in FLAGGED]
        replicate = sum(va[c] == vb[c] and va[c] in FLAGGED for c in here)
        flips = sum(va[c] in FLAGGED and vb[c] in FLAGGED and va[c] != vb[c] for c in here)
        family = "confirmatory" if bool(keyed_a.loc[here[0], "confirmatory"]) else \
            "exploratory"

        def control(role: str, budget: object = budget) -> str:
            cell = (controls.get(role), budget)
            if cell not in keyed_a.index or cell not in keyed_b.index:
                return "–"
            return f"{keyed_a.loc[cell, 'verdict']}, {keyed_b.loc[cell, 'verdict']}"

        name = budget if isinstance(budget, str) else f"step {budget}"
        print(f"| {name} | {family} | {agree}/{len(here)} | {len(sig_a)} | {len(sig_b)} | "
              f"{replicate} | {flips} | {control('aa')} | {control('positive')} |")
    key = sweep.headline.key
    means_a = summary_a[summary_a.metric == key].set_index("label")["mean"]
    means_b = summary_b[summary_b.metric == key].set_index("label")["mean"]
    common = [arm for arm in means_a.index if arm in means_b.index]
    rho = spearmanr(means_a[common], means_b[common]).statistic
    print(f"\nSpearman of the arms' {key} means at the last budget: {rho:.3f} over "
          f"{len(common)} arms")


if __name__ == "__main__":
    main()
