"""Bregman generators ``h``: values, derivatives and DMD weights, in one registry.

Convention: ``r = q_theta / p`` is the density ratio **student over teacher** (``r > 0``).
A strictly convex generator ``h`` defines the Bregman divergence

    D_h(a || b) = h(a) - h(b) - h'(b) (a - b),

and Di-Bregman minimises ``E_sigma E_{x ~ p_sigma}[D_h(r_sigma(x) || 1)]``. Its generator
gradient is the DMD gradient (fake score minus teacher score) scaled per sample by

    w(r) = h''(r) * r.

With ``h(r) = r log r`` (reverse KL) ``w == 1`` and the update is exactly DMD; that identity is the
regression test for the whole weighting path (docs/method.md §3).

Every generator is a frozen :class:`BregmanGenerator` record of pure torch functions. The weight
is written in its own closed form rather than as ``h_second(r) * r`` so that fp32 evaluation does
not overflow or lose precision at extreme ratios (e.g. ``h'' = r**-3`` underflows long before
``w = r**-2`` does). All functions are elementwise, accept fp32 or fp64 tensors and keep the dtype.

Generators are entries of ``GENERATORS`` (name -> factory); :func:`get_generator` is a plain lookup.
The parametric families ``alpha`` (Amari) and ``power`` (Basu) take ``alpha``; the others ignore it.
Formulas follow the docs/method.md §4 table. A generator's ``h`` is defined up to an affine term
``c0 + c1 * r``, which changes neither ``h''``, ``w`` nor ``D_h``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dibregman.registry import Registry

__all__ = [
    "BregmanGenerator",
    "bregman_divergence",
    "generator_names",
    "get_generator",
    "is_parametric",
]

_LOG2 = math.log(2.0)

# Below this distance from a removable singularity of the alpha / power families the closed form
# is replaced by its limit (the truncation error is O(distance), far below fp32 resolution).
_LIMIT_TOL = 1e-6


@dataclass(frozen=True)
class BregmanGenerator:
    """A strictly convex generator ``h`` of a Bregman divergence.

    ``D_h(a || b) = h(a) - h(b) - h'(b) (a - b)``; the per-sample DMD weight is
    ``w(r) = h''(r) r`` with ``r = q / p`` (student over teacher).

    Attributes:
        name: registry name (for parametric families, the family name; ``alpha`` is in
            ``description``).
        h: ``h(r)``, elementwise.
        h_prime: ``h'(r)``.
        h_second: ``h''(r)`` (``> 0`` on ``(0, ratio_max]``).
        weight: ``w(r) = h''(r) r`` in closed, fp32-safe form.
        ratio_max: upper end of the domain ``(0, ratio_max]`` on which ``h`` is convex and used;
            ``math.inf`` except for ``log_squared`` (``e``). Callers must clip ``r`` to it. A
            finite end is where ``h''`` reaches 0, so the weight there is exactly 0; callers
            decide that on ``r`` itself (``r >= ratio_max``), never on the closed form, whose
            last bit follows libm (float32 ``log(e)`` is 1 or 0.99999994).
        description: one line naming the divergence it gives.
    """

    name: str
    h: Callable[[Tensor], Tensor]
    h_prime: Callable[[Tensor], Tensor]
    h_second: Callable[[Tensor], Tensor]
    weight: Callable[[Tensor], Tensor]
    ratio_max: float
    description: str


# --------------------------------------------------------------------------------------------
# Fixed generators (docs/method.md §4).
# --------------------------------------------------------------------------------------------

REVERSE_KL = BregmanGenerator(
    # h = r log r, h' = log r + 1, h'' = 1/r, w = 1.
    name="reverse_kl",
    h=lambda r: torch.xlogy(r, r),
    h_prime=lambda r: torch.log(r) + 1.0,
    h_second=torch.reciprocal,
    weight=torch.ones_like,
    ratio_max=math.inf,
    description="KL(q||p), reverse KL: w = 1, the DMD update",
)

FORWARD_KL = BregmanGenerator(
    # Burg / Itakura-Saito log-ratio generator: h = -log r, h' = -1/r, h'' = 1/r^2, w = 1/r.
    # Affine-equivalent to r - 1 - log r, the f-divergence generator of KL(p||q) in terms of q/p.
    name="forward_kl",
    h=lambda r: -torch.log(r),
    h_prime=lambda r: -torch.reciprocal(r),
    h_second=lambda r: torch.reciprocal(r).square(),
    weight=torch.reciprocal,
    ratio_max=math.inf,
    description="KL(p||q), forward KL (Burg log-ratio generator -log r): w = 1/r",
)

JENSEN_SHANNON = BregmanGenerator(
    # h = 1/2 [r log r - (1+r) log((1+r)/2)], h' = 1/2 log(2r/(1+r)) = 1/2 [log 2 - log1p(1/r)],
    # h'' = 1/(2 r (1+r)), w = 1/(2 (1+r)).
    name="jensen_shannon",
    h=lambda r: 0.5 * (torch.xlogy(r, r) - (1.0 + r) * (torch.log1p(r) - _LOG2)),
    h_prime=lambda r: 0.5 * (_LOG2 - torch.log1p(torch.reciprocal(r))),
    h_second=lambda r: 0.5 / (r * (1.0 + r)),
    weight=lambda r: 0.5 / (1.0 + r),
    ratio_max=math.inf,
    description="Jensen-Shannon divergence: w = 1/(2(1+r))",
)

LOGISTIC = BregmanGenerator(
    # h = r log r - (1+r) log(1+r), h' = log(r/(1+r)) = -log1p(1/r), h'' = 1/(r(1+r)),
    # w = 1/(1+r). Ratio fitting with this h is logistic regression (BCE).
    name="logistic",
    h=lambda r: torch.xlogy(r, r) - (1.0 + r) * torch.log1p(r),
    h_prime=lambda r: -torch.log1p(torch.reciprocal(r)),
    h_second=lambda r: torch.reciprocal(r * (1.0 + r)),
    weight=lambda r: torch.reciprocal(1.0 + r),
    ratio_max=math.inf,
    description="2 JS - log 4, logistic / BCE generator: w = 1/(1+r)",
)

PEARSON = BregmanGenerator(
    # h = (r-1)^2 / 2, h' = r - 1, h'' = 1, w = r (uLSIF).
    name="pearson",
    h=lambda r: 0.5 * (r - 1.0).square(),
    h_prime=lambda r: r - 1.0,
    h_second=torch.ones_like,
    weight=torch.clone,
    ratio_max=math.inf,
    description="Pearson chi^2(q||p), uLSIF: w = r",
)

NEYMAN = BregmanGenerator(
    # h = (1-r)^2 / (2r) = 1/(2r) - 1 + r/2, h' = (1 - 1/r^2)/2, h'' = 1/r^3, w = 1/r^2.
    name="neyman",
    h=lambda r: 0.5 * (1.0 - r).square() / r,
    h_prime=lambda r: 0.5 * (1.0 - torch.reciprocal(r).square()),
    h_second=lambda r: torch.reciprocal(r).pow(3),
    weight=lambda r: torch.reciprocal(r).square(),
    ratio_max=math.inf,
    description="Neyman chi^2(q||p): w = 1/r^2",
)

HELLINGER = BregmanGenerator(
    # h = (sqrt r - 1)^2, h' = 1 - 1/sqrt r, h'' = r^(-3/2) / 2, w = r^(-1/2) / 2.
    name="hellinger",
    h=lambda r: (torch.sqrt(r) - 1.0).square(),
    h_prime=lambda r: 1.0 - torch.rsqrt(r),
    h_second=lambda r: 0.5 * torch.rsqrt(r) / r,
    weight=lambda r: 0.5 * torch.rsqrt(r),
    ratio_max=math.inf,
    description="squared Hellinger distance: w = 1/(2 sqrt r)",
)

JEFFREYS = BregmanGenerator(
    # h = (r-1) log r, h' = log r + 1 - 1/r, h'' = 1/r + 1/r^2, w = 1 + 1/r.
    name="jeffreys",
    h=lambda r: (r - 1.0) * torch.log(r),
    h_prime=lambda r: torch.log(r) + 1.0 - torch.reciprocal(r),
    h_second=lambda r: torch.reciprocal(r) * (1.0 + torch.reciprocal(r)),
    weight=lambda r: 1.0 + torch.reciprocal(r),
    ratio_max=math.inf,
    description="Jeffreys, KL(p||q) + KL(q||p): w = 1 + 1/r",
)

SOFTENED_RKL = BregmanGenerator(
    # h = (1+r) log((1+r)/2), h' = log((1+r)/2) + 1, h'' = 1/(1+r), w = r/(1+r).
    name="softened_rkl",
    h=lambda r: (1.0 + r) * (torch.log1p(r) - _LOG2),
    h_prime=lambda r: torch.log1p(r) - _LOG2 + 1.0,
    h_second=lambda r: torch.reciprocal(1.0 + r),
    weight=lambda r: r / (1.0 + r),
    ratio_max=math.inf,
    description="f-distill's softened reverse KL: w = r/(1+r)",
)

LOG_SQUARED = BregmanGenerator(
    # h = (log r)^2 / 2, h' = log r / r, h'' = (1 - log r)/r^2, w = (1 - log r)/r.
    # h'' < 0 for r > e: h is convex only on (0, e], so ratio_max = e and callers must clip r to
    # (0, ratio_max] (dibregman.ratio's weight pipeline does). The functions themselves do not
    # clip, so that they stay the exact derivatives of one another.
    name="log_squared",
    h=lambda r: 0.5 * torch.log(r).square(),
    h_prime=lambda r: torch.log(r) / r,
    h_second=lambda r: (1.0 - torch.log(r)) / r.square(),
    weight=lambda r: (1.0 - torch.log(r)) / r,
    ratio_max=math.e,
    description="log-ratio squared, (log r)^2 / 2 (convex only for r <= e; clip r): "
    "w = (1 - log r)/r",
)


# --------------------------------------------------------------------------------------------
# Parametric families.
# --------------------------------------------------------------------------------------------


def _alpha_generator(alpha: float) -> BregmanGenerator:
    """Amari's alpha family, any finite real ``alpha``.

    ``h = (r^a - a r + a - 1) / (a (a - 1))``, ``h' = (r^(a-1) - 1)/(a - 1)``,
    ``h'' = r^(a-2)``, ``w = r^(a-1)``. Limits: ``a -> 1`` gives ``h = r log r - r + 1``
    (reverse KL, ``w = 1``), ``a -> 0`` gives ``h = -log r + r - 1`` (forward KL, ``w = 1/r``);
    ``a = 2`` is ``(r-1)^2/2`` (Pearson) and ``a = 1/2`` is twice the squared Hellinger generator.
    The closed form is evaluated with ``expm1`` (``r^a - 1 = expm1(a log r)``) and, for ``h``, as
    ``(r h'(r) - (r - 1))/a`` when ``a > 1/2`` and ``(expm1(a log r)/a - (r - 1))/(a - 1)``
    otherwise, so that it stays accurate close to the limits; within ``1e-6`` of ``a = 1`` or
    ``a = 0`` the limit itself is used.

    Args:
        alpha: the family parameter; must be finite.

    Returns:
        The generator record, named ``alpha``.

    Raises:
        ValueError: if ``alpha`` is not finite.
    """
    a = float(alpha)
    if not math.isfinite(a):
        raise ValueError(f"alpha for Bregman generator 'alpha' must be finite, got {alpha!r}")
    description = f"Amari alpha-divergence, alpha={a:g}: w = r^(alpha-1)"
    if abs(a - 1.0) < _LIMIT_TOL:
        return BregmanGenerator(
            name="alpha",
            h=lambda r: torch.xlogy(r, r) - r + 1.0,
            h_prime=torch.log,
            h_second=torch.reciprocal,
            weight=torch.ones_like,
            ratio_max=math.inf,
            description=description,
        )
    if abs(a) < _LIMIT_TOL:
        return BregmanGenerator(
            name="alpha",
            h=lambda r: r - 1.0 - torch.log(r),
            h_prime=lambda r: 1.0 - torch.reciprocal(r),
            h_second=lambda r: torch.reciprocal(r).square(),
            weight=torch.reciprocal,
            ratio_max=math.inf,
            description=description,
        )

    def h_prime(r: Tensor) -> Tensor:
        return torch.expm1((a - 1.0) * torch.log(r)) / (a - 1.0)

    # Two algebraically equal forms of h; each divides only by the factor that stays away from 0,
    # so neither amplifies the cancellation in its numerator by 1/|a - 1| or 1/|a| near a limit.
    def h_near_one(r: Tensor) -> Tensor:
        return (r * h_prime(r) - (r - 1.0)) / a

    def h_near_zero(r: Tensor) -> Tensor:
        return (torch.expm1(a * torch.log(r)) / a - (r - 1.0)) / (a - 1.0)

    return BregmanGenerator(
        name="alpha",
        h=h_near_one if a > 0.5 else h_near_zero,
        h_prime=h_prime,
        h_second=lambda r: torch.pow(r, a - 2.0),
        weight=lambda r: torch.pow(r, a - 1.0),
        ratio_max=math.inf,
        description=description,
    )


def _power_generator(alpha: float) -> BregmanGenerator:
    """Basu's power (density-power) family, ``alpha > 0``.

    ``h = (r^(1+a) - r)/a = r (r^a - 1)/a``, ``h' = ((1+a) r^a - 1)/a = (r^a - 1)/a + r^a``,
    ``h'' = (1+a) r^(a-1)``, ``w = (1+a) r^a``. ``a -> 0`` gives ``h = r log r`` (reverse KL,
    ``w = 1``); ``a = 1`` gives ``r^2 - r``, twice the Pearson generator up to an affine term.
    ``r^a - 1`` is evaluated as ``expm1(a log r)``; below ``a = 1e-6`` the ``a -> 0`` limit is
    used (it also keeps ``a * log r`` from underflowing in fp32).

    Args:
        alpha: the family parameter; must be finite and ``> 0``.

    Returns:
        The generator record, named ``power``.

    Raises:
        ValueError: if ``alpha`` is not a finite number in ``(0, inf)``.
    """
    a = float(alpha)
    if not (math.isfinite(a) and a > 0.0):
        raise ValueError(
            f"alpha for Bregman generator 'power' must be finite and > 0 (valid range (0, inf)), "
            f"got {alpha!r}"
        )
    description = f"Basu power divergence, alpha={a:g}: w = (1+alpha) r^alpha"
    if a < _LIMIT_TOL:
        return BregmanGenerator(
            name="power",
            h=REVERSE_KL.h,
            h_prime=REVERSE_KL.h_prime,
            h_second=REVERSE_KL.h_second,
            weight=REVERSE_KL.weight,
            ratio_max=math.inf,
            description=description,
        )
    return BregmanGenerator(
        name="power",
        h=lambda r: r * torch.expm1(a * torch.log(r)) / a,
        h_prime=lambda r: torch.expm1(a * torch.log(r)) / a + torch.pow(r, a),
        h_second=lambda r: (1.0 + a) * torch.pow(r, a - 1.0),
        weight=lambda r: (1.0 + a) * torch.pow(r, a),
        ratio_max=math.inf,
        description=description,
    )


@dataclass(frozen=True)
class _Entry:
    """A registry entry: ``factory(alpha)`` builds the record; ``parametric``: uses alpha."""

    factory: Callable[[float], BregmanGenerator]
    parametric: bool


def _fixed(h: BregmanGenerator) -> _Entry:
    return _Entry(factory=lambda _alpha: h, parametric=False)


GENERATORS: Registry[_Entry] = Registry("Bregman generator", {
    "reverse_kl": _fixed(REVERSE_KL),
    "forward_kl": _fixed(FORWARD_KL),
    "jensen_shannon": _fixed(JENSEN_SHANNON),
    "logistic": _fixed(LOGISTIC),
    "pearson": _fixed(PEARSON),
    "neyman": _fixed(NEYMAN),
    "hellinger": _fixed(HELLINGER),
    "jeffreys": _fixed(JEFFREYS),
    "softened_rkl": _fixed(SOFTENED_RKL),
    "log_squared": _fixed(LOG_SQUARED),
    "alpha": _Entry(factory=_alpha_generator, parametric=True),
    "power": _Entry(factory=_power_generator, parametric=True),
})


def generator_names() -> list[str]:
    """Return the sorted names of all registered generators."""
    return GENERATORS.names()


def _entry(name: str) -> _Entry:
    return GENERATORS[name]


def get_generator(name: str, alpha: float = 0.5) -> BregmanGenerator:
    """The Bregman generator ``h`` named ``name`` (see :func:`generator_names`); ``alpha`` is
    the parameter of the ``alpha`` (Amari; any finite real) and ``power`` (Basu; ``alpha > 0``)
    families, ignored by every other generator.

    Raises:
        ValueError: for an unknown name (the message lists every valid name) or an ``alpha``
            outside the family's valid range (the message names the range).
    """
    return _entry(name).factory(alpha)


def is_parametric(name: str) -> bool:
    """Whether generator ``name`` uses ``alpha`` (``alpha`` and ``power``).

    Raises:
        ValueError: for an unknown name, as :func:`get_generator`.
    """
    return _entry(name).parametric


def bregman_divergence(h: BregmanGenerator, a: Tensor, b: Tensor | float) -> Tensor:
    """Elementwise Bregman divergence ``D_h(a || b) = h(a) - h(b) - h'(b) (a - b)``.

    ``D_h >= 0`` with equality iff ``a == b`` for ``a, b`` in ``(0, ratio_max]``.

    Args:
        h: the generator.
        a: ratios, any shape.
        b: ratios broadcastable against ``a``; a Python float (e.g. ``1.0`` for the Di-Bregman
            objective ``D_h(r || 1)``) is converted to ``a``'s dtype and device.

    Returns:
        ``D_h(a || b)``, the broadcast shape of ``a`` and ``b``.
    """
    b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    return h.h(a) - h.h(b) - h.h_prime(b) * (a - b)
