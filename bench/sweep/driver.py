"""The sweep driver: teachers first, then the Tune run (grid, or Optuna with optional ASHA)
with its tracker and live view, and the summary."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console

from bench.progress import LiveView
from bench.spec import Domain, SweepSpec, batch_name
from bench.sweep.resume import latest_experiment, new_experiment_dir
from bench.sweep.runtime import (
    check_resources,
    start_ray,
    trial_capacity,
)
from bench.sweep.trial import MAX_FAILURES, TRIAL_DRIVER_CPU, distill_trainable, trial_title
from bench.tracking import (
    SweepTracker,
    open_store,
    resolve_tracking_uri,
)
from dibregman.config import to_dict, with_overrides
from dibregman.evaluate import declared_metrics
from dibregman.results import Status, headline
from dibregman.teachers import ImageTeacher, teacher_entry


def tune_domain(domain: Domain) -> Any:
    """A spec search domain as a Ray Tune sampler."""
    low_high = domain.args
    return {
        "loguniform": lambda: tune.loguniform(*low_high),
        "uniform": lambda: tune.uniform(*low_high),
        "int": lambda: tune.randint(low_high[0], low_high[1] + 1),
        "choice": lambda: tune.choice(list(low_high)),
    }[domain.kind]()


@dataclass


@dataclass
class SweepSummary:
    """What a sweep did: where, how many runs ended how, and each arm's mean headline over
    its finished seeds (``(arm, mean, seeds)``, best first; :meth:`LiveView.arms`)."""

    experiment_path: str
    parent_run_id: str
    tracking_uri: str
    counts: dict[str, int]
    arms: list[tuple[str, float, int]]
    interrupted: bool
    wall_time_s: float
    headline: str


def expanded_trials(spec: SweepSpec) -> list[str]:
    """Human-readable lines describing the trials a spec will run (for ``--dry-run``)."""
    if spec.search is None:
        return [f"{batch_name(point, seeds)}: {point} seeds {seeds}"
                for point in spec.grid for seeds in spec.seed_batches()]
    space = ", ".join(f"{k} ~ {d.kind}{list(d.args)}" for k, d in spec.search.space.items())
    return [f"{spec.search.num_samples} Optuna samples (TPE, seed {spec.search.sampler_seed}) "
            f"of {space}; seed {spec.seeds[0]}"]


def prepare_teachers(spec: SweepSpec, console: Console) -> None:
    """Train every image teacher the sweep's trials need, once, before any trial starts (so
    parallel trials load one cached teacher instead of each training it); imported
    (``pretrained``) teachers need no training."""
    from dibregman.device import resolve_device
    from dibregman.teachers.image import TEACHER_FILE, teacher_dir, train_teacher

    configs = [with_overrides(spec.base_config(), t) for t in spec.trials()]
    needed = {c.image_teacher: c.device for c in configs
              if teacher_entry(c.teacher).teacher_class is ImageTeacher}  # not imported ones
    for teacher_cfg, device in needed.items():
        if not (teacher_dir(teacher_cfg) / TEACHER_FILE).exists():
            console.print(f"training the {teacher_cfg.dataset} teacher "
                          f"({teacher_cfg.steps} steps) into {teacher_dir(teacher_cfg)}")
            train_teacher(teacher_cfg, device=str(resolve_device(device)))


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    tracking_uri: str | None = None,
    storage: str | Path = "ray_results",
    num_cpus: int | None = None,
    console: Console | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep; every trial is mirrored to MLflow.

    Args:
        spec: a validated spec.
        address: a Ray cluster to join (None: ``$RAY_ADDRESS`` or a private local runtime).
        resume: restore the newest interrupted experiment of this sweep under ``storage``;
            finished trials are not run again.
        max_concurrent: concurrent trials (overrides the spec).
        tracking_uri: MLflow store (None: ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        storage: Ray Tune storage directory (shared by every node on a cluster).
        num_cpus: CPUs of a private local runtime (None: all).
        console: where the live view prints.

    Raises:
        FileNotFoundError: ``resume`` with no restorable experiment of this sweep.
        SpecError: a trial asks for more CPUs or GPUs than the Ray runtime has.
        StoreError: the MLflow store cannot be opened or created (a read-only or full
            filesystem, a server that does not answer); the Ray runtime is stopped again and
            nothing is written.
        ClusterUnreachable: ``address`` names no reachable cluster.
    """
    console = console or Console()
    started = time.perf_counter()
    total = spec.search.num_samples if spec.search else len(spec.trials())  # runs
    trials = spec.search.num_samples if spec.search else len(spec.grid) * len(spec.seed_batches())
    declared = {m.key: m for m in declared_metrics(spec.base_config())}
    shown = declared.get(spec.headline or "", None) or headline(list(declared.values()))
    view = LiveView(spec, total, console, (shown.key, shown.direction.mode == "min"))
    view.note = "starting the Ray runtime and the MLflow store"
    view.start()  # the clock moves from the first second, before Ray is up
    try:
        start_ray(address, num_cpus, console)
    except BaseException:
        view.stop()
        raise
    try:  # until Tune runs: an error here must not leave Ray running
        check_resources(spec)
        # The store before anything is written: a store that cannot be written, or a spec the
        # runtime cannot run, leaves no store file and no experiment directory behind.
        uri = resolve_tracking_uri(tracking_uri)
        client = open_store(uri)
        storage = Path(storage).resolve()
        if resume:
            previous = latest_experiment(storage, spec.name)
            if previous is None:
                raise FileNotFoundError(
                    f"no interrupted sweep {spec.name!r} under {storage} to resume")
            experiment_path = previous
        else:
            experiment_path = new_experiment_dir(storage, spec.name)
        prepare_teachers(spec, console)
        tracker = SweepTracker.start(client, spec, str(experiment_path), resume=resume)
    except BaseException:
        view.stop()
        ray.shutdown()
        raise

    base = spec.base_config()
    workers = spec.workers_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(distill_trainable, base=to_dict(base),
                             experiment_path=str(experiment_path), workers=workers,
                             worker_resources=dict(spec.resources)),
        {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]} if workers == 1
        else {"cpu": TRIAL_DRIVER_CPU, "gpu": 0},
    )
    capacity = trial_capacity(spec)
    concurrent = max_concurrent or spec.max_concurrent
    if capacity is not None:
        concurrent = min(concurrent or capacity, capacity)
    run_config = tune.RunConfig(
        name=experiment_path.name,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
        callbacks=[tracker, view],
        verbose=0,
    )
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is silent only in this mode
    interrupted = False
    try:
        if resume:
            tuner = tune.Tuner.restore(str(experiment_path), trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space=_param_space(spec),
                               tune_config=_tune_config(spec, base, concurrent),
                               run_config=run_config)
        console.print(f"sweep {spec.name}: {total} runs in {trials} trials · Ray experiment "
                      f"{experiment_path} · MLflow {uri}", highlight=False)
        view.note = "trials starting"
        try:
            tuner.fit()
        finally:
            view.stop()
            if LiveView.active is not view:  # a restored sweep's view drew the trials
                LiveView.active.stop()
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: Tune skipped its last snapshot; the sweep is interrupted
    except BaseException:
        tracker.close("FAILED")  # no run is left RUNNING in MLflow when Tune itself fails
        raise
    finally:
        ray.shutdown()
    view = LiveView.active or view
    counts = view.counts()
    elapsed = time.perf_counter() - started
    out_of_time = spec.time_budget_s is not None and elapsed >= spec.time_budget_s
    interrupted = view.interrupted() and not out_of_time
    tracker.close("KILLED" if interrupted else "FAILED" if counts[Status.FAILED] else "FINISHED")
    return SweepSummary(str(experiment_path), tracker.parent_run_id, uri, counts, view.arms(),
                        interrupted, elapsed, view.headline)


def _param_space(spec: SweepSpec) -> dict[str, Any]:
    if spec.search is None:
        return {"overrides": tune.grid_search(spec.grid),
                "seeds": tune.grid_search(spec.seed_batches())}
    space = {key: tune_domain(domain) for key, domain in spec.search.space.items()}
    return {"overrides": space, "seeds": [spec.seeds[0]]}


def _tune_config(spec: SweepSpec, base, max_concurrent: int | None) -> tune.TuneConfig:
    search_alg = scheduler = None
    if spec.search is not None:
        import optuna

        search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.sampler_seed))
    if spec.scheduler is not None:
        reports = base.train.generator_steps // base.log_every + 2
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=reports,
                                  grace_period=min(spec.scheduler.grace_period, reports),
                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=spec.search.num_samples if spec.search else 1,
        max_concurrent_trials=max_concurrent,
        time_budget_s=spec.time_budget_s,
        reuse_actors=True,
        trial_name_creator=lambda trial: trial_title(trial.config),
        trial_dirname_creator=lambda trial: f"{trial_title(trial.config)}"
                                            f"-{trial.trial_id}",
    )
