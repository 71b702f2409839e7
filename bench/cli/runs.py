"""`bench run` (one run, or one run over torchrun's processes) and `bench fid` (the papers' FID
protocol on a finished run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bench.cli.common import build_config, console, err_console, fail
from dibregman.config import Config, ConfigError, flatten
from dibregman.evaluate import curve_metrics
from dibregman.presets import get_preset, tuning_warnings
from dibregman.results import MetricSpec
from dibregman.run import check_run_dir, run_experiment


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


def print_resolved(cfg: Config, preset_name: str, run_dir: Path, world: int) -> None:
    """The config keys that differ from preset ``preset_name``'s, and where the run would go."""
    preset, resolved = flatten(get_preset(preset_name)), flatten(cfg)
    table = Table(title=f"bench run --dry-run: preset {preset_name}, {world} process(es)")
    table.add_column("key")
    table.add_column("preset")
    table.add_column("this run")
    for key, value in resolved.items():
        if value != preset[key]:
            table.add_row(key, str(preset[key]), str(value))
    console.print(table)
    console.print(f"run directory: {run_dir} (nothing written)")


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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the command and print the resolved config "
                                             "(the keys that differ from the preset) and the "
                                             "run directory, without training.")
    ] = False,
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
    if dry_run:
        try:
            check_run_dir(cfg, run_dir)
        except ValueError as err:
            raise error(str(err)) from None
        print_resolved(cfg, preset, run_dir, world)
        return
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
