"""``bench``: the command line. Thin: parse, call one function, print, exit.

Bad input (unknown preset, generator or config key; a value of the wrong type) prints one line
naming the problem and the valid choices, exits with status 2 and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bench.spec import SpecError, SweepSpec, load_spec
from dibregman.bregman import generator_names, get_generator, is_parametric
from dibregman.config import Config, ConfigError, EvalConfig, config_keys, with_overrides
from dibregman.data import dataset_names
from dibregman.equivalence import known_equivalences
from dibregman.evaluate import curve_metrics
from dibregman.presets import get_preset, preset_names, tuning_warnings
from dibregman.ratio import estimator_names
from dibregman.results import MetricSpec, Status
from dibregman.run import check_run_dir, run_experiment
from dibregman.teachers import TeacherKind, teacher_entry, teacher_names
from dibregman.validation import validate

app = typer.Typer(
    help="Di-Bregman distillation benchmark: run, sweep, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit-2 exception to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """``["train.lr=2e-4", ...]`` -> ``{"train.lr": "2e-4"}``; a pair without ``=`` is an error."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad --set {pair!r}: expected KEY=VALUE, e.g. train.lr=2e-4")
        overrides[key.strip()] = value.strip()
    return overrides


def build_config(
    preset: str, generator: str | None, alpha: float | None, seed: int | None, sets: list[str]
) -> Config:
    """The resolved, validated config of a ``bench run`` command line."""
    overrides: dict[str, Any] = parse_sets(sets)
    if generator is not None:
        overrides["generator.name"] = generator
    if alpha is not None:
        overrides["generator.alpha"] = alpha
    if seed is not None:
        overrides["seed"] = seed
    cfg = with_overrides(get_preset(preset), overrides)
    validate(cfg)
    return cfg


