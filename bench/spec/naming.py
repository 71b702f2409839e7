"""Names derived from a spec's points: trial and batch names (their directories too) and the
report's arm names; tracking and the report depend on them."""

from __future__ import annotations

import re
from typing import Any

from dibregman.equivalence import (
    arm_label,
)


def trial_name(overrides: dict[str, Any]) -> str:
    """A readable trial name from its overrides, e.g. ``alpha-a0.5-s1`` or ``pearson-s0``.

    It names the trial's directory too, so characters a file name cannot hold (``/`` in a
    ``folder:PATH`` dataset) become ``_`` and it is cut to 120 characters before the seed."""
    parts = []
    for key, value in overrides.items():
        if key == "seed":
            continue
        if key == "generator.name":
            parts.insert(0, str(value))
        else:
            label = {"generator.alpha": "a"}.get(key, key.rsplit(".", 1)[-1] + "=")
            parts.append(f"{label}{value:.4g}" if isinstance(value, float) else f"{label}{value}")
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", "-".join(parts))[:120]
    return f"{name}-s{overrides.get('seed', 0)}" if parts else f"s{overrides.get('seed', 0)}"


def batch_name(overrides: dict[str, Any], seeds: list[int]) -> str:
    """A trial's name: :func:`trial_name` with its seeds, e.g. ``pearson-s0`` or
    ``pearson-s0-9`` for a batch of the seeds 0 to 9 (first and last)."""
    label = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    return trial_name({**overrides, "seed": label})


def arm_name(overrides: dict[str, Any]) -> str:
    """The report's name of a grid arm: the generator (:func:`dibregman.equivalence.arm_label`)
    and every other key the arm sets but the seed, e.g. ``pearson``, ``alpha α=0.5`` or
    ``reverse_kl train.lr=0.0003``."""
    name = overrides.get("generator.name")
    named = ("seed", "generator.name", "generator.alpha") if name else ("seed",)
    parts = [arm_label(str(name), overrides.get("generator.alpha"))] if name else []
    parts += [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
              for key, value in overrides.items() if key not in named]
    return " ".join(parts)
