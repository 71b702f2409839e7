"""Sweeps on Ray Tune (grid, or Optuna search with optional ASHA), tracked in MLflow.

A trial is one arm at a batch of seeds (``seed_batch`` in the spec; one seed by default). The
trainable :func:`distill_trainable` calls :func:`dibregman.run.run_seed_batch` with one run
directory per seed and forwards every record to ``tune.report`` (with the checkpoints when they
were written), so a retried or restored trial resumes from its checkpoints. A run that ends
``diverged`` is a finished run with that status.

With ``workers_per_trial: N > 1`` a trial's run trains data-parallel on N worker processes:
the trainable starts a Ray Train V2 ``TorchTrainer`` (this Ray's Train API: a trainer is launched
from inside a Tune function trainable, not handed to Tune) whose workers join one process group
(gloo on CPU, NCCL on GPU; :mod:`dibregman.distributed`) and call ``run_seed_batch`` with the
trial's one seed and run directory. Rank 0 alone writes the run directory and sends its records
through a Ray queue to the trainable, which reports them (and stages the checkpoints) exactly as
for a one-process trial, so tracking, retries and ``--resume`` are unchanged. Each worker holds
the spec's ``resources``; the trial's own actor holds :data:`TRIAL_DRIVER_CPU` CPU. Ray Train
schedules the workers outside Tune's accounting, so such trials run at most as many at once as
the runtime's CPUs and GPUs fit (:func:`trial_capacity`).

By default the sweep starts a private local Ray runtime on loopback and shuts it down at the
end; ``--address`` / ``RAY_ADDRESS`` joins an existing cluster instead (then ``--storage`` must
be shared by every node).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Checkpoint
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console

from bench.progress import LiveView
from bench.spec import Domain, SpecError, SweepSpec, batch_name
from bench.tracking import (
    MEASURED,
    SweepTracker,
    open_store,
    resolve_tracking_uri,
    trial_dir,
    trial_run_dir,
)
from dibregman.config import Config, from_dict, to_dict, with_overrides
from dibregman.distributed import DEFAULT_TIMEOUT
from dibregman.evaluate import curve_metrics, declared_metrics
from dibregman.results import Status, headline
from dibregman.run import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    METRICS_FILE,
    read_jsonl,
    run_seed_batch,
)
from dibregman.teachers import ImageTeacher, teacher_entry

MAX_FAILURES = 2
# The CPU a trial's own actor holds when its run trains on Ray Train workers (which hold the
# spec's resources each): it only relays their reports.
TRIAL_DRIVER_CPU = 0.1


def distill_trainable(config: dict[str, Any], base: dict[str, Any], experiment_path: str,
                      workers: int = 1, worker_resources: dict[str, float] | None = None) -> None:
    """Ray Tune function trainable: the Di-Bregman runs of one arm at a batch of seeds.

    Args:
        config: ``{"overrides": {config_key: value, ...}, "seeds": [s, ...]}`` from the param
            space; the seeds train as one seed batch (:func:`dibregman.run.run_seed_batch`).
        base: the sweep's base config (``to_dict`` form).
        experiment_path: the sweep's directory in storage (see :func:`trial_run_dir`).
        workers: processes the run trains on; above 1, Ray Train workers
            (:func:`train_on_workers`; one seed).
        worker_resources: each worker's ``{"cpu": ..., "gpu": ...}`` (``workers > 1``).

    Every record goes to ``tune.report`` with its run's ``seed``; a checkpoint step reports, once,
    a checkpoint holding every member's state (``s<seed>/state.pt``), so a retried or restored
    trial resumes its members from their checkpoints.
    """
    cfg = with_overrides(from_dict(base), config["overrides"])
    seeds = list(config["seeds"])
    curve_keys = {spec.key for spec in curve_metrics(cfg)}
    trial_id = tune.get_context().get_trial_id()
    run_dirs = [trial_run_dir(experiment_path, trial_id, seed) for seed in seeds]
    restored = tune.get_checkpoint()
    if restored is not None:
        # A trial moved to another node: start from the checkpoints Tune kept in storage.
        with restored.as_directory() as directory:
            for seed, run_dir in zip(seeds, run_dirs, strict=True):
                source = Path(directory) / f"s{seed}" / CHECKPOINT_FILE
                local = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
                if source.exists() and not local.exists():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(source, local)
    # Every report carries its run's latest curve metrics, so that Tune always finds the
    # sweep's metric: a trial restored from a checkpoint (a killed driver or worker) reports log
    # records before its next evaluation, and those take the values its earlier attempt
    # evaluated.
    latest = [last_values(run_dir / METRICS_FILE, curve_keys) for run_dir in run_dirs]
    reported_final = [False] * len(seeds)
    checkpointed_step: list[int | None] = [None]
    stage = trial_dir(experiment_path, trial_id) / "checkpoint"

    def report(k: int, record: dict[str, Any], checkpoint_dir: Path | None) -> None:
        latest[k].update({key: v for key, v in record.items() if key in curve_keys})
        checkpoint = None
        if checkpoint_dir is not None and record["step"] != checkpointed_step[0]:
            checkpointed_step[0] = record["step"]
            checkpoint = Checkpoint.from_directory(stage_checkpoints(stage, seeds, run_dirs))
        # ``latest`` is for Tune alone (a restored trial must report the sweep's metric before
        # its next evaluation); ``measured`` names what this record measured, all that the
        # tracker logs, so MLflow's curves hold real evaluations only.
        tune.report({**latest[k], **record, "seed": seeds[k], MEASURED: ",".join(record),
                     "checkpointed": checkpoint_dir is not None}, checkpoint=checkpoint)
        reported_final[k] = bool(record.get("final"))

    if workers > 1:
        finals = train_on_workers(cfg, seeds, run_dirs, report, workers,
                                  worker_resources or {"cpu": 1.0, "gpu": 0.0},
                                  trial_dir(experiment_path, trial_id))
    else:
        finals = [result.final_report()
                  for result in run_seed_batch(cfg, seeds, run_dirs, on_report=report)]
    for k, final in enumerate(finals):
        if not reported_final[k]:  # the run had ended before this attempt: its stored result
            report(k, final, None)  # ``latest`` holds its curve values


def train_on_workers(cfg: Config, seeds: list[int], run_dirs: list[Path], report: Any,
                     workers: int, resources: dict[str, float], trial_path: Path,
                     ) -> list[dict[str, Any]]:
    """Train a trial's run on ``workers`` Ray Train workers; returns its final reports.

    Rank 0's records come back through a Ray queue and go to ``report(k, record,
    checkpoint_dir)`` here, in the trial's thread, in order. Ray Train's own storage (no
    checkpoints are reported to it) is ``trial_path/ray_train``, beside the run directories. A
    worker's failure raises here (Ray Train's ``TrainingFailedError``), so Tune retries the
    trial, which resumes from the run's checkpoint.
    """
    import threading

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    use_gpu = resources["gpu"] > 0
    queue: Queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": to_dict(cfg), "seeds": seeds,
                           "run_dirs": [str(d) for d in run_dirs], "queue": queue},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": resources["cpu"], "GPU": resources["gpu"]}
            if use_gpu else {"CPU": resources["cpu"]}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo",
                                 timeout_s=int(DEFAULT_TIMEOUT.total_seconds())),
        run_config=RunConfig(name="ray_train", storage_path=str(trial_path),
                             failure_config=FailureConfig(max_failures=0)),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # raised in the trial's thread below
            failure.append(err)
        finally:
            queue.put(None)  # after every item rank 0 put: its puts returned before fit did

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    finals: list[dict[str, Any]] | None = None
    while (item := queue.get()) is not None:  # an error here (Tune stopping the trial) ends
        if item[0] == "final":                # the trial's actor, and with it the workers
            finals = item[1]
        else:
            k, record, saved = item
            report(k, record, run_dirs[k] / CHECKPOINT_DIR if saved else None)
    thread.join()
    queue.shutdown(force=True)
    if failure:
        raise failure[0]
    if finals is None:
        raise RuntimeError("the Ray Train workers ended without the run's result")
    return finals


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a trial: adopt the process group Ray Train made, train the
    shard of the run; rank 0 sends ``(k, record, checkpointed)`` for every record and finally
    ``("final", [final report, ...])`` to the trial's queue."""
    from ray.train.torch import get_device

    from dibregman import distributed

    distributed.setup(get_device())
    queue = config["queue"]
    cfg = from_dict(config["cfg"])
    run_dirs = [Path(d) for d in config["run_dirs"]]

    def relay(k: int, record: dict[str, Any], checkpoint_dir: Path | None) -> None:
        queue.put((k, record, checkpoint_dir is not None))

    results = run_seed_batch(cfg, list(config["seeds"]), run_dirs, on_report=relay)
    if distributed.is_main():
        queue.put(("final", [result.final_report() for result in results]))


