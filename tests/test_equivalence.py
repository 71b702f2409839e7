"""Generators whose weights are equal up to a constant train identically under batch-mean weight
normalisation: the detector, the classes it finds and the math behind them."""

import math
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from dibregman.bregman import get_generator
from dibregman.config import with_overrides
from dibregman.equivalence import (
    equivalence_classes,
    known_equivalences,
    same_method_groups,
    weights_equivalent,
)
from dibregman.presets import get_preset

EQUIVALENT = [
    (("jensen_shannon", 0.0), ("logistic", 0.0)),
    (("alpha", 0.5), ("hellinger", 0.0)),
    (("alpha", 2.0), ("pearson", 0.0)),
    (("alpha", 1.0), ("reverse_kl", 0.0)),
    (("alpha", 0.0), ("forward_kl", 0.0)),
    (("alpha", -1.0), ("neyman", 0.0)),
    (("power", 1.0), ("pearson", 0.0)),
    (("alpha", 1.5), ("power", 0.5)),
    (("log_squared", 0.0), ("log_squared", 0.0)),
]
DIFFERENT = [
    (("reverse_kl", 0.0), ("pearson", 0.0)),
    (("jensen_shannon", 0.0), ("softened_rkl", 0.0)),
    (("alpha", 0.5), ("alpha", 0.6)),
    (("jeffreys", 0.0), ("forward_kl", 0.0)),
    (("log_squared", 0.0), ("forward_kl", 0.0)),
    (("power", 0.5), ("hellinger", 0.0)),
]


def generator(label: str):
    """``pearson`` or ``alpha α=0.5`` -> the generator record."""
    name, _, alpha = label.partition(" α=")
    return get_generator(name, float(alpha) if alpha else 0.5)


def batch_normalised(h, r: torch.Tensor) -> torch.Tensor:
    """The weights of a batch of ratios divided by their batch mean (ratio.weight_normalize)."""
    w = h.weight(r.clamp(max=h.ratio_max))
    return w / w.mean()


def random_ratios(seed: int = 0, n: int = 512) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.exp(2.0 * torch.randn(n, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_known_pairs_are_equivalent(a, b):
    assert weights_equivalent(get_generator(*a), get_generator(*b))
    assert weights_equivalent(get_generator(*b), get_generator(*a))


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_methods_are_not_equivalent(a, b):
    h1, h2 = get_generator(*a), get_generator(*b)
    assert not weights_equivalent(h1, h2)
    r = random_ratios(1)
    assert not torch.allclose(batch_normalised(h1, r), batch_normalised(h2, r), rtol=1e-3)


def test_known_equivalences():
    assert known_equivalences() == [
        ["forward_kl", "alpha α=0"],
        ["hellinger", "alpha α=0.5"],
        ["jensen_shannon", "logistic"],
        ["neyman", "alpha α=-1"],
        ["pearson", "alpha α=2", "power α=1"],
        ["reverse_kl", "alpha α=1"],
    ]


@pytest.mark.parametrize("labels", known_equivalences(), ids=" = ".join)
def test_each_class_is_the_same_training_as_math(labels):
    """w1/w2 is one constant on a grid of r, and the batch-normalised weights of a random batch
    are equal: the constant cancels in w / w.mean()."""
    first = generator(labels[0])
    r_grid = torch.logspace(-3, 3, 121, dtype=torch.float64)
    r_batch = random_ratios(0)
    for label in labels[1:]:
        other = generator(label)
        factor = first.weight(r_grid) / other.weight(r_grid)
        assert torch.allclose(factor, factor[0].expand_as(factor), rtol=1e-10, atol=0.0)
        assert factor[0] > 0
        torch.testing.assert_close(batch_normalised(first, r_batch),
                                   batch_normalised(other, r_batch), rtol=1e-10, atol=0.0)


def test_without_normalisation_the_constant_scales_the_step():
    js, logistic = get_generator("jensen_shannon"), get_generator("logistic")
    r = random_ratios(2)
    torch.testing.assert_close(logistic.weight(r), 2.0 * js.weight(r))  # twice the step
    torch.testing.assert_close(batch_normalised(logistic, r), batch_normalised(js, r))


def test_log_squared_is_compared_clipped_at_its_ratio_max():
    ls = get_generator("log_squared")
    assert ls.ratio_max == math.e
    as_used = replace(ls, ratio_max=math.inf, weight=lambda r: 3.0 * ls.weight(r.clamp(max=math.e)))
    assert weights_equivalent(ls, as_used)
    unclipped = replace(ls, ratio_max=math.inf)  # w < 0 past e: a different method
    assert not weights_equivalent(ls, unclipped)


def test_equivalence_classes_on_a_mixed_list():
    arms = [("pearson", 0.5), ("logistic", 0.5), ("pearson", 2.0), ("alpha", 2.0),
            ("jensen_shannon", 1.0), ("alpha", 0.6), ("alpha", 0.5), ("hellinger", 3.0),
            ("power", 1.0), ("reverse_kl", 0.5), ("alpha", 0.5)]
    assert equivalence_classes(arms) == [
        [("pearson", 0.5), ("alpha", 2.0), ("power", 1.0)],
        [("logistic", 0.5), ("jensen_shannon", 1.0)],
        [("alpha", 0.6)],
        [("alpha", 0.5), ("hellinger", 3.0)],
        [("reverse_kl", 0.5)],
    ]
    assert equivalence_classes([]) == []
    with pytest.raises(ValueError, match="unknown Bregman generator 'kl'"):
        equivalence_classes([("kl", 0.0)])


def test_same_method_groups_need_weight_normalize_and_equal_other_keys():
    base = get_preset("gmm2d-tiny")
    configs = [with_overrides(base, point) for point in [
        {"generator.name": "jensen_shannon"},
        {"generator.name": "logistic"},
        {"generator.name": "logistic", "train.lr": 2e-3},
        {"generator.name": "jensen_shannon", "train.lr": 2e-3},
        {"generator.name": "jensen_shannon", "ratio.weight_normalize": False},
        {"generator.name": "logistic", "ratio.weight_normalize": False},
        {"generator.name": "reverse_kl"},
        {"generator.name": "pearson"},
    ]]
    assert same_method_groups(configs) == [[0, 1], [2, 3]]


def test_bench_list_prints_the_classes():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "equivalent under batch-mean weight normalisation" in text
    assert "jensen_shannon = logistic" in text and "pearson = alpha α=2 = power α=1" in text