class LiveProgress:
    """A rich progress bar over generator steps with the latest diagnostics and the declared
    curve metrics beside it.

    Args:
        total: generator steps.
        curve: the run's curve metrics (:func:`dibregman.evaluate.curve_metrics`).
        status: text shown until the first record arrives.
    """

    def __init__(self, total: int, curve: list[MetricSpec], status: str = "") -> None:
        self.curve = curve
        self.progress = Progress(
            TextColumn("[bold]distilling"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.task = self.progress.add_task("run", total=total, status=status)

    def __call__(self, record: dict[str, Any], checkpoint: Path | None) -> None:
        if record.get("final"):  # the final record: the table printed after the bar shows it
            self.progress.update(self.task, completed=record["step"])
            return
        shown = [("loss_dm", "dm"), ("ratio_accuracy", "acc"), ("weight_max", "w_max")]
        parts = [f"{label} {record[key]:.3g}" for key, label in shown if key in record]
        parts += [f"{spec.name} {record[spec.key]:.3g}" for spec in self.curve
                  if spec.key in record]
        self.progress.update(self.task, completed=record["step"], status="  ".join(parts))


def torchrun(nproc_per_node: int, args: list[str]) -> int:
    """Run ``python -m bench.cli ARGS`` as ``nproc_per_node`` workers under torchrun
    (``--standalone``: one machine, a free local rendezvous) and return its exit status."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc_per_node}", "-m", "bench.cli", *args]
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached torchrun and its workers too
        process.wait()
        return 130


@app.command()
def run(
    preset: Annotated[str, typer.Option(help="Preset name; see `bench list`.")] = "gmm2d",
    generator: Annotated[
        str | None, typer.Option(help="Bregman generator h (generator.name).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="alpha of the 'alpha'/'power' families.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Repetition seed.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config override KEY=VALUE (repeatable), e.g. train.lr=2e-4."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/PRESET-GENERATOR-sSEED).")
    ] = None,
    nproc_per_node: Annotated[
        int, typer.Option(min=1, help="Processes that train this one run together, the batch "
                                      "split over them (one GPU each on CUDA): relaunches the "
                                      "command under torchrun. Several machines: call torchrun "
                                      "yourself on `python -m bench.cli run`.")
    ] = 1,
) -> None:
    """Distil one teacher into a one-step student; rerun on the same --out to resume."""
    import os
    from contextlib import nullcontext

    import torch

    from dibregman import distributed
    from dibregman.device import resolve_device

    worker = distributed.launched()  # started by torchrun: one rank of a process group
    loud = not worker or os.environ.get("RANK") == "0"  # only rank 0 prints

    def error(message: str) -> typer.Exit:
        return fail(message) if loud else typer.Exit(code=2)

    try:
        cfg = build_config(preset, generator, alpha, seed, set_ or [])
        world = int(os.environ["WORLD_SIZE"]) if worker else nproc_per_node
        distributed.check_shardable(cfg.train.batch_size, 1, world)
        device = resolve_device(cfg.device)
        if not worker and device.type == "cuda" and world > torch.cuda.device_count():
            raise distributed.DataParallelError(
                f"--nproc-per-node {world} on device {cfg.device}: this machine has "
                f"{torch.cuda.device_count()} GPUs, one per process")
    except (ConfigError, distributed.DataParallelError) as err:
        raise error(str(err)) from None
    if loud:
        for warning in tuning_warnings(cfg):
            err_console.print(f"[yellow]warning: {escape(warning)}[/]", highlight=False,
                              soft_wrap=True)
    run_dir = out or Path("runs") / f"{cfg.preset}-{cfg.generator.name}-s{cfg.seed}"
    if not worker and nproc_per_node > 1:
        try:  # what rank 0 would refuse, refused here with exit 2 (torchrun's failure is 1)
            check_run_dir(cfg, run_dir)
        except ValueError as err:
            raise error(str(err)) from None
        args = ["run", "--preset", preset, "--out", str(run_dir)]
        for flag, value in (("--generator", generator), ("--alpha", alpha), ("--seed", seed)):
            if value is not None:
                args += [flag, str(value)]
        for pair in set_ or []:
            args += ["--set", pair]
        raise typer.Exit(code=torchrun(nproc_per_node, args))
    if worker:
        distributed.setup(device)
    try:
        main = distributed.is_main()
        pairs = cfg.train.regression_pairs if cfg.train.regression_weight > 0 else 0
        status = f"drawing {pairs} teacher ODE pairs (regression term)" if pairs else ""
        live = LiveProgress(cfg.train.generator_steps, curve_metrics(cfg), status)
        try:
            with live.progress if main else nullcontext():
                result = run_experiment(cfg, run_dir, on_report=live if main else None)
        except ValueError as err:
            raise error(str(err)) from None
    finally:
        if worker:
            distributed.teardown()
    if not main:
        return
    table = Table(title=f"{cfg.generator.name} on {cfg.teacher}: {result.status}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(result.metrics.items()):
        table.add_row(name, f"{value:.4g}")
    table.add_row("wall_time_s", f"{result.wall_time_s:.1f}")
    console.print(table)
    console.print(f"run directory: {run_dir}")


teacher_app = typer.Typer(
    help="Train an EDM image teacher (no subcommand), or import a pretrained one.",
    no_args_is_help=False,
)
import_app = typer.Typer(help="Import a pretrained teacher into this project's own format "
                              "(model.safetensors + architecture.json).", no_args_is_help=True)
teacher_app.add_typer(import_app, name="import")
app.add_typer(teacher_app, name="teacher")


@teacher_app.callback(invoke_without_command=True)
def teacher(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="An image preset; see `bench list`.")] = "digits",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (image_teacher.dataset): digits, mnist, cifar10 "
                                      "or folder:PATH.")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Where a downloadable dataset lives.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override KEY=VALUE (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Teacher directory (default: the cache, keyed by the "
                                       "config's hash, that runs and sweeps load from).")
    ] = None,
) -> None:
    """Train (or resume training) an EDM image teacher by denoising score matching;
    `bench teacher import edm|diffusers ...` imports a pretrained one instead."""
    if ctx.invoked_subcommand is not None:
        return
    from dibregman.data import DataError
    from dibregman.device import resolve_device
    from dibregman.teachers.image import train_teacher

    overrides = {}
    if dataset is not None:
        overrides["image_teacher.dataset"] = dataset
    if data_dir is not None:
        overrides["image_teacher.data_dir"] = data_dir
    try:
        cfg = with_overrides(get_preset(preset), {**parse_sets(set_ or []), **overrides})
        validate(cfg)
        if teacher_entry(cfg.teacher).kind is not TeacherKind.IMAGE:
            image_presets = [p for p in preset_names()
                             if teacher_entry(get_preset(p).teacher).kind is TeacherKind.IMAGE]
            raise ConfigError(f"preset {preset!r} has a {teacher_entry(cfg.teacher).kind} "
                              f"teacher; image presets: {', '.join(image_presets)}")
    except ConfigError as err:
        raise fail(str(err)) from None
    steps = cfg.image_teacher.steps
    progress = Progress(TextColumn("[bold]training teacher"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[loss]}"), console=console)
    task = progress.add_task("teacher", total=steps, loss="")

    def report(record: dict[str, Any]) -> None:
        progress.update(task, completed=record["step"], loss=f"loss {record['loss']:.4f}")

    try:
        with progress:
            directory = train_teacher(cfg.image_teacher, out,
                                      device=str(resolve_device(cfg.device)), on_report=report)
    except DataError as err:
        raise fail(str(err)) from None
    console.print(f"teacher ({cfg.image_teacher.dataset}): {directory}")


def run_import(importer: Callable[[], Path], source: Path,
               note: Callable[[dict], str | None] | None = None) -> None:
    """Run ``importer()`` (which returns the written directory); a refused checkpoint or an
    unreadable file is ``error: ...`` and exit 2. ``note(record)``: a line about the import to
    print, if any."""
    from dibregman.pretrained.store import CheckpointError, read_record

    try:
        directory = importer()
    except (CheckpointError, OSError) as err:
        raise fail(str(err)) from None
    console.print(f"imported {source} -> {directory}")
    line = note(read_record(directory)) if note is not None else None
    if line:
        err_console.print(line, highlight=False, soft_wrap=True)


@import_app.command("edm")
def import_edm_(
    pickle_path: Annotated[Path, typer.Argument(help="An EDM network pickle, e.g. "
                                                     "edm-cifar10-32x32-cond-vp.pkl.")],
    out: Annotated[Path, typer.Option(help="Directory to write the imported teacher into.")],
    key: Annotated[str, typer.Option(help="The pickle's entry holding the network.")] = "ema",
) -> None:
    """Import an NVlabs EDM checkpoint without executing the code it embeds."""
    from dibregman.pretrained.edm import import_edm, source_note

    run_import(lambda: import_edm(pickle_path, out, key=key), pickle_path, source_note)


@import_app.command("diffusers")
def import_diffusers_(
    folder: Annotated[Path, typer.Argument(help="A local diffusers save_pretrained folder "
                                                "(unet/ and scheduler/).")],
    out: Annotated[Path, typer.Option(help="Directory to write the imported teacher into.")],
) -> None:
    """Import a diffusers UNet2DModel with its scheduler as an EDM-convention denoiser."""
    from dibregman.pretrained.diffusers_unet import import_diffusers

    run_import(lambda: import_diffusers(folder, out), folder)


@app.command()
def fid(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of an image teacher's run.")],
    n: Annotated[int, typer.Option(help="Samples per seed (the papers: 50,000).")] = 50_000,
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="Sample seed (repeatable; default 0 1 2).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per chunk (one save each).")] = 500,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """FID by the papers' protocol (clean-fid Inception, n samples x 3 seeds, min and mean) of
    a run's EMA student; rerun to resume an interrupted evaluation."""
    from dibregman.device import resolve_device
    from dibregman.fid import PAPER_SEEDS, paper_fid
    from dibregman.metrics import InceptionUnavailable

    seeds = seeds or list(PAPER_SEEDS)
    progress = Progress(TextColumn("[bold]FID seed {task.fields[seed]}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("fid", total=n * len(seeds), seed=seeds[0])

    def on_chunk(seed: int, done: int, total: int) -> None:
        progress.update(task, completed=seeds.index(seed) * total + done, seed=seed)

    try:
        with progress:
            result = paper_fid(run_dir, n=n, seeds=seeds, batch_size=batch_size,
                               device=str(resolve_device(device)), on_chunk=on_chunk)
    except (ValueError, ConfigError, InceptionUnavailable, OSError) as err:
        raise fail(str(err)) from None
    table = Table(title=f"FID of {run_dir} ({n} samples per seed)")
    table.add_column("")
    table.add_column("FID", justify="right")
    for key in [f"fid_seed{s}" for s in seeds] + ["fid_min", "fid_mean"]:
        table.add_row(key, f"{result[key]:.3f}")
    console.print(table)


def print_probe(spec: SweepSpec, steps: int) -> None:
    """Time ``steps`` generator steps of the spec's first trial; print the estimated cost."""
    from dibregman.probe import probe

    cfg = with_overrides(spec.base_config(), spec.trials()[0])
    with console.status(f"probing {steps} generator steps of the first trial"):
        try:
            measured = probe(cfg, steps)
        except (ValueError, ConfigError, OSError) as err:
            raise fail(f"probe: {err}") from None
    runs = len(spec.trials()) if spec.search is None else spec.search.num_samples
    hours = measured.run_hours(cfg) * runs
    console.print(f"probe on {measured.device}: {measured.seconds_per_step:.3g} s per generator "
                  f"step ({measured.steps} timed); {cfg.train.generator_steps} steps per run x "
                  f"{runs} runs = about {hours:.3g} device-hours of training (evaluations, "
                  f"fake-score warm-up and regression pairs not included)", highlight=False)


@app.command()
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
    from bench.sweep import expanded_trials, run_sweep  # ray and mlflow load only for sweeps

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
    except (FileNotFoundError, SpecError) as err:
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


@app.command()
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


@app.command()
def ui(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (as for sweep).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Browse the runs: the MLflow UI on 127.0.0.1 against the sweeps' store."""
    import os
    import sys

    from bench.tracking import open_store, resolve_tracking_uri, runs_url, tag_sweep_experiments

    uri = resolve_tracking_uri(tracking_uri)
    client = open_store(uri)
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


@app.command("list")
def list_() -> None:
    """Print the registered generators, ratio estimators, presets, metrics and config keys."""
    table = Table(title="Bregman generators h (w = h''(r) r, r = student/teacher)")
    table.add_column("name")
    table.add_column("divergence")
    for name in generator_names():
        record = get_generator(name)
        family = " (uses generator.alpha)" if is_parametric(name) else ""
        table.add_row(name, record.description + family)
    console.print(table)
    classes = "; ".join(" = ".join(labels) for labels in known_equivalences())
    console.print("[bold]equivalent under batch-mean weight normalisation[/] "
                  "(ratio.weight_normalize: weights equal up to a constant train identically): "
                  + classes
                  + "; in general alpha α=a = power α=a-1 for a > 1", highlight=False)
    console.print("[bold]χ² orientation:[/] with r = q/p (student/teacher), pearson has w = r "
                  "and neyman w = 1/r²; codebases that write the ratio as p/q swap the names "
                  "(FastGen's f-distill calls our pearson neyman)", highlight=False)
    console.print("[bold]ratio estimators:[/] " + ", ".join(estimator_names()))
    console.print("[bold]presets:[/] " + ", ".join(preset_names()))
    console.print("[bold]image datasets:[/] " + ", ".join(dataset_names()) + ", folder:PATH")
    teachers = Table(title="Teachers (config key teacher; plugins via register_teacher or the "
                           "dibregman.teachers entry-point group)")
    for column in ("name", "kind", "evaluator", "source"):
        teachers.add_column(column)
    for name in teacher_names():
        entry = teacher_entry(name)
        teachers.add_row(name, str(entry.kind), entry.teacher_class.evaluator.__name__,
                         entry.source)
    console.print(teachers)
    evaluators = {teacher_entry(name).teacher_class.evaluator for name in teacher_names()}
    for evaluator in sorted(evaluators, key=lambda e: e.__name__):
        console.print(metrics_table(evaluator.__name__, evaluator.metrics(EvalConfig())))
    console.print("[bold]config keys:[/] " + ", ".join(config_keys()))


def metrics_table(title: str, specs: list[MetricSpec]) -> Table:
    """The declared metrics of an evaluator (at the default sample counts) as a table."""
    table = Table(title=f"{title} metrics (default eval.* sample counts; keys carry the count)")
    for column in ("key", "label", "better", "role", "when"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.key, spec.label, str(spec.direction), str(spec.role), str(spec.stage))
    return table


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
