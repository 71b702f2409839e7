"""``bench``: the command line. Thin: parse, call one function, print, exit.

One module per command group: :mod:`bench.cli.runs` (``run``, ``fid``), :mod:`bench.cli.coco`
(``coco``), :mod:`bench.cli.teachers` (``teacher``, ``teacher import``), :mod:`bench.cli.sweeps`
(``sweep``, ``report``, ``ui``), :mod:`bench.cli.listing` (``list``), over
:mod:`bench.cli.common` (the app, consoles, errors and config parsing).

Bad input (unknown preset, generator or config key; a value of the wrong type) prints one line
naming the problem and the valid choices, exits with status 2 and writes nothing.
"""

from __future__ import annotations

from bench.cli import coco, listing, runs, sweeps, teachers
from bench.cli.common import app, build_config
from bench.cli.runs import LiveProgress

__all__ = ["LiveProgress", "app", "build_config", "main"]

# Every command, in the order `bench --help` lists them.
app.command()(runs.run)
app.add_typer(teachers.teacher_app, name="teacher")
app.command()(runs.fid)
app.command()(coco.coco)
app.command()(sweeps.sweep)
app.command()(sweeps.report)
app.command()(sweeps.ui)
app.command("list")(listing.list_)


def main() -> None:
    """Console-script entry point."""
    app()
