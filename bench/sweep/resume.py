"""A sweep's Ray Tune experiment directories: a new one per sweep, the newest to resume."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ray import tune


def new_experiment_dir(storage: Path, name: str) -> Path:
    """A new ``storage/<name>-<time>`` directory, created here so that two sweeps started in
    the same second get two (the second ``-2``) instead of sharing one."""
    stem = f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, attempt = storage / stem, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            attempt += 1
            path = storage / f"{stem}-{attempt}"


def latest_experiment(storage: Path, name: str) -> Path | None:
    """The newest restorable Ray experiment directory of sweep ``name`` under ``storage``."""
    candidates = sorted(storage.glob(f"{name}-*"), key=lambda p: p.name, reverse=True)
    return next((p for p in candidates if tune.Tuner.can_restore(str(p))), None)
