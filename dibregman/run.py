"""``run_experiment``: the one function the CLI, the sweep trainable and the tests all call.

A run directory holds:

* ``config.json``: the resolved config; ``provenance.json``: package versions, git revision,
  the metric protocol and the declared metrics (:mod:`dibregman.results`);
* ``metrics.jsonl``: one JSON record every ``log_every`` generator steps and at every
  evaluation (diagnostics and the network evaluations spent so far, plus the curve metrics
  every ``eval.every`` steps, step 0 included, and every final metric at each of
  ``eval.budgets``);
* ``ratio_check.jsonl`` (teachers with an exact density): at every evaluation, one row per
  noise level of the live ratio check (:mod:`dibregman.ratio_check`): ``step``, ``sigma`` and
  the estimate's agreement with the truth; its summary goes into the record
  (:data:`dibregman.results.RATIO_CHECK_METRICS`);
* ``checkpoint/state.pt``: the latest resumable state (state_dicts only, loaded with
  ``weights_only=True``), written atomically every ``checkpoint_every`` steps and at the last
  step (so an ended run keeps its final networks, e.g. for ``bench fid``);
* ``final_metrics.json`` (:func:`dibregman.results.final_record`) and ``samples.png`` once the
  run has ended (``finished`` or ``diverged``).

Calling ``run_experiment`` again on the same directory resumes from the checkpoint, or returns
the stored result of a run that has ended.

:func:`run_seed_batch` runs one config over several seeds as a seed batch (one process, the
networks of every seed stacked; :mod:`dibregman.members`): each seed still gets its own run
directory with exactly these files, so a batch member is read, resumed and tracked like any
run (its checkpoint resumes alone or in another batch).

In a process group of several ranks (:mod:`dibregman.distributed`, one seed) every rank trains
its shard of the batch, and rank 0 alone reads and writes the run directory, evaluates and calls
``on_report``; what it finds there (a stored result, the checkpoint) is sent to the others, so
the directory need not be shared between nodes. Every rank returns the same result.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dibregman import distributed
from dibregman.config import Config, to_dict, with_overrides
from dibregman.device import resolve_device
from dibregman.distill import Distiller
from dibregman.equivalence import arm_label
from dibregman.evaluate import declared_metrics
from dibregman.evaluators import Evaluator
from dibregman.ratio_check import LiveRatioCheck
from dibregman.results import ELAPSED, Status, final_record
from dibregman.teachers import Teacher, teacher_for
from dibregman.validation import validate

CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
RATIO_CHECK_FILE = "ratio_check.jsonl"
FINAL_FILE = "final_metrics.json"
SAMPLES_FILE = "samples.png"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"

# on_report(record, checkpoint_dir): called for every logged record; ``checkpoint_dir`` is set
# when a checkpoint was written at that step. The last call is ``RunResult.final_report()``.
ReportCallback = Callable[[dict[str, Any], Path | None], None]
# The same for a seed batch, with the member's index first: on_report(k, record, checkpoint_dir).
BatchReportCallback = Callable[[int, dict[str, Any], Path | None], None]


@dataclass(frozen=True)
class RunResult:
    """The outcome of a run.

    Attributes:
        status: ``finished`` or ``diverged``.
        metrics: final quality metrics (names carry sample counts).
        generator_steps: student updates done.
        wall_time_s: training and evaluation time, summed over resumptions (a member of a
            seed batch of ``K``: its share, the batch's time / ``K``).
        run_dir: where the files are.
    """

    status: Status
    metrics: dict[str, float]
    generator_steps: int
    wall_time_s: float
    run_dir: Path

    def record(self) -> dict[str, Any]:
        """The final record (``final_metrics.json``)."""
        return final_record(self.status, self.metrics, self.generator_steps, self.wall_time_s)

    def final_report(self) -> dict[str, Any]:
        """The last ``on_report`` record: the final record flattened, metrics at top level,
        at ``step = generator_steps``, marked ``final``."""
        record = self.record()
        return {"step": self.generator_steps, "final": True, **record.pop("metrics"), **record}


def git_revision() -> str:
    """The source tree's git commit (with ``+dirty`` for local changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty.strip() else "")


def provenance(cfg: Config, protocol: dict[str, Any], seed_batch: list[int]) -> dict[str, Any]:
    """Versions, revision, device, the seeds trained together with this one (``seed_batch``),
    the metric protocol and the declared metrics stored beside every result."""
    import numpy

    device = resolve_device(cfg.device)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "git_revision": git_revision(),
        "seed": cfg.seed,
        "seed_batch": seed_batch,
        "world_size": distributed.world_size(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "metric_protocol": {**protocol, "n_curve": cfg.eval.n_curve,
                            "n_final": cfg.eval.n_final,
                            "samples": f"EMA student, latents from "
                                       f"torch.Generator({cfg.eval.seed})"},
        "metrics": [spec.to_dict() for spec in declared_metrics(cfg)],
    }


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a run's JSON-lines file (``metrics.jsonl``, ``ratio_check.jsonl``); the
    one reader of them all. A last line a kill cut short is dropped (the run continues from its
    checkpoint and writes it again); a damaged line before it is a ``ValueError`` naming the
    file. A missing file has no records."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON; the run directory is "
                                 f"damaged: delete it or use another") from None
    return records