def trial_title(config: dict[str, Any]) -> str:
    """A trial's name from its Tune config: its arm and seeds (:func:`bench.spec.batch_name`)."""
    return batch_name(config["overrides"], config["seeds"])


def stage_checkpoints(stage: Path, seeds: list[int], run_dirs: list[Path]) -> Path:
    """A directory ``stage`` holding ``s<seed>/state.pt`` for every run of a batch that has a
    checkpoint: hard links (no copies) to the runs' own checkpoint files, which are replaced,
    never rewritten, so a link keeps the state it was made for."""
    shutil.rmtree(stage, ignore_errors=True)
    for seed, run_dir in zip(seeds, run_dirs, strict=True):
        source = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
        if source.exists():
            (stage / f"s{seed}").mkdir(parents=True)
            os.link(source, stage / f"s{seed}" / CHECKPOINT_FILE)
    stage.mkdir(parents=True, exist_ok=True)
    return stage


def last_values(metrics_file: Path, keys: set[str]) -> dict[str, Any]:
    """The last value of each of ``keys`` in a run's ``metrics.jsonl`` (empty if the file does
    not exist; read by :func:`dibregman.run.read_jsonl`)."""
    values: dict[str, Any] = {}
    for record in read_jsonl(metrics_file):
        values.update({k: v for k, v in record.items() if k in keys})
    return values


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


