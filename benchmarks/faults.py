"""Fault benchmark: real sweeps (real Ray, a real MLflow sqlite store) through hard faults, and
what each left behind.

Every row is one fault and one round. A sweep of 6 runs (reverse KL and Pearson x 3 seeds on
`gmm2d-tiny`, 150 steps, a checkpoint every 30, a record every 10) is faulted, then brought to
its end the way a user would (`bench sweep SPEC --resume` after a killed driver; a rerun of the
same `bench run` after a killed rank), and the MLflow store is audited:

* expected / finished / lost / duplicated: runs the spec defines; distinct runs FINISHED; runs
  with no FINISHED MLflow run; MLflow runs beyond one per run;
* left RUNNING: MLflow runs (children and parents) still RUNNING at the end;
* duplicate steps: record steps logged twice to one run's `weight_mean` history. The design logs
  each record step exactly once (a resumed run re-trains the steps after its last checkpoint,
  but MLflow already holds what it logged only up to that checkpoint), so every duplicate is a
  defect;
* same report: whether `bench report` built afterwards holds the same (arm, seed) set as the
  unfaulted sweep's report (for a killed `bench report`: whether the folder holds a whole
  report, the previous one or the complete new one).

Faults: none (the reference); SIGKILL of the driver and its whole process tree at a random
moment, then `--resume` (`--rounds` kill times spread over the unfaulted sweep's duration);
SIGKILL of one trial worker (Tune retries the trial); SIGKILL of one rank of a 2-process trial
(`workers_per_trial: 2`, Ray Train); SIGKILL of one rank of `bench run --nproc-per-node 2`, then
the same command again; SIGKILL of `bench report` while it writes (the previous report must
stay whole); two sweeps started at once on a new store; a store on a full or read-only
filesystem (a 3 MiB tmpfs, or one mounted read-only, in a private user and mount namespace;
skipped where the kernel refuses one): a clear error, exit 2, nothing written.

    python benchmarks/faults.py --rounds 5          (nox -s faults; about 15 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from sweep import process_tree

from bench.report import recover_report

GENERATORS = ("reverse_kl", "pearson")
SEEDS = (0, 1, 2)
SETTINGS = {"train.generator_steps": 150, "log_every": 10, "checkpoint_every": 30,
            "eval.every": 50}
SPEC = {"name": "faults", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": list(SEEDS),
        "set": SETTINGS, "grid": {"generator": list(GENERATORS)}}
RECORD_STEPS = list(range(10, 151, 10))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
COLUMNS = ("fault", "round", "detail", "expected", "finished", "lost", "duplicated",
           "left RUNNING", "duplicate steps", "same report")


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def sweep_command(work: Path, spec: Path, *extra: str) -> list[str]:
    return bench("sweep", str(spec), "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                 "--storage", str(work / "ray"), "--num-cpus", "2", *extra)


def write_spec(work: Path, **changes: Any) -> Path:
    path = work / f"{changes.get('name', SPEC['name'])}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and every process below it (Ray's, by process id)."""
    for pid in reversed(process_tree(process.pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def records_at(run_dirs: list[Path]) -> int:
    """The highest record step any of ``run_dirs``' metrics.jsonl holds (0: none)."""
    best = 0
    for run_dir in run_dirs:
        path = run_dir / "metrics.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    best = max(best, int(json.loads(line).get("step", 0)))
    return best


def audit(work: Path, names: list[str]) -> dict[str, Any]:
    """The store's runs of the sweeps ``names`` against the runs their specs define."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    expected = {f"{g}-s{s}" for g in GENERATORS for s in SEEDS}
    row = Counter()
    for name in names:
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        finished = {r.info.run_name for r in children if r.info.status == "FINISHED"}
        per_name = Counter(r.info.run_name for r in children)
        row["expected"] += len(expected)
        row["finished"] += len(finished & expected)
        row["lost"] += len(expected - finished)
        row["duplicated"] += sum(n - 1 for n in per_name.values())
        row["left RUNNING"] += sum(r.info.status == "RUNNING" for r in runs)
        for run in children:
            steps = Counter(m.step for m in client.get_metric_history(run.info.run_id,
                                                                      "weight_mean"))
            row["duplicate steps"] += sum(n - 1 for n in steps.values())
    return dict(row)


def report_set(work: Path, name: str, out: Path) -> set[tuple[str, str]] | None:
    """The (arm, seed) pairs of the sweep's report, built into ``out`` (None: it failed)."""
    done = subprocess.run(bench("report", name, "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                                "--out", str(out)), cwd=work, capture_output=True, env=ENV)
    if done.returncode:
        return None
    with (out / "results_long.csv").open() as handle:
        return {(row["arm"], row["seed"]) for row in csv.DictReader(handle)}


def until_done(command: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def sweep_rows(fault: str, rounds: int, reference: set | None, duration: float,
               rng: random.Random) -> list[dict[str, Any]]:
    """Rows of the sweep faults ``none``, ``driver`` and ``worker``, ``rounds`` each (kill times
    of the driver spread over ``duration``, the unfaulted sweep's). Against ``reference``, the
    unfaulted report's (arm, seed) set (None: this is the unfaulted sweep; its set is kept in
    the row's ``report set``)."""
    rows = []
    fractions = sorted(rng.uniform(0.1, 0.9) for _ in range(rounds))
    for index in range(rounds):
        with tempfile.TemporaryDirectory(prefix=f"fault-{fault}-") as tmp:
            work = Path(tmp)
            spec = write_spec(work)
            detail = ""
            started = time.monotonic()
            process = subprocess.Popen(sweep_command(work, spec), cwd=work, env=ENV,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
            if fault == "driver":
                time.sleep(max(0.0, fractions[index] * duration - (time.monotonic() - started)))
                detail = f"killed at {time.monotonic() - started:.0f} s of {duration:.0f}"
                kill_tree(process)
                resumed = until_done(sweep_command(work, spec, "--resume"), work)
                if "no interrupted sweep" in resumed.stdout + resumed.stderr:
                    detail += "; nothing to resume: rerun"  # killed before Tune saved a state
                    until_done(sweep_command(work, spec), work)
            elif fault == "worker":
                killed = kill_trial_worker(process, work, "ray::ImplicitFunc")
                process.wait(timeout=900)
                detail = f"worker killed at record step {killed}"
            else:
                process.wait(timeout=900)
                detail = f"{time.monotonic() - started:.0f} s"
            row = {"fault": fault, "round": index + 1, "detail": detail,
                   **audit(work, [SPEC["name"]])}
            found = report_set(work, SPEC["name"], work / "report")
            row["same report"] = found is not None if reference is None else found == reference
            row["report set"] = found
            rows.append(row)
    return rows


def kill_trial_worker(process: subprocess.Popen, work: Path, marker: str,
                      past_step: int = 40) -> int:
    """SIGKILL the first process under ``process`` whose command line starts with ``marker``
    once some run has records past ``past_step``; the step it was killed at (-1: never)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.3)
        run_dirs = list((work / "ray").glob("*/runs/*/s*"))
        step = records_at(run_dirs)
        workers = [pid for pid in process_tree(process.pid)
                   if command_line(pid).startswith(marker)]
        if step >= past_step and workers:
            os.kill(workers[0], signal.SIGKILL)
            return step
    return -1


def train_rank_row() -> dict[str, Any]:
    """A `workers_per_trial: 2` trial (one arm, one seed) with one Ray Train rank killed."""
    with tempfile.TemporaryDirectory(prefix="fault-rank-") as tmp:
        work = Path(tmp)
        spec = write_spec(work, name="faults-ranks", seeds=[0],
                          grid={"generator": ["pearson"]}, workers_per_trial=2,
                          resources={"cpu": 0.5})
        process = subprocess.Popen(sweep_command(work, spec), cwd=work, env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        killed = kill_trial_worker(process, work, "ray::RayTrainWorker")
        process.wait(timeout=900)
        row = audit(work, ["faults-ranks"])
        # this sweep defines one run, not the benchmark's six
        row.update(expected=1, lost=row["lost"] - 5)
        return {"fault": "Ray Train rank", "round": 1,
                "detail": f"rank killed at record step {killed}", **row, "same report": "–"}


def torchrun_row() -> dict[str, Any]:
    """`bench run --nproc-per-node 2` with one rank killed, then the same command again."""
    with tempfile.TemporaryDirectory(prefix="fault-torchrun-") as tmp:
        work = Path(tmp)
        out = work / "run"
        command = bench("run", "--preset", "gmm2d-tiny", "--generator", "pearson",
                        "--nproc-per-node", "2", "--out", str(out),
                        *[arg for key, value in SETTINGS.items()
                          for arg in ("--set", f"{key}={value}")])
        process = subprocess.Popen(command, cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        step = -1
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            ranks = [pid for pid in process_tree(process.pid)
                     if "bench.cli run" in command_line(pid) and pid != process.pid
                     and "torch.distributed.run" not in command_line(pid)]
            if records_at([out]) >= 40 and ranks:
                step = records_at([out])
                os.kill(ranks[-1], signal.SIGKILL)
                break
        process.wait(timeout=300)
        again = until_done(command, work)
        steps = Counter()
        for line in (out / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "weight_mean" in record:
                steps[record["step"]] += 1
        final = out / "final_metrics.json"
        result = json.loads(final.read_text()) if final.exists() \
            else {}
        finished = int(again.returncode == 0 and result.get("status") == "finished")
        return {"fault": "torchrun rank", "round": 1, "detail": f"rank killed at step {step}",
                "expected": 1, "finished": finished, "lost": 1 - finished, "duplicated": 0,
                "left RUNNING": "–",
                "duplicate steps": sum(n - 1 for n in steps.values())
                + len(set(RECORD_STEPS) - set(steps)),
                "same report": "–"}


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def report_rows(rounds: int, rng: random.Random) -> list[dict[str, Any]]:
    """`bench report` SIGKILLed at random moments over an existing report: afterwards the
    folder holds a whole report, the previous one byte for byte or, when the kill came after
    the swap, the new one complete (every file the previous had, its own build time)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="fault-report-") as tmp:
        work = Path(tmp)
        until_done(sweep_command(work, write_spec(work)), work)
        out = work / "report"
        command = bench("report", SPEC["name"], "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                        "--out", str(out))
        started = time.monotonic()
        until_done(command, work)
        duration = time.monotonic() - started
        for index in range(rounds):
            before, names = tree_digest(out), file_names(out)
            built = json.loads((out / "provenance.json").read_text())["built_at"]
            at = rng.uniform(0.3, 1.0) * duration
            process = subprocess.Popen(command, cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(at)
            kill_tree(process)
            recover_report(out)  # what the next `bench report` (or a reader) finds
            previous = out.exists() and tree_digest(out) == before
            new = (out.exists() and file_names(out) == names and json.loads(
                (out / "provenance.json").read_text())["built_at"] != built)
            leftovers = sorted(p.name for p in work.glob(".report*"))
            rows.append({"fault": "report", "round": index + 1,
                         "detail": f"killed at {at:.1f} s of {duration:.1f}: "
                                   + ("the previous report" if previous else
                                      "the new report" if new else "NOT WHOLE")
                                   + (f"; left {leftovers}" if leftovers else ""),
                         "expected": "–", "finished": "–", "lost": "–", "duplicated": "–",
                         "left RUNNING": "–", "duplicate steps": "–",
                         "same report": previous or new})
    return rows


def file_names(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def concurrent_row(reference: set) -> dict[str, Any]:
    """Two sweeps started at the same moment on a store that does not exist yet."""
    with tempfile.TemporaryDirectory(prefix="fault-concurrent-") as tmp:
        work = Path(tmp)
        specs = [write_spec(work, name=name) for name in ("faults-a", "faults-b")]
        processes = [subprocess.Popen(sweep_command(work, spec), cwd=work, env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True) for spec in specs]
        codes = [p.wait(timeout=900) for p in processes]
        row = audit(work, ["faults-a", "faults-b"])
        same = all(report_set(work, name, work / name) == reference
                   for name in ("faults-a", "faults-b"))
        return {"fault": "two sweeps, new store", "round": 1,
                "detail": f"exit codes {codes}", **row, "same report": same}


def filesystem_rows() -> list[dict[str, Any]]:
    """The store on a full, then a read-only, filesystem: exit 2, one line, nothing written.

    Each in a private user and mount namespace (``unshare``), where a tmpfs can be mounted
    without privileges; skipped when the kernel refuses one."""
    rows = []
    for case, options in (("full disk", "size=3m"), ("read-only store", "ro")):
        with tempfile.TemporaryDirectory(prefix="fault-fs-") as tmp:
            work = Path(tmp)
            spec = write_spec(work)
            store = work / "store"
            store.mkdir()
            filler = ("head -c 3000000 /dev/zero > store/filler 2>/dev/null; "
                      if case == "full disk" else "")
            script = (f"mount -t tmpfs -o {options} tmpfs store && {filler}"
                      f"exec {' '.join(bench('sweep', str(spec), '--tracking-uri'))} "
                      f"sqlite:///{store}/mlflow.db --storage {work}/ray --num-cpus 2")
            done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                   script], cwd=work, capture_output=True, text=True,
                                  timeout=600, env=ENV)
            if "mount:" in done.stderr or "unshare:" in done.stderr:
                rows.append({"fault": case, "round": 1, "detail": "skipped: "
                             + done.stderr.strip().splitlines()[-1][:60]})
                continue
            error = [line.split(".db: ", 1)[-1][:70] for line in done.stderr.splitlines()
                     if line.startswith("error:")]
            written = sorted(p.name for p in (work / "ray").glob("*")) if (work / "ray").exists() \
                else []
            rows.append({"fault": case, "round": 1,
                         "detail": f"exit {done.returncode}: "
                                   f"{error[0] if error else done.stderr[-90:]!r}; "
                                   f"Ray storage written: {written or 'nothing'}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="driver-kill rounds (>= 5)")
    parser.add_argument("--seed", type=int, default=0, help="kill times")
    parser.add_argument("--faults", nargs="+", default=["driver", "worker", "train-rank",
                                                        "torchrun", "report", "concurrent",
                                                        "filesystem"])
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)

    def emit(rows: list[dict[str, Any]]) -> None:
        for row in rows:  # each row as soon as its fault is done
            print("| " + " | ".join(str(row.get(column, "–")) for column in COLUMNS) + " |",
                  flush=True)

    unfaulted = sweep_rows("none", 1, None, 0, rng)
    duration = time.monotonic() - started
    reference = unfaulted[0]["report set"]
    emit(unfaulted)
    if "driver" in args.faults:
        emit(sweep_rows("driver", args.rounds, reference, duration, rng))
    if "worker" in args.faults:
        emit(sweep_rows("worker", 1, reference, duration, rng))
    if "train-rank" in args.faults:
        emit([train_rank_row()])
    if "torchrun" in args.faults:
        emit([torchrun_row()])
    if "report" in args.faults:
        emit(report_rows(args.rounds, rng))
    if "concurrent" in args.faults:
        emit([concurrent_row(reference)])
    if "filesystem" in args.faults:
        emit(filesystem_rows())
    print(f"\n{time.monotonic() - started:.0f} s")

if __name__ == "__main__":
    main()
