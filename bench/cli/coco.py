"""`bench coco`: the COCO-2014 zero-shot protocol (FID and CLIP score on 30,000 val2014
captions) of a finished text-to-image run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bench.cli.common import console, fail


def coco(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of a text-to-image run.")],
    coco_dir: Annotated[Path, typer.Option(
        help="COCO-2014 folder: annotations/captions_val2014.json and val2014/.")],
    clip_model: Annotated[str | None, typer.Option(
        help="CLIP model folder (transformers layout); default: the run's text.clip_model.")]
    = None,
    n: Annotated[int, typer.Option(help="Caption-image pairs (the papers: 30,000).")] = 30_000,
    seed: Annotated[int, typer.Option(help="Protocol seed: which pairs, and the latents.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Pairs per chunk (one save each).")] = 100,
    out: Annotated[Path | None, typer.Option(
        help="Where results go; default RUN_DIR/coco.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """FID and CLIP score of a text-to-image run's EMA student on COCO-2014 val captions
    (GigaGAN's and DMD2's zero-shot protocol); rerun to resume an interrupted evaluation."""
    from dibregman.coco import (
        CocoUnavailable,
        coco_files,
        coco_protocol,
        run_clip_model,
        student_generator,
    )
    from dibregman.config import ConfigError
    from dibregman.device import resolve_device
    from dibregman.metrics import InceptionUnavailable
    from dibregman.metrics.clip import ClipScorer, check_clip_folder

    try:
        # missing data fails before any model loads
        coco_files(coco_dir)
        clip_folder = check_clip_folder(clip_model if clip_model is not None
                                        else run_clip_model(run_dir))
        resolved = str(resolve_device(device))
        generate = student_generator(run_dir, resolved)
        scorer = ClipScorer(clip_folder, resolved)
    except (ValueError, ConfigError, InceptionUnavailable, CocoUnavailable, OSError) as err:
        raise fail(str(err)) from None
    progress = Progress(TextColumn("[bold]COCO-2014"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("coco", total=n)
    try:
        with progress:
            result = coco_protocol(generate, coco_dir, scorer, out or run_dir / "coco", n=n,
                                   seed=seed, batch_size=batch_size, device=resolved,
                                   on_chunk=lambda done, total: progress.update(task,
                                                                                completed=done))
    except (ValueError, ConfigError, InceptionUnavailable, OSError) as err:
        raise fail(str(err)) from None
    table = Table(title=f"COCO-2014 zero-shot of {run_dir} ({n} captions, seed {seed})")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("fid", f"{result['fid']:.3f}")
    table.add_row("clip_score", f"{result['clip_score']:.3f}")
    table.add_row("clip_score_std", f"{result['clip_score_std']:.3f}")
    table.add_row("resolution", f"{result['height']}x{result['width']}")
    console.print(table)
