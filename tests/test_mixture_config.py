"""The ``mixture`` teacher is defined by the config's ``mixture`` section alone: the gmm2d and
gmm16d presets are two named mixtures (bit for bit the ring and random constructions the
teachers always used), and any other
mixture comes from ``--set``-style overrides, checked by validation and recorded in config.json."""

import json
import math

import pytest
import torch

from dibregman.config import Config, ConfigError, MixtureConfig, from_dict, to_dict, with_overrides
from dibregman.presets import get_preset
from dibregman.run import run_experiment
from dibregman.teachers import GaussianMixtureTeacher, teacher_for
from dibregman.validation import validate

GMM2D_WEIGHTS = (0.4, 0.2, 0.12, 0.1, 0.08, 0.05, 0.04, 0.01)


def old_ring_mixture(n_modes=8, radius=2.0, std=0.2, weights=GMM2D_WEIGHTS):
    """The construction ``ring_mixture()`` used before the mixture section (frozen copy)."""
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return (means, torch.full((n_modes,), std, dtype=torch.float64),
            torch.tensor(weights, dtype=torch.float64))


def old_random_mixture(dim=16, n_modes=10, scale=2.0, std=0.25, seed=0):
    """The construction ``random_mixture()`` used before the mixture section (frozen copy)."""
    rng = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(n_modes, dim, generator=rng, dtype=torch.float64)
    raw = 0.75 ** torch.arange(n_modes, dtype=torch.float64)
    return means, torch.full((n_modes,), std, dtype=torch.float64), raw / raw.sum()


def assert_same_teacher(teacher, means, stds, weights):
    assert isinstance(teacher, GaussianMixtureTeacher)
    assert torch.equal(teacher.means, means)
    assert torch.equal(teacher.stds, stds)
    assert torch.equal(teacher.weights, weights)


@pytest.mark.parametrize("preset", ["gmm2d", "gmm2d-tiny"])
def test_gmm2d_is_the_ring_construction_bit_for_bit(preset):
    cfg = get_preset(preset)
    assert cfg.teacher == "mixture" and cfg.mixture.layout == "ring"
    teacher = teacher_for(cfg)
    assert_same_teacher(teacher, *old_ring_mixture())
    assert teacher.weights.tolist() == list(GMM2D_WEIGHTS)
    # cos and sin of 2 pi k / 8 may differ in their last bit between libm builds.
    torch.testing.assert_close(teacher.means[:2], torch.tensor(
        [[2.0, 0.0], [2 ** 0.5, 2 ** 0.5]], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert teacher.sigma_max == 20.0 and teacher.shape == (2,)


@pytest.mark.parametrize("preset", ["gmm16d", "gmm16d-tiny"])
def test_gmm16d_is_the_old_random_mixture_bit_for_bit(preset):
    cfg = get_preset(preset)
    assert cfg.teacher == "mixture" and cfg.mixture.layout == "random"
    teacher = teacher_for(cfg)
    assert_same_teacher(teacher, *old_random_mixture())
    # The first row of 2 * randn(10, 16) from torch.Generator().manual_seed(0), float64 (to
    # 1e-12: the Box-Muller transform's log and cos may differ in their last bit between CPUs).
    torch.testing.assert_close(teacher.means[0], torch.tensor([
        -4.620823600468, -0.746501722516, -2.121633357093, 1.999018709562,
        -1.768050009167, -2.551093860421, -1.246449159732, -1.732883203825,
        -2.591254280656, 3.047263246213, 0.647321132997, 4.035452062972,
        2.271484680043, -2.453762678002, 0.142776942410, 0.676034806101],
        dtype=torch.float64), rtol=0, atol=1e-11)
    weights = 0.75 ** torch.arange(10, dtype=torch.float64)
    torch.testing.assert_close(teacher.weights, weights / weights.sum(), rtol=1e-12, atol=0)
    assert teacher.shape == (16,) and teacher.stds.tolist() == [0.25] * 10


def test_other_rings_match_the_old_construction():
    mix = MixtureConfig(layout="ring", modes=5, std=0.1, scale=3.0, weights=(4, 3, 1.5, 1, 0.5))
    teacher = GaussianMixtureTeacher.from_mixture(mix)
    means, stds, _ = old_ring_mixture(5, 3.0, 0.1, (0.4, 0.3, 0.15, 0.1, 0.05))
    assert torch.equal(teacher.means, means) and torch.equal(teacher.stds, stds)
    torch.testing.assert_close(teacher.weights, torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05],
                                                             dtype=torch.float64))


