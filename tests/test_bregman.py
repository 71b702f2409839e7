"""Math tests for the Bregman generator registry (dibregman.bregman)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dibregman.bregman import (
    BregmanGenerator,
    bregman_divergence,
    generator_names,
    get_generator,
    is_parametric,
)

EXPECTED_NAMES = [
    "alpha",
    "forward_kl",
    "hellinger",
    "jeffreys",
    "jensen_shannon",
    "log_squared",
    "logistic",
    "neyman",
    "pearson",
    "power",
    "reverse_kl",
    "softened_rkl",
]
ALPHAS = {"alpha": [-1.0, 0.0, 0.5, 1.0, 2.0, 3.0], "power": [0.5, 1.0, 2.0]}


def _cases() -> list[tuple[str, float]]:
    """Every registered generator, parametric families at several alphas."""
    cases = []
    for name in generator_names():
        for alpha in ALPHAS.get(name, [0.5]):
            cases.append((name, alpha))
    return cases


CASES = _cases()
CASE_IDS = [f"{name}-{alpha:g}" if name in ALPHAS else name for name, alpha in CASES]


def _grid(gen: BregmanGenerator, lo: float, hi: float, n: int = 401) -> torch.Tensor:
    """Log-spaced float64 grid on [lo, min(hi, ratio_max)]."""
    top = min(hi, gen.ratio_max)
    return torch.logspace(math.log10(lo), math.log10(top), n, dtype=torch.float64)


def _autograd(fn, r: torch.Tensor) -> torch.Tensor:
    r = r.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(r).sum(), r)
    return grad


def test_registry_names() -> None:
    assert generator_names() == EXPECTED_NAMES
    for name in EXPECTED_NAMES:
        gen = get_generator(name)
        assert gen.name == name
        assert gen.description and "\n" not in gen.description
        assert is_parametric(name) == (name in ALPHAS)


@pytest.mark.parametrize(("name", "alpha"), CASES, ids=CASE_IDS)
def test_derivatives_match_autograd(name: str, alpha: float) -> None:
    gen = get_generator(name, alpha)
    r = _grid(gen, 0.05, 10.0)
    torch.testing.assert_close(gen.h_prime(r), _autograd(gen.h, r), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gen.h_second(r), _autograd(gen.h_prime, r), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gen.weight(r), gen.h_second(r) * r, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(("name", "alpha"), CASES, ids=CASE_IDS)
def test_convex_on_domain(name: str, alpha: float) -> None:
    gen = get_generator(name, alpha)
    r = _grid(gen, 1e-3, 50.0)
    assert r[-1].item() == pytest.approx(min(50.0, gen.ratio_max))
    # Open interval: log_squared's h'' is exactly 0 at its domain end r = e.
    assert bool((gen.h_second(r[:-1]) > 0).all())
    assert bool((gen.weight(r[:-1]) > 0).all())
    assert gen.h_second(r[-1:]).item() >= 0.0


def test_log_squared_is_concave_above_e() -> None:
    """(log r)^2 / 2 has h'' = (1 - log r)/r^2 < 0 for r > e: why its domain is clipped to e."""
    gen = get_generator("log_squared")
    assert gen.ratio_max == math.e
    above = torch.tensor([math.e * 1.001, 3.0, 10.0, 100.0], dtype=torch.float64)
    assert bool((gen.h_second(above) < 0).all())
    assert bool((gen.weight(above) < 0).all())
    at_e = torch.tensor([math.e], dtype=torch.float64)
    assert gen.h_second(at_e).abs().item() < 1e-15


@pytest.mark.parametrize(("name", "alpha"), CASES, ids=CASE_IDS)
@settings(max_examples=40, deadline=None)
@given(
    log_a=st.floats(min_value=math.log(1e-2), max_value=math.log(1e2)),
    log_b=st.floats(min_value=math.log(1e-2), max_value=math.log(1e2)),
)
def test_divergence_nonnegative_zero_iff_equal(
    name: str, alpha: float, log_a: float, log_b: float
) -> None:
    gen = get_generator(name, alpha)
    a = torch.tensor(min(math.exp(log_a), gen.ratio_max), dtype=torch.float64)
    b = torch.tensor(min(math.exp(log_b), gen.ratio_max), dtype=torch.float64)
    assert bregman_divergence(gen, b, b).item() == 0.0
    d = bregman_divergence(gen, a, b).item()
    assert d >= -1e-12
    if abs(a.item() - b.item()) > 1e-3 * max(a.item(), b.item()):
        assert d > 0.0


def test_divergence_broadcasts_float_reference() -> None:
    gen = get_generator("pearson")
    r = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float32)
    d = bregman_divergence(gen, r, 1.0)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, 0.5 * (r - 1.0) ** 2)


def test_reverse_kl_weight_is_exactly_one() -> None:
    gen = get_generator("reverse_kl")
    for dtype in (torch.float32, torch.float64):
        r = torch.logspace(-6, 6, 1001, dtype=dtype)
        w = gen.weight(r)
        assert torch.equal(w, torch.ones_like(r))
    # alpha = 1 is the same DMD weight, exactly.
    r = torch.logspace(-6, 6, 1001, dtype=torch.float32)
    assert torch.equal(get_generator("alpha", 1.0).weight(r), torch.ones_like(r))


@pytest.mark.parametrize(("name", "alpha"), CASES, ids=CASE_IDS)
def test_dtype_kept_and_fp32_matches_fp64(name: str, alpha: float) -> None:
    """Weights are fp32-safe: finite, positive, accurate on r in [1e-4, 1e4] in the domain."""
    gen = get_generator(name, alpha)
    r64 = _grid(gen, 1e-4, 1e4)
    r32 = r64.float()
    for fn in (gen.h, gen.h_prime, gen.h_second, gen.weight):
        assert fn(r32).dtype == torch.float32
        assert fn(r64).dtype == torch.float64
    w32 = gen.weight(r32)
    assert bool(torch.isfinite(w32).all())
    assert bool((w32[:-1] > 0).all())  # log_squared's weight is exactly 0 at r = e
    torch.testing.assert_close(w32.double(), gen.weight(r32.double()), rtol=1e-5, atol=1e-6)


def _same_divergence_and_weight(
    gen: BregmanGenerator, ref: BregmanGenerator, scale: float = 1.0, rtol: float = 1e-9
) -> None:
    r = _grid(gen, 0.05, 10.0, n=101)
    a, b = torch.meshgrid(r, r, indexing="ij")
    torch.testing.assert_close(
        bregman_divergence(gen, a, b), scale * bregman_divergence(ref, a, b), rtol=rtol, atol=1e-12
    )
    torch.testing.assert_close(gen.weight(r), scale * ref.weight(r), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 1.0 - 1e-4, 1.0 + 1e-4, 1.0 - 1e-7])
def test_alpha_to_one_is_reverse_kl(alpha: float) -> None:
    """h_alpha -> r log r - r + 1: reverse KL up to an affine term, so compare D_h and w."""
    rtol = 1e-9 if abs(alpha - 1.0) < 1e-6 else 2e-3
    _same_divergence_and_weight(
        get_generator("alpha", alpha), get_generator("reverse_kl"), rtol=rtol
    )


@pytest.mark.parametrize("alpha", [0.0, 1e-4, -1e-4, 1e-7])
def test_alpha_to_zero_is_forward_kl(alpha: float) -> None:
    """h_alpha -> r - 1 - log r: Burg's -log r up to an affine term."""
    rtol = 1e-9 if abs(alpha) < 1e-6 else 2e-3
    _same_divergence_and_weight(
        get_generator("alpha", alpha), get_generator("forward_kl"), rtol=rtol
    )


