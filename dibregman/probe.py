"""A short timed probe of a run's training cost on the local device (``bench sweep --dry-run
--probe-steps N``): what a sweep will cost, measured before it runs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dibregman.config import Config
from dibregman.device import resolve_device
from dibregman.distill import Distiller
from dibregman.teachers import teacher_for
from dibregman.validation import validate


@dataclass(frozen=True)
class Probe:
    """Seconds per generator step (``critic_steps_per_generator_step`` critic updates and one
    student update) of a config on ``device``, timed over ``steps`` steps after one untimed
    step (compilation, allocator and cache warm-up)."""

    seconds_per_step: float
    steps: int
    device: str

    def run_hours(self, cfg: Config) -> float:
        """Training hours of one run of ``cfg``: ``seconds_per_step * generator_steps / 3600``
        (evaluations, the fake score's warm-up and the regression pairs not included)."""
        return self.seconds_per_step * cfg.train.generator_steps / 3600


def probe(cfg: Config, steps: int = 3) -> Probe:
    """Build ``cfg``'s teacher and networks, take one untimed generator step, then time
    ``steps`` more (CUDA synchronised before each clock reading)."""
    if steps < 1:
        raise ValueError(f"probe steps must be >= 1, got {steps}")
    validate(cfg)
    distiller = Distiller(cfg, teacher_for(cfg, resolve_device(cfg.device)))
    sync = torch.cuda.synchronize if distiller.device.type == "cuda" else (lambda: None)
    distiller.step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        distiller.step()
    sync()
    return Probe((time.perf_counter() - started) / steps, steps, str(distiller.device))
