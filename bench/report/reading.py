"""Reading a sweep back from MLflow: its parent run, its child runs and their metric histories.

The sweep's child runs are read with ``MlflowClient.search_runs`` (through
``bench.tracking.child_runs``) and their metric histories with
``MlflowClient.get_metric_history`` into tidy pandas frames (:class:`SweepData`). The report's
columns are the metrics the runs declared (:func:`dibregman.evaluate.declared_metrics` of their
teacher and eval config): label, direction and role come from there, never from a metric name.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from bench.tracking import (
    ARM_TAG,
    CONTROLS_TAG,
    HEADLINE_TAG,
    PARENT_TAG,
    PROTOCOL_TAG,
    TRIAL_TAG,
    child_runs,
)

# Artifact downloads in the report (samples pictures, spec, provenance) are single small files:
# no progress bar per file. Set here, on the first import of the package, before any download.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from dibregman.config import Config, EvalConfig, with_overrides  # noqa: E402
from dibregman.evaluate import declared_metrics  # noqa: E402
from dibregman.results import (  # noqa: E402
    WEIGHT_DIAGNOSTICS,
    MetricSpec,
    Role,
    Stage,
    Status,
    headline,
)
from dibregman.run import METRICS_FILE, RATIO_CHECK_FILE, read_jsonl  # noqa: E402


class ReportError(ValueError):
    """No such sweep, or nothing to report; the message lists the sweeps in the store."""


@dataclass
class SweepData:
    """A sweep read back from MLflow.

    Attributes:
        name: sweep name; parent: the parent run; runs: one row per child run (label,
        generator, alpha, seed, status, final metrics); histories: tidy (run_id, label, seed,
        key, step, value); columns: the declared final metrics, headline first, costs last;
        curve: the declared metric logged over training; tracking_uri: the store; controls:
        role (``aa``, ``positive``) -> arm label of the spec's validity controls;
        ratio_checks: the live ratio check's rows of every run that has them (run_id, label,
        seed, then ``step``, ``sigma`` and :data:`dibregman.ratio_check.CHECK_FIELDS`; empty
        for teachers without an exact density), with ``estimator`` the run's ratio estimator;
        long: every number every ended run recorded, in long form (run_id, label, seed, step,
        key, value), read from the runs' ``metrics.jsonl``: the final metrics at each budget,
        the curve metrics, diagnostics and costs; budgets: the spec's declared budgets (the
        last step is always one); confirmatory, target: the spec's declared family
        (``{"budgets": [...], "time_to_target": bool}``) and time-to-target factor.
    """

    name: str
    parent: Any
    runs: pd.DataFrame
    histories: pd.DataFrame
    columns: list[MetricSpec]
    curve: MetricSpec
    tracking_uri: str
    controls: dict[str, str] = field(default_factory=dict)
    ratio_checks: pd.DataFrame = field(default_factory=pd.DataFrame)
    long: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["run_id", "label", "seed", "step", "key", "value"]))
    budgets: tuple[int, ...] = ()
    confirmatory: dict[str, Any] = field(default_factory=dict)
    target: float = 1.1

    @property
    def headline(self) -> MetricSpec:
        """The metric arms are ranked and compared by: the first column."""
        return self.columns[0]

    def column(self, name: str) -> MetricSpec | None:
        """The column of metric ``name`` (``precision``, ``wall_time``), if declared."""
        return next((c for c in self.columns if c.name == name), None)

    @property
    def runs_teacher(self) -> str:
        """The registry name of the sweep's teacher (its runs' ``teacher`` param)."""
        return str(self.runs.teacher.iloc[0])

    @property
    def is_search(self) -> bool:
        return self.parent.data.tags.get("sweep.kind") == "search"


def sweep_parents(client: MlflowClient) -> list[Any]:
    """Every sweep parent run in the store, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return client.search_runs(experiments, f"tags.`{PARENT_TAG}` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=10_000)


def find_parent(client: MlflowClient, sweep: str | None) -> Any:
    """The newest parent run of ``sweep`` (of any sweep when None) that has child runs."""
    parents = sweep_parents(client)
    names = sorted({p.data.tags.get("sweep.name", "") for p in parents})
    listing = f"sweeps in the store: {', '.join(names)}" if names else "the store has no sweeps"
    matching = [p for p in parents if sweep is None or p.data.tags.get("sweep.name") == sweep]
    if not matching:
        raise ReportError(f"no sweep named {sweep!r}; {listing}")
    for parent in matching:
        if child_runs(client, parent):
            return parent
    raise ReportError(f"sweep {sweep or matching[0].data.tags.get('sweep.name')!r} has no "
                      f"trials yet; {listing}")


def columns_for(params: dict[str, str],
                headline_key: str | None = None) -> tuple[list[MetricSpec], MetricSpec]:
    """The declared final metrics (headline first, costs last) and the curve metric of the
    headline's kind, for a run with these MLflow params (its ``teacher`` and ``eval.*``).
    ``headline_key``: the sweep's headline (its spec's ``headline``), if not the declared one."""
    # The sample counts and k that name the metrics (not eval.budgets: no declaration
    # depends on it, and stores written before its --set spelling hold "(50, 100)").
    evaluation = {k: v for k, v in params.items()
                  if k.startswith("eval.") and k != "eval.budgets"}
    cfg = with_overrides(Config(teacher=params["teacher"], eval=EvalConfig()), evaluation)
    declared = declared_metrics(cfg)
    final = [m for m in declared if m.stage is Stage.FINAL]
    top = next((m for m in final if m.key == headline_key), None) or headline(final)
    columns = [top, *[m for m in final if m.role is not Role.COST and m is not top],
               *[m for m in final if m.role is Role.COST]]
    curves = [m for m in declared if m.stage is Stage.CURVE]
    curve = next((m for m in curves if m.name == top.name), curves[0])
    return columns, curve


def load_sweep(client: MlflowClient, parent: Any, tracking_uri: str) -> SweepData:
    """Children of ``parent`` as a frame, plus their metric histories."""
    runs = child_runs(client, parent)
    rows = []
    for run in runs:
        params, tags = run.data.params, run.data.tags
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "generator": params["generator.name"],
            "alpha": float(params["generator.alpha"]),
            "lr": float(params["train.lr"]),
            "seed": int(params["seed"]),
            "status": tags.get("status", str(Status.RUNNING)),
            "mlflow_status": run.info.status,
            "generator_steps": int(params["train.generator_steps"]),
            "trial": tags.get(TRIAL_TAG, ""),
            "teacher": params["teacher"],
            **run.data.metrics,
        })
    frame = pd.DataFrame(rows)
    if parent.data.tags.get("sweep.kind") == "search":
        frame["label"] = frame["run_name"].str.replace(r"-s\d+$", "", regex=True)
    else:
        frame["label"] = [run.data.tags[ARM_TAG] for run in runs]
    columns, curve = columns_for(runs[0].data.params, parent.data.tags.get(HEADLINE_TAG))
    long = load_records(client, runs, frame)
    history_keys = (curve.key, *WEIGHT_DIAGNOSTICS, "ratio_accuracy")
    histories = long[long.key.isin(history_keys)]
    for column in columns:
        if column.key not in frame:
            frame[column.key] = np.nan
    controls = json.loads(parent.data.tags.get(CONTROLS_TAG, "{}"))
    protocol = json.loads(parent.data.tags.get(PROTOCOL_TAG, "{}"))
    return SweepData(parent.data.tags.get("sweep.name", ""), parent, frame, histories, columns,
                     curve, tracking_uri, controls, load_ratio_checks(client, runs, frame),
                     long, tuple(protocol.get("budgets", ())),
                     protocol.get("confirmatory", {}), float(protocol.get("target", 1.1)))