def test_alpha_two_is_pearson_exactly() -> None:
    gen, ref = get_generator("alpha", 2.0), get_generator("pearson")
    r = _grid(gen, 0.05, 10.0)
    for fn in ("h", "h_prime", "h_second", "weight"):
        torch.testing.assert_close(getattr(gen, fn)(r), getattr(ref, fn)(r), rtol=1e-12, atol=1e-12)


def test_alpha_half_is_twice_hellinger() -> None:
    _same_divergence_and_weight(get_generator("alpha", 0.5), get_generator("hellinger"), scale=2.0)


@pytest.mark.parametrize("alpha", [1e-4, 1e-7])
def test_power_to_zero_is_reverse_kl(alpha: float) -> None:
    rtol = 1e-9 if alpha < 1e-6 else 2e-3
    _same_divergence_and_weight(
        get_generator("power", alpha), get_generator("reverse_kl"), rtol=rtol
    )


def test_power_one_is_twice_pearson() -> None:
    _same_divergence_and_weight(get_generator("power", 1.0), get_generator("pearson"), scale=2.0)


@pytest.mark.parametrize(
    ("name", "alpha"), [("alpha", 1.0 + 2e-6), ("alpha", 2e-6), ("power", 2e-6)]
)
def test_families_stable_near_limit_in_fp32(name: str, alpha: float) -> None:
    """expm1 forms keep fp32 h and h' accurate just outside the switch to the limit."""
    gen = get_generator(name, alpha)
    r64 = torch.logspace(-2, 2, 201, dtype=torch.float64)
    r32 = r64.float()
    for fn in (gen.h, gen.h_prime):
        torch.testing.assert_close(fn(r32).double(), fn(r64), rtol=1e-5, atol=1e-5)


