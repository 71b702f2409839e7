"""`bench sweep`, `bench report` and `bench ui`: a Ray Tune sweep, its report, the MLflow UI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bench.cli.common import console, err_console, fail
from bench.spec import SpecError, SweepSpec, load_spec
from dibregman.config import ConfigError, with_overrides
from dibregman.results import Status


def print_probe(spec: SweepSpec, steps: int) -> None:
    """Time ``steps`` generator steps of the spec's first trial, or for an imported
    text-to-image teacher count their FLOPs on a stand-in; print the estimated cost."""
    from dibregman.probe import flop_probe, probe, uses_flop_probe

    cfg = with_overrides(spec.base_config(), spec.trials()[0])
    runs = len(spec.trials()) if spec.search is None else spec.search.num_samples
    if uses_flop_probe(cfg):
        with console.status(f"counting the FLOPs of {steps} generator steps of the first trial"):
            try:
                counted = flop_probe(cfg, steps)
            except (ValueError, ConfigError, OSError) as err:
                raise fail(f"probe: {err}") from None
        hours = counted.run_hours(cfg) * runs
        console.print(f"FLOP probe: {counted.flops_per_step:.3g} FLOPs per generator step; "
                      f"{cfg.train.generator_steps} steps per run x {runs} runs = about "
                      f"{hours:.3g} device-hours of training at {counted.mfu:.0%} MFU of "
                      f"{counted.peak_flops / 1e12:.0f} TFLOP/s (evaluations not included)",
                      highlight=False)
        for note in counted.notes:
            console.print(f"  {note}", highlight=False, soft_wrap=True)
        return
    with console.status(f"probing {steps} generator steps of the first trial"):
        try:
            measured = probe(cfg, steps)
        except (ValueError, ConfigError, OSError) as err:
            raise fail(f"probe: {err}") from None
    hours = measured.run_hours(cfg) * runs
    console.print(f"probe on {measured.device}: {measured.seconds_per_step:.3g} s per generator "
                  f"step ({measured.steps} timed); {cfg.train.generator_steps} steps per run x "
                  f"{runs} runs = about {hours:.3g} device-hours of training (evaluations, "
                  f"fake-score warm-up and regression pairs not included)", highlight=False)


def sweep(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Sweep YAML, e.g. "
                                                                   "sweeps/divergences.yaml.")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (default: $RAY_ADDRESS, else a "
                                      "private local runtime).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest interrupted run of this sweep.")
    ] = False,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="Concurrent trials (overrides the spec).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                                      "sqlite:///mlflow.db).")
    ] = None,
    storage: Annotated[
        Path, typer.Option(help="Ray Tune storage (shared by all nodes on a cluster).")
    ] = Path("ray_results"),
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="CPUs of the private local Ray runtime.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the expanded trials and exit.")
    ] = False,
    probe_steps: Annotated[
        int, typer.Option(min=0, help="With --dry-run: time this many generator steps of the "
                                      "first trial on the local device and estimate the "
                                      "sweep's device-hours (0: no probe).")
    ] = 0,
) -> None:
    """Run a sweep over Bregman generators on Ray Tune, every trial tracked in MLflow."""
    # ray and mlflow load only for sweeps
    from bench.sweep import ClusterUnreachable, expanded_trials, run_sweep
    from bench.tracking import StoreError

    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        raise fail(str(err)) from None
    for warning in spec.warnings:
        err_console.print(f"[yellow]warning: {escape(warning)}[/]", highlight=False, soft_wrap=True)
    if dry_run:
        lines = expanded_trials(spec)
        size = (f"{len(spec.trials())} runs in {len(lines)} trials" if spec.search is None
                else f"{spec.search.num_samples} trials")
        console.print(f"sweep {spec.name} (preset {spec.preset}, spec {spec.spec_hash}): {size}")
        for line in lines:
            console.print(f"  {line}", highlight=False)
        if probe_steps:
            print_probe(spec, probe_steps)
        return
    try:
        summary = run_sweep(spec, address=address, resume=resume, max_concurrent=max_concurrent,
                            tracking_uri=tracking_uri, storage=storage, num_cpus=num_cpus,
                            console=console)
    except (FileNotFoundError, SpecError, ClusterUnreachable, StoreError) as err:
        raise fail(str(err)) from None
    counts = ", ".join(f"{v} {k}" for k, v in summary.counts.items() if v)
    console.print(f"sweep {spec.name}: {counts or 'no trials ended'} in "
                  f"{summary.wall_time_s:.0f} s; MLflow parent run {summary.parent_run_id}")
    if summary.arms:
        console.print(f"{summary.headline} by arm, mean over finished seeds (the report says "
                      f"which differences are real): " + "; ".join(
                          f"{arm} {mean:.4g} ({n} seeds)" for arm, mean, n in summary.arms),
                      highlight=False, soft_wrap=True)
    if summary.interrupted:
        err_console.print(f"interrupted: continue with `bench sweep {spec_path} --resume`")
        raise typer.Exit(code=130)
    if summary.counts[Status.FAILED]:
        raise typer.Exit(code=1)


def report(
    sweep_name: Annotated[
        str | None, typer.Argument(metavar="[SWEEP_NAME]", help="Default: the latest sweep.")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (as for sweep).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Default: runs/reports/SWEEP_NAME (ignored by git; the committed example report "
             "is regenerated with --out reports/divergences).")] = None,
    format_: Annotated[
        str, typer.Option("--format", help="Pages to write: md, html or md,html.")
    ] = "md,html",
) -> None:
    """Render a sweep's verdicts, tables and charts into runs/reports/SWEEP_NAME."""
    import time

    from bench.report import ReportError, build_report

    started = time.perf_counter()
    formats = tuple(f.strip() for f in format_.split(",") if f.strip())
    try:
        directory = build_report(sweep_name, tracking_uri, out, formats)
    except ReportError as err:
        raise fail(str(err)) from None
    console.print(f"report written to {directory} in {time.perf_counter() - started:.1f} s")


def ui(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (as for sweep).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Browse the runs: the MLflow UI on 127.0.0.1 against the sweeps' store."""
    import os
    import sys

    from bench.tracking import (
        StoreError,
        open_store,
        resolve_tracking_uri,
        runs_url,
        tag_sweep_experiments,
    )

    uri = resolve_tracking_uri(tracking_uri)
    try:
        client = open_store(uri)
    except StoreError as err:
        raise fail(str(err)) from None
    tag_sweep_experiments(client)  # every sweep is a model-training experiment
    console.print(f"MLflow UI for {uri}; the newest sweep's runs: {runs_url(client, port)} "
                  f"(Ctrl-C stops it)", highlight=False, soft_wrap=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(port)]
    sys.stdout.flush()
    # Become the server, so Ctrl-C and signals reach it and no orphan is left behind. The UI's
    # own dependencies' deprecation warnings (Starlette's) are not the user's to act on.
    # (StarletteDeprecationWarning is a UserWarning whose messages start with the module.)
    env = {**os.environ,
           "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore:starlette:UserWarning"}
    os.execve(sys.executable, command, env)
