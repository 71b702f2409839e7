"""Fuzz benchmark: thousands of mutated sweep specs and ``--set`` values through the CLI.

Every case must end as *valid* (exit 0) or *rejected* (exit 2 with a one-line ``error:``
message), never with another exit status or an exception (a traceback for the user), and a
rejected case must write nothing. Specs go through ``bench sweep SPEC --dry-run`` (everything a
sweep checks before Ray starts); ``--set KEY=VALUE`` pairs through ``bench run``'s config
builder, the step that rejects them before a run directory exists.

Specs are the default sweep's structure with 1-4 top-level values replaced by random YAML
values (huge integers, non-finite floats, unicode, nesting) or removed, then, for a third of
them, a text mutation of the YAML (a duplicated or dropped line, a deleted character, a
control or non-UTF-8 byte, truncation).

    python benchmarks/fuzz.py --specs 2000 --sets 1000
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from bench.cli import app, build_config
from dibregman.config import Config, ConfigError, config_keys

BASE_SPEC: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "sweeps" / "divergences.yaml").read_text())
SPEC_KEYS = [*BASE_SPEC, "set", "search", "scheduler", "mode", "resources", "max_concurrent",
             "time_budget_s", "bogus"]
KEYS = config_keys(Config)
ODD_TEXT = ["", "é" * 300, "a/b", "../x", "nan", ".inf", "-.inf", "1e400", "[1, 2", "{a: 1}",
            "reverse_kl", "alpha", "gmm2d", "fd_n2000", "off_mode_n10000", "max", "\x00", "\t"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random YAML-able value: scalars of every kind, lists and mappings up to depth 3."""
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2**31, 2**63, -2**63, 2**64, 10**30, rng.randint(-99, 99)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e-300, 1e300, float("nan"), float("inf"), -float("inf"),
                           rng.uniform(-10, 10)])
    if kind in (4, 5, 6):
        return rng.choice(ODD_TEXT + KEYS)
    if kind in (7, 8):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS + ["generator", "cpu", "gpu", "aa", "positive", "x"]):
            random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate_text(text: str, rng: random.Random) -> bytes:
    """One text-level mutation of a YAML document."""
    lines = text.splitlines()
    kind = rng.randrange(5)
    if kind == 0 and lines:  # a duplicated line (often a duplicated key)
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind == 1 and lines:
        del lines[rng.randrange(len(lines))]
    elif kind == 2 and text:
        i = rng.randrange(len(text))
        return (text[:i] + text[i + 1:]).encode()
    elif kind == 3:
        i = rng.randrange(len(text) + 1)
        return text[:i].encode() + rng.choice([b"\xff", b"\x00", b"\x1b[31m", b"\t"]) + \
            text[i:].encode()
    else:
        return text[:rng.randrange(len(text) + 1)].encode()
    return "\n".join(lines).encode()


def mutated_spec(rng: random.Random) -> bytes:
    spec = dict(BASE_SPEC)
    for _ in range(rng.randint(1, 4)):
        key = rng.choice(SPEC_KEYS)
        if key in spec and rng.random() < 0.3:
            del spec[key]
        else:
            spec[key] = random_value(rng)
    try:
        text = yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, OverflowError):
        text = yaml.safe_dump(BASE_SPEC, sort_keys=False)
    return mutate_text(text, rng) if rng.random() < 1 / 3 else text.encode()


def fuzzed_set(rng: random.Random) -> str:
    key = rng.choice(KEYS + ["generator", "seed", "train.lr ", "train", "x.y", ""])
    value = random_value(rng, depth=2)
    return f"{key}={value if isinstance(value, str) else yaml.safe_dump(value).strip()}"


def run_specs(n: int, rng: random.Random) -> dict[str, int]:
    counts = {"valid": 0, "rejected": 0, "traceback": 0, "wrote files": 0, "not one line": 0}
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        spec_path = Path(workdir) / "spec.yaml"
        for _ in range(n):
            spec_path.write_bytes(mutated_spec(rng))
            result = runner.invoke(app, ["sweep", str(spec_path), "--dry-run"])
            if result.exit_code == 0:
                counts["valid"] += 1
            elif result.exit_code == 2 and isinstance(result.exception, SystemExit):
                counts["rejected"] += 1
                error = [line for line in result.output.splitlines() if line.strip()]
                counts["not one line"] += len(error) != 1
            else:
                counts["traceback"] += 1
                print(f"traceback: {result.exception!r} for\n{spec_path.read_bytes()!r}")
            counts["wrote files"] += sorted(os.listdir(workdir)) != ["spec.yaml"]
    return counts


def run_sets(n: int, rng: random.Random) -> dict[str, int]:
    counts = {"valid": 0, "rejected": 0, "traceback": 0}
    for _ in range(n):
        pair = fuzzed_set(rng)
        try:
            build_config("gmm2d-tiny", None, None, None, [pair])
            counts["valid"] += 1
        except ConfigError:
            counts["rejected"] += 1
        except Exception as err:  # noqa: BLE001 - the benchmark counts what escapes
            counts["traceback"] += 1
            print(f"traceback: {err!r} for --set {pair!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=2000)
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    rows = [("specs (`bench sweep --dry-run`)", args.specs, run_specs(args.specs, rng)),
            ("`--set` values (`bench run`)", args.sets, run_sets(args.sets, rng))]
    print(f"\n{time.perf_counter() - started:.0f} s, seed {args.seed}\n")
    print("| input | cases | valid | rejected (exit 2) | tracebacks | rejected but wrote files "
          "| message not one line |")
    print("|---|---|---|---|---|---|---|")
    for name, n, c in rows:
        print(f"| {name} | {n} | {c['valid']} | {c['rejected']} | {c['traceback']} "
              f"| {c.get('wrote files', 0)} | {c.get('not one line', 0)} |")


if __name__ == "__main__":
    main()