GRID_5X5 = {"mixture.layout": "grid", "mixture.modes": "25", "mixture.std": "0.05",
            "mixture.scale": "1"}


def test_a_5x5_grid_from_string_overrides():
    cfg = with_overrides(Config(), GRID_5X5)
    validate(cfg)
    teacher = teacher_for(cfg)
    assert teacher.means.shape == (25, 2) and teacher.shape == (2,)
    assert torch.equal(teacher.weights, torch.full((25,), 1 / 25, dtype=torch.float64))
    assert torch.equal(teacher.stds, torch.full((25,), 0.05, dtype=torch.float64))
    expected = {(float(x), float(y)) for x in (-2, -1, 0, 1, 2) for y in (-2, -1, 0, 1, 2)}
    assert {tuple(row) for row in teacher.means.tolist()} == expected
    assert teacher.means[0].tolist() == [-2.0, -2.0] and teacher.means[1].tolist() == [-2.0, -1.0]
    # Samples land on the 25 points in equal shares.
    x = teacher.sample(50_000, torch.Generator().manual_seed(0)).double()
    share = torch.bincount(torch.cdist(x, teacher.means).argmin(1), minlength=25) / len(x)
    assert (share - 1 / 25).abs().max() < 0.006


def test_an_imbalanced_mixture_from_string_weights():
    cfg = with_overrides(Config(), {"mixture.modes": "2", "mixture.weights": "0.99,0.01"})
    validate(cfg)
    teacher = teacher_for(cfg)
    torch.testing.assert_close(teacher.weights, torch.tensor([0.99, 0.01], dtype=torch.float64))
    assert teacher.means.tolist() == [[2.0, 0.0], [-2.0, pytest.approx(0.0, abs=1e-15)]]
    x = teacher.sample(100_000, torch.Generator().manual_seed(1)).double()
    small = float((torch.cdist(x, teacher.means).argmin(1) == 1).double().mean())
    assert 0.008 < small < 0.012


def test_weights_are_normalised_and_decay_is_geometric():
    three = with_overrides(Config(), {"mixture.modes": 3, "mixture.weights": [3, 2, 1]})
    assert teacher_for(three).weights.tolist() == [0.5, 2 / 6, 1 / 6]
    decay = with_overrides(Config(), {"mixture.modes": 3, "mixture.weight_decay": "0.5"})
    assert teacher_for(decay).weights.tolist() == [4 / 7, 2 / 7, 1 / 7]


EXPLICIT = {"mixture.layout": "explicit", "mixture.modes": "3", "mixture.dim": "3",
            "mixture.means": "0,0,0,1,2,3,-1,0.5,4", "mixture.weights": "0.5,0.25,0.25",
            "mixture.std": "0.3"}


def test_explicit_means_round_trip():
    cfg = with_overrides(Config(), EXPLICIT)
    validate(cfg)
    assert cfg.mixture.means == (0.0, 0.0, 0.0, 1.0, 2.0, 3.0, -1.0, 0.5, 4.0)
    teacher = teacher_for(cfg)
    assert teacher.means.tolist() == [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]
    assert teacher.shape == (3,) and teacher.weights.tolist() == [0.5, 0.25, 0.25]
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["mixture"]["means"] == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, -1.0, 0.5, 4.0]
    back = from_dict(data)
    assert back == cfg and torch.equal(teacher_for(back).means, teacher.means)


def test_to_dict_from_dict_round_trips_empty_and_non_empty_tuples():
    cfg = with_overrides(get_preset("gmm16d-tiny"), {"seed": 2})
    assert cfg.mixture.weights == () and cfg.mixture.means == ()
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["mixture"]["weights"] == [] and data["mixture"]["means"] == []
    assert data["train"]["betas"] == [0.9, 0.999]
    assert from_dict(data) == cfg
    full = with_overrides(Config(), EXPLICIT)
    assert from_dict(json.loads(json.dumps(to_dict(full)))) == full
    image = get_preset("cifar10-tiny")
    assert from_dict(json.loads(json.dumps(to_dict(image)))) == image


@pytest.mark.parametrize("empty", ["", " ", [], ()])
def test_a_variable_length_tuple_may_be_emptied(empty):
    cfg = with_overrides(get_preset("gmm2d"), {"mixture.weights": empty})
    assert cfg.mixture.weights == ()


@pytest.mark.parametrize(("key", "value"), [("train.betas", ""), ("train.betas", []),
                                            ("train.betas", "0.9"), ("mixture.weights", "a,b"),
                                            ("mixture.means", 3.0)])
