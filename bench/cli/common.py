"""What every command shares: the Typer app, the consoles, the exit-2 error, config parsing."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from dibregman.config import Config, ConfigError, with_overrides
from dibregman.presets import get_preset
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
    """Print ``error: message`` on stderr, on one line whatever the message holds (a library's
    multi-line text included), and return the exit-2 exception to raise."""
    line = " ".join(message.splitlines())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
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
    if "preset" in overrides:
        raise ConfigError(f"--set preset={overrides['preset']!r}: the preset is chosen with "
                          f"--preset (it records where the config started)")
    if generator is not None:
        overrides["generator.name"] = generator
    if alpha is not None:
        overrides["generator.alpha"] = alpha
    if seed is not None:
        overrides["seed"] = seed
    cfg = with_overrides(get_preset(preset), overrides)
    validate(cfg)
    return cfg