def _read_records(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """The records of ``path`` (:func:`read_jsonl`) up to ``up_to_step``."""
    return [r for r in read_jsonl(path) if r["step"] <= up_to_step]


def _read_json(path: Path) -> Any:
    """A JSON file the run wrote; a damaged one is a ``ValueError`` naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the run directory is damaged: "
                         f"delete it or use another") from None


def _stored_result(run_dir: Path) -> RunResult:
    final = _read_json(run_dir / FINAL_FILE)
    return RunResult(Status(final["status"]), final["metrics"], final["generator_steps"],
                     final[ELAPSED], run_dir)


def run_experiment(
    cfg: Config,
    run_dir: str | Path,
    on_report: ReportCallback | None = None,
) -> RunResult:
    """Distil ``cfg.teacher`` into a one-step student with ``cfg.generator``; resumable.

    Args:
        cfg: a resolved config (checked with :func:`dibregman.config.validate`).
        run_dir: output directory; created if missing. If it holds a checkpoint of the same
            config the run resumes; if it holds an ended run its stored result is returned.
        on_report: optional callback, see :data:`ReportCallback`.

    Returns:
        The :class:`RunResult`. A run whose updates stay non-finite ends ``diverged``: a result,
        not an exception.

    Raises:
        ConfigError: for an invalid config.
        ValueError: if ``run_dir`` holds a run of a different config, cannot be a directory
            (a file, or under one) or be written, or holds damaged files; the message names
            the path.
    """
    report = None if on_report is None else (lambda _, record, saved: on_report(record, saved))
    (result,) = run_seed_batch(cfg, [cfg.seed], [run_dir], report)
    return result


def run_seed_batch(
    cfg: Config,
    seeds: list[int],
    run_dirs: list[str | Path],
    on_report: BatchReportCallback | None = None,
) -> list[RunResult]:
    """:func:`run_experiment` of ``cfg`` at every seed of ``seeds``, trained as one seed batch.

    Seed ``seeds[k]`` runs in ``run_dirs[k]``, its config ``cfg`` with that seed. Runs that have
    ended return their stored result; the others resume together from their checkpoints (runs
    whose checkpoints sit at different steps, e.g. after a kill between two writes, resume as
    separate batches).

    Returns:
        One :class:`RunResult` per seed, in order.

    Raises:
        ConfigError, ValueError: as :func:`run_experiment`; also for repeated seeds or
        directories, or lists of different lengths; in a process group of several ranks, for
        more than one seed or a batch size the ranks do not divide
        (:class:`dibregman.distributed.DataParallelError`).
    """
    run_dirs = [Path(d) for d in run_dirs]
    if len(seeds) != len(run_dirs) or not seeds:
        raise ValueError(f"a seed batch needs one run directory per seed, got {len(seeds)} "
                         f"seeds and {len(run_dirs)} directories")
    if len(set(seeds)) != len(seeds) or len(set(run_dirs)) != len(run_dirs):
        raise ValueError(f"a seed batch repeats a seed or a run directory: {seeds}, "
                         f"{[str(d) for d in run_dirs]}")
    distributed.check_shardable(cfg.train.batch_size, len(seeds))
    cfgs = [with_overrides(cfg, {"seed": seed}) for seed in seeds]
    results: dict[int, RunResult] = {}
    pending = []

    def inspect() -> list[RunResult | None]:
        stored = []
        for member_cfg, run_dir in zip(cfgs, run_dirs, strict=True):
            validate(member_cfg)
            stored.append(check_run_dir(member_cfg, run_dir))
        return stored

    for k, stored in enumerate(distributed.from_main(inspect)):
        if stored is not None:
            results[k] = stored
        else:
            pending.append(k)
    if not pending:
        return [results[k] for k in range(len(seeds))]
    threads_before = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        # The teacher first: a dataset that cannot be loaded fails before anything is written.
        # (Rank 0 first: it trains a missing image teacher into the cache the others load.)
        device = distributed.local_device(resolve_device(cfg.device))
        teacher = distributed.main_first(lambda: teacher_for(cfg, device))
        evaluator = teacher.build_evaluator(cfg)

        def prepare() -> dict[int, tuple[dict[str, Any], float] | None]:
            for k in pending:
                try:
                    run_dirs[k].mkdir(parents=True, exist_ok=True)
                    write_json(run_dirs[k] / CONFIG_FILE, to_dict(cfgs[k]))
                except OSError as err:
                    raise ValueError(f"cannot write the run directory {run_dirs[k]}: "
                                     f"{err.strerror}") from None
            return {k: read_checkpoint(run_dirs[k]) for k in pending}

        states = distributed.from_main(prepare)
        by_step: dict[int | None, list[int]] = {}
        for k in pending:
            step = None if states[k] is None else states[k][0]["generator_step"]
            by_step.setdefault(step, []).append(k)
        for group in by_step.values():
            batch = _SeedBatch([cfgs[k] for k in group], [run_dirs[k] for k in group],
                               teacher, evaluator)
            if states[group[0]] is not None:
                batch.resume([states[k] for k in group])
            report = None if on_report is None else (
                lambda m, record, saved, group=group: on_report(group[m], record, saved))
            for k, result in zip(group, batch.run(report), strict=True):
                results[k] = result
    finally:
        torch.set_num_threads(threads_before)
    return [results[k] for k in range(len(seeds))]


def check_run_dir(cfg: Config, run_dir: Path) -> RunResult | None:
    """Refuse a directory that is a file, lies under one, or holds another config's run
    (``ValueError`` naming it); return the stored result of a run that has ended there. Read
    only: ``bench run --nproc-per-node`` checks with it before it starts the processes."""
    blocking = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"run directory {run_dir}: {blocking} is a file, not a directory")
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        stored = _read_json(config_path)
        if stored != json.loads(json.dumps(to_dict(cfg))):
            raise ValueError(f"{run_dir} holds a run with a different config; use a new directory")
        if (run_dir / FINAL_FILE).exists():
            return _stored_result(run_dir)
    return None


def read_checkpoint(run_dir: Path) -> tuple[dict[str, Any], float] | None:
    """A run's checkpoint (its distiller state, its elapsed time), or None if it has none."""
    path = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # truncated or corrupted: torch raises several kinds
        raise ValueError(f"{path} cannot be read ({type(err).__name__}); delete "
                         f"it to restart the run from step 0") from None
    return state["distiller"], state[ELAPSED]


class _SeedBatch:
    """The body of :func:`run_seed_batch` for runs that start (or resume) at one step: one
    :class:`Distiller` over their seeds, each member logging into its own directory."""

    def __init__(self, cfgs: list[Config], run_dirs: list[Path], teacher: Teacher,
                 evaluator: Evaluator) -> None:
        """``cfgs``: the members' configs, equal but for their seeds."""
        self.cfg, self.run_dirs, self.evaluator = cfgs[0], run_dirs, evaluator
        self.seeds = [member_cfg.seed for member_cfg in cfgs]
        for member_cfg, run_dir in zip(cfgs, run_dirs, strict=True):
            if distributed.is_main():
                write_json(run_dir / PROVENANCE_FILE,
                            provenance(member_cfg, evaluator.protocol, self.seeds))
        self.distiller = Distiller(self.cfg, teacher, self.seeds)
        self.elapsed_before = [0.0] * len(self.seeds)
        self.ratio_check = None
        if teacher.exact_density and self.cfg.eval.ratio_check_n:
            self.ratio_check = LiveRatioCheck.for_run(self.cfg, teacher.log_prob, teacher.sample,
                                                      teacher.sigma_data)

    def resume(self, states: list[tuple[dict[str, Any], float]]) -> None:
        self.distiller.load_state_dicts([state for state, _ in states])
        self.elapsed_before = [elapsed for _, elapsed in states]

    def run(self, on_report: BatchReportCallback | None) -> list[RunResult]:
        cfg, distiller = self.cfg, self.distiller
        members = range(len(self.seeds))
        main = distributed.is_main()  # the one rank that writes, evaluates and reports
        records = [_read_records(d / METRICS_FILE, distiller.generator_step)
                   for d in self.run_dirs] if main else []
        files = [(d / METRICS_FILE).open("w") for d in self.run_dirs] if main else []
        for file, kept in zip(files, records, strict=True):
            file.writelines(json.dumps(record) + "\n" for record in kept)
            file.flush()
        check_files = []
        if main and self.ratio_check is not None:
            for d in self.run_dirs:
                kept = _read_records(d / RATIO_CHECK_FILE, distiller.generator_step)
                check_files.append((d / RATIO_CHECK_FILE).open("w"))
                check_files[-1].writelines(json.dumps(row) + "\n" for row in kept)
                check_files[-1].flush()
        fresh = distributed.from_main(lambda: distiller.generator_step == 0 and not any(records))
        started = time.perf_counter()
        results: dict[int, RunResult] = {}

        def wall_time(k: int) -> float:
            """Member ``k``'s time: its share of the batch's (``1 / K``), so that a run's cost
            means the same alone and in a batch, and the shares of a batch sum to its time."""
            return self.elapsed_before[k] + (time.perf_counter() - started) / len(self.seeds)

        def log(entries: dict[int, dict[str, Any]], checkpoint: bool) -> None:
            """Write each member's record, then, with ``checkpoint``, every member's state:
            first all to temporary files, then all moved into place. A kill thus never leaves a
            checkpoint ahead of its run's records (the resumed run would skip the record), and
            leaves the members' checkpoints at one step (at worst two: they resume as two
            batches). Rank 0 only."""
            if not main:
                return
            records = {k: {"step": distiller.member_steps[k], ELAPSED: wall_time(k), **record}
                       for k, record in entries.items()}
            for k, record in records.items():
                files[k].write(json.dumps(record) + "\n")
                files[k].flush()
            saved: dict[int, Path] = {}
            if checkpoint:
                tmps = {}
                for k in entries:
                    path = self.run_dirs[k] / CHECKPOINT_DIR / CHECKPOINT_FILE
                    path.parent.mkdir(exist_ok=True)
                    tmps[k] = (path.with_suffix(".tmp"), path)
                    torch.save({"distiller": distiller.state_dict(k), ELAPSED: wall_time(k)},
                               tmps[k][0])
                for k, (tmp, path) in tmps.items():
                    os.replace(tmp, path)
                    saved[k] = path.parent
            if on_report is not None:
                for k, record in records.items():
                    on_report(k, record, saved.get(k))

        def evaluate(k: int) -> dict[str, float]:
            """Member ``k``'s curve metrics, and the live ratio check's summary after its rows
            are written (rank 0; nothing on the others)."""
            if not main:
                return {}
            metrics = self.evaluator.curve(distiller.sample(cfg.eval.n_curve, cfg.eval.seed, k))
            check = self.ratio_check
            if check is not None:
                n, step = cfg.eval.ratio_check_n, distiller.member_steps[k]
                draws = cfg.eval.seed + 1_000_003 * (1 + self.seeds[k]) + 4 * step  # per check
                rows = check.measure(distiller.member_log_ratio(k, draws + 3),
                                     distiller.sample(n, draws + 1, k, ema=False),
                                     distiller.sample(n // 4, draws + 2, k, ema=False), draws)
                check_files[k].writelines(json.dumps({"step": step, **row}) + "\n"
                                          for row in rows)
                check_files[k].flush()
                metrics.update(check.summary(rows))
            return metrics

        def measure_budget(k: int) -> dict[str, float]:
            """Member ``k``'s metrics at a budget short of the end (rank 0; the evaluator's
            :meth:`~dibregman.evaluators.Evaluator.budget` choice of its final metrics)."""
            if not main:
                return {}
            samples = distiller.sample(cfg.eval.n_final, cfg.eval.seed, k)
            return self.evaluator.budget(samples, distiller.sample_labels(len(samples)))

        def finish(k: int) -> None:
            def conclude() -> RunResult:
                status = (Status.DIVERGED if distiller.status[k] is Status.DIVERGED
                          else Status.FINISHED)
                samples = distiller.sample(cfg.eval.n_final, cfg.eval.seed, k)
                metrics = (self.evaluator.final(samples, distiller.sample_labels(len(samples)))
                           if status is Status.FINISHED else {})
                steps = distiller.member_steps[k]
                arm = arm_label(cfg.generator.name, cfg.generator.alpha)
                title = f"{arm} · seed {self.seeds[k]} · step {steps}"
                self.evaluator.plot(samples, self.run_dirs[k] / SAMPLES_FILE, title)
                result = RunResult(status, metrics, steps, wall_time(k), self.run_dirs[k])
                write_json(self.run_dirs[k] / FINAL_FILE, result.record())
                files[k].close()
                if on_report is not None:
                    on_report(k, result.final_report(), None)
                return result

            results[k] = distributed.from_main(conclude)  # rank 0 evaluates and writes

        try:
            if fresh:
                warm = distiller.warmup()
                log({k: {**warm[k], **evaluate(k), **distiller.evaluation_counts(0)}
                     for k in members}, checkpoint=False)
            for k in members:
                if distiller.status[k] is Status.DIVERGED:  # resumed at its divergence
                    finish(k)
            total = cfg.train.generator_steps
            budgets = set(cfg.eval.budgets) - {total}  # the last step: the final record's
            while distiller.generator_step < total and distiller.running():
                running = distiller.running()
                step_records = distiller.step()
                step = distiller.generator_step
                evaluated = step % cfg.eval.every == 0 or step == total
                entries = {}
                for k in running:
                    record = {**step_records[k], **distiller.evaluation_counts(step)}
                    if evaluated:
                        record.update(evaluate(k))
                    if step in budgets and distiller.status[k] is Status.RUNNING:
                        record.update(measure_budget(k))
                    # Every evaluation is recorded, whatever the record interval.
                    if (step % cfg.log_every == 0 or step == total or evaluated
                            or step in budgets or distiller.status[k] is Status.DIVERGED):
                        entries[k] = record
                if entries:
                    log(entries, checkpoint=step % cfg.checkpoint_every == 0 or step == total)
                for k in running:
                    if distiller.status[k] is Status.DIVERGED:
                        finish(k)
            for k in distiller.running():
                finish(k)
            return [results[k] for k in members]
        finally:
            for file in [*files, *check_files]:
                file.close()
