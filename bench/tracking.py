"""MLflow tracking of sweeps: one parent run per sweep, one child run per run (a trial of a seed
batch holds one run per seed).

All MLflow writes happen in the sweep driver (a Ray Tune callback), never in trial workers, so
a sqlite store sees one writer. The driver creates the store and the experiment before any
trial starts.

Child runs are keyed by the Ray trial id and the seed (tags ``ray.trial_id``, ``seed``): a
retried or restored trial reopens its own child runs instead of creating new ones, and records
at or below the last logged step are not logged again. Every run ends FINISHED, FAILED or
KILLED.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS

from bench.spec import SweepSpec, arm_name, trial_name
from dibregman import __version__
from dibregman.config import flatten, with_overrides
from dibregman.evaluate import declared_metrics
from dibregman.results import ELAPSED, STEP_RECORD_KEY, Status, headline
from dibregman.run import (
    CONFIG_FILE,
    FINAL_FILE,
    METRICS_FILE,
    PROVENANCE_FILE,
    RATIO_CHECK_FILE,
    SAMPLES_FILE,
    git_revision,
    read_jsonl,
)

DEFAULT_STORE = "mlflow.db"
PARENT_TAG = "sweep.parent"  # "true" on parent runs
EXPERIMENT_PATH_TAG = "sweep.experiment_path"
TRIAL_TAG = "ray.trial_id"
ARM_TAG = "arm"  # a grid trial's arm name (bench.spec.arm_name): the report's label
HEADLINE_TAG = "sweep.headline"  # the final metric the report ranks and compares arms by
CONTROLS_TAG = "sweep.controls"  # JSON {role: arm name} of the spec's validity controls
# JSON of the spec's budgets, confirmatory family and time-to-target factor: declared before
# the first trial runs, what the report's verdicts are made on.
PROTOCOL_TAG = "sweep.protocol"
# A child run's records are written to MLflow in batches of this many (each batch one store
# transaction), at every checkpoint (so after a kill MLflow holds what the run resumes from)
# and when the run ends: a seed batch reports ten runs' records at once.
FLUSH_RECORDS = 10
MAX_BATCH_METRICS = 1000  # MLflow's limit per log_batch call
# A trial's report names the keys its record measured (comma-separated) under this key.
MEASURED = "measured"
NOT_METRICS = {*AUTO_RESULT_KEYS, "done", "step", "final", "should_checkpoint", "trial_id",
               "experiment_tag", "seed", "checkpointed", MEASURED}


def trial_dir(experiment_path: str | Path, trial_id: str) -> Path:
    """Where a trial's runs live: ``EXPERIMENT/runs/TRIAL_ID``.

    Beside Ray's own trial directories in the sweep's storage (shared on a cluster), so the
    driver can read them as soon as the trial ends and a restored trial finds them again.
    """
    return Path(experiment_path) / "runs" / trial_id


def trial_run_dir(experiment_path: str | Path, trial_id: str, seed: int) -> Path:
    """The run directory of a trial's seed ``seed``: ``EXPERIMENT/runs/TRIAL_ID/s<seed>``."""
    return trial_dir(experiment_path, trial_id) / f"s{seed}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's sqlite default ``./mlflow.db``.

    A relative sqlite path is made absolute so the driver and ``bench ui`` agree.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def open_store(uri: str) -> MlflowClient:
    """Point MLflow at ``uri`` and make sure the store exists (creates a sqlite file once).

    MLflow creates and migrates a new sqlite store on the first query of each process; two
    processes doing it at once collide (``duplicate column name``). For a sqlite store the
    first query therefore holds an exclusive lock on ``<store>.lock``, so concurrent sweeps
    (and readers) on a new store take turns: the first migrates, the others find it current.
    """
    if not uri.startswith("sqlite:///"):
        try:
            return _connect(uri)
        except Exception as err:  # noqa: BLE001 - any failure of the store, as one error
            raise StoreError(f"cannot open the MLflow store {uri}: {_reason(err)}") from None
    path = Path(uri[len("sqlite:///"):])
    lock = path.with_name(path.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            new = not path.exists()
            try:
                return _connect(uri)
            except Exception:
                if new:  # nothing half-written: a store this call began is removed again
                    path.unlink(missing_ok=True)
                raise
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    except Exception as err:  # noqa: BLE001 - any failure of the store, as one error
        raise StoreError(f"cannot open the MLflow store {uri}: {_reason(err)}; choose a "
                         f"writable place with --tracking-uri") from None


class StoreError(RuntimeError):
    """The MLflow store cannot be opened or created; the message says why."""


def _reason(err: BaseException) -> str:
    """The innermost cause of ``err``, on one line (e.g. sqlite's "database or disk is full")."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _connect(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)  # creates and migrates a new store
    return client


# MLflow 3's UI opens an experiment by this tag: without it a new experiment opens in its GenAI
# view (traces, an assistant), the runs table hidden behind a toggle.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing, tagged as model training (so the UI
    opens on its runs)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def runs_url(client: MlflowClient, port: int) -> str:
    """The MLflow UI's address of the newest sweep's runs table (MLflow 3's UI opens in its
    GenAI view unless the address asks for the model-training one), or its front page when the
    store holds no sweep."""
    base = f"http://127.0.0.1:{port}/"
    experiments = [e.experiment_id for e in client.search_experiments()]
    newest = client.search_runs(experiments, f"tags.`{PARENT_TAG}` = 'true'",
                                order_by=["attributes.start_time DESC"],
                                max_results=1) if experiments else []
    if not newest:
        return f"{base}#/experiments?workflowType=machine_learning"
    return (f"{base}#/experiments/{newest[0].info.experiment_id}"
            f"?workflowType=machine_learning")


def tag_sweep_experiments(client: MlflowClient) -> int:
    """Tag every experiment that holds a sweep as model training (stores written before the
    tag existed); returns how many needed it."""
    tagged = 0
    for experiment in client.search_experiments():
        if experiment.tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING:
            continue
        if client.search_runs([experiment.experiment_id], f"tags.`{PARENT_TAG}` = 'true'",
                              max_results=1):
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                      MODEL_TRAINING)
            tagged += 1
    return tagged


def _finite_metrics(record: dict[str, Any], step: int, timestamp: int) -> list[Metric]:
    """The record's numbers as MLflow metrics at ``step``; a record from a trial logs only the
    keys it names under :data:`MEASURED` (the rest repeat earlier values for Tune's sake)."""
    measured = record.get(MEASURED)
    keys = set(measured.split(",")) if isinstance(measured, str) else None
    metrics = []
    for key, value in record.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if keys is not None and key not in keys:
            continue
        value = float(value)
        metrics.append(Metric(key, value if math.isfinite(value) else float("nan"),
                              timestamp, step))
    return metrics


class SweepTracker(Callback):
    """A Ray Tune callback that mirrors a sweep into MLflow.

    Args:
        client: an MLflow client on the sweep's store.
        spec: the sweep spec (tags and provenance).
        experiment_path: the Ray experiment directory (identifies the sweep for ``--resume``).
        parent_run_id: the sweep's parent run.
    """

    def __init__(self, client: MlflowClient, spec: SweepSpec, experiment_path: str,
                 parent_run_id: str) -> None:
        self.client = client
        self.spec = spec
        self.experiment_path = experiment_path
        self.parent_run_id = parent_run_id
        self.experiment_id = client.get_run(parent_run_id).info.experiment_id
        self.run_ids: dict[str, str] = {}
        self.tracking_uri = client.tracking_uri
        self.logged_step: dict[str, int] = {}
        self.pending: dict[str, list[list[Metric]]] = {}  # run id -> records not yet written
        # Child runs that had finished before this driver started (a resume): Tune may run or
        # report such a trial again when its last snapshot predates the kill; MLflow keeps the
        # first, finished record untouched (metrics, status, end time).
        self.finished_before: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a client holds locks.
        return {k: v for k, v in self.__dict__.items() if k != "client"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled on --resume: the snapshot may predate a kill, so what each child run holds
        # is read again from MLflow (the record) by _child, not taken from the snapshot.
        self.__dict__.update(state)
        self.client = MlflowClient(self.tracking_uri)
        self.run_ids, self.logged_step = {}, {}
        self.pending, self.finished_before = {}, set()

    # -- parent ----------------------------------------------------------------------------------

    @classmethod
    def start(cls, client: MlflowClient, spec: SweepSpec, experiment_path: str,
              resume: bool) -> SweepTracker:
        """Create (or, on resume, reopen) the sweep's parent run and return the tracker."""
        exp_id = experiment_id(client, spec.name)
        parent = None
        if resume:
            found = client.search_runs(
                [exp_id], f"tags.`{EXPERIMENT_PATH_TAG}` = '{experiment_path}' "
                          f"and tags.`{PARENT_TAG}` = 'true'", max_results=1)
            parent = found[0].info.run_id if found else None
        if parent is None:
            base = spec.base_config()
            run = client.create_run(exp_id, run_name=Path(experiment_path).name, tags={
                PARENT_TAG: "true",
                EXPERIMENT_PATH_TAG: experiment_path,
                "sweep.name": spec.name,
                "sweep.spec_hash": spec.spec_hash,
                "sweep.spec_path": str(spec.path),
                "sweep.preset": spec.preset,
                "sweep.metric": spec.metric,
                "sweep.mode": spec.mode,
                "sweep.kind": "search" if spec.search else "grid",
                CONTROLS_TAG: json.dumps(spec.controls),
                PROTOCOL_TAG: json.dumps({"budgets": list(spec.budgets),
                                          "confirmatory": spec.confirmatory.to_dict(),
                                          "target": spec.target}),
                "code.version": __version__,
                "code.git_revision": git_revision(),
            })
            parent = run.info.run_id
            client.log_text(parent, spec.path.read_text(), "spec.yaml")
            client.log_dict(parent, flatten(base), "base_config.json")
            declared = declared_metrics(base)
            client.log_dict(parent, [m.to_dict() for m in declared], "declared_metrics.json")
            client.set_tag(parent, HEADLINE_TAG, spec.headline or headline(declared).key)
        else:
            client.update_run(parent, status="RUNNING")
        return cls(client, spec, experiment_path, parent)

    def close(self, status: str) -> None:
        """End the parent, and mark any child still RUNNING as KILLED (an interrupted sweep)."""
        for run_id in list(self.pending):
            self._flush(run_id)
        parent = self.client.get_run(self.parent_run_id)
        for run in child_runs(self.client, parent, "attributes.status = 'RUNNING'"):
            self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.set_terminated(self.parent_run_id, status)

    # -- children --------------------------------------------------------------------------------

    def _child(self, trial: Trial, seed: int) -> str:
        """The child run of ``trial``'s seed ``seed``: reopened if it exists, else created with
        its params."""
        key = f"{trial.trial_id}/{seed}"
        if key in self.run_ids:
            return self.run_ids[key]
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' and tags.seed = '{seed}' "
            f"and tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'", max_results=1)
        overrides = {**trial.config["overrides"], "seed": seed}
        if found and found[0].info.status == "FINISHED":
            run_id = found[0].info.run_id
            self.finished_before.add(run_id)
        elif found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, ELAPSED)
            self.logged_step[run_id] = max((m.step for m in history), default=-1)
        else:
            cfg = with_overrides(self.spec.base_config(), overrides)
            name = trial_name(overrides)
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags={
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                MLFLOW_RUN_NAME: name,
                TRIAL_TAG: trial.trial_id,
                "sweep.name": self.spec.name,
                "sweep.spec_hash": self.spec.spec_hash,
                ARM_TAG: arm_name(overrides),
                "generator": cfg.generator.name,
                "generator.alpha": str(cfg.generator.alpha),
                "seed": str(seed),
                "seed_batch": json.dumps(list(trial.config["seeds"])),
                "preset": cfg.preset,
                "status": str(Status.RUNNING),
                "code.version": __version__,
                "code.git_revision": git_revision(),
            }).info.run_id
            # Tuples in the --set spelling (a,b,c), which with_overrides parses back.
            params = [Param(k, ",".join(map(str, v)) if isinstance(v, tuple) else str(v))
                      for k, v in flatten(cfg).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[start:start + 100])
            self.logged_step[run_id] = -1
        self.run_ids[key] = run_id
        return run_id

    def _children(self, trial: Trial) -> list[tuple[int, str]]:
        """``(seed, run id)`` of every run of ``trial``."""
        return [(seed, self._child(trial, seed)) for seed in trial.config["seeds"]]

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._children(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict, **info) -> None:
        run_id = self._child(trial, int(result["seed"]))
        if run_id in self.finished_before:
            return
        step = int(result.get("step", 0))
        metrics = _finite_metrics(result, step, int(time.time() * 1000))
        if result.get("final"):
            # The final metrics (names carry their sample counts), once, at the last step:
            # each is the last point of its curve when the run also measured it at budgets
            # (the values the trial repeats for Tune are not among the measured keys). The
            # elapsed time is logged again: at the same step with a later timestamp, it is the
            # run's final value.
            self._flush(run_id, final=metrics,
                        tags=[RunTag("status", str(result["status"]))])
            return
        if step <= self.logged_step[run_id]:
            return  # logged before a restore
        self.pending.setdefault(run_id, []).append(metrics)
        self.logged_step[run_id] = step
        if len(self.pending[run_id]) >= FLUSH_RECORDS or result.get("checkpointed"):
            self._flush(run_id)

    def _flush(self, run_id: str, final: list[Metric] | None = None,
               tags: list[RunTag] | None = None) -> None:
        """Write the run's buffered records (and ``final`` metrics, ``tags``) in as few
        ``log_batch`` calls as MLflow's per-call limit allows."""
        metrics = [m for record in self.pending.pop(run_id, []) for m in record] + (final or [])
        _log_in_batches(self.client, run_id, metrics, tags or [])

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info) -> None:
        for seed, run_id in self._children(trial):
            if run_id in self.finished_before:
                continue
            self._flush(run_id)
            if self.client.get_run(run_id).data.tags.get("status") == str(Status.RUNNING):
                # Stopped early by the scheduler or the time budget: a finished trial, not a
                # run that reached its last step.
                self.client.set_tag(run_id, "status", str(Status.STOPPED))
            self._close_ended(trial, seed, run_id)

    def _backfill(self, run_id: str, metrics_file: Path) -> None:
        """Log records of the run's ``metrics.jsonl`` that never reached the driver.

        An interrupt can land after a worker reported a record but before the driver logged
        it; the resumed run continues after its checkpoint and never reports it again. The
        file is the run's own record, so the gap is filled from it.
        """
        # Steps whose record reached MLflow: the final record also logs ELAPSED, at the last
        # step, so past step 0 a step counts as logged only by a key of step records alone;
        # a record filled in at that step leaves the final's ELAPSED the latest value.
        elapsed_steps = {m.step for m in self.client.get_metric_history(run_id, ELAPSED)}
        logged = {m.step for m in self.client.get_metric_history(run_id, STEP_RECORD_KEY)}
        logged |= {0} & elapsed_steps
        now = int(time.time() * 1000)
        missing = []
        for record in read_jsonl(metrics_file):
            if record["step"] not in logged:
                missing += [m for m in _finite_metrics(record, record["step"], now)
                            if m.key != ELAPSED or record["step"] not in elapsed_steps]
        _log_in_batches(self.client, run_id, missing, [])

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        for seed, run_id in self._children(trial):
            if run_id in self.finished_before:
                continue
            self._flush(run_id)
            if self.client.get_run(run_id).data.tags.get("status") != str(Status.RUNNING):
                # This run had ended (finished or diverged) before its batch failed.
                self._close_ended(trial, seed, run_id)
                continue
            if trial.error_file and Path(trial.error_file).exists():
                self.client.log_artifact(run_id, trial.error_file)
            self.client.set_tag(run_id, "status", str(Status.FAILED))
            self.client.set_terminated(run_id, "FAILED")

    def _close_ended(self, trial: Trial, seed: int, run_id: str) -> None:
        """Attach an ended run's files and close its child run FINISHED."""
        run_dir = trial_run_dir(self.experiment_path, trial.trial_id, seed)
        self._backfill(run_id, run_dir / METRICS_FILE)
        for name in (CONFIG_FILE, PROVENANCE_FILE, FINAL_FILE, METRICS_FILE, RATIO_CHECK_FILE,
                     SAMPLES_FILE):
            if (run_dir / name).exists():
                self.client.log_artifact(run_id, str(run_dir / name))
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial,
                         **info) -> None:
        for _, run_id in self._children(trial):
            retries = int(self.client.get_run(run_id).data.tags.get("retries", "0")) + 1
            self.client.set_tag(run_id, "retries", str(retries))


def _log_in_batches(client: MlflowClient, run_id: str, metrics: list[Metric],
                    tags: list[RunTag]) -> None:
    """``log_batch`` of ``metrics`` and ``tags``, cut to MLflow's per-call limit."""
    if not metrics and not tags:
        return
    for start in range(0, max(len(metrics), 1), MAX_BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH_METRICS],
                         tags=tags if start == 0 else [])


def child_runs(client: MlflowClient, parent: Any, where: str = "") -> list[Any]:
    """The child runs of a sweep's parent run, optionally filtered further (``where``)."""
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'"
    return client.search_runs([parent.info.experiment_id],
                              f"{query} and {where}" if where else query, max_results=10_000)
