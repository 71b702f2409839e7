"""``run_experiment``: the one function the CLI, the sweep trainable and the tests all call.

A run directory holds:

* ``config.json``: the resolved config; ``provenance.json``: package versions, git revision,
  the metric protocol and the declared metrics (:mod:`dibregman.results`);
* ``metrics.jsonl``: one JSON record every ``log_every`` generator steps (diagnostics, plus
  curve metrics every ``eval.every`` steps, step 0 included);
* ``checkpoint/state.pt``: the latest resumable state (state_dicts only, loaded with
  ``weights_only=True``), written atomically every ``checkpoint_every`` steps;
* ``final_metrics.json`` (:func:`dibregman.results.final_record`) and ``samples.png`` once the
  run has ended (``finished`` or ``diverged``).

Calling ``run_experiment`` again on the same directory resumes from the checkpoint, or returns
the stored result of a run that has ended.
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

from dibregman.config import Config, to_dict
from dibregman.device import resolve_device
from dibregman.distill import Distiller
from dibregman.evaluate import declared_metrics
from dibregman.evaluators import Evaluator
from dibregman.results import ELAPSED, Status, final_record
from dibregman.teachers import Teacher, teacher_for
from dibregman.validation import validate

CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final_metrics.json"
SAMPLES_FILE = "samples.png"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"

# on_report(record, checkpoint_dir): called for every logged record; ``checkpoint_dir`` is set
# when a checkpoint was written at that step. The last call is ``RunResult.final_report()``.
ReportCallback = Callable[[dict[str, Any], Path | None], None]


@dataclass(frozen=True)
class RunResult:
    """The outcome of a run.

    Attributes:
        status: ``finished`` or ``diverged``.
        metrics: final quality metrics (names carry sample counts).
        generator_steps: student updates done.
        wall_time_s: training and evaluation time, summed over resumptions.
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


def provenance(cfg: Config, protocol: dict[str, Any]) -> dict[str, Any]:
    """Versions, revision, device, the metric protocol and the declared metrics stored beside
    every result."""
    import numpy

    device = resolve_device(cfg.device)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "git_revision": git_revision(),
        "seed": cfg.seed,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "metric_protocol": {**protocol, "n_curve": cfg.eval.n_curve,
                            "n_final": cfg.eval.n_final,
                            "samples": f"EMA student, latents from "
                                       f"torch.Generator({cfg.eval.seed})"},
        "metrics": [spec.to_dict() for spec in declared_metrics(cfg)],
    }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_records(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` up to ``up_to_step``; a last line a kill cut short is
    dropped (the run continues from its checkpoint and writes it again)."""
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
    return [r for r in records if r["step"] <= up_to_step]


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
    validate(cfg)
    run_dir = Path(run_dir)
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
    threads_before = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        # The teacher first: a dataset that cannot be loaded fails before anything is written.
        teacher = teacher_for(cfg, resolve_device(cfg.device))
        evaluator = teacher.build_evaluator(cfg)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(config_path, to_dict(cfg))
        except OSError as err:
            raise ValueError(f"cannot write the run directory {run_dir}: "
                             f"{err.strerror}") from None
        return _run(cfg, run_dir, teacher, evaluator, on_report)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: Config, run_dir: Path, teacher: Teacher, evaluator: Evaluator,
         on_report: ReportCallback | None) -> RunResult:
    """The body of :func:`run_experiment`, once the directory, config and teacher are ready."""
    _write_json(run_dir / PROVENANCE_FILE, provenance(cfg, evaluator.protocol))
    distiller = Distiller(cfg, teacher)
    checkpoint_path = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    elapsed_before = 0.0
    if checkpoint_path.exists():
        try:
            state = torch.load(checkpoint_path, weights_only=True, map_location=distiller.device)
        except Exception as err:  # truncated or corrupted: torch raises several kinds
            raise ValueError(f"{checkpoint_path} cannot be read ({type(err).__name__}); delete "
                             f"it to restart the run from step 0") from None
        distiller.load_state_dict(state["distiller"])
        elapsed_before = state[ELAPSED]
    records = _read_records(run_dir / METRICS_FILE, distiller.generator_step)
    metrics_file = (run_dir / METRICS_FILE).open("w")
    for record in records:
        metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()
    started = time.perf_counter()

    def wall_time() -> float:
        return elapsed_before + time.perf_counter() - started

    def log(record: dict[str, Any], checkpoint: bool) -> None:
        record = {"step": distiller.generator_step, ELAPSED: wall_time(), **record}
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        saved = None
        if checkpoint:
            checkpoint_path.parent.mkdir(exist_ok=True)
            tmp = checkpoint_path.with_suffix(".tmp")
            torch.save({"distiller": distiller.state_dict(), ELAPSED: wall_time()}, tmp)
            os.replace(tmp, checkpoint_path)
            saved = checkpoint_path.parent
        if on_report is not None:
            on_report(record, saved)

    def evaluate() -> dict[str, float]:
        return evaluator.curve(distiller.sample(cfg.eval.n_curve, cfg.eval.seed))

    try:
        if distiller.generator_step == 0 and not records:
            log({**distiller.warmup(), **evaluate()}, checkpoint=False)
        total = cfg.train.generator_steps
        while distiller.generator_step < total and distiller.status is not Status.DIVERGED:
            record = distiller.step()
            step = distiller.generator_step
            if step % cfg.eval.every == 0 or step == total:
                record.update(evaluate())
            if (step % cfg.log_every == 0 or step == total
                    or distiller.status is Status.DIVERGED):
                log(record, checkpoint=step % cfg.checkpoint_every == 0)

        status = Status.DIVERGED if distiller.status is Status.DIVERGED else Status.FINISHED
        samples = distiller.sample(cfg.eval.n_final, cfg.eval.seed)
        metrics = evaluator.final(samples) if status is Status.FINISHED else {}
        title = f"{cfg.generator.name} seed {cfg.seed} · step {distiller.generator_step}"
        evaluator.plot(samples, run_dir / SAMPLES_FILE, title)
        result = RunResult(status, metrics, distiller.generator_step, wall_time(), run_dir)
        _write_json(run_dir / FINAL_FILE, result.record())
        if on_report is not None:
            on_report(result.final_report(), None)
        return result
    finally:
        metrics_file.close()
