"""A trial: the Tune function trainable that trains one arm at a batch of seeds (on one process,
or on Ray Train's workers) and reports every record.

A trial resumes from its runs' own checkpoints, never from Tune's: each run directory lies in
the sweep's storage (shared by every node on a cluster, :func:`bench.tracking.trial_run_dir`)
and its checkpoint is written to a temporary file and renamed over the last one
(:func:`dibregman.run.run_seed_batch`), so whatever kills a trial, its next attempt (a Tune
retry, or ``bench sweep --resume`` after the driver died) finds the last complete checkpoint.
Tune checkpoints are not used: Tune deletes the older of its kept checkpoints as soon as a newer
one registers, while its experiment state is saved only every few seconds, so a driver killed
in between left a state naming a deleted checkpoint, and the resumed trial failed with
"checkpoint_000000 does not exist on storage anymore".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from bench.spec import batch_name
from bench.tracking import (
    MEASURED,
    trial_dir,
    trial_run_dir,
)
from dibregman.config import Config, from_dict, to_dict, with_overrides
from dibregman.distributed import DEFAULT_TIMEOUT
from dibregman.evaluate import curve_metrics
from dibregman.run import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    read_jsonl,
    run_seed_batch,
)

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

    Every record goes to ``tune.report`` with its run's ``seed``; a retried or restored trial
    resumes its members from their run directories' checkpoints (the module's docstring).
    """
    cfg = with_overrides(from_dict(base), config["overrides"])
    seeds = list(config["seeds"])
    curve_keys = {spec.key for spec in curve_metrics(cfg)}
    trial_id = tune.get_context().get_trial_id()
    run_dirs = [trial_run_dir(experiment_path, trial_id, seed) for seed in seeds]
    # Every report carries its run's latest curve metrics, so that Tune always finds the
    # sweep's metric: a trial restored from a checkpoint (a killed driver or worker) reports log
    # records before its next evaluation, and those take the values its earlier attempt
    # evaluated.
    latest = [last_values(run_dir / METRICS_FILE, curve_keys) for run_dir in run_dirs]
    reported_final = [False] * len(seeds)

    def report(k: int, record: dict[str, Any], checkpoint_dir: Path | None) -> None:
        latest[k].update({key: v for key, v in record.items() if key in curve_keys})
        # ``latest`` is for Tune alone (a restored trial must report the sweep's metric before
        # its next evaluation); ``measured`` names what this record measured, all that the
        # tracker logs, so MLflow's curves hold real evaluations only.
        tune.report({**latest[k], **record, "seed": seeds[k], MEASURED: ",".join(record),
                     "checkpointed": checkpoint_dir is not None})
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


def last_values(metrics_file: Path, keys: set[str]) -> dict[str, Any]:
    """The last value of each of ``keys`` in a run's ``metrics.jsonl`` (empty if the file does
    not exist; read by :func:`dibregman.run.read_jsonl`)."""
    values: dict[str, Any] = {}
    for record in read_jsonl(metrics_file):
        values.update({k: v for k, v in record.items() if k in keys})
    return values
