"""Which Bregman generators give the same distillation: weights equal up to a constant factor.

The Di-Bregman generator update scales the DMD gradient per sample by ``w(r) = h''(r) r``
(:mod:`dibregman.bregman`). With ``ratio.weight_normalize`` (the default) the weights of a batch
are divided by their batch mean (:meth:`dibregman.ratio.RatioEstimator.weights`), so for two
generators with ``w1(r) = c * w2(r)``, ``c > 0`` a constant,

    w1 / mean(w1) = c w2 / (c mean(w2)) = w2 / mean(w2):

the constant cancels and training is identical, step for step. E.g. ``jensen_shannon``
(``w = 1/(2(1+r))``) is ``logistic`` (``w = 1/(1+r)``) up to the factor 1/2; ``alpha`` at
``alpha = 0.5`` (``w = r^-1/2``) is twice ``hellinger``; ``power`` at ``alpha = 1``
(``w = 2r``) is twice ``pearson``.

Without ``ratio.weight_normalize`` such generators are NOT equivalent: the constant multiplies
the generator's gradient, i.e. it scales the step size (by 1/2 for ``jensen_shannon`` against
``logistic``), which changes training under SGD and, through the effective step, under Adam's
epsilon and gradient clipping too.

The check is numerical: ``w1 / w2`` evaluated in fp64 on a log-spaced grid of ratios, each
generator's ratio clipped to its ``ratio_max`` as the weight pipeline clips it (so
``log_squared``, convex only on ``(0, e]``, is compared as it is used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dibregman.bregman import BregmanGenerator, generator_names, get_generator, is_parametric
from dibregman.config import Config, flatten

__all__ = [
    "KNOWN_PARAMETRIC_POINTS",
    "arm_label",
    "default_grid",
    "equivalence_classes",
    "known_equivalences",
    "normalize_arm",
    "same_method_groups",
    "weights_equivalent",
]

# The parametric points that :func:`known_equivalences` checks against the fixed generators.
KNOWN_PARAMETRIC_POINTS: dict[str, tuple[float, ...]] = {
    "alpha": (-1.0, 0.0, 0.5, 1.0, 2.0),
    "power": (1.0,),
}


def default_grid() -> Tensor:
    """The ratios compared by default: 601 log-spaced points on ``[1e-3, 1e3]``, fp64."""
    return torch.logspace(-3.0, 3.0, 601, dtype=torch.float64)


def _clipped_weight(h: BregmanGenerator, grid: Tensor) -> Tensor:
    """``h.weight`` at ``grid`` clipped to ``(0, h.ratio_max]``, as the weight pipeline uses it."""
    return h.weight(grid.clamp(max=h.ratio_max))


def weights_equivalent(
    h1: BregmanGenerator, h2: BregmanGenerator, grid: Tensor | None = None, rtol: float = 1e-6
) -> bool:
    """Whether ``h1`` and ``h2`` give the same distillation under batch-mean weight normalisation.

    True iff ``h1.weight(clip(r)) / h2.weight(clip(r))`` is one positive constant, within
    ``rtol``, at every ``r`` of ``grid`` (``clip`` caps each generator's ratio at its
    ``ratio_max``). A constant factor cancels when the weights are divided by their batch mean
    (``ratio.weight_normalize``); without that normalisation the two are not equivalent, since
    the factor scales the step (module docstring).

    Args:
        h1, h2: the generators.
        grid: positive ratios (default :func:`default_grid`); evaluated in fp64.
        rtol: allowed relative spread ``max(w1/w2) / min(w1/w2) - 1`` of the factor.

    Returns:
        Whether the weights are proportional with a positive factor on the grid. Points where
        both weights are exactly 0 are skipped; a point where only one is 0 means not
        proportional.
    """
    r = (default_grid() if grid is None else torch.as_tensor(grid)).to(torch.float64)
    w1, w2 = _clipped_weight(h1, r), _clipped_weight(h2, r)
    if not (torch.isfinite(w1).all() and torch.isfinite(w2).all()):
        return False
    zero1, zero2 = w1 == 0, w2 == 0
    if bool((zero1 != zero2).any()):
        return False
    both = ~zero1
    if not bool(both.any()):
        return False
    factor = w1[both] / w2[both]
    low, high = factor.min().item(), factor.max().item()
    return 0.0 < low and math.isfinite(high) and high <= low * (1.0 + rtol)


def normalize_arm(name: str, alpha: float) -> tuple[str, float | None]:
    """The identity of an arm ``(generator.name, generator.alpha)``: ``alpha`` as a float for
    the parametric families, ``None`` for every other generator (which ignores it), so that e.g.
    ``("pearson", 0.5)`` and ``("pearson", 2.0)`` are one arm.

    Raises:
        ValueError: for an unknown generator name.
    """
    return (name, float(alpha)) if is_parametric(name) else (name, None)


def arm_label(name: str, alpha: float | None = None) -> str:
    """A readable arm name: ``pearson``, or ``alpha α=0.5`` for a parametric family."""
    if alpha is None or not is_parametric(name):
        return name
    return f"{name} α={float(alpha):g}"


def equivalence_classes(arms: list[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    """Group ``(generator.name, generator.alpha)`` arms into classes of equivalent arms.

    Two arms are equivalent when their weights are equal up to a positive constant
    (:func:`weights_equivalent`), i.e. they give the same training under batch-mean weight
    normalisation (``ratio.weight_normalize``; not without it). ``alpha`` is ignored for
    non-parametric generators: arms equal after :func:`normalize_arm` are one arm, kept once, as
    first given.

    Args:
        arms: ``(name, alpha)`` pairs.

    Returns:
        Every class (singletons included), ordered by first appearance, each listing its
        distinct arms in input order.

    Raises:
        ValueError: for an unknown name or an ``alpha`` outside a family's range.
    """
    classes: list[list[tuple[str, float]]] = []
    representatives: list[BregmanGenerator] = []
    seen: set[tuple[str, float | None]] = set()
    for name, alpha in arms:
        key = normalize_arm(name, alpha)
        if key in seen:
            continue
        seen.add(key)
        h = get_generator(name, alpha)
        for members, representative in zip(classes, representatives, strict=True):
            if weights_equivalent(h, representative):
                members.append((name, alpha))
                break
        else:
            classes.append([(name, alpha)])
            representatives.append(h)
    return classes


def known_equivalences() -> list[list[str]]:
    """The equivalence classes (two or more members) among every fixed generator and the
    parametric points :data:`KNOWN_PARAMETRIC_POINTS`, as labels such as ``alpha α=0.5``.

    They hold under batch-mean weight normalisation (``ratio.weight_normalize``, the default)
    only; without it the constant factor between the weights scales the step. Beyond these
    points, ``alpha`` at ``a`` equals ``power`` at ``a - 1`` for every ``a > 1``
    (``w = r^(a-1)`` against ``a r^(a-1)``).
    """
    arms: list[tuple[str, float]] = [(name, 0.0) for name in generator_names()
                                     if not is_parametric(name)]
    for family, alphas in KNOWN_PARAMETRIC_POINTS.items():
        arms += [(family, alpha) for alpha in alphas]
    return [[arm_label(*normalize_arm(name, alpha)) for name, alpha in members]
            for members in equivalence_classes(arms) if len(members) >= 2]


_ARM_KEYS = ("generator.name", "generator.alpha")


def same_method_groups(configs: Sequence[Config]) -> list[list[int]]:
    """Which configs train identically: indices of configs that use ``ratio.weight_normalize``,
    agree on every key but ``generator.name`` / ``generator.alpha``, and whose arms are
    equivalent (:func:`equivalence_classes`; the same non-parametric generator at two alphas
    included). Configs without ``ratio.weight_normalize`` are never grouped: for them the
    constant between the weights scales the step.

    Returns:
        Groups of two or more indices, each in input order, ordered by their first index.
    """
    by_rest: dict[str, list[int]] = {}
    for index, cfg in enumerate(configs):
        if cfg.ratio.weight_normalize:
            rest = sorted((k, v) for k, v in flatten(cfg).items() if k not in _ARM_KEYS)
            by_rest.setdefault(repr(rest), []).append(index)
    groups: list[list[int]] = []
    for indices in by_rest.values():
        by_arm: dict[tuple[str, float | None], list[int]] = {}
        for index in indices:
            arm = normalize_arm(configs[index].generator.name, configs[index].generator.alpha)
            by_arm.setdefault(arm, []).append(index)
        arms = [(configs[i].generator.name, configs[i].generator.alpha) for i in indices]
        for members in equivalence_classes(arms):
            group = sorted(i for arm in members for i in by_arm[normalize_arm(*arm)])
            if len(group) >= 2:
                groups.append(group)
    return sorted(groups)
