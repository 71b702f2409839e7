"""Fuzz benchmark: thousands of mutated sweep specs, ``--set`` values and teacher imports.

Every case must end as *valid* (exit 0) or *rejected* (exit 2 with a one-line ``error:``
message), never with another exit status or an exception (a traceback for the user), and a
rejected case must write nothing. Specs go through ``bench sweep SPEC --dry-run`` (everything a
sweep checks before Ray starts); ``--set KEY=VALUE`` pairs through ``bench run --set PAIR
--dry-run`` (every check a run makes before its directory exists, without training).

Specs are the default sweep's structure with 1-4 top-level values replaced by random YAML
values (huge integers, non-finite floats, unicode, nesting) or removed, then, for a third of
them, a text mutation of the YAML (a duplicated or dropped line, a deleted character, a
control or non-UTF-8 byte, truncation).

Imports go through ``bench teacher import edm FILE --out DIR`` and ``bench teacher import
diffusers FOLDER --out DIR``: random bytes, pickles of random objects, hostile pickles (whose
loading would call ``os.system``, ``eval``, ``subprocess.Popen``, ``getattr``, ...), truncated
ones; and a real tiny diffusers UNet folder with one part mutated (a config replaced by random
JSON or bytes, the weights truncated or replaced, a file deleted, pickled ``.bin`` weights in
place of safetensors). A rejected import must write nothing under ``--out``, and nothing a
hostile pickle asks for may run (each would leave a marker file).

    python benchmarks/fuzz.py --specs 2000 --sets 1000 --imports 400
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

from bench.cli import app
from dibregman.config import Config, config_keys

BASE_SPEC: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "sweeps" / "divergences.yaml").read_text())
SPEC_KEYS = [*BASE_SPEC, "set", "search", "scheduler", "mode", "resources", "max_concurrent",
             "time_budget_s", "bogus"]
KEYS = config_keys(Config)
ODD_TEXT = ["", "é" * 300, "a/b", "../x", "nan", ".inf", "-.inf", "1e400", "[1, 2", "{a: 1}",
            "reverse_kl", "alpha", "gmm2d", "fd_n2000", "off_mode_n10000", "max", "\x00", "\t",
            "[/]", "[bold]x"]


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
    home = os.getcwd()
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
        os.chdir(home)
    return counts


def run_sets(n: int, rng: random.Random) -> dict[str, int]:
    """``n`` fuzzed pairs through the whole ``bench run --set PAIR --dry-run`` command (every
    check a run makes before its directory exists, without training)."""
    counts = {"valid": 0, "rejected": 0, "traceback": 0, "wrote files": 0, "not one line": 0}
    runner = CliRunner()
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        for _ in range(n):
            pair = fuzzed_set(rng)
            result = runner.invoke(app, ["run", "--preset", "gmm2d-tiny", "--set", pair,
                                         "--out", "run", "--dry-run"])
            if result.exit_code == 0:
                counts["valid"] += 1
            elif result.exit_code == 2 and isinstance(result.exception, SystemExit):
                counts["rejected"] += 1
                error = [line for line in result.output.splitlines() if line.strip()]
                counts["not one line"] += len(error) != 1
            else:
                counts["traceback"] += 1
                print(f"traceback: {result.exception!r} for --set {pair!r}")
            counts["wrote files"] += bool(os.listdir(workdir))
        os.chdir(home)
    return counts


MARKER = "fuzz-executed"


class Hostile:
    """A pickle whose loading calls ``call(*args)`` (each call would leave ``MARKER``)."""

    def __init__(self, call: Any, args: tuple) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple:
        return self.call, self.args


def hostile_pickles(marker: Path) -> list[bytes]:
    """Pickles that would run code on loading: every one must be refused."""
    import builtins
    import pickle
    import subprocess

    touch = f"touch {marker}"
    calls = [(os.system, (touch,)), (builtins.eval, (f"open({str(marker)!r}, 'w')",)),
             (builtins.exec, (f"open({str(marker)!r}, 'w')",)),
             (subprocess.Popen, (["touch", str(marker)],)),
             (builtins.getattr, (Hostile(builtins.__import__, ("os",)), "system")),
             (builtins.__import__, ("os",))]
    found = []
    for call, args in calls:
        for protocol in (0, 2, 4, 5):
            found.append(pickle.dumps({"ema": Hostile(call, args)}, protocol=protocol))
            found.append(pickle.dumps(Hostile(call, args), protocol=protocol))
    return found


def random_object(rng: random.Random, depth: int = 0) -> Any:
    """A random picklable structure of containers, numbers, strings and tensors."""
    import torch

    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([0, -1, 2**70, 1.5, float("nan"), None, True])
    if kind == 1:
        return rng.choice(ODD_TEXT)
    if kind == 2:
        return torch.randn(rng.randrange(1, 5), generator=torch.Generator().manual_seed(0))
    if kind == 3:
        return b"\x00" * rng.randrange(4)
    if kind == 4:
        return [random_object(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 5:
        return tuple(random_object(rng, depth + 1) for _ in range(rng.randrange(3)))
    keys = ["ema", "model", "state", "class_name", "init_kwargs", "augment_pipe", "x"]
    return {rng.choice(keys): random_object(rng, depth + 1) for _ in range(rng.randrange(4))}


def edm_inputs(rng: random.Random, n: int, marker: Path) -> list[bytes]:
    """Random bytes, pickles of random objects, hostile pickles and truncations of them."""
    import pickle

    hostile = hostile_pickles(marker)
    cases = list(hostile)
    while len(cases) < n:
        kind = rng.randrange(3)
        if kind == 0:
            cases.append(rng.randbytes(rng.randrange(0, 3000)))
        elif kind == 1:
            data = pickle.dumps(random_object(rng), protocol=rng.choice([0, 2, 4, 5]))
            cases.append(data if rng.random() < 0.5 else data[:rng.randrange(len(data) + 1)])
        else:
            data = rng.choice(hostile)
            cases.append(data[:rng.randrange(len(data))])
    return cases[:max(n, len(hostile))]


def tiny_diffusers_folder(folder: Path) -> Path:
    """A real diffusers UNet2DModel (random weights) with a DDPM scheduler, saved as
    ``save_pretrained`` writes them."""
    import diffusers
    import torch

    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                          block_out_channels=(8, 16), norm_num_groups=4,
                          down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(
        folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def mutate_folder(folder: Path, rng: random.Random) -> None:
    """One part of a diffusers folder broken in place."""
    import json
    import pickle

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    target = rng.choice(files)
    kind = rng.randrange(6)
    if kind == 0:
        target.unlink()
    elif kind == 1:
        target.write_bytes(target.read_bytes()[:rng.randrange(target.stat().st_size)])
    elif kind == 2:
        target.write_bytes(rng.randbytes(rng.randrange(200)))
    elif kind == 3 and target.suffix == ".json":
        try:
            config = json.loads(target.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return  # already broken by an earlier mutation
        if not isinstance(config, dict) or not config:
            return
        key = rng.choice(sorted(config))
        config[key] = random_value(rng)
        target.write_text(json.dumps(config, default=str))
    elif kind == 4 and (folder / "unet").is_dir():
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        weights.unlink(missing_ok=True)
        (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(
            pickle.dumps({"w": Hostile(os.system, ("true",))}))
    elif kind == 5:
        part = folder / rng.choice(["unet", "scheduler"])
        if part.is_dir():
            part.rename(folder / f"moved-{part.name}")


def run_imports(n: int, rng: random.Random) -> dict[str, dict[str, int]]:
    """``n`` EDM files and ``n // 4`` diffusers folders through ``bench teacher import``."""
    import shutil

    runner = CliRunner()
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        marker = work / MARKER
        pristine = tiny_diffusers_folder(work / "pristine")

        def judge(counts: dict[str, int], args: list[str], out: Path, what: str) -> None:
            result = runner.invoke(app, args)
            if result.exit_code == 0:
                counts["valid"] += 1
            elif result.exit_code == 2 and isinstance(result.exception, SystemExit):
                counts["rejected"] += 1
                error = [line for line in result.output.splitlines() if line.strip()]
                counts["not one line"] += len(error) != 1
                counts["wrote files"] += out.exists()
            else:
                counts["traceback"] += 1
                print(f"traceback: {result.exception!r} for {what}")
            counts["code ran"] += marker.exists()
            marker.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)

        counts = dict.fromkeys(("valid", "rejected", "traceback", "wrote files",
                                "not one line", "code ran"), 0)
        source = work / "network.pkl"
        for index, data in enumerate(edm_inputs(rng, n, marker)):
            source.write_bytes(data)
            judge(counts, ["teacher", "import", "edm", str(source), "--out", str(work / "out")],
                  work / "out", f"EDM input {index} ({len(data)} bytes)")
        results["EDM pickles (`bench teacher import edm`)"] = counts
        counts = dict.fromkeys(counts, 0)
        for index in range(max(1, n // 4)):
            folder = work / "folder"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(pristine, folder)
            for _ in range(rng.randrange(1, 3)):
                mutate_folder(folder, rng)
            judge(counts, ["teacher", "import", "diffusers", str(folder), "--out",
                           str(work / "out")], work / "out", f"diffusers folder {index}")
        results["diffusers folders (`bench teacher import diffusers`)"] = counts
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=2000)
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--imports", type=int, default=400,
                        help="EDM inputs (and a quarter as many diffusers folders)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    rows = [("specs (`bench sweep --dry-run`)", args.specs, run_specs(args.specs, rng)),
            ("`--set` values (`bench run --dry-run`)", args.sets, run_sets(args.sets, rng))]
    rows += [(name, sum(c[k] for k in ("valid", "rejected", "traceback")), c)
             for name, c in run_imports(args.imports, rng).items()]
    print(f"\n{time.perf_counter() - started:.0f} s, seed {args.seed}\n")
    print("| input | cases | valid | rejected (exit 2) | tracebacks | rejected but wrote files "
          "| message not one line | pickled code ran |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, c in rows:
        print(f"| {name} | {n} | {c['valid']} | {c['rejected']} | {c['traceback']} "
              f"| {c.get('wrote files', 0)} | {c.get('not one line', 0)} "
              f"| {c.get('code ran', '–')} |")


if __name__ == "__main__":
    main()
