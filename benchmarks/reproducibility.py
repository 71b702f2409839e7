"""Reproducibility benchmark: does the default sweep give the same answer on other seeds?

Runs a sweep spec twice, on two disjoint seed sets (the spec's seeds, then as many seeds
following its largest), each with its own MLflow store and Ray storage, through the same
``bench sweep`` a user types, and compares the two reports' comparisons:

* the Spearman rank correlation of the arms' means of the headline metric;
* the share of arms whose verdict against the reference (better / worse / no detectable
  difference, Holm-adjusted) is the same in both seed sets, and the verdicts that are
  significant in the same direction in both;
* whether the spec's validity controls behaved in each set.

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


def read_comparison(store: Path, name: str, out: Path):
    """The report of sweep ``name`` in ``store``, written to ``out``; returns its data and
    comparison frame."""
    from bench.report import build_report
    from bench.report.reading import find_parent, load_sweep
    from bench.report.tables import compare, control_lines, order_labels, summarise
    from bench.tracking import open_store

    uri = f"sqlite:///{store}"
    build_report(name, uri, out)
    client = open_store(uri)
    data = load_sweep(client, find_parent(client, name), uri)
    comparison = compare(data, order_labels(data, summarise(data))).set_index("label")
    return data, comparison, control_lines(data, comparison.reset_index())


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
        sweep, comparison, controls = read_comparison(store, data["name"],
                                                      root / f"report-{label}")
        results.append((label, seeds, wall, sweep, comparison, controls))

    (_, _, _, sweep, a, controls_a), (_, _, _, _, b, controls_b) = results
    arms = [label for label in a.index if label in b.index]
    rho = spearmanr(a.loc[arms, "mean"], b.loc[arms, "mean"]).statistic
    compared = [arm for arm in arms if a.loc[arm, "verdict"] != "reference"]
    agree = [arm for arm in compared if a.loc[arm, "verdict"] == b.loc[arm, "verdict"]]
    significant = [arm for arm in agree if a.loc[arm, "verdict"] in ("better", "worse")]

    print(f"\nreproducibility of {args.spec} ({sweep.headline.label}, reports under {root})\n")
    print("| seed set | seeds | wall s |")
    print("|---|---|---|")
    for label, seeds, wall, *_ in results:
        print(f"| {label} | {seeds[0]}–{seeds[-1]} ({len(seeds)}) | {wall:.0f} |")
    print("\n| arm | mean A | mean B | verdict A | p Holm A | verdict B | p Holm B |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {a.loc[arm, 'mean']:.4g} | {b.loc[arm, 'mean']:.4g} "
              f"| {a.loc[arm, 'verdict']} | {a.loc[arm, 'p_holm']:.3g} "
              f"| {b.loc[arm, 'verdict']} | {b.loc[arm, 'p_holm']:.3g} |")
    print(f"\nSpearman of arm means: {rho:.3f} over {len(arms)} arms")
    print(f"verdict agreement: {len(agree)}/{len(compared)} = {len(agree) / len(compared):.0%}")
    print(f"significant in the same direction in both: {len(significant)} "
          f"({', '.join(significant) or 'none'})")
    for label, lines in (("A", controls_a), ("B", controls_b)):
        for line in lines:
            print(f"seed set {label}: {line}")


if __name__ == "__main__":
    main()