def test_non_parametric_ignore_alpha() -> None:
    r = torch.logspace(-1, 1, 11, dtype=torch.float64)
    for name in generator_names():
        if is_parametric(name):
            continue
        assert torch.equal(get_generator(name, -3.0).weight(r), get_generator(name).weight(r))


def test_unknown_name_lists_every_valid_name() -> None:
    with pytest.raises(ValueError, match="unknown Bregman generator 'nope'") as info:
        get_generator("nope")
    for name in EXPECTED_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid: alpha, forward_kl"):
        is_parametric("nope")


@pytest.mark.parametrize("alpha", [0.0, -0.5, math.inf, math.nan])
def test_power_rejects_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"power.*\(0, inf\)"):
        get_generator("power", alpha)


@pytest.mark.parametrize("alpha", [math.inf, -math.inf, math.nan])
def test_alpha_rejects_non_finite(alpha: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        get_generator("alpha", alpha)


@pytest.mark.parametrize(
    ("name", "r", "expected"),
    [
        ("jensen_shannon", 1.0, 0.25),
        ("logistic", 1.0, 0.5),
        ("hellinger", 4.0, 0.25),
        ("forward_kl", 4.0, 0.25),
        ("pearson", 3.0, 3.0),
        ("neyman", 2.0, 0.25),
        ("jeffreys", 2.0, 1.5),
        ("softened_rkl", 1.0, 0.5),
        ("log_squared", 1.0, 1.0),
    ],
)
def test_known_weights(name: str, r: float, expected: float) -> None:
    w = get_generator(name).weight(torch.tensor([r], dtype=torch.float64))
    assert w.item() == pytest.approx(expected, rel=1e-12)


def test_known_divergence_values() -> None:
    """D_h(r || 1) for reverse KL is r log r - r + 1; for forward KL it is r - 1 - log r."""
    r = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(
        bregman_divergence(get_generator("reverse_kl"), r, 1.0), r * torch.log(r) - r + 1.0
    )
    torch.testing.assert_close(
        bregman_divergence(get_generator("forward_kl"), r, 1.0), r - 1.0 - torch.log(r)
    )
