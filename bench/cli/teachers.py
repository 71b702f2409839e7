"""`bench teacher`: train an EDM image teacher, or `bench teacher import edm|diffusers` a
pretrained one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.cli.common import console, err_console, fail, parse_sets
from dibregman.config import ConfigError, with_overrides
from dibregman.presets import get_preset, preset_names
from dibregman.teachers import TeacherKind, teacher_entry
from dibregman.validation import validate

teacher_app = typer.Typer(
    help="Train an EDM image teacher (no subcommand), or import a pretrained one.",
    no_args_is_help=False,
)
import_app = typer.Typer(help="Import a pretrained teacher into this project's own format "
                              "(model.safetensors + architecture.json).", no_args_is_help=True)
teacher_app.add_typer(import_app, name="import")


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
    folder: Annotated[Path, typer.Argument(help="A local diffusers save_pretrained folder: "
                                                "unet/ and scheduler/, or a text-to-image "
                                                "pipeline (model_index.json, unet/, "
                                                "scheduler/, text_encoder/, tokenizer/, vae/).")],
    out: Annotated[Path, typer.Option(help="Directory to write the imported teacher into.")],
) -> None:
    """Import a diffusers UNet2DModel with its scheduler, or a text-to-image pipeline (Stable
    Diffusion layout, safetensors only; teacher `pretrained_text`), as an EDM-convention
    denoiser."""
    from dibregman.pretrained.diffusers_text import import_diffusers_text, is_text_pipeline
    from dibregman.pretrained.diffusers_unet import import_diffusers

    importer = import_diffusers_text if is_text_pipeline(folder) else import_diffusers
    run_import(lambda: importer(folder, out), folder)