def new_experiment_dir(storage: Path, name: str) -> Path:
    """A new ``storage/<name>-<time>`` directory, created here so that two sweeps started in
    the same second get two (the second ``-2``) instead of sharing one."""
    stem = f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, attempt = storage / stem, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            attempt += 1
            path = storage / f"{stem}-{attempt}"


def latest_experiment(storage: Path, name: str) -> Path | None:
    """The newest restorable Ray experiment directory of sweep ``name`` under ``storage``."""
    candidates = sorted(storage.glob(f"{name}-*"), key=lambda p: p.name, reverse=True)
    return next((p for p in candidates if tune.Tuner.can_restore(str(p))), None)


def trial_footprint(spec: SweepSpec) -> dict[str, float]:
    """What one trial holds in all: the spec's ``resources``, or with ``workers_per_trial: N >
    1`` N times them (its workers) plus its own actor's :data:`TRIAL_DRIVER_CPU`."""
    workers = spec.workers_per_trial
    if workers == 1:
        return dict(spec.resources)
    return {"cpu": workers * spec.resources["cpu"] + TRIAL_DRIVER_CPU,
            "gpu": workers * spec.resources["gpu"]}


def trial_capacity(spec: SweepSpec) -> int | None:
    """How many trials on Ray Train workers the runtime fits at once (None: one-process
    trials, which Tune itself schedules by their resources)."""
    if spec.workers_per_trial == 1:
        return None
    available, need = ray.cluster_resources(), trial_footprint(spec)
    return max(1, min(int(available.get(name, 0.0) // need[resource])
                      for resource, name in (("cpu", "CPU"), ("gpu", "GPU"))
                      if need[resource] > 0))


def check_resources(spec: SweepSpec) -> None:
    """A trial must fit the Ray runtime: Tune would otherwise wait for resources forever."""
    available = ray.cluster_resources()
    need = trial_footprint(spec)
    workers = spec.workers_per_trial
    for resource, name in (("cpu", "CPU"), ("gpu", "GPU")):
        have = available.get(name, 0.0)
        if need[resource] > have:
            asks = (f"{need[resource]:g} {name}s" if workers == 1 else
                    f"{need[resource]:g} {name}s ({workers} workers at "
                    f"{spec.resources[resource]:g}"
                    + (f", plus {TRIAL_DRIVER_CPU:g} for the trial)" if resource == "cpu"
                       else ")"))
            raise SpecError(f"{spec.path}: resources.{resource}: a trial asks for {asks} but "
                            f"the Ray runtime has {have:g}; lower it (or join a cluster that "
                            f"has them)")


# Ray 2.60 rewrites a loopback node address to the host's network address (and its servers
# then listen on every interface) unless this setting is 0; with it, every listener of a
# private runtime (GCS, raylet, driver, workers, the runtime-env agent) binds 127.0.0.1. Ray
# reads it into ray._private.ray_constants.ENABLE_RAY_CLUSTER when it is imported, so a private
# runtime sets both: the variable for the processes it starts, the constant for this one.
LOOPBACK_SETTING = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_ray(address: str | None, num_cpus: int | None,
              console: Console | None = None) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a private, quiet runtime that only
    this machine can reach: every listener on 127.0.0.1. Should a Ray version listen elsewhere
    anyway, one line on ``console`` names the exposed ports."""
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR,
             "configure_logging": True}
    if address:
        ray.init(address=address, **quiet)
        return
    from ray._private import ray_constants

    os.environ[LOOPBACK_SETTING] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", **quiet)
    exposed = exposed_listeners()
    if exposed and console is not None:
        console.print(f"warning: the private Ray runtime listens beyond loopback: "
                      f"{', '.join(exposed)}; firewall these ports", highlight=False)


def exposed_listeners() -> list[str]:
    """``name address:port`` of every listening socket of this process and its descendants
    (the private Ray runtime) that is not on a loopback address."""
    import ipaddress

    import psutil

    me = psutil.Process()
    pids = {me.pid, *(child.pid for child in me.children(recursive=True))}
    found = []
    for connection in psutil.net_connections(kind="inet"):
        if connection.status != psutil.CONN_LISTEN or connection.pid not in pids:
            continue
        address = ipaddress.ip_address(connection.laddr.ip)
        mapped = getattr(address, "ipv4_mapped", None)
        if not (mapped or address).is_loopback:
            try:
                name = psutil.Process(connection.pid).name()
            except psutil.Error:
                name = str(connection.pid)
            found.append(f"{name} {connection.laddr.ip}:{connection.laddr.port}")
    return sorted(found)


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
        uri = resolve_tracking_uri(tracking_uri)
        client = open_store(uri)  # the driver creates the store before any trial starts
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
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
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
