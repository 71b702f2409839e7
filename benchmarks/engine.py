"""Engine benchmark: `bench run` per generator on a preset, timed and memory-measured.

Each run is a separate `bench run` process under `/usr/bin/time -v` (wall time and peak
resident memory of the whole process). Prints one table: FD at step 0 and at the end (both on
the same `eval.n_curve` latents, so their ratio is the drop), the final metrics, wall time and
peak memory.

    python benchmarks/engine.py --preset gmm2d --generators reverse_kl pearson forward_kl
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_GENERATORS = ["reverse_kl", "pearson", "forward_kl", "log_squared", "alpha:0.5",
                      "jensen_shannon", "hellinger"]


def timed_run(preset: str, generator: str, seed: int, out: Path) -> tuple[float, float]:
    """Run `bench run`; return (wall seconds, peak RSS MiB) as /usr/bin/time measured them."""
    name, _, alpha = generator.partition(":")
    command = [sys.executable, "-m", "bench.cli", "run", "--preset", preset, "--generator", name,
               "--seed", str(seed), "--out", str(out)]
    if alpha:
        command += ["--alpha", alpha]
    timer = shutil.which("time") or "/usr/bin/time"
    done = subprocess.run([timer, "-v", *command], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{generator}: bench run failed\n{done.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return hours * 3600 + minutes * 60 + seconds, int(rss.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gmm2d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generators", nargs="+", default=DEFAULT_GENERATORS,
                        help="names; NAME:ALPHA for the parametric families")
    args = parser.parse_args()
    header = ("| generator | FD step 0 | FD end | drop | final fd | nll | modes | precision "
              "| recall | status | wall s | peak MiB |")
    print(f"preset {args.preset}, seed {args.seed}\n")
    print(header)
    print("|" + "---|" * 12)
    with tempfile.TemporaryDirectory() as tmp:
        for generator in args.generators:
            out = Path(tmp) / generator.replace(":", "_")
            wall, rss = timed_run(args.preset, generator, args.seed, out)
            records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
            curve = [r for r in records if any(k.startswith("fd_n") for k in r)]
            fd_key = next(k for k in curve[0] if k.startswith("fd_n"))
            first, last = curve[0][fd_key], curve[-1][fd_key]
            final = json.loads((out / "final_metrics.json").read_text())
            m = final["metrics"]

            def pick(prefix: str, metrics: dict = m) -> float:
                return next((v for k, v in metrics.items() if k.startswith(prefix)),
                            float("nan"))

            print(f"| {generator} | {first:.4f} | {last:.4f} | {first / last:.1f}x "
                  f"| {pick('fd_n'):.4f} | {pick('nll_n'):.3f} | {pick('modes_covered'):.0f} "
                  f"| {pick('precision'):.3f} | {pick('recall'):.3f} | {final['status']} "
                  f"| {wall:.1f} | {rss:.0f} |", flush=True)
    final_fd = next(k for k in m if k.startswith("fd_n"))
    print(f"\nFD columns: {fd_key} (curve), final fd = {final_fd}")


if __name__ == "__main__":
    main()