def _download(client: MlflowClient, run_id: str, name: str, directory: str) -> Path | None:
    """One artifact of a run, or None when it has none (a run that did not end)."""
    try:
        return Path(client.download_artifacts(run_id, name, directory))
    except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
        return None


def load_records(client: MlflowClient, runs: list[Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Every ended run's ``metrics.jsonl`` artifact in long form (see ``SweepData.long``)."""
    rows = []
    with tempfile.TemporaryDirectory() as downloads:
        for run, row in zip(runs, frame.itertuples(), strict=True):
            path = _download(client, run.info.run_id, METRICS_FILE, downloads)
            if path is None:
                continue
            for record in read_jsonl(path):
                rows += [(run.info.run_id, row.label, row.seed, record["step"], key, float(value))
                         for key, value in record.items()
                         if key != "step" and isinstance(value, (int, float))
                         and not isinstance(value, bool)]
            path.unlink()
    return pd.DataFrame(rows, columns=["run_id", "label", "seed", "step", "key", "value"])


def load_ratio_checks(client: MlflowClient, runs: list[Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Every run's ``ratio_check.jsonl`` artifact as one long frame (see ``SweepData``); runs
    without one (no exact density, or not ended) contribute nothing."""
    if not any(m.startswith("ratio_check_") for run in runs for m in run.data.metrics):
        return pd.DataFrame()
    rows = []
    with tempfile.TemporaryDirectory() as downloads:
        for run, row in zip(runs, frame.itertuples(), strict=True):
            path = _download(client, run.info.run_id, RATIO_CHECK_FILE, downloads)
            if path is None:
                continue
            for record in read_jsonl(path):
                rows.append({"run_id": run.info.run_id, "label": row.label, "seed": row.seed,
                             "estimator": run.data.params.get("ratio.estimator", ""), **record})
            path.unlink()
    return pd.DataFrame(rows)


def teacher_values(client: MlflowClient, parent: Any) -> tuple[dict[str, float], str]:
    """The teacher's own final metrics for the sweep's base config
    (:func:`dibregman.evaluate.teacher_reference`: its Heun samples of the evaluation latents,
    measured as a student's are), and a note; empty with the reason when the teacher cannot
    be built here (an image teacher whose cache or data this machine lacks)."""
    from dibregman.evaluate import teacher_reference

    try:
        path = client.download_artifacts(parent.info.run_id, "base_config.json")
        cfg = with_overrides(Config(), json.loads(Path(path).read_text()))
        return teacher_reference(cfg), ""
    except Exception as err:  # noqa: BLE001 - the report stands without the teacher's row
        return {}, (f"The teacher's own values could not be measured here "
                    f"({type(err).__name__}: {err}); students are shown without them.")