def test_fixed_length_tuples_stay_non_empty_and_items_are_typed(key, value):
    with pytest.raises(ConfigError, match=f"bad value .* for {key}: expected"):
        with_overrides(Config(), {key: value})


def test_an_empty_channel_mult_is_still_refused_by_validation():
    cfg = with_overrides(get_preset("digits"), {"image_teacher.channel_mult": ""})
    with pytest.raises(ConfigError, match="image_teacher.channel_mult must list at least one"):
        validate(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ({"mixture.layout": "hexagon"},
     "bad mixture.layout 'hexagon'; valid: ring, grid, random, explicit"),
    ({"mixture.modes": "0"}, "mixture.modes=0 must be >= 1"),
    ({"mixture.layout": "random", "mixture.dim": "0"}, "mixture.dim=0 must be >= 1"),
    ({"mixture.dim": "3"}, "mixture.dim=3 with mixture.layout='ring': ring and grid are 2-D; "
                           "valid: mixture.dim=2"),
    ({"mixture.layout": "grid", "mixture.modes": "9", "mixture.dim": "4"},
     "mixture.dim=4 with mixture.layout='grid'"),
    ({"mixture.layout": "grid", "mixture.modes": "24"},
     r"mixture.modes=24 with mixture.layout='grid' must be a perfect square \(4, 9, 16, 25"),
    ({"mixture.weights": "0.5,0.5"},
     r"mixture.weights=0.5,0.5 has 2 values; valid: one per mode \(8\), or empty "
     r"\(mixture.weights=\)"),
    ({"mixture.modes": "3", "mixture.weights": "0.5,0,0.5"},
     "mixture.weights=0.5,0,0.5 must all be > 0"),
    ({"mixture.modes": "2", "mixture.weights": "1.5,-0.5"}, "must all be > 0"),
    ({"mixture.layout": "explicit", "mixture.modes": "2", "mixture.means": "0,0,1"},
     r"mixture.means has 3 values; mixture.layout='explicit' needs modes x dim = 2 x 2 = 4"),
    ({"mixture.layout": "explicit", "mixture.modes": "2"},
     "mixture.means has 0 values; mixture.layout='explicit' needs"),
    ({"mixture.means": "1,2"},
     "mixture.means=1,2 applies only to mixture.layout='explicit' \\(not 'ring'\\)"),
    ({"mixture.std": "0"}, "mixture.std=0.0 must be > 0"),
    ({"mixture.std": "-0.1"}, r"mixture.std=-0.1 must be > 0"),
    ({"mixture.weight_decay": "0"}, "mixture.weight_decay=0.0 must be > 0"),
    ({"mixture.scale": "0"}, "mixture.scale=0.0 must be > 0"),
    ({"mixture.sigma_max": "-1"}, "mixture.sigma_max=-1.0 must be > 0"),
])
def test_validation_names_the_mixture_key_value_and_what_is_valid(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(with_overrides(get_preset("gmm2d-tiny"), {"mixture.weights": "", **override}))


@pytest.mark.parametrize("key", ["mixture.modes", "mixture.layout", "mixture.weights"])
def test_mixture_keys_do_not_apply_to_image_teachers(key):
    value = {"mixture.modes": "9", "mixture.layout": "grid", "mixture.weights": "1"}[key]
    with pytest.raises(ConfigError, match=f"{key}=.* does not apply to teacher 'image' "
                                          r"\(image teacher: .*not an analytic Gaussian mixture"):
        validate(with_overrides(get_preset("digits-tiny"), {key: value}))


def test_a_mixture_defined_only_by_overrides_runs_and_lands_in_config_json(tmp_path):
    overrides = {"mixture.layout": "grid", "mixture.modes": "9", "mixture.std": "0.1",
                 "mixture.scale": "1.5", "mixture.weights": "", "mixture.weight_decay": "0.8",
                 "mixture.sigma_max": "15", "generator.name": "reverse_kl"}
    cfg = with_overrides(get_preset("gmm2d-tiny"), overrides)
    result = run_experiment(cfg, tmp_path / "run")
    assert str(result.status) == "finished"
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["teacher"] == "mixture"
    assert stored["mixture"] == {"layout": "grid", "modes": 9, "dim": 2, "std": 0.1,
                                 "scale": 1.5, "weights": [], "weight_decay": 0.8, "means": [],
                                 "seed": 0, "sigma_max": 15.0}
    assert from_dict(stored) == cfg
    teacher = teacher_for(from_dict(stored))
    assert teacher.means.shape == (9, 2) and teacher.sigma_max == 15.0
    assert result.metrics["modes_covered_n512"] <= 9
